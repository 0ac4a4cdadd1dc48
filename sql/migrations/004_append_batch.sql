-- crablet_append_batch: one writer batch, decided and written in one call, so
-- a batch costs one round trip (the call is its own transaction).
--
-- Each statement of a VOLATILE function takes a fresh snapshot under READ
-- COMMITTED, so the condition check below sees every transaction that held
-- a key this batch has just locked.
--
-- 1. Take the batch's advisory locks, in the order given (ascending keys):
--    shared for the keys of the events written, exclusive for the keys the
--    conditions probe and for the keys of the events' ids.
-- 2. When events carry ids, look them up (one statement over the unique
--    index events_id): an append with any stored id is not accepted, and the
--    stored events come back to crablet, which tells a retry of the same
--    append (answered as a duplicate) from a reuse of ids (a conflict). This
--    comes first: a retry is never rejected by its own condition.
--    Then check every condition probe against the stored events, then the
--    requirements of the appends still accepted.
-- 3. Decide the appends in batch order: an append is rejected if a probe of
--    its condition matched, or if it conflicts with an earlier append of the
--    batch that is accepted (pairs computed by crablet, ordered by the later
--    append).
-- 4. Take the sequencing lock, draw positions and insert the events of the
--    accepted appends with their index keys. The lock is held until commit,
--    so transactions commit in position order (gap-free reading), and
--    recorded_at, read from the clock once the lock is held, follows
--    position order too.
--
-- Returns one row per accepted append: its index and its first and last
-- position, with the stored_* columns NULL; and one row per stored event
-- found under an id of the batch: the index of the append that asked, the
-- event's position (as first and last) and its stored columns; and one row
-- per append refused by a requirement, with the requirement's index in
-- failed_requirement. Appends without a row were rejected by their condition.
-- The signatures before ids and before requirements, and this one: dropped,
-- so that no older overload remains and the return type can change when this
-- file is applied again.
DROP FUNCTION IF EXISTS crablet_append_batch(
    int8[], bool[], text, int4[], int4[], int4, int4[], text[], bytea[], int8[], text[],
    int8[], int8[], int8);
DROP FUNCTION IF EXISTS crablet_append_batch(
    int8[], bool[], text, int4[], int4[], int4, int4[], text[], bytea[], text[], bytea[],
    int8[], text[], int8[], int8[], int8);
DROP FUNCTION IF EXISTS crablet_append_batch(
    int8[], bool[], text, text, int4[], int4[], int4, int4[], text[], bytea[], text[], bytea[],
    int8[], text[], int8[], int8[], int8);

