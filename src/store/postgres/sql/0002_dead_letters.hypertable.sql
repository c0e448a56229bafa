-- Dead letters as a TimescaleDB hypertable (daily chunks on received_at), so
-- TimescaleDB's retention policy expires them like telemetry. Used instead of
-- 0002_dead_letters.sql on TimescaleDB. A hypertable's unique keys must hold
-- the time column: `(received_at, source)` still stores a replay of the same
-- origin once, since its received_at comes from the record (header or Kafka
-- timestamp) and is the same on every replay.
CREATE TABLE IF NOT EXISTS dead_letters (
    source      text        NOT NULL,
    received_at timestamptz NOT NULL,
    reason      text        NOT NULL,
    error       text        NOT NULL,
    mqtt_topic  text        NULL,
    headers     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    payload     bytea       NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (received_at, source)
);

SELECT create_hypertable('dead_letters', 'received_at', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);
