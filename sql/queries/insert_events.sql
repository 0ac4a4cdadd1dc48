-- Inserts a batch of events and their index keys in one statement.
-- $1: types; $2: data (one entry per event, in batch order)
-- $3, $4: tag owner (1-based event ordinal) and tag, flattened, in order
-- $5, $6: key owner and key, flattened (deduplicated per event by crablet)
-- Returns the positions in batch order. Run only under the sequencing lock:
-- nextval is evaluated in ordinality order, so a batch gets consecutive
-- positions.
WITH new_events AS MATERIALIZED (
    SELECT nextval('events_position_seq') AS position, e.ord, e.type, e.data
    FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS e(type, data, ord)
),
new_tags AS (
    SELECT t.owner, array_agg(t.tag ORDER BY t.n) AS tags
    FROM unnest($3::int8[], $4::text[]) WITH ORDINALITY AS t(owner, tag, n)
    GROUP BY t.owner
),
inserted_keys AS (
    INSERT INTO event_keys (key, position)
    SELECT k.key, ne.position
    FROM unnest($5::int8[], $6::int8[]) AS k(owner, key)
    JOIN new_events ne ON ne.ord = k.owner
),
inserted_events AS (
    INSERT INTO events (position, type, tags, data)
    SELECT ne.position, ne.type, coalesce(nt.tags, '{}'::text[]), ne.data
    FROM new_events ne
    LEFT JOIN new_tags nt ON nt.owner = ne.ord
)
SELECT position FROM new_events ORDER BY ord
