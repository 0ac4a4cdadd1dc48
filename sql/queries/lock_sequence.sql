-- The sequencing lock: held from the insert of a batch to its commit, so
-- transactions commit in position order and a reader never sees a position
-- appear below one it has already seen. $1: the sequencing key.
SELECT pg_advisory_xact_lock($1::int8)
