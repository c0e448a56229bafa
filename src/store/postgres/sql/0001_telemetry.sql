-- Telemetry, partitioned by day on `time` (UTC). Day partitions
-- (telemetry_pYYYYMMDD) are created by iotpipe ahead of time and on demand;
-- telemetry_default catches rows of days that have none and is normally empty.
CREATE TABLE IF NOT EXISTS telemetry (
    time        timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    event_time  timestamptz NULL,
    tenant_id   text        NOT NULL,
    project_id  text        NOT NULL,
    device_id   text        NOT NULL,
    mqtt_topic  text        NOT NULL,
    id          uuid        NOT NULL,
    payload     jsonb       NULL,
    raw         bytea       NOT NULL,
    PRIMARY KEY (time, id)
) PARTITION BY RANGE (time);

CREATE TABLE IF NOT EXISTS telemetry_default PARTITION OF telemetry DEFAULT;

CREATE INDEX IF NOT EXISTS telemetry_device_time_idx
    ON telemetry (tenant_id, project_id, device_id, time DESC);
