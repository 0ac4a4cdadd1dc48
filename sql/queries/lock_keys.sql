-- Takes a batch's advisory transaction locks in one pass, in the order of the
-- arrays (crablet sorts them by key, so no two transactions deadlock).
-- $1: keys, ascending; $2: true where the lock is exclusive.
SELECT CASE WHEN t.exclusive
            THEN pg_advisory_xact_lock(t.key)
            ELSE pg_advisory_xact_lock_shared(t.key)
       END
FROM unnest($1::int8[], $2::bool[]) AS t(key, exclusive)
