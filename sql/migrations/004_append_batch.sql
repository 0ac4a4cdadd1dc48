-- crablet_append_batch: one writer batch, decided and written in one call, so
-- a batch costs one round trip (the call is its own transaction).
--
-- Each statement of a VOLATILE function takes a fresh snapshot under READ
-- COMMITTED, so every check below sees every transaction that held a key
-- this batch has just locked.
--
-- 1. Take the batch's advisory locks, in the order given (ascending keys):
--    shared for the keys of the events written, exclusive for the keys the
--    conditions and requirements probe and for the keys of the events' ids.
-- 2. Look up the events' ids (one statement over the unique index
--    events_id): an append with any stored id is not accepted, and the
--    stored events come back to crablet, which tells a retry of the same
--    append (answered as a duplicate) from a reuse of ids (a conflict).
--    Check every condition probe against the stored events (one statement).
-- 3. Decide the appends in batch order, each against the store and the
--    earlier appends of the batch that are accepted, exactly as if each had
--    been committed alone before the next: an id written by an earlier
--    accepted append (crablet answers as for a stored one); the condition's
--    stored matches; an event of an earlier accepted append that matches the
--    condition and lies after its `after`; then each requirement, whose
--    projector's state is computed once per batch (continued from the state
--    crablet remembers, see migrations/007_reduce.sql) and then folded, in
--    batch order, with the matching events of the accepted appends.
-- 4. Take the sequencing lock, reserve one block of positions and insert the
--    events of the accepted appends, in batch order, with their index keys.
--    The lock is held until commit, so transactions commit in position order
--    (gap-free reading), and recorded_at, read from the clock once the lock
--    is held, follows position order too.
--
-- Positions inside the batch. An earlier append's events get positions above
-- every position committed before the batch's snapshot: a condition whose
-- `after` is at or below the head crablet knows (p_known_head), or below the
-- head of a snapshot taken after the locks, is certainly broken by a
-- matching earlier event. Only for an `after` beyond both (a client that read
-- through another process) are the positions needed: the sequencing lock and
-- the first position are then taken before the decisions, and the earlier
-- event's position compared exactly.
--
-- Requirements and the batch: a requirement's projector probes keys this
-- batch holds exclusive, so no other transaction can commit an event that
-- matches it until this one commits. Its final state (the stored events plus
-- the accepted ones of the batch) is therefore the state through the last
-- position this batch writes, and is returned for crablet to remember.
--
-- Arguments are parallel arrays, never JSON, except the rare projectors.
-- A list inside a list (an event's tags, a probe's tags and types) is sent
-- as an array literal ('{"a","b"}'), one per owner, cast where it is used:
-- every argument is read in one pass, whatever the size of the batch.
--
-- Returns a row, with `kind` saying what it is, only for what is not a plain
-- acceptance:
--   * 'written': first_position is the first position written. The accepted
--     appends' events have the positions that follow, consecutive, in batch
--     order (crablet counts them out); no row when nothing was written.
--   * 'stored_id': an event stored under an id of append append_index
--     (first_position is its position), one row per such event.
--   * 'batch_id': append append_index reuses an id of the earlier accepted
--     append `earlier` of this batch.
--   * 'condition': append append_index was rejected by its condition.
--   * 'requirement': append append_index was refused by its requirement
--     number `requirement`.
--   * 'budget': append append_index was refused for visiting more index
--     entries than its budget allows: in its condition's probe number
--     `probe` (0-based, in the batch), or in requirement number
--     `requirement` (crablet_reduce_all returned no state for it). Nothing
--     of it is written, and the appends after it are decided as if it had
--     not been in the batch.
--   * 'state': projector number `projector` has state `state` through
--     position first_position.
--
-- Cost. At one append per batch the call is most of an append's latency, and
-- what it costs is mostly executor set-up per statement, not data: so a batch
-- of one event is inserted with VALUES, a single probe is one EXISTS, the
-- accepted appends are not returned as rows, and the in-order loop of step 3
-- runs only for a batch with requirements, a reused id, or an in-batch match
-- whose `after` lies beyond the head crablet knows (otherwise the matches
-- alone are walked). Its
-- plans must be generic: crablet's sessions run with plan_cache_mode =
-- force_generic_plan (custom plans would re-plan these statements at every
-- call, for their array arguments make custom plans look cheaper).
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
        WHERE p.proname = 'crablet_append_batch' AND pg_function_is_visible(p.oid)
    LOOP
        EXECUTE format('DROP FUNCTION %s', f);
    END LOOP;
END;
$$;

