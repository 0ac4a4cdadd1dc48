-- crablet_compare: a requirement's test, `state op value` (see
-- migrations/004_append_batch.sql). eq and ne compare JSON values (numbers
-- numerically, objects whatever their key order); lt, le, gt and ge compare
-- two numbers numerically or two strings by code point (the C collation,
-- which is UTF-8 byte order), and are false for any other pair of values
-- (a null state, a number against a string, ...).
CREATE OR REPLACE FUNCTION crablet_compare(state jsonb, op text, v jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT CASE
    WHEN op = 'eq' THEN state = v
    WHEN op = 'ne' THEN state <> v
    WHEN jsonb_typeof(state) = 'number' AND jsonb_typeof(v) = 'number' THEN
        CASE op
            WHEN 'lt' THEN (state #>> '{}')::numeric < (v #>> '{}')::numeric
            WHEN 'le' THEN (state #>> '{}')::numeric <= (v #>> '{}')::numeric
            WHEN 'gt' THEN (state #>> '{}')::numeric > (v #>> '{}')::numeric
            WHEN 'ge' THEN (state #>> '{}')::numeric >= (v #>> '{}')::numeric
        END
    WHEN jsonb_typeof(state) = 'string' AND jsonb_typeof(v) = 'string' THEN
        CASE op
            WHEN 'lt' THEN (state #>> '{}') COLLATE "C" < (v #>> '{}') COLLATE "C"
            WHEN 'le' THEN (state #>> '{}') COLLATE "C" <= (v #>> '{}') COLLATE "C"
            WHEN 'gt' THEN (state #>> '{}') COLLATE "C" > (v #>> '{}') COLLATE "C"
            WHEN 'ge' THEN (state #>> '{}') COLLATE "C" >= (v #>> '{}') COLLATE "C"
        END
    ELSE false
END
$$;
