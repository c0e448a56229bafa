-- Messages that could not be routed, with the reason. `source` names the
-- unique origin (e.g. `journal:42`), so a replay of the same origin is
-- stored once. `headers` is a JSON object.
CREATE TABLE IF NOT EXISTS dead_letters (
    source      TEXT    PRIMARY KEY,
    received_at INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    error       TEXT    NOT NULL,
    mqtt_topic  TEXT    NULL,
    headers     TEXT    NOT NULL DEFAULT '{}',
    payload     BLOB    NOT NULL,
    stored_at   INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS dead_letters_received_at_idx ON dead_letters (received_at, source);
