-- An import of exported events at their own positions: see
-- migrations/010_import.sql. Runs as its own (implicit) transaction: one
-- round trip, committed before the answer. Rows are read by column name.
SELECT kind, event_index, stored_id, last_position, stored_head
FROM crablet_import($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
