-- The numeric payload fields of a record as (field, value) rows: top-level
-- numbers (`temp`) and numbers one object deep (`battery.voltage`); numbers
-- that do not fit a double precision give NULL. The one definition behind
-- telemetry_numeric and, on TimescaleDB, the telemetry_numeric_rollup
-- continuous aggregate. Only pg_catalog functions inside: TimescaleDB
-- refreshes aggregates with an empty search_path, and a plain SQL function
-- like this one is inlined by the planner (no per-row call).
CREATE OR REPLACE FUNCTION iotpipe_numeric_fields(p jsonb)
RETURNS TABLE (field text, value double precision)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT f.field, CASE WHEN f.n = 0 OR abs(f.n) BETWEEN 1e-307 AND 1e308 THEN f.n::double precision END
    FROM (
        SELECT top.key AS field, top.value::numeric AS n
        FROM pg_catalog.jsonb_each(CASE WHEN pg_catalog.jsonb_typeof(p) = 'object' THEN p ELSE '{}'::jsonb END) AS top
        WHERE pg_catalog.jsonb_typeof(top.value) = 'number'
        UNION ALL
        SELECT top.key || '.' || nested.key, nested.value::numeric
        FROM pg_catalog.jsonb_each(CASE WHEN pg_catalog.jsonb_typeof(p) = 'object' THEN p ELSE '{}'::jsonb END) AS top
        CROSS JOIN LATERAL pg_catalog.jsonb_each(
            CASE WHEN pg_catalog.jsonb_typeof(top.value) = 'object' THEN top.value ELSE '{}'::jsonb END
        ) AS nested
        WHERE pg_catalog.jsonb_typeof(nested.value) = 'number'
    ) AS f
$$;

CREATE OR REPLACE VIEW telemetry_numeric AS
SELECT t.time, t.tenant_id, t.project_id, t.device_id, f.field, f.value
FROM telemetry AS t
CROSS JOIN LATERAL iotpipe_numeric_fields(t.payload) AS f
WHERE f.value IS NOT NULL;
