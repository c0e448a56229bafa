//! The blocking halves of writing and expiring: one batch in one
//! transaction, and retention in chunks. Both keep `telemetry_devices`
//! (rows and last receive time per device) in step with `telemetry`.

use super::json::is_json;
use crate::store::json::headers_object;
use crate::store::time_rule::effective_time_ms;
use crate::store::{DeadLetterRow, StoreError, StoreRow};
use rusqlite::{Connection, TransactionBehavior};
use std::collections::HashMap;
use std::time::Duration;

const INSERT_SQL: &str = "INSERT INTO telemetry \
    (time, received_at, event_time, tenant_id, project_id, device_id, mqtt_topic, id, raw, is_json) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING";

const DEVICE_UPSERT_SQL: &str = "INSERT INTO telemetry_devices \
    (tenant_id, project_id, device_id, messages, last_seen) VALUES (?1, ?2, ?3, ?4, ?5) \
    ON CONFLICT (tenant_id, project_id, device_id) DO UPDATE SET \
    messages = messages + excluded.messages, last_seen = max(last_seen, excluded.last_seen)";

const DEAD_LETTER_SQL: &str = "INSERT INTO dead_letters \
    (source, received_at, reason, error, mqtt_topic, headers, payload, stored_at) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (source) DO NOTHING";

/// Expired rows deleted per transaction, so a writer waits at most for one chunk.
const RETENTION_CHUNK: i64 = 10_000;

const EXPIRE_SQL: &str = "DELETE FROM telemetry WHERE rowid IN \
    (SELECT rowid FROM telemetry WHERE time < ?1 ORDER BY time LIMIT ?2) \
    RETURNING tenant_id, project_id, device_id";

const DEVICE_EXPIRE_SQL: &str = "UPDATE telemetry_devices SET messages = messages - ?4 \
    WHERE tenant_id = ?1 AND project_id = ?2 AND device_id = ?3";

/// Rows and dead letters newly stored by one batch.
pub struct Written {
    /// Telemetry rows inserted (the rest were duplicates).
    pub rows: u64,
    /// Dead letters inserted (the rest were already stored).
    pub dead_letters: u64,
}

/// What a retention run deleted.
pub struct Expired {
    /// Telemetry rows.
    pub rows: u64,
    /// Dead letters.
    pub dead_letters: u64,
}

/// Write one batch in one transaction. Rows already stored (same `time`
/// and `id`) are skipped and not counted.
pub fn write_batch(
    conn: &mut Connection,
    rows: &[StoreRow],
    dead: &[DeadLetterRow],
    now_ms: i64,
    retention: Duration,
) -> Result<Written, StoreError> {
    let mut staged: Vec<(i64, &StoreRow)> =
        rows.iter().map(|r| (effective_time_ms(r.time_ms, r.received_ms, now_ms, retention), r)).collect();
    // In key order the unique index is walked in order: fewer pages touched.
    staged.sort_unstable_by_key(|(time, r)| (*time, r.id));
    let tx =
        conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| StoreError::sqlite("begin", e))?;
    let mut written = Written { rows: 0, dead_letters: 0 };
    if !staged.is_empty() {
        let mut devices: HashMap<(&str, &str, &str), (i64, i64)> = HashMap::new();
        let mut insert = tx.prepare_cached(INSERT_SQL).map_err(|e| StoreError::sqlite("prepare insert", e))?;
        let mut id_buf = uuid::Uuid::encode_buffer();
        for (time, r) in &staged {
            let id: &str = r.id.hyphenated().encode_lower(&mut id_buf);
            let is_json = is_json(&r.payload);
            let n = insert
                .execute((
                    time,
                    r.received_ms,
                    r.event_time_ms,
                    &r.tenant_id,
                    &r.project_id,
                    &r.device_id,
                    &r.mqtt_topic,
                    id,
                    r.payload.as_ref(),
                    is_json,
                ))
                .map_err(|e| StoreError::sqlite("insert row", e))?;
            if n > 0 {
                written.rows += 1;
                let entry = devices.entry((&r.tenant_id, &r.project_id, &r.device_id)).or_insert((0, i64::MIN));
                entry.0 += 1;
                entry.1 = entry.1.max(r.received_ms);
            }
        }
        drop(insert);
        let mut upsert =
            tx.prepare_cached(DEVICE_UPSERT_SQL).map_err(|e| StoreError::sqlite("prepare device upsert", e))?;
        for ((tenant, project, device), (count, last_seen)) in devices {
            upsert
                .execute((tenant, project, device, count, last_seen))
                .map_err(|e| StoreError::sqlite("update telemetry_devices", e))?;
        }
    }
    if !dead.is_empty() {
        let mut insert =
            tx.prepare_cached(DEAD_LETTER_SQL).map_err(|e| StoreError::sqlite("prepare dead-letter insert", e))?;
        for d in dead {
            written.dead_letters += insert
                .execute((
                    &d.source,
                    d.received_ms,
                    &d.reason,
                    &d.error,
                    d.mqtt_topic.as_deref(),
                    headers_json(&d.headers),
                    d.payload.as_ref(),
                    now_ms,
                ))
                .map_err(|e| StoreError::sqlite("insert dead letter", e))? as u64;
        }
    }
    tx.commit().map_err(|e| StoreError::sqlite("commit", e))?;
    Ok(written)
}

