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
-- 4. Take the sequencing lock, reserve one block of positions and insert the
--    events of the accepted appends, in batch order, with their index keys.
--    The lock is held until commit, so transactions commit in position order
--    (gap-free reading), and recorded_at, read from the clock once the lock
--    is held, follows position order too.
--
-- Arguments are parallel arrays, never JSON, except the rare requirements.
-- A list inside a list (an event's tags, a probe's tags and types) is sent
-- as an array literal ('{"a","b"}'), one per owner, cast where it is used:
-- every argument is read in one pass, whatever the size of the batch.
--
-- Returns a row only for what is not a plain acceptance:
--   * append_index -1: first_position is the first position written. The
--     accepted appends' events have the positions that follow, consecutive,
--     in batch order (crablet counts them out); no row when nothing was
--     written.
--   * stored_id set: an event stored under an id of the append (first_position
--     is its position), one row per such event.
--   * failed_requirement set: the append was refused by that requirement.
--   * otherwise: the append was rejected by its condition.
--
-- Cost. At one append per batch the call is most of an append's latency, and
-- what it costs is mostly executor set-up per statement, not data: so a batch
-- of one event is inserted with VALUES, a single probe is one EXISTS, the
-- accepted appends are not returned as rows. Its plans must be generic:
-- crablet's sessions run with plan_cache_mode = force_generic_plan (custom
-- plans would re-plan these statements at every call, for their array
-- arguments make custom plans look cheaper).
--
-- Every earlier signature, and this one: dropped,
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
DROP FUNCTION IF EXISTS crablet_append_batch(
    int8[], bool[], int4[], int8[], int8[], text[], text[], text, int4[], int4[], int4, int4[],
    text[], bytea[], text[], bytea[], text[], int4[], int8[], int8);

