-- crablet_import: events of an exported log written at their own positions,
-- with their own ids, metadata and recorded_at (POST /admin/import), in one
-- call that is its own transaction.
--
-- 1. Take the import's advisory locks, in the order given (ascending keys,
--    as a batch append takes its own): exclusive for the keys of the events'
--    tags, types and ids, the global key shared (exclusive when the
--    footprint escalated). A conditional append or a requirement probing one
--    of these keys holds it exclusive: it either commits before the import
--    takes its locks, or decides after the import committed, seeing all of
--    its events; never some of them.
-- 2. Take the sequencing lock, as a batch append does before it draws its
--    positions: held until commit, so commits stay in position order
--    (gap-free reading) and no append draws a position meanwhile.
-- 3. Refuse, writing nothing, unless the first position lies beyond every
--    position the store has used: the highest stored, and the last one
--    events_position_seq handed out (a clear keeps the sequence, and a
--    position a reader or subscriber may have seen must never be filled in
--    later). Row 'taken': last_position is that position, stored_head the
--    highest stored.
-- 4. Refuse, writing nothing, when an id of the import is already stored:
--    one row 'stored_id' per such event (event_index, 0-based; stored_id).
-- 5. Insert the events and their index keys, and set the sequence to the
--    last position written, so the next append gets a position after it.
--    Step 3 makes this a raise, never a lowering. Row 'written':
--    last_position is the last position written.
--
-- recorded_at is sent as RFC 3339 text in UTC with at most microseconds and
-- read by the timestamptz cast: exact, whatever the session's time zone.
--
-- Every earlier signature is dropped by name, so that no older overload
-- remains and the return type can change when this file is applied again.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
        FROM pg_proc p
        WHERE p.proname = 'crablet_import' AND pg_function_is_visible(p.oid)
    LOOP
        EXECUTE format('DROP FUNCTION %s', f);
    END LOOP;
END;
$$;

CREATE FUNCTION crablet_import(
    p_lock_keys      int8[],
    p_lock_exclusive bool[],
    p_positions      int8[],   -- per event, strictly increasing
    p_types          text[],
    p_tags           text[],   -- per event: its tags, an array literal
    p_data           bytea[],
    p_ids            text[],   -- per event: its id; NULL when no event has one
    p_metadata       bytea[],  -- per event: its metadata; NULL when none has
    p_recorded_at    text[],   -- per event: RFC 3339, UTC
    p_key_event      int4[],   -- per index key: 1-based ordinal of its event
    p_keys           int8[],
    p_sequence_key   int8
) RETURNS TABLE (
    kind             text,
    event_index      int4,
    stored_id        text,
    last_position    int8,
    stored_head      int8
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    used int8;
    found_id record;
BEGIN
    PERFORM CASE WHEN t.exclusive
                 THEN pg_advisory_xact_lock(t.key)
                 ELSE pg_advisory_xact_lock_shared(t.key)
            END
    FROM unnest(p_lock_keys, p_lock_exclusive) AS t(key, exclusive);
    PERFORM pg_advisory_xact_lock(p_sequence_key);

    -- max() is a one-entry backward scan of the primary key.
    SELECT coalesce(max(e.position), 0) INTO stored_head FROM events e;
    SELECT greatest(stored_head,
                    CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END)
    INTO used
    FROM events_position_seq s;
    IF p_positions[1] <= used THEN
        kind := 'taken';
        last_position := used;
        RETURN NEXT;
        RETURN;
    END IF;

    IF p_ids IS NOT NULL THEN
        FOR found_id IN
            SELECT (l.ord - 1)::int4 AS event_index, l.id
            FROM unnest(p_ids) WITH ORDINALITY AS l(id, ord)
            JOIN events e ON e.id = l.id
            ORDER BY l.ord
        LOOP
            kind := 'stored_id';
            event_index := found_id.event_index;
            stored_id := found_id.id;
            RETURN NEXT;
        END LOOP;
        IF kind IS NOT NULL THEN
            RETURN;
        END IF;
    END IF;

    -- A NULL p_ids or p_metadata unnests as NULLs for every event.
    INSERT INTO events (position, type, tags, data, id, metadata, recorded_at)
    SELECT e.position, e.type, e.tags::text[], e.data, e.id, e.metadata,
           e.recorded_at::timestamptz
    FROM unnest(p_positions, p_types, p_tags, p_data, p_ids, p_metadata, p_recorded_at)
         AS e(position, type, tags, data, id, metadata, recorded_at);
    INSERT INTO event_keys (key, position)
    SELECT k.key, p_positions[k.event]
    FROM unnest(p_key_event, p_keys) AS k(event, key);
    PERFORM setval('events_position_seq', p_positions[cardinality(p_positions)]);

    kind := 'written';
    last_position := p_positions[cardinality(p_positions)];
    RETURN NEXT;
END;
$$;
