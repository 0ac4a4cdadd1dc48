-- crablet_data_object: an event's data as a jsonb object, or NULL when it is
-- not one. `data` is bytea and holds whatever the client sent: not JSON, JSON
-- that is not an object, a NUL character (raw, or escaped as \u0000, which
-- jsonb cannot hold). The reducers of projections and requirements (see
-- migrations/007_reduce.sql) skip such events; one bad event never fails a
-- projection. A NUL byte is refused cheaply; anything else that does not
-- convert is caught (a subtransaction, entered only for events a reducer
-- reads the data of).
CREATE OR REPLACE FUNCTION crablet_data_object(d bytea) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
DECLARE
    v jsonb;
BEGIN
    IF position('\x00'::bytea IN d) > 0 THEN
        RETURN NULL;
    END IF;
    BEGIN
        v := convert_from(d, 'UTF8')::jsonb;
    EXCEPTION WHEN others THEN
        RETURN NULL;
    END;
    IF jsonb_typeof(v) = 'object' THEN
        RETURN v;
    END IF;
    RETURN NULL;
END;
$$;
