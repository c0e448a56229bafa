//! Reading back what the SQLite store wrote, over a plain rusqlite connection.

use super::{Device, Stored, StoredDeadLetter};
use std::collections::HashMap;
use std::path::Path;

/// A plain connection to check what the store wrote.
pub fn open(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("open the database")
}

/// The single number `sql` answers.
pub fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).expect(sql)
}

/// Every row, or the one with record id `id`.
pub fn rows(path: &Path, id: Option<uuid::Uuid>) -> Vec<Stored> {
    let db = open(path);
    let sql = "SELECT id, time, event_time, received_at, tenant_id, project_id, device_id, mqtt_topic, raw, payload \
               FROM telemetry WHERE ?1 IS NULL OR id = ?1";
    let mut stmt = db.prepare(sql).unwrap();
    let found = stmt
        .query_map([id.map(|i| i.to_string())], |r| {
            let payload: Option<String> = r.get(9)?;
            Ok(Stored {
                id: r.get(0)?,
                time_ms: r.get(1)?,
                event_time_ms: r.get(2)?,
                received_ms: Some(r.get(3)?),
                tenant_id: r.get(4)?,
                project_id: r.get(5)?,
                device_id: r.get(6)?,
                mqtt_topic: r.get(7)?,
                raw: Some(r.get(8)?),
                json: payload.map(|p| serde_json::from_str(&p).expect("the payload column holds JSON")),
            })
        })
        .unwrap();
    found.collect::<Result<_, _>>().unwrap()
}

fn grouped(path: &Path, sql: &str) -> HashMap<Device, i64> {
    let db = open(path);
    let mut stmt = db.prepare(sql).unwrap();
    let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?))).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

pub fn counts_by_device(path: &Path) -> HashMap<Device, i64> {
    grouped(path, "SELECT tenant_id, project_id, device_id, count(*) FROM telemetry GROUP BY 1, 2, 3")
}

/// `telemetry_devices`: the summary the dashboard's lists read.
pub fn device_summary(path: &Path) -> HashMap<Device, i64> {
    grouped(path, "SELECT tenant_id, project_id, device_id, messages FROM telemetry_devices")
}

pub fn dead_letters(path: &Path) -> Vec<StoredDeadLetter> {
    let db = open(path);
    let mut stmt = db
        .prepare("SELECT source, received_at, reason, error, mqtt_topic, headers, payload FROM dead_letters")
        .unwrap();
    let found = stmt
        .query_map([], |r| {
            let headers: String = r.get(5)?;
            Ok(StoredDeadLetter {
                source: r.get(0)?,
                received_ms: r.get(1)?,
                reason: r.get(2)?,
                error: r.get(3)?,
                mqtt_topic: r.get(4)?,
                headers: Some(serde_json::from_str(&headers).expect("headers are JSON")),
                payload: r.get(6)?,
            })
        })
        .unwrap();
    found.collect::<Result<_, _>>().unwrap()
}

/// Applied migration versions, in order.
pub fn migrations(path: &Path) -> Vec<String> {
    let db = open(path);
    let mut stmt = db.prepare("SELECT version FROM iotpipe_schema_migrations ORDER BY version").unwrap();
    let versions = stmt.query_map([], |r| r.get::<_, i64>(0)).unwrap();
    versions.map(|v| v.unwrap().to_string()).collect()
}
