-- A record id names one message. (time, id) alone lets a message whose
-- event time was outside the retention window (filed under its receive
-- time) be stored twice when the broker redelivers it with a new receive
-- time; a unique id catches that copy too. Earlier copies are removed first.
DELETE FROM telemetry WHERE rowid NOT IN (SELECT min(rowid) FROM telemetry GROUP BY id);
CREATE UNIQUE INDEX IF NOT EXISTS telemetry_id ON telemetry (id);
