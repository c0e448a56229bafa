-- One row per device that has rows in `telemetry`: how many, and the latest
-- `received_at`. Kept up to date in the transactions that insert and expire
-- rows, so the dashboard's tenant, project and device lists read this small
-- table instead of counting `telemetry`.
CREATE TABLE IF NOT EXISTS telemetry_devices (
    tenant_id  TEXT    NOT NULL,
    project_id TEXT    NOT NULL,
    device_id  TEXT    NOT NULL,
    messages   INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, project_id, device_id)
) WITHOUT ROWID;

INSERT OR REPLACE INTO telemetry_devices (tenant_id, project_id, device_id, messages, last_seen)
SELECT tenant_id, project_id, device_id, count(*), max(received_at) FROM telemetry GROUP BY 1, 2, 3;
