//! Reading back what the PostgreSQL (and TimescaleDB) store wrote, over a
//! tokio-postgres client on the test database.

use super::{Device, Stored, StoredDeadLetter};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_postgres::Client;

/// Epoch milliseconds of a `timestamptz`.
pub fn ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// The single number `sql` answers.
pub async fn count(db: &Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Whether a table (or partition) of that name exists.
pub async fn relation_exists(db: &Client, name: &str) -> bool {
    count(db, &format!("SELECT count(*) FROM pg_class WHERE relname = '{name}'")).await == 1
}

/// Every row, or the one with record id `id`.
pub async fn rows(db: &Client, id: Option<uuid::Uuid>) -> Vec<Stored> {
    let sql = "SELECT id, time, event_time, received_at, tenant_id, project_id, device_id, mqtt_topic, raw, payload \
               FROM telemetry WHERE $1::uuid IS NULL OR id = $1";
    db.query(sql, &[&id])
        .await
        .unwrap()
        .iter()
        .map(|r| Stored {
            id: r.get::<_, uuid::Uuid>(0).to_string(),
            time_ms: ms(r.get(1)),
            event_time_ms: r.get::<_, Option<SystemTime>>(2).map(ms),
            received_ms: Some(ms(r.get(3))),
            tenant_id: r.get(4),
            project_id: r.get(5),
            device_id: r.get(6),
            mqtt_topic: r.get(7),
            raw: Some(r.get(8)),
            json: r.get(9),
        })
        .collect()
}

pub async fn counts_by_device(db: &Client) -> HashMap<Device, i64> {
    db.query("SELECT tenant_id, project_id, device_id, count(*) FROM telemetry GROUP BY 1, 2, 3", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
        .collect()
}

pub async fn dead_letters(db: &Client) -> Vec<StoredDeadLetter> {
    db.query("SELECT source, received_at, reason, error, mqtt_topic, headers, payload FROM dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| StoredDeadLetter {
            source: r.get(0),
            received_ms: ms(r.get(1)),
            reason: r.get(2),
            error: r.get(3),
            mqtt_topic: r.get(4),
            headers: Some(r.get(5)),
            payload: r.get(6),
        })
        .collect()
}

/// Applied migration versions, in order.
pub async fn migrations(db: &Client) -> Vec<String> {
    db.query("SELECT version FROM iotpipe_schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i32>(0).to_string())
        .collect()
}