CREATE FUNCTION crablet_append_batch(
    p_lock_keys        int8[],
    p_lock_exclusive   bool[],
    p_appends          int4,     -- number of appends in the batch
    p_append_events    int4[],   -- per append: its number of events
    p_after            int8[],   -- per append: its condition's after (0: none)
    p_probe_append     int4[],   -- per probe: index (0-based) of its append
    p_probe_key        int8[],   -- per probe: the key to scan; NULL scans all events
    p_probe_tags       text[],   -- per probe: its tags, an array literal
    p_probe_types      text[],   -- per probe: its types (none: any), an array literal
    p_probe_candidates text[],   -- per probe: NULL when exact, else the keys it may be
                                 -- driven by (an array literal; the rarest is scanned);
                                 -- NULL as a whole when every probe is exact
    p_probe_budget     int8[],   -- per probe: index entries it may visit (when not exact)
    p_pair_later       int4[],   -- per in-batch match, ordered by later: the append
    p_pair_earlier     int4[],   -- whose condition matches an event of this earlier one,
    p_pair_offset      int4[],   -- the last such event's place in it (0-based)
    p_pair_exact       bool,     -- some later append's `after` is beyond p_known_head
    p_id_later         int4[],   -- per in-batch id reuse, ordered by later: the append
    p_id_earlier       int4[],   -- that has an id of this earlier one
    p_projectors       text,     -- JSON [{"q","s","h"}] (see crablet_reduce), or NULL
    p_req_append       int4[],   -- per requirement, in batch order: its append,
    p_req_index        int4[],   -- its place in the append's `require`,
    p_req_projector    int4[],   -- its projector (0-based, in p_projectors),
    p_req_op           text[],
    p_req_value        text[],   -- JSON
    p_fold_projector   int4[],   -- per (projector, matching batch event), by event:
    p_fold_event       int4[],   -- the event's 1-based ordinal in the batch
    p_event_append     int4[],   -- per event: index of its append (non-decreasing)
    p_types            text[],
    p_data             bytea[],
    p_ids              text[],   -- per event: its id; NULL when no event has one
    p_metadata         bytea[],  -- per event: its metadata; NULL when none has
    p_tags             text[],   -- per event: its tags, an array literal
    p_key_event        int4[],   -- per index key: 1-based ordinal of its event
    p_keys             int8[],
    p_known_head       int8,     -- a position crablet saw committed
    p_sequence_key     int8
) RETURNS TABLE (
    kind               text,
    append_index       int4,
    first_position     int8,
    requirement        int4,
    projector          int4,
    earlier            int4,
    probe              int4,
    state              text,
    stored_id          text,
    stored_type        text,
    stored_tags        text[],
    stored_data        bytea,
    stored_metadata    bytea
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    accepted bool[] := array_fill(true, ARRAY[p_appends]);
    -- Per append: whether a stored event matched its condition (applied in
    -- batch order by step 3 when it runs).
    probe_failed bool[];
    -- Per append: a probe (0-based, in the batch) that visited its budget
    -- of index entries without finding a match.
    over_probe int4[];
    -- Probes (1-based) crowded under their first key.
    crowded int4[];
    found_probe record;
    verdict text;
    drive int8;
    pn int4;
    -- Step 3 in batch order, append by append, only when needed: otherwise
    -- every in-batch match is certain, and the matches alone are walked.
    ordered bool := p_pair_exact OR cardinality(p_id_later) > 0 OR p_projectors IS NOT NULL;
    failed int4;
    found_event record;
    -- Step 3: per append, the events of accepted appends before it.
    written_before int4[];
    running int4 := 0;
    event_end int4 := 0;
    states jsonb[];
    reducers text[];
    paths text[];
    maps jsonb[];
    head int8;
    a int4;
    j int4;
    cond_after int8;
    reused bool;
    ip int4 := 1;
    ii int4 := 1;
    ir int4 := 1;
    fi int4 := 1;
    n_pairs int4;
    n_ids int4;
    n_reqs int4;
    n_folds int4;
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
            kind := 'stored_id';
            append_index := found_event.append;
            first_position := found_event.position;
            stored_id := found_event.id;
            stored_type := found_event.type;
            stored_tags := found_event.tags;
            stored_data := found_event.data;
            stored_metadata := found_event.metadata;
            RETURN NEXT;
        END LOOP;
        first_position := NULL;
        stored_id := NULL;
        stored_type := NULL;
        stored_tags := NULL;
        stored_data := NULL;
        stored_metadata := NULL;
    END IF;

    -- The appends whose condition matched a stored event. One keyed probe
    -- (a single conditional append, the usual batch at low load) is one
    -- expression; several are one statement over all of them.
    --
    -- A probe that is not exact is first driven by its first key (an
    -- entity's tag, in the usual item of a tag and a type): a match among
    -- its first p_probe_budget entries after `after` is a hit; no match and
    -- more entries than that leave it 'crowded', and only then is it driven
    -- by its rarest key (crablet_rarest), one by one, below. One that still
    -- finds no match within its budget while more entries remain is over
    -- budget, and its append is refused as such unless another of its probes
    -- matched (its later crowded probes are not evaluated).
    IF cardinality(p_probe_append) = 1 AND p_probe_key[1] IS NOT NULL
       AND p_probe_candidates[1] IS NULL THEN
        IF accepted[p_probe_append[1] + 1] AND EXISTS (
            SELECT 1
            FROM event_keys ek
            JOIN events e ON e.position = ek.position
            WHERE ek.key = p_probe_key[1]
              AND ek.position > p_after[p_probe_append[1] + 1]
              AND crablet_matches(e.tags, e.type, p_probe_tags[1]::text[],
                                  p_probe_types[1]::text[]))
        THEN
            probe_failed[p_probe_append[1] + 1] := true;
        END IF;
    ELSIF cardinality(p_probe_append) = 1 AND p_probe_key[1] IS NOT NULL THEN
        -- One probe that is not exact (an item of a tag and a type): the
        -- first-key pass below, as one expression.
        IF accepted[p_probe_append[1] + 1] THEN
            SELECT CASE WHEN x.m THEN 'hit' ELSE 'crowded' END INTO verdict
            FROM (SELECT crablet_matches(e.tags, e.type, p_probe_tags[1]::text[],
                                         p_probe_types[1]::text[]) AS m, ek.n
                  FROM (SELECT ek.position, row_number() OVER (ORDER BY ek.position) AS n
                        FROM event_keys ek
                        WHERE ek.key = p_probe_key[1]
                          AND ek.position > p_after[p_probe_append[1] + 1]
                        ORDER BY ek.position
                        LIMIT p_probe_budget[1] + 1) ek
                  JOIN events e ON e.position = ek.position) x
            WHERE x.m OR x.n > p_probe_budget[1]
            LIMIT 1;
            IF verdict = 'hit' THEN
                probe_failed[p_probe_append[1] + 1] := true;
            ELSIF verdict = 'crowded' THEN
                crowded := ARRAY[1];
            END IF;
        END IF;
    ELSIF cardinality(p_probe_append) > 0 THEN
        FOR found_probe IN
            SELECT v.append, v.ord, v.verdict
            FROM (SELECT p.append, p.ord::int4 AS ord, CASE
                      -- The all-query: max() is a one-entry backward scan of
                      -- the primary key, never a scan of the log.
                      WHEN p.key IS NULL THEN
                          CASE WHEN (SELECT max(e.position) FROM events e)
                                    > p_after[p.append + 1] THEN 'hit' END
                      WHEN p.candidates IS NULL THEN
                          CASE WHEN EXISTS (
                              SELECT 1
                              FROM event_keys ek
                              JOIN events e ON e.position = ek.position
                              WHERE ek.key = p.key
                                AND ek.position > p_after[p.append + 1]
                                AND crablet_matches(e.tags, e.type, p.tags::text[],
                                                    p.types::text[]))
                          THEN 'hit' END
                      -- One ordered scan of at most budget + 1 entries,
                      -- ended by the first match ('hit') or by the entry
                      -- past the budget ('crowded').
                      ELSE (
                          SELECT CASE WHEN x.m THEN 'hit' ELSE 'crowded' END
                          FROM (SELECT crablet_matches(e.tags, e.type, p.tags::text[],
                                                       p.types::text[]) AS m, ek.n
                                FROM (SELECT ek.position,
                                             row_number() OVER (ORDER BY ek.position) AS n
                                      FROM event_keys ek
                                      WHERE ek.key = p.key
                                        AND ek.position > p_after[p.append + 1]
                                      ORDER BY ek.position
                                      LIMIT p.budget + 1) ek
                                JOIN events e ON e.position = ek.position) x
                          WHERE x.m OR x.n > p.budget
                          LIMIT 1)
                  END AS verdict
                  FROM unnest(p_probe_append, p_probe_key, p_probe_tags, p_probe_types,
                              p_probe_candidates, p_probe_budget)
                       WITH ORDINALITY AS p(append, key, tags, types, candidates, budget, ord)
                 ) v
            WHERE v.verdict IS NOT NULL
            ORDER BY v.ord
        LOOP
            IF found_probe.verdict = 'hit' THEN
                probe_failed[found_probe.append + 1] := true;
            ELSE
                crowded := crowded || found_probe.ord;
            END IF;
        END LOOP;
    END IF;
    FOREACH pn IN ARRAY coalesce(crowded, '{}') LOOP
        a := p_probe_append[pn];
        CONTINUE WHEN NOT accepted[a + 1] OR coalesce(probe_failed[a + 1], false)
                      OR over_probe[a + 1] IS NOT NULL;
        drive := crablet_rarest(p_probe_candidates[pn]::int8[], p_after[a + 1],
                                9223372036854775807, p_probe_budget[pn]);
        IF drive <> p_probe_key[pn] AND EXISTS (
            SELECT 1
            FROM (SELECT ek.position
                  FROM event_keys ek
                  WHERE ek.key = drive AND ek.position > p_after[a + 1]
                  ORDER BY ek.position
                  LIMIT p_probe_budget[pn]) ek
            JOIN events e ON e.position = ek.position
            WHERE crablet_matches(e.tags, e.type, p_probe_tags[pn]::text[],
                                  p_probe_types[pn]::text[]))
        THEN
            probe_failed[a + 1] := true;
        ELSIF drive = p_probe_key[pn] OR EXISTS (
            SELECT 1
            FROM event_keys ek
            WHERE ek.key = drive AND ek.position > p_after[a + 1]
            ORDER BY ek.position
            OFFSET p_probe_budget[pn]
            LIMIT 1)
        THEN
            over_probe[a + 1] := pn - 1;
        END IF;
    END LOOP;

    IF NOT ordered THEN
        -- The stored matches, then the in-batch ones, each certain (its
        -- `after` is at or below a committed position): walked in the order
        -- of the later append, an earlier one is decided when it is read.
        IF probe_failed IS NOT NULL OR over_probe IS NOT NULL THEN
            FOR a IN 0 .. p_appends - 1 LOOP
                IF probe_failed[a + 1] AND accepted[a + 1] THEN
                    accepted[a + 1] := false;
                    kind := 'condition';
                    append_index := a;
                    RETURN NEXT;
                ELSIF over_probe[a + 1] IS NOT NULL AND accepted[a + 1] THEN
                    accepted[a + 1] := false;
                    kind := 'budget';
                    append_index := a;
                    probe := over_probe[a + 1];
                    RETURN NEXT;
                    probe := NULL;
                END IF;
            END LOOP;
        END IF;
        FOR ip IN 1 .. coalesce(cardinality(p_pair_later), 0) LOOP
            IF accepted[p_pair_earlier[ip] + 1] AND accepted[p_pair_later[ip] + 1] THEN
                accepted[p_pair_later[ip] + 1] := false;
                kind := 'condition';
                append_index := p_pair_later[ip];
                RETURN NEXT;
            END IF;
        END LOOP;
    ELSE
        written_before := array_fill(0, ARRAY[p_appends]);
        n_pairs := coalesce(cardinality(p_pair_later), 0);
        n_ids := coalesce(cardinality(p_id_later), 0);
        n_reqs := coalesce(cardinality(p_req_append), 0);
        n_folds := coalesce(cardinality(p_fold_event), 0);
        IF p_projectors IS NOT NULL THEN
            -- Every projector's state and the head, in one snapshot taken
            -- with the locks held.
            SELECT crablet_reduce_all(p_projectors::jsonb),
                   array_agg(x.p->'q'->>'r' ORDER BY x.ord),
                   array_agg(ARRAY(SELECT jsonb_array_elements_text(
                                 coalesce(x.p->'q'->'path', '[]'::jsonb)))::text ORDER BY x.ord),
                   array_agg(x.p->'q'->'m' ORDER BY x.ord),
                   (SELECT coalesce(max(e.position), 0) FROM events e)
            INTO states, reducers, paths, maps, head
            FROM jsonb_array_elements(p_projectors::jsonb) WITH ORDINALITY AS x(p, ord);
        END IF;

        FOR a IN 0 .. p_appends - 1 LOOP
            -- An id of an earlier accepted append: as if stored.
            reused := false;
            WHILE ii <= n_ids AND p_id_later[ii] = a LOOP
                IF accepted[a + 1] AND accepted[p_id_earlier[ii] + 1] THEN
                    kind := 'batch_id';
                    append_index := a;
                    earlier := p_id_earlier[ii];
                    RETURN NEXT;
                    earlier := NULL;
                    reused := true;
                END IF;
                ii := ii + 1;
            END LOOP;
            IF reused THEN
                accepted[a + 1] := false;
            END IF;

            IF accepted[a + 1] AND probe_failed[a + 1] THEN
                accepted[a + 1] := false;
                kind := 'condition';
                append_index := a;
                RETURN NEXT;
            ELSIF accepted[a + 1] AND over_probe[a + 1] IS NOT NULL THEN
                accepted[a + 1] := false;
                kind := 'budget';
                append_index := a;
                probe := over_probe[a + 1];
                RETURN NEXT;
                probe := NULL;
            END IF;

            -- An event of an earlier accepted append that the condition
            -- matches, after its `after`.
            WHILE ip <= n_pairs AND p_pair_later[ip] = a LOOP
                IF accepted[a + 1] AND accepted[p_pair_earlier[ip] + 1] THEN
                    cond_after := p_after[a + 1];
                    IF cond_after > p_known_head AND head IS NULL THEN
                        SELECT coalesce(max(e.position), 0) INTO head FROM events e;
                    END IF;
                    IF cond_after > p_known_head AND cond_after > head AND first IS NULL THEN
                        PERFORM pg_advisory_xact_lock(p_sequence_key);
                        first := nextval('events_position_seq');
                    END IF;
                    IF cond_after <= p_known_head OR cond_after <= head
                       OR first + written_before[p_pair_earlier[ip] + 1] + p_pair_offset[ip]
                          > cond_after THEN
                        accepted[a + 1] := false;
                        kind := 'condition';
                        append_index := a;
                        RETURN NEXT;
                    END IF;
                END IF;
                ip := ip + 1;
            END LOOP;

            -- The requirements, against the states folded so far.
            WHILE ir <= n_reqs AND p_req_append[ir] = a LOOP
                IF accepted[a + 1] AND states[p_req_projector[ir] + 1] IS NULL THEN
                    accepted[a + 1] := false;
                    kind := 'budget';
                    append_index := a;
                    requirement := p_req_index[ir];
                    RETURN NEXT;
                    requirement := NULL;
                ELSIF accepted[a + 1] AND NOT coalesce(crablet_compare(states[p_req_projector[ir] + 1],
                                                                    p_req_op[ir],
                                                                    p_req_value[ir]::jsonb), false)
                THEN
                    accepted[a + 1] := false;
                    kind := 'requirement';
                    append_index := a;
                    requirement := p_req_index[ir];
                    RETURN NEXT;
                    requirement := NULL;
                END IF;
                ir := ir + 1;
            END LOOP;

            written_before[a + 1] := running;
            event_end := event_end + p_append_events[a + 1];
            IF accepted[a + 1] THEN
                running := running + p_append_events[a + 1];
            END IF;
            WHILE fi <= n_folds AND p_fold_event[fi] <= event_end LOOP
                j := p_fold_projector[fi] + 1;
                IF accepted[a + 1] AND states[j] IS NOT NULL THEN
                    IF reducers[j] = 'count' THEN
                        states[j] := to_jsonb((states[j] #>> '{}')::int8 + 1);
                    ELSE
                        states[j] := crablet_step(reducers[j], paths[j]::text[], maps[j],
                                                  states[j], p_types[p_fold_event[fi]],
                                                  p_data[p_fold_event[fi]]);
                    END IF;
                END IF;
                fi := fi + 1;
            END LOOP;
        END LOOP;
    END IF;
    append_index := NULL;

    IF NOT (false = ANY (accepted)) THEN
        written := cardinality(p_event_append);
    ELSIF NOT (true = ANY (accepted)) THEN
        written := 0;
    ELSE
        SELECT array_agg(CASE WHEN e.kept THEN e.n END ORDER BY e.ord), max(e.n)
        INTO slot, written
        FROM (SELECT e.ord, accepted[e.append + 1] AS kept,
                     count(*) FILTER (WHERE accepted[e.append + 1]) OVER (ORDER BY e.ord) AS n
              FROM unnest(p_event_append) WITH ORDINALITY AS e(append, ord)) AS e;
    END IF;

    IF written > 0 THEN
        IF first IS NULL THEN
            PERFORM pg_advisory_xact_lock(p_sequence_key);
            -- One block of positions: no other transaction draws from the
            -- sequence while the sequencing lock is held.
            first := nextval('events_position_seq');
        END IF;
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
    END IF;

    IF states IS NOT NULL THEN
        FOR j IN 1 .. cardinality(states) LOOP
            CONTINUE WHEN states[j] IS NULL;
            kind := 'state';
            projector := j - 1;
            state := states[j]::text;
            first_position := CASE WHEN written > 0 THEN first + written - 1 ELSE head END;
            RETURN NEXT;
        END LOOP;
        projector := NULL;
        state := NULL;
    END IF;

    IF written > 0 THEN
        kind := 'written';
        first_position := first;
        RETURN NEXT;
    END IF;
END;
$$;
