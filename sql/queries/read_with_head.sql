-- A page query together with the head position of the same snapshot. The
-- crablet process fills in the three placeholders below: the head query
-- (head.sql), the page query, and ASC or DESC.
-- One statement, one snapshot: every position at or below the head was
-- committed before the snapshot (commits happen in position order), so the
-- page saw it. The LEFT JOIN returns one row of NULL event columns when the
-- page is empty, so the head always comes back. Column 8 is the head.
SELECT m.*, h.head
FROM (
{head}
) h
LEFT JOIN LATERAL (
{page}
) m ON true
ORDER BY m.position {direction}
