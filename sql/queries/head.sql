-- The highest position visible to this statement's snapshot, 0 when the store
-- is empty. Commits happen in position order (gap-free reading), so every
-- position at or below it is committed and visible to any later snapshot.
-- One backward step of the primary key index.
SELECT coalesce(max(position), 0) AS head FROM events
