-- Messages that could not be routed, with the reason. `source` names the
-- unique origin (e.g. a Kafka topic/partition@offset), so a replay of the
-- same origin is stored once.
CREATE TABLE IF NOT EXISTS dead_letters (
    source      text        PRIMARY KEY,
    received_at timestamptz NOT NULL,
    reason      text        NOT NULL,
    error       text        NOT NULL,
    mqtt_topic  text        NULL,
    headers     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    payload     bytea       NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS dead_letters_received_at_idx ON dead_letters (received_at);