CREATE OR REPLACE FUNCTION crablet_append_batch(
    p_lock_keys        int8[],
    p_lock_exclusive   bool[],
    p_probe_append     int4[],   -- per probe: index (0-based) of its append (none: no condition)
    p_probe_after      int8[],   -- per probe: the condition's after (0 when absent)
    p_probe_key        int8[],   -- per probe: the key to scan; NULL scans all events
    p_probe_tags       text[],   -- per probe: its tags, an array literal
    p_probe_types      text[],   -- per probe: its types (none: any), an array literal
    p_requires         text,     -- JSON [{"i","n","q","op","v"}], or NULL
    p_conflict_later   int4[],   -- append index (0-based) ...
    p_conflict_earlier int4[],   -- ... rejected if this earlier one is accepted
    p_appends          int4,     -- number of appends in the batch
    p_event_append     int4[],   -- per event: index of its append (non-decreasing)
    p_types            text[],
    p_data             bytea[],
    p_ids              text[],   -- per event: its id; NULL when no event has one
    p_metadata         bytea[],  -- per event: its metadata; NULL when none has
    p_tags             text[],   -- per event: its tags, an array literal
    p_key_event        int4[],   -- per index key: 1-based ordinal of its event
    p_keys             int8[],
    p_sequence_key     int8
) RETURNS TABLE (
    append_index       int4,
    first_position     int8,
    stored_id          text,
    stored_type        text,
    stored_tags        text[],
    stored_data        bytea,
    stored_metadata    bytea,
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
    -- Per event: its place among the events written (1-based), NULL if its
    -- append was rejected; NULL as a whole when every append is accepted.
    slot int4[];
    written int4;
    first int8;
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
            stored_id := found_event.id;
            stored_type := found_event.type;
            stored_tags := found_event.tags;
            stored_data := found_event.data;
            stored_metadata := found_event.metadata;
            RETURN NEXT;
        END LOOP;
        IF NOT (true = ANY (accepted)) THEN
            RETURN;
        END IF;
        first_position := NULL;
        stored_id := NULL;
        stored_type := NULL;
        stored_tags := NULL;
        stored_data := NULL;
        stored_metadata := NULL;
    END IF;

    -- The appends whose condition matched a stored event. One keyed probe
    -- (a single conditional append, the usual batch at low load) is one
    -- EXISTS; several are one statement over all of them.
    IF cardinality(p_probe_append) = 1 AND p_probe_key[1] IS NOT NULL THEN
        IF accepted[p_probe_append[1] + 1] AND EXISTS (
            SELECT 1
            FROM event_keys ek
            JOIN events e ON e.position = ek.position
            WHERE ek.key = p_probe_key[1]
              AND ek.position > p_probe_after[1]
              AND e.tags @> p_probe_tags[1]::text[]
              AND (p_probe_types[1] = '{}' OR e.type = ANY (p_probe_types[1]::text[])))
        THEN
            accepted[p_probe_append[1] + 1] := false;
            append_index := p_probe_append[1];
            RETURN NEXT;
        END IF;
    ELSIF cardinality(p_probe_append) > 0 THEN
        FOREACH failed IN ARRAY ARRAY(
            SELECT DISTINCT p.append
            FROM unnest(p_probe_append, p_probe_after, p_probe_key, p_probe_tags, p_probe_types)
                 AS p(append, after, key, tags, types)
            WHERE CASE
                -- The all-query: max() is a one-entry backward scan of the
                -- primary key, never a scan of the log.
                WHEN p.key IS NULL THEN (SELECT max(e.position) FROM events e) > p.after
                ELSE EXISTS (
                    SELECT 1
                    FROM event_keys ek
                    JOIN events e ON e.position = ek.position
                    WHERE ek.key = p.key
                      AND ek.position > p.after
                      AND e.tags @> p.tags::text[]
                      AND (p.types = '{}' OR e.type = ANY (p.types::text[])))
            END)
        LOOP
            IF accepted[failed + 1] THEN
                accepted[failed + 1] := false;
                append_index := failed;
                RETURN NEXT;
            END IF;
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
                failed_requirement := req.n;
                RETURN NEXT;
            END IF;
        END LOOP;
        failed_requirement := NULL;
    END IF;

    FOR n IN 1 .. coalesce(array_length(p_conflict_later, 1), 0) LOOP
        IF accepted[p_conflict_earlier[n] + 1] AND accepted[p_conflict_later[n] + 1] THEN
            accepted[p_conflict_later[n] + 1] := false;
            append_index := p_conflict_later[n];
            RETURN NEXT;
        END IF;
    END LOOP;

    IF false = ANY (accepted) THEN
        IF NOT (true = ANY (accepted)) THEN
            RETURN;
        END IF;
        SELECT array_agg(CASE WHEN e.kept THEN e.n END ORDER BY e.ord), max(e.n)
        INTO slot, written
        FROM (SELECT e.ord, accepted[e.append + 1] AS kept,
                     count(*) FILTER (WHERE accepted[e.append + 1]) OVER (ORDER BY e.ord) AS n
              FROM unnest(p_event_append) WITH ORDINALITY AS e(append, ord)) AS e;
    ELSE
        written := cardinality(p_event_append);
    END IF;

    PERFORM pg_advisory_xact_lock(p_sequence_key);
    -- One block of positions: no other transaction draws from the sequence
    -- while the sequencing lock is held.
    first := nextval('events_position_seq');
    IF written > 1 THEN
        PERFORM setval('events_position_seq', first + written - 1);
    END IF;
    recorded := clock_timestamp();

    IF slot IS NULL AND written = 1 THEN
        INSERT INTO events (position, type, tags, data, id, metadata, recorded_at)
        VALUES (first, p_types[1], p_tags[1]::text[], p_data[1], p_ids[1], p_metadata[1],
                recorded);
        INSERT INTO event_keys (key, position)
        SELECT unnest(p_keys), first;
    ELSE
        -- A NULL p_ids or p_metadata unnests as NULLs for every event.
        INSERT INTO events (position, type, tags, data, id, metadata, recorded_at)
        SELECT first - 1 + coalesce(slot[e.ord], e.ord), e.type, e.tags::text[], e.data, e.id,
               e.metadata, recorded
        FROM unnest(p_types, p_tags, p_data, p_ids, p_metadata)
             WITH ORDINALITY AS e(type, tags, data, id, metadata, ord)
        WHERE slot IS NULL OR slot[e.ord] IS NOT NULL;
        INSERT INTO event_keys (key, position)
        SELECT k.key, first - 1 + coalesce(slot[k.event], k.event)
        FROM unnest(p_key_event, p_keys) AS k(event, key)
        WHERE slot IS NULL OR slot[k.event] IS NOT NULL;
    END IF;

    append_index := -1;
    first_position := first;
    RETURN NEXT;
END;
$$;
