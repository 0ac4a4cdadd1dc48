-- crablet_project: the states of several projectors (POST /project) and the
-- head position they were computed at, from one snapshot: the function is
-- STABLE, so its statements and those of crablet_reduce (see
-- migrations/007_reduce.sql) all read the snapshot of the one statement
-- that calls it. The head is read as GET /head reads it, the highest
-- committed position; since commits happen in position order, nothing at or
-- below it can appear later (gap-free reading), so a decision taken on these
-- states can be made safe with the condition "no event matching the
-- projectors' queries after head".
--
-- p_projectors: JSON array, in request order, of {"q": the projector as
-- crablet_reduce takes it, "s": a remembered state, "h": the position it was
-- folded through} ("s" absent and "h" 0 when crablet remembers none).
-- Each state is valid through the head returned beside it, which is what
-- crablet remembers for the next call.
-- Returns first a row with projector -1 and the head as position; then one
-- row per projector, in order: its state as JSON text, or for `last` the
-- event's columns (state NULL), or no event: state 'null'.
CREATE OR REPLACE FUNCTION crablet_project(p_projectors text)
RETURNS TABLE (
    event_position    int8,
    event_type        text,
    event_tags        text[],
    event_data        bytea,
    event_id          text,
    event_metadata    bytea,
    event_recorded_at timestamptz,
    projector         int4,
    state             text
)
LANGUAGE plpgsql STABLE
AS $$
#variable_conflict use_column
DECLARE
    spec record;
    states jsonb[] := crablet_reduce_all(p_projectors::jsonb);
    result jsonb;
BEGIN
    RETURN QUERY
    SELECT coalesce(max(e.position), 0), NULL::text, NULL::text[], NULL::bytea, NULL::text,
           NULL::bytea, NULL::timestamptz, -1, NULL::text
    FROM events e;
    FOR spec IN
        SELECT s.value->'q'->>'r' AS r, s.ord::int4 AS ord
        FROM jsonb_array_elements(p_projectors::jsonb) WITH ORDINALITY AS s(value, ord)
        ORDER BY s.ord
    LOOP
        result := states[spec.ord];
        IF spec.r = 'last' AND jsonb_typeof(result) = 'number' THEN
            RETURN QUERY
            SELECT e.position, e.type, e.tags, e.data, e.id, e.metadata, e.recorded_at,
                   spec.ord - 1, NULL::text
            FROM events e
            WHERE e.position = (result #>> '{}')::int8;
        ELSE
            RETURN QUERY
            SELECT NULL::int8, NULL::text, NULL::text[], NULL::bytea, NULL::text, NULL::bytea,
                   NULL::timestamptz, spec.ord - 1, result::text;
        END IF;
    END LOOP;
END;
$$;
