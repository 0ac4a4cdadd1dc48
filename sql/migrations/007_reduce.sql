-- The projector functions: which events a query matches, one projector's
-- state computed in the database (nothing but the state leaves it), and one
-- event folded into a state.
--
-- Every earlier signature of these functions is dropped by name first, so no
-- older overload remains whatever its arguments were.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
        FROM pg_proc p
        WHERE p.proname IN ('crablet_matches', 'crablet_rarest', 'crablet_driven',
                            'crablet_reduce', 'crablet_reduce_all', 'crablet_step')
          AND pg_function_is_visible(p.oid)
    LOOP
        EXECUTE format('DROP FUNCTION %s', f);
    END LOOP;
END;
$$;

-- crablet_matches: whether an event (its tags and type) matches one index
-- probe or query item (tags it must all carry; types of which it must have
-- one, any type when there are none). The one place this predicate is
-- written in SQL: a plain SQL expression, inlined into every statement that
-- calls it. crablet evaluates the same rule in Rust (dcb::QueryItem::matches)
-- for the events of a batch that are not stored yet.
CREATE FUNCTION crablet_matches(tags text[], type text, want_tags text[], want_types text[])
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT tags @> want_tags AND (cardinality(want_types) = 0 OR type = ANY (want_types))
$$;

-- crablet_rarest: of the keys a probe that is not exact may be driven by
-- (the keys of its tags, and of its type when it has one: every event it
-- matches is indexed under each of them, see dcb/footprint.rs), the one with
-- the fewest entries in after < position < before, so that an item costs its
-- rarest tag, not its first. Each key's entries are counted only up to a cap
-- that starts at 32 and shrinks to the fewest seen so far; only when every
-- key reaches it is it raised (8x), up to `most` + 1. Past that every key has
-- more than `most` entries, and the first is returned: the caller's budget
-- then decides. The cost is about the number of keys times the entries of
-- the rarest one (at most `most`), all index-only range scans.
CREATE FUNCTION crablet_rarest(keys int8[], after int8, before int8, most int8)
RETURNS int8
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
DECLARE
    cap int8 := least(32, most + 1);
    k int8;
    n int8;
    best int8;
BEGIN
    IF cardinality(keys) = 1 THEN
        RETURN keys[1];
    END IF;
    LOOP
        best := NULL;
        FOREACH k IN ARRAY keys LOOP
            SELECT count(*) INTO n
            FROM (SELECT 1 FROM event_keys ek
                  WHERE ek.key = k AND ek.position > after AND ek.position < before
                  LIMIT cap) c;
            IF n = 0 THEN
                RETURN k;
            ELSIF n < cap THEN
                cap := n;
                best := k;
            END IF;
        END LOOP;
        IF best IS NOT NULL OR cap > most THEN
            RETURN coalesce(best, keys[1]);
        END IF;
        cap := least(cap * 8, most + 1);
    END LOOP;
END;
$$;

-- crablet_driven: probes (JSON [{"k","tags","types","ks"}]) each driven by
-- its rarest key after `after` (crablet_rarest, cut at 16384 entries): "k"
-- replaced, "ks" dropped, so the statements below scan what they are given.
CREATE FUNCTION crablet_driven(probes jsonb, after int8) RETURNS jsonb
LANGUAGE sql STABLE
AS $$
SELECT coalesce(jsonb_agg(
           CASE WHEN p ? 'ks'
                THEN jsonb_build_object(
                         'k', crablet_rarest(ARRAY(SELECT jsonb_array_elements_text(p->'ks'))::int8[],
                                             after, 9223372036854775807, 16384),
                         'tags', p->'tags', 'types', p->'types')
                ELSE p
           END ORDER BY ord), '[]'::jsonb)
FROM jsonb_array_elements(probes) WITH ORDINALITY AS x(p, ord)
$$;