CREATE OR REPLACE FUNCTION crablet_append_batch(
    p_lock_keys        int8[],
    p_lock_exclusive   bool[],
    p_probes           text,     -- JSON [{"i","a","k","tags","types"}], or NULL
    p_requires         text,     -- JSON [{"i","n","q","op","v"}], or NULL
    p_conflict_later   int4[],   -- append index (0-based) ...
    p_conflict_earlier int4[],   -- ... rejected if this earlier one is accepted
    p_appends          int4,     -- number of appends in the batch
    p_event_append     int4[],   -- per event: index of its append
    p_types            text[],
    p_data             bytea[],
    p_ids              text[],   -- per event: its id; NULL when no event has one
    p_metadata         bytea[],  -- per event: its metadata; NULL when none has
    p_tag_event        int8[],   -- per tag: 1-based event ordinal
    p_tags             text[],
    p_key_event        int8[],   -- per index key: 1-based event ordinal
    p_keys             int8[],
    p_sequence_key     int8
) RETURNS TABLE (
    append_index    int4,
    first_position  int8,
    last_position   int8,
    stored_id       text,
    stored_type     text,
    stored_tags     text[],
    stored_data     bytea,
    stored_metadata bytea,
    failed_requirement int4
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    accepted bool[] := array_fill(true, ARRAY[p_appends]);
    failed int4;
    n int4;
    found_event record;
    req record;
    recorded timestamptz;
BEGIN
    PERFORM CASE WHEN t.exclusive
                 THEN pg_advisory_xact_lock(t.key)
                 ELSE pg_advisory_xact_lock_shared(t.key)
            END
    FROM unnest(p_lock_keys, p_lock_exclusive) AS t(key, exclusive);

    IF p_ids IS NOT NULL THEN
        FOR found_event IN
            SELECT l.append, e.position, e.id, e.type, e.tags, e.data, e.metadata
            FROM unnest(p_event_append, p_ids) AS l(append, id)
            JOIN events e ON e.id = l.id
        LOOP
            accepted[found_event.append + 1] := false;
            append_index := found_event.append;
            first_position := found_event.position;
            last_position := found_event.position;
            stored_id := found_event.id;
            stored_type := found_event.type;
            stored_tags := found_event.tags;
            stored_data := found_event.data;
            stored_metadata := found_event.metadata;
            failed_requirement := NULL;
            RETURN NEXT;
        END LOOP;
        IF NOT (true = ANY (accepted)) THEN
            RETURN;
        END IF;
    END IF;

    IF p_probes IS NOT NULL THEN
        FOR failed IN
            SELECT DISTINCT p.i
            FROM jsonb_to_recordset(p_probes::jsonb)
                 AS p(i int4, a int8, k int8, tags text[], types text[])
            WHERE CASE
                -- The all-query: max() is a one-entry backward scan of the
                -- primary key, never a scan of the log.
                WHEN p.k IS NULL THEN (SELECT max(e.position) FROM events e) > p.a
                ELSE EXISTS (
                    SELECT 1
                    FROM event_keys ek
                    JOIN events e ON e.position = ek.position
                    WHERE ek.key = p.k
                      AND ek.position > p.a
                      AND e.tags @> p.tags
                      AND (cardinality(p.types) = 0 OR e.type = ANY (p.types)))
            END
        LOOP
            accepted[failed + 1] := false;
        END LOOP;
    END IF;

    -- Requirements of the appends still accepted, in batch order: the
    -- projector's state (crablet_reduce, in this statement's snapshot, taken
    -- with every lock held) compared with the value. A lane never batches an
    -- append with a requirement that could see an event of an earlier append
    -- of the batch, so the stored events are all a requirement needs.
    IF p_requires IS NOT NULL THEN
        FOR req IN
            SELECT (r->>'i')::int4 AS i, (r->>'n')::int4 AS n, r->'q' AS q, r->>'op' AS op,
                   r->'v' AS v
            FROM jsonb_array_elements(p_requires::jsonb) WITH ORDINALITY AS t(r, ord)
            ORDER BY t.ord
        LOOP
            IF accepted[req.i + 1]
               AND NOT crablet_compare(crablet_reduce(req.q), req.op, req.v) THEN
                accepted[req.i + 1] := false;
                append_index := req.i;
                first_position := NULL;
                last_position := NULL;
                stored_id := NULL;
                stored_type := NULL;
                stored_tags := NULL;
                stored_data := NULL;
                stored_metadata := NULL;
                failed_requirement := req.n;
                RETURN NEXT;
            END IF;
        END LOOP;
    END IF;

    FOR n IN 1 .. coalesce(array_length(p_conflict_later, 1), 0) LOOP
        IF accepted[p_conflict_earlier[n] + 1] THEN
            accepted[p_conflict_later[n] + 1] := false;
        END IF;
    END LOOP;

    IF NOT (true = ANY (accepted)) THEN
        RETURN;
    END IF;

    PERFORM pg_advisory_xact_lock(p_sequence_key);
    recorded := clock_timestamp();

    RETURN QUERY
    WITH new_events AS MATERIALIZED (
        -- Rows come in ordinality order, so positions follow batch order.
        -- A NULL p_ids or p_metadata unnests as NULLs for every event.
        SELECT nextval('events_position_seq') AS position, e.ord, e.append, e.type, e.data,
               e.id, e.metadata
        FROM unnest(p_event_append, p_types, p_data, p_ids, p_metadata)
             WITH ORDINALITY AS e(append, type, data, id, metadata, ord)
        WHERE accepted[e.append + 1]
    ),
    new_tags AS (
        SELECT t.event, array_agg(t.tag ORDER BY t.n) AS tags
        FROM unnest(p_tag_event, p_tags) WITH ORDINALITY AS t(event, tag, n)
        GROUP BY t.event
    ),
    inserted_keys AS (
        INSERT INTO event_keys (key, position)
        SELECT k.key, ne.position
        FROM unnest(p_key_event, p_keys) AS k(event, key)
        JOIN new_events ne ON ne.ord = k.event
    ),
    inserted_events AS (
        INSERT INTO events (position, type, tags, data, id, metadata, recorded_at)
        SELECT ne.position, ne.type, coalesce(nt.tags, '{}'::text[]), ne.data,
               ne.id, ne.metadata, recorded
        FROM new_events ne
        LEFT JOIN new_tags nt ON nt.event = ne.ord
    )
    SELECT ne.append::int4, min(ne.position), max(ne.position),
           NULL::text, NULL::text, NULL::text[], NULL::bytea, NULL::bytea, NULL::int4
    FROM new_events ne
    GROUP BY ne.append;
END;
$$;
