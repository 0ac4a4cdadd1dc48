-- crablet_reduce: one projector's state over the events its query matches,
-- computed in the database (nothing but the state leaves it). STABLE: every
-- statement runs in the snapshot of the calling statement, so the reducers of
-- one `crablet_project` call, or of one requirement check of a batch (taken
-- after the batch's locks), see the same events.
--
-- p: {"r": reducer, "p": probes [{"k","tags","types"}] or null for every
--     event, "path": pointer tokens, "l": distinct's cap, "m": status's map}.
-- Probes are the index probes of crablet's reads (dcb/footprint.rs): a range
-- scan of event_keys under one key, joined to events by primary key.
--
-- Costs (the plans are pinned to index probes, see the SET clauses): exists,
-- last, latest and status walk each probe backwards and stop
-- at the first hit (latest: the first event that has the field; status: the
-- first of a mapped type); count, sum and distinct visit every match.
-- `last` returns the position of the last match (crablet reads its columns).
CREATE OR REPLACE FUNCTION crablet_reduce(p jsonb) RETURNS jsonb
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
    reducer text := p->>'r';
    -- NULL (SQL) for the all-query: jsonb_to_recordset(NULL) is empty.
    probes jsonb := CASE WHEN jsonb_typeof(p->'p') = 'array' THEN p->'p' END;
    every boolean := jsonb_typeof(p->'p') IS DISTINCT FROM 'array';
    path text[] := ARRAY(SELECT jsonb_array_elements_text(coalesce(p->'path', '[]'::jsonb)));
    cap int4 := coalesce((p->>'l')::int4, 0);
    map jsonb := p->'m';
    mapped text[];
    pos int8;
    total numeric;
    result jsonb;
BEGIN
    IF reducer IN ('exists', 'last') THEN
        IF every THEN
            SELECT max(e.position) INTO pos FROM events e;
        ELSE
            SELECT max(m.position) INTO pos
            FROM jsonb_to_recordset(probes) AS q(k int8, tags text[], types text[])
            CROSS JOIN LATERAL (
                SELECT ek.position
                FROM event_keys ek
                JOIN events e ON e.position = ek.position
                WHERE ek.key = q.k
                  AND e.tags @> q.tags
                  AND (cardinality(q.types) = 0 OR e.type = ANY (q.types))
                ORDER BY ek.position DESC
                LIMIT 1) m;
        END IF;
        IF reducer = 'exists' THEN
            RETURN to_jsonb(pos IS NOT NULL);
        END IF;
        RETURN coalesce(to_jsonb(pos), 'null'::jsonb);
    ELSIF reducer = 'status' THEN
        mapped := ARRAY(SELECT jsonb_object_keys(map));
        IF every THEN
            SELECT map -> e.type INTO result
            FROM events e
            WHERE e.type = ANY (mapped)
            ORDER BY e.position DESC
            LIMIT 1;
        ELSE
            SELECT map -> m.type INTO result
            FROM jsonb_to_recordset(probes) AS q(k int8, tags text[], types text[])
            CROSS JOIN LATERAL (
                SELECT ek.position, e.type
                FROM event_keys ek
                JOIN events e ON e.position = ek.position
                WHERE ek.key = q.k
                  AND e.tags @> q.tags
                  AND (cardinality(q.types) = 0 OR e.type = ANY (q.types))
                  AND e.type = ANY (mapped)
                ORDER BY ek.position DESC
                LIMIT 1) m
            ORDER BY m.position DESC
            LIMIT 1;
        END IF;
        RETURN coalesce(result, 'null'::jsonb);
    ELSIF reducer = 'latest' THEN
        IF every THEN
            SELECT d.v INTO result
            FROM events e
            CROSS JOIN LATERAL (SELECT crablet_data_object(e.data) #> path AS v) d
            WHERE d.v IS NOT NULL
            ORDER BY e.position DESC
            LIMIT 1;
        ELSE
            SELECT m.v INTO result
            FROM jsonb_to_recordset(probes) AS q(k int8, tags text[], types text[])
            CROSS JOIN LATERAL (
                SELECT ek.position, d.v
                FROM event_keys ek
                JOIN events e ON e.position = ek.position
                CROSS JOIN LATERAL (SELECT crablet_data_object(e.data) #> path AS v) d
                WHERE ek.key = q.k
                  AND e.tags @> q.tags
                  AND (cardinality(q.types) = 0 OR e.type = ANY (q.types))
                  AND d.v IS NOT NULL
                ORDER BY ek.position DESC
                LIMIT 1) m
            ORDER BY m.position DESC
            LIMIT 1;
        END IF;
        RETURN coalesce(result, 'null'::jsonb);
    ELSIF reducer = 'count' THEN
        IF every THEN
            SELECT count(*) INTO pos FROM events;
        ELSE
            SELECT count(DISTINCT m.position) INTO pos
            FROM jsonb_to_recordset(probes) AS q(k int8, tags text[], types text[])
            CROSS JOIN LATERAL (
                SELECT ek.position
                FROM event_keys ek
                JOIN events e ON e.position = ek.position
                WHERE ek.key = q.k
                  AND e.tags @> q.tags
                  AND (cardinality(q.types) = 0 OR e.type = ANY (q.types))) m;
        END IF;
        RETURN to_jsonb(pos);
    ELSIF reducer = 'sum' THEN
        SELECT coalesce(sum((d.v #>> '{}')::numeric), 0) INTO total
        FROM (
            SELECT e.position, e.data FROM events e WHERE every
            UNION ALL
            SELECT DISTINCT ON (m.position) m.position, m.data
            FROM jsonb_to_recordset(probes) AS q(k int8, tags text[], types text[])
            CROSS JOIN LATERAL (
                SELECT ek.position, e.data
                FROM event_keys ek
                JOIN events e ON e.position = ek.position
                WHERE ek.key = q.k
                  AND e.tags @> q.tags
                  AND (cardinality(q.types) = 0 OR e.type = ANY (q.types))) m
        ) x
        CROSS JOIN LATERAL (SELECT crablet_data_object(x.data) #> path AS v) d
        WHERE jsonb_typeof(d.v) = 'number';
        RETURN to_jsonb(total);
    ELSIF reducer = 'distinct' THEN
        -- Values in order of first appearance; one more than the cap is
        -- looked for, to tell whether the cap was hit.
        WITH found AS (
            SELECT d.v, min(x.position) AS first
            FROM (
                SELECT e.position, e.data FROM events e WHERE every
                UNION ALL
                SELECT m.position, m.data
                FROM jsonb_to_recordset(probes) AS q(k int8, tags text[], types text[])
                CROSS JOIN LATERAL (
                    SELECT ek.position, e.data
                    FROM event_keys ek
                    JOIN events e ON e.position = ek.position
                    WHERE ek.key = q.k
                      AND e.tags @> q.tags
                      AND (cardinality(q.types) = 0 OR e.type = ANY (q.types))) m
            ) x
            CROSS JOIN LATERAL (SELECT crablet_data_object(x.data) #> path AS v) d
            WHERE d.v IS NOT NULL
            GROUP BY d.v
            ORDER BY first
            LIMIT cap + 1
        )
        SELECT jsonb_build_object(
                   'values', coalesce((SELECT jsonb_agg(t.v ORDER BY t.first)
                                       FROM (SELECT f.v, f.first FROM found f
                                             ORDER BY f.first LIMIT cap) t), '[]'::jsonb),
                   'truncated', (SELECT count(*) FROM found) > cap)
        INTO result;
        RETURN result;
    END IF;
    RAISE EXCEPTION 'crablet_reduce: unknown reducer %', reducer;
END;
$$;
