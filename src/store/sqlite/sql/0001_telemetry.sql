-- One row per message. Times are epoch milliseconds (UTC); `time` follows
-- the time rule (src/store/time_rule.rs). `(time, id)` is the key that makes
-- a replay harmless. A rowid table: rows are a few hundred bytes, too large
-- for WITHOUT ROWID to pay off, and new rows append at the end of the table.
-- `payload` is computed from `raw` (no second copy of the bytes): the JSON
-- text when the bytes are JSON (`is_json`, checked by iotpipe), else NULL.
CREATE TABLE IF NOT EXISTS telemetry (
    time        INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    event_time  INTEGER NULL,
    tenant_id   TEXT    NOT NULL,
    project_id  TEXT    NOT NULL,
    device_id   TEXT    NOT NULL,
    mqtt_topic  TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    raw         BLOB    NOT NULL,
    is_json     INTEGER NOT NULL,
    payload     TEXT    GENERATED ALWAYS AS (CASE WHEN is_json THEN CAST(raw AS TEXT) END) VIRTUAL
);

CREATE UNIQUE INDEX IF NOT EXISTS telemetry_time_id_key ON telemetry (time, id);

CREATE INDEX IF NOT EXISTS telemetry_device_time_idx ON telemetry (tenant_id, project_id, device_id, time DESC);
