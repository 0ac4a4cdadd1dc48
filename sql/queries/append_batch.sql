-- One writer batch: see migrations/004_append_batch.sql. Runs as its own
-- (implicit) transaction: one round trip, committed before the answer.
-- Rows are read by column name.
SELECT kind, append_index, first_position, requirement, projector, earlier, probe, state,
       stored_id, stored_type, stored_tags, stored_data, stored_metadata
FROM crablet_append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                          $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
                          $21, $22, $23, $24, $25, $26, $27, $28, $29, $30,
                          $31, $32, $33, $34, $35)
