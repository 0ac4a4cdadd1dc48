-- Every event with after < position < before, descending. $3: limit.
SELECT position, type, tags, data, id, metadata, recorded_at
FROM events
WHERE position > $1 AND position < $2
ORDER BY position DESC
LIMIT $3