/// Delete rows filed before `cutoff_ms` (in chunks, one transaction each)
/// and dead letters received before it.
pub fn expire(conn: &mut Connection, cutoff_ms: i64) -> Result<Expired, StoreError> {
    let mut out = Expired { rows: 0, dead_letters: 0 };
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| StoreError::sqlite("begin retention", e))?;
        let mut devices: HashMap<(String, String, String), i64> = HashMap::new();
        let mut deleted = 0;
        {
            let mut stmt = tx.prepare_cached(EXPIRE_SQL).map_err(|e| StoreError::sqlite("prepare retention", e))?;
            let mut rows =
                stmt.query((cutoff_ms, RETENTION_CHUNK)).map_err(|e| StoreError::sqlite("delete expired rows", e))?;
            while let Some(row) = rows.next().map_err(|e| StoreError::sqlite("delete expired rows", e))? {
                let key = (row.get(0), row.get(1), row.get(2));
                let key = match key {
                    (Ok(t), Ok(p), Ok(d)) => (t, p, d),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                        return Err(StoreError::sqlite("read expired rows", e));
                    }
                };
                *devices.entry(key).or_default() += 1;
                deleted += 1;
            }
            let mut update =
                tx.prepare_cached(DEVICE_EXPIRE_SQL).map_err(|e| StoreError::sqlite("prepare device update", e))?;
            for ((tenant, project, device), count) in &devices {
                update
                    .execute((tenant, project, device, count))
                    .map_err(|e| StoreError::sqlite("update telemetry_devices", e))?;
            }
        }
        if !devices.is_empty() {
            tx.execute("DELETE FROM telemetry_devices WHERE messages <= 0", [])
                .map_err(|e| StoreError::sqlite("update telemetry_devices", e))?;
        }
        tx.commit().map_err(|e| StoreError::sqlite("commit retention", e))?;
        out.rows += deleted;
        if deleted < RETENTION_CHUNK as u64 {
            break;
        }
    }
    out.dead_letters = conn
        .execute("DELETE FROM dead_letters WHERE received_at < ?1", [cutoff_ms])
        .map_err(|e| StoreError::sqlite("delete expired dead letters", e))? as u64;
    Ok(out)
}

/// Headers as JSON text ([`headers_object`]).
fn headers_json(headers: &[(String, String)]) -> String {
    headers_object(headers, str::to_owned).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_become_a_json_object() {
        let h = vec![("a".to_string(), "1".to_string()), ("a".to_string(), "2".to_string())];
        assert_eq!(headers_json(&h), r#"{"a":"2"}"#);
    }
}