-- crablet_reduce: one projector's state over the events its query matches,
-- continued from a state crablet remembers. STABLE: every statement runs in
-- the snapshot of the calling statement, so the reducers of one
-- `crablet_project` call, or of one batch's requirement check (taken after
-- the batch's locks), see the same events.
--
-- q: {"r": reducer, "p": probes [{"k","tags","types"}] or null for every
--    event, "path": pointer tokens, "l": distinct's cap, "m": status's map}.
-- s, h: a state of this projector over the events through position h (s NULL
--    and h 0: none). Only events after h are visited; s is continued with
--    them. Commits happen in position order, so no event at or below h can
--    appear after s was computed: a remembered state is a prefix of the log,
--    never a guess (crablet keeps them, see src/store/states.rs). The caller
--    (crablet_reduce_all) has checked that the store still holds it.
-- Probes are the index probes of crablet's reads (dcb/footprint.rs): a range
-- scan of event_keys under one key and after h, joined to events by primary
-- key.
--
-- Costs (the plans are pinned to index probes, see the SET clauses): exists,
-- last, latest and status walk each probe backwards from the head and stop
-- at the first hit or at h; count, sum and distinct visit every match after
-- h. `last` returns the position of the last match (crablet reads its
-- columns).
CREATE FUNCTION crablet_reduce(q jsonb, s jsonb, h int8) RETURNS jsonb
LANGUAGE plpgsql STABLE
-- Index probes only: the statements below run with generic plans, whose
-- estimate of the rows under one key is the average over all keys; with few
-- distinct keys that estimate makes hash joins over the whole log look
-- cheaper than probing the key's entries.
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    reducer text := q->>'r';
    -- NULL (SQL) for the all-query: jsonb_to_recordset(NULL) is empty.
    probes jsonb := CASE WHEN jsonb_typeof(q->'p') = 'array'
                         THEN CASE WHEN q->'p' @? '$[*].ks' THEN crablet_driven(q->'p', coalesce(h, 0))
                                   ELSE q->'p' END END;
    every boolean := jsonb_typeof(q->'p') IS DISTINCT FROM 'array';
    path text[] := ARRAY(SELECT jsonb_array_elements_text(coalesce(q->'path', '[]'::jsonb)));
    cap int4 := coalesce((q->>'l')::int4, 0);
    map jsonb := q->'m';
    since int8 := coalesce(h, 0);
    mapped text[];
    pos int8;
    total numeric;
    known jsonb;
    result jsonb;
