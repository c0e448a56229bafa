-- Telemetry as a TimescaleDB hypertable with one chunk per day. Used instead
-- of 0001_telemetry.sql when the timescaledb extension could be created.
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
);

SELECT create_hypertable('telemetry', 'time', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);

CREATE INDEX IF NOT EXISTS telemetry_device_time_idx
    ON telemetry (tenant_id, project_id, device_id, time DESC);
