-- The highest committed position (0 for an empty log): a backward scan of
-- the primary key that reads one entry.
SELECT coalesce(max(position), 0)::int8 FROM events
