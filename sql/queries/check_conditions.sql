-- Which appends of a batch have a matching event after their `after`.
-- $1: JSON array of probes {"i": append index, "a": after, "k": key or null,
--     "tags": [...], "types": [...]}. A probe with a null key looks at all
--     events. Each EXISTS is a correlated subplan: an index range scan of
--     event_keys (key, position > after) joined to events by primary key,
--     whatever the values; it stops at the first match.
SELECT DISTINCT p.i
FROM jsonb_to_recordset($1::text::jsonb) AS p(i int4, a int8, k int8, tags text[], types text[])
WHERE CASE
    WHEN p.k IS NULL THEN EXISTS (
        SELECT 1 FROM events e WHERE e.position > p.a)
    ELSE EXISTS (
        SELECT 1
        FROM event_keys ek
        JOIN events e ON e.position = ek.position
        WHERE ek.key = p.k
          AND ek.position > p.a
          AND e.tags @> p.tags
          AND (cardinality(p.types) = 0 OR e.type = ANY (p.types)))
END