BEGIN
    IF reducer IN ('exists', 'last') THEN
        IF every THEN
            SELECT max(e.position) INTO pos FROM events e WHERE e.position > since;
        ELSE
            SELECT max(m.position) INTO pos
            FROM jsonb_to_recordset(probes) AS p(k int8, tags text[], types text[])
            CROSS JOIN LATERAL (
                SELECT ek.position
                FROM event_keys ek
                JOIN events e ON e.position = ek.position
                WHERE ek.key = p.k
                  AND ek.position > since
                  AND crablet_matches(e.tags, e.type, p.tags, p.types)
                ORDER BY ek.position DESC
                LIMIT 1) m;
        END IF;
        IF reducer = 'exists' THEN
            RETURN to_jsonb(pos IS NOT NULL OR coalesce(s = 'true'::jsonb, false));
        END IF;
        RETURN coalesce(to_jsonb(pos), s, 'null'::jsonb);
    ELSIF reducer = 'status' THEN
        mapped := ARRAY(SELECT jsonb_object_keys(map));
        IF every THEN
            SELECT map -> e.type INTO result
            FROM events e
            WHERE e.position > since AND e.type = ANY (mapped)
            ORDER BY e.position DESC
            LIMIT 1;
        ELSE
            SELECT map -> m.type INTO result
            FROM jsonb_to_recordset(probes) AS p(k int8, tags text[], types text[])
            CROSS JOIN LATERAL (
                SELECT ek.position, e.type
                FROM event_keys ek
                JOIN events e ON e.position = ek.position
                WHERE ek.key = p.k
                  AND ek.position > since
                  AND crablet_matches(e.tags, e.type, p.tags, p.types)
                  AND e.type = ANY (mapped)
                ORDER BY ek.position DESC
                LIMIT 1) m
            ORDER BY m.position DESC
            LIMIT 1;
        END IF;
        RETURN coalesce(result, s, 'null'::jsonb);
    ELSIF reducer = 'latest' THEN
        IF every THEN
            SELECT d.v INTO result
            FROM events e
            CROSS JOIN LATERAL (SELECT crablet_data_object(e.data) #> path AS v) d
            WHERE e.position > since AND d.v IS NOT NULL
            ORDER BY e.position DESC
            LIMIT 1;
        ELSE
            SELECT m.v INTO result
            FROM jsonb_to_recordset(probes) AS p(k int8, tags text[], types text[])
            CROSS JOIN LATERAL (
                SELECT ek.position, d.v
                FROM event_keys ek
                JOIN events e ON e.position = ek.position
                CROSS JOIN LATERAL (SELECT crablet_data_object(e.data) #> path AS v) d
                WHERE ek.key = p.k
                  AND ek.position > since
                  AND crablet_matches(e.tags, e.type, p.tags, p.types)
                  AND d.v IS NOT NULL
                ORDER BY ek.position DESC
                LIMIT 1) m
            ORDER BY m.position DESC
            LIMIT 1;
        END IF;
        RETURN coalesce(result, s, 'null'::jsonb);
    ELSIF reducer = 'count' THEN
        IF every THEN
            SELECT count(*) INTO pos FROM events e WHERE e.position > since;
        ELSE
            SELECT count(DISTINCT m.position) INTO pos
            FROM jsonb_to_recordset(probes) AS p(k int8, tags text[], types text[])
            CROSS JOIN LATERAL (
                SELECT ek.position
                FROM event_keys ek
                JOIN events e ON e.position = ek.position
                WHERE ek.key = p.k
                  AND ek.position > since
                  AND crablet_matches(e.tags, e.type, p.tags, p.types)) m;
        END IF;
        RETURN to_jsonb(pos + coalesce((s #>> '{}')::int8, 0));
    ELSIF reducer = 'sum' THEN
        SELECT coalesce(sum((d.v #>> '{}')::numeric), 0) INTO total
        FROM (
            SELECT e.position, e.data FROM events e WHERE every AND e.position > since
            UNION ALL
            SELECT DISTINCT ON (m.position) m.position, m.data
            FROM jsonb_to_recordset(probes) AS p(k int8, tags text[], types text[])
            CROSS JOIN LATERAL (
                SELECT ek.position, e.data
                FROM event_keys ek
                JOIN events e ON e.position = ek.position
                WHERE ek.key = p.k
                  AND ek.position > since
                  AND crablet_matches(e.tags, e.type, p.tags, p.types)) m
        ) x
        CROSS JOIN LATERAL (SELECT crablet_data_object(x.data) #> path AS v) d
        WHERE jsonb_typeof(d.v) = 'number';
        RETURN to_jsonb(total + coalesce((s #>> '{}')::numeric, 0));
    ELSIF reducer = 'distinct' THEN
        -- Values in order of first appearance; one more than the cap is
        -- looked for, to tell whether the cap was hit. A remembered state
        -- that was cut already stays as it is: later values come after.
        known := coalesce(s->'values', '[]'::jsonb);
        IF coalesce((s->>'truncated')::boolean, false) THEN
            RETURN s;
        END IF;
        WITH found AS (
            SELECT d.v, min(x.position) AS first
            FROM (
                SELECT e.position, e.data FROM events e WHERE every AND e.position > since
                UNION ALL
                SELECT m.position, m.data
                FROM jsonb_to_recordset(probes) AS p(k int8, tags text[], types text[])
                CROSS JOIN LATERAL (
                    SELECT ek.position, e.data
                    FROM event_keys ek
                    JOIN events e ON e.position = ek.position
                    WHERE ek.key = p.k
                      AND ek.position > since
                      AND crablet_matches(e.tags, e.type, p.tags, p.types)) m
            ) x
            CROSS JOIN LATERAL (SELECT crablet_data_object(x.data) #> path AS v) d
            WHERE d.v IS NOT NULL
              AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(known) k WHERE k = d.v)
            GROUP BY d.v
            ORDER BY first
            LIMIT cap + 1 - jsonb_array_length(known)
        ), added AS (
            SELECT f.v, f.first FROM found f ORDER BY f.first
            LIMIT cap - jsonb_array_length(known)
        )
        SELECT jsonb_build_object(
                   'values', known || coalesce((SELECT jsonb_agg(a.v ORDER BY a.first)
                                                FROM added a), '[]'::jsonb),
                   'truncated', jsonb_array_length(known) + (SELECT count(*) FROM found) > cap)
        INTO result;
        RETURN result;
    END IF;
    RAISE EXCEPTION 'crablet_reduce: unknown reducer %', reducer;
END;
$$;

-- crablet_reduce_all: the states of several projectors, in one statement
-- (one snapshot), in the order given: what `POST /project` and a batch's
-- requirements evaluate. p: JSON array of {"q": projector, "s": remembered
-- state, "h": its position, "b": budget} (see crablet_reduce; "b" only for
-- requirements).
--
-- A remembered state is used only while the store still holds an event at or
-- below its position: a store emptied since (go-crablet's cleanup deletes
-- every event; positions are never reused) holds none, and the state is then
-- computed afresh. The lowest position is read once for all projectors.
--
-- Budget: with "b", a projector whose evaluation would visit more than b
-- index entries after h (the entries of its probes' driving keys, or the
-- events of the all-query) gets a NULL state instead, found by counting at
-- most b + 1 entries (index-only), so a requirement costs the writer at most
-- its budget. `exists` and `last` over exact probes stop at their first
-- entry and are never over budget.
--
-- Probes that are not exact are driven by their rarest key (crablet_driven).
-- `count` and `exists` over index probes, what requirements mostly are, run
-- as subqueries of this one statement (no function call, no statement of
-- their own per projector); every other reducer, and the all-query, through
-- crablet_reduce.
CREATE FUNCTION crablet_reduce_all(p jsonb) RETURNS jsonb[]
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    lowest int8;
    result jsonb[];
BEGIN
    SELECT min(e.position) INTO lowest FROM events e;
    SELECT array_agg(
               CASE
                   WHEN x.b IS NOT NULL AND NOT (x.exact AND x.r IN ('exists', 'last'))
                        AND x.b < CASE
                            WHEN x.keyed THEN (
                                SELECT count(*)
                                FROM (SELECT 1
                                      FROM jsonb_to_recordset(x.p) AS pr(k int8)
                                      CROSS JOIN LATERAL (
                                          SELECT 1 FROM event_keys ek
                                          WHERE ek.key = pr.k AND ek.position > x.h
                                          LIMIT x.b + 1) c
                                      LIMIT x.b + 1) v)
                            ELSE (
                                SELECT count(*)
                                FROM (SELECT 1 FROM events e WHERE e.position > x.h
                                      LIMIT x.b + 1) v)
                            END
                       THEN NULL
                   -- One probe: its key's entries are distinct positions,
                   -- so they are counted without a sort.
                   WHEN x.r = 'count' AND x.keyed AND jsonb_array_length(x.p) = 1 THEN
                       to_jsonb(coalesce((x.s #>> '{}')::int8, 0) + (
                           SELECT coalesce(sum(c.n), 0)::int8
                           FROM jsonb_to_recordset(x.p)
                                AS pr(k int8, tags text[], types text[])
                           CROSS JOIN LATERAL (
                               SELECT count(*) AS n
                               FROM event_keys ek
                               JOIN events e ON e.position = ek.position
                               WHERE ek.key = pr.k
                                 AND ek.position > x.h
                                 AND crablet_matches(e.tags, e.type, pr.tags, pr.types)) c))
                   WHEN x.r = 'count' AND x.keyed THEN
                       to_jsonb(coalesce((x.s #>> '{}')::int8, 0) + (
                           SELECT count(DISTINCT m.position)
                           FROM jsonb_to_recordset(x.p)
                                AS pr(k int8, tags text[], types text[])
                           CROSS JOIN LATERAL (
                               SELECT ek.position
                               FROM event_keys ek
                               JOIN events e ON e.position = ek.position
                               WHERE ek.key = pr.k
                                 AND ek.position > x.h
                                 AND crablet_matches(e.tags, e.type, pr.tags, pr.types)) m))
                   WHEN x.r = 'exists' AND x.keyed THEN
                       to_jsonb(coalesce(x.s = 'true'::jsonb, false) OR EXISTS (
                           SELECT 1
                           FROM jsonb_to_recordset(x.p)
                                AS pr(k int8, tags text[], types text[])
                           CROSS JOIN LATERAL (
                               SELECT 1
                               FROM event_keys ek
                               JOIN events e ON e.position = ek.position
                               WHERE ek.key = pr.k
                                 AND ek.position > x.h
                                 AND crablet_matches(e.tags, e.type, pr.tags, pr.types)
                               LIMIT 1) m))
                   WHEN x.keyed THEN crablet_reduce(jsonb_set(x.q, '{p}', x.p), x.s, x.h)
                   ELSE crablet_reduce(x.q, x.s, x.h)
               END
               ORDER BY x.ord)
    INTO result
    FROM (SELECT w.*,
                 CASE WHEN w.keyed AND NOT w.exact THEN crablet_driven(w.q->'p', w.h)
                      ELSE w.q->'p' END AS p
          FROM (SELECT y.ord, y.q, y.q->>'r' AS r, jsonb_typeof(y.q->'p') = 'array' AS keyed,
                       NOT coalesce(y.q->'p' @? '$[*].ks', false) AS exact, y.b,
                       CASE WHEN y.kept THEN y.s END AS s,
                       CASE WHEN y.kept THEN y.h ELSE 0 END AS h
                FROM (SELECT z.ord, z.value->'q' AS q, z.value->'s' AS s,
                             (z.value->>'b')::int8 AS b,
                             coalesce((z.value->>'h')::int8, 0) AS h,
                             coalesce((z.value->>'h')::int8, 0) > 0 AND lowest IS NOT NULL
                                 AND lowest <= (z.value->>'h')::int8 AS kept
                      FROM jsonb_array_elements(p) WITH ORDINALITY AS z(value, ord)) y) w) x;
    RETURN result;
END;
$$;

-- crablet_step: a requirement's state after one more matching event, for the
-- events of a batch that are not stored yet (see
-- migrations/004_append_batch.sql): what crablet_reduce would compute with
-- the event appended. Only the reducers a requirement may use.
CREATE FUNCTION crablet_step(reducer text, path text[], map jsonb, state jsonb,
                             type text, data bytea)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    v jsonb;
BEGIN
    CASE reducer
        WHEN 'count' THEN
            RETURN to_jsonb((state #>> '{}')::int8 + 1);
        WHEN 'exists' THEN
            RETURN 'true'::jsonb;
        WHEN 'status' THEN
            RETURN coalesce(map -> type, state);
        WHEN 'sum' THEN
            v := crablet_data_object(data) #> path;
            IF jsonb_typeof(v) = 'number' THEN
                RETURN to_jsonb((state #>> '{}')::numeric + (v #>> '{}')::numeric);
            END IF;
            RETURN state;
        WHEN 'latest' THEN
            RETURN coalesce(crablet_data_object(data) #> path, state);
        ELSE
            RAISE EXCEPTION 'crablet_step: reducer % cannot be required', reducer;
    END CASE;
END;
$$;
