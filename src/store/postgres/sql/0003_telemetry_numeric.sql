-- Numeric payload fields as rows, for Grafana panels that should not need
-- JSON in SQL: top-level numbers (`temp`) and numbers one object deep
-- (`battery.voltage`). Numbers that do not fit a double precision are left out.
CREATE OR REPLACE FUNCTION iotpipe_float8(v jsonb) RETURNS double precision
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE WHEN n = 0 OR abs(n) BETWEEN 1e-307 AND 1e308 THEN n::double precision END
    FROM (SELECT v::numeric AS n) AS x
$$;

CREATE OR REPLACE VIEW telemetry_numeric AS
SELECT t.time, t.tenant_id, t.project_id, t.device_id, f.field, f.value
FROM telemetry AS t
CROSS JOIN LATERAL (
    SELECT top.key AS field, iotpipe_float8(top.value) AS value
    FROM jsonb_each(CASE WHEN jsonb_typeof(t.payload) = 'object' THEN t.payload ELSE '{}'::jsonb END) AS top
    WHERE jsonb_typeof(top.value) = 'number'
    UNION ALL
    SELECT top.key || '.' || nested.key, iotpipe_float8(nested.value)
    FROM jsonb_each(CASE WHEN jsonb_typeof(t.payload) = 'object' THEN t.payload ELSE '{}'::jsonb END) AS top
    CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(top.value) = 'object' THEN top.value ELSE '{}'::jsonb END) AS nested
    WHERE jsonb_typeof(nested.value) = 'number'
) AS f
WHERE f.value IS NOT NULL;
