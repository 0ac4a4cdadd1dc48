-- Events matching any probe with $2 < position < $3, descending, at most $4.
-- $1: JSON array of probes {"k": key, "tags": [...], "types": [...]},
-- with "ks" (the keys it may be driven by) when it is not exact: the one
-- with the fewest entries in the range is scanned (crablet_rarest).
-- Each probe is an ordered index range scan of event_keys, cut at the limit,
-- joined to events by primary key; the union is deduplicated by position.
SELECT DISTINCT ON (m.position) m.position, m.type, m.tags, m.data, m.id, m.metadata, m.recorded_at
FROM jsonb_to_recordset($1::text::jsonb) AS p(k int8, tags text[], types text[], ks int8[])
CROSS JOIN LATERAL (
    SELECT e.position, e.type, e.tags, e.data, e.id, e.metadata, e.recorded_at
    FROM event_keys ek
    JOIN events e ON e.position = ek.position
    WHERE ek.key = CASE WHEN p.ks IS NULL THEN p.k ELSE crablet_rarest(p.ks, $2, $3, 16384) END
      AND ek.position > $2 AND ek.position < $3
      AND e.tags @> p.tags
      AND (cardinality(p.types) = 0 OR e.type = ANY (p.types))
    ORDER BY ek.position DESC
    LIMIT $4
) m
ORDER BY m.position DESC
LIMIT $4
