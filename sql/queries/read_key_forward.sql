-- Events under one key (a query with a single probe, the common case) with
-- $2 < position < $3, ascending, at most $6, that carry all of $4 and (when
-- $5 is not empty) have one of the types $5. An ordered range scan of
-- event_keys joined to events by primary key.
SELECT e.position, e.type, e.tags, e.data, e.id, e.metadata, e.recorded_at
FROM event_keys ek
JOIN events e ON e.position = ek.position
WHERE ek.key = $1
  AND ek.position > $2 AND ek.position < $3
  AND e.tags @> $4::text[]
  AND (cardinality($5::text[]) = 0 OR e.type = ANY ($5::text[]))
ORDER BY ek.position
LIMIT $6
