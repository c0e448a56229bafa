//! One batch in one transaction: binary COPY into a temporary staging table,
//! then `INSERT .. SELECT .. ON CONFLICT DO NOTHING` into `telemetry` (COPY
//! itself cannot skip duplicates), then the batch's dead letters.

use crate::store::json::{self, JsonRules};
use crate::store::{DeadLetterRow, StoreError, StoreRow};
use bytes::{BufMut, BytesMut};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::Client;

const STAGING_SQL: &str = "CREATE TEMP TABLE iotpipe_staging (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DROP";

const COPY_SQL: &str = "COPY iotpipe_staging \
    (time, received_at, event_time, tenant_id, project_id, device_id, mqtt_topic, id, payload, raw) \
    FROM STDIN (FORMAT binary)";

const COPY_TYPES: [Type; 10] = [
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::UUID,
    Type::JSONB,
    Type::BYTEA,
];

const INSERT_SQL: &str = "INSERT INTO telemetry \
    (time, received_at, event_time, tenant_id, project_id, device_id, mqtt_topic, id, payload, raw) \
    SELECT time, received_at, event_time, tenant_id, project_id, device_id, mqtt_topic, id, payload, raw \
    FROM iotpipe_staging ON CONFLICT DO NOTHING";

const DEAD_LETTER_SQL: &str = "INSERT INTO dead_letters \
    (source, received_at, reason, error, mqtt_topic, headers, payload) \
    VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";

/// PostgreSQL's timestamptz range in epoch milliseconds (4713 BC to 294276 AD).
const PG_MIN_MS: i64 = -210_866_803_200_000;
const PG_MAX_MS: i64 = 9_224_318_015_999_999;

/// A row with the time it is filed under (see `time_rule`).
pub struct Staged<'a> {
    /// The row as received.
    pub row: &'a StoreRow,
    /// The `time` column (epoch ms).
    pub time_ms: i64,
}

/// Rows written and dead letters written by one batch.
pub struct Written {
    pub rows: u64,
    pub dead_letters: u64,
}

/// Write one batch in one transaction.
pub async fn write_batch(
    client: &mut Client,
    rows: &[Staged<'_>],
    dead: &[DeadLetterRow],
) -> Result<Written, StoreError> {
    let tx = client.transaction().await.map_err(|e| StoreError::pg("begin", e))?;
    let mut written = Written { rows: 0, dead_letters: 0 };
    if !rows.is_empty() {
        tx.batch_execute(STAGING_SQL).await.map_err(|e| StoreError::pg("create staging table", e))?;
        let sink = tx.copy_in(COPY_SQL).await.map_err(|e| StoreError::pg("start COPY", e))?;
        let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
        tokio::pin!(writer);
        for s in rows {
            let r = s.row;
            let event_time = r.event_time_ms.filter(|ms| (PG_MIN_MS..=PG_MAX_MS).contains(ms)).map(system_time);
            let payload = is_jsonb(&r.payload).then_some(JsonbText(&r.payload));
            writer
                .as_mut()
                .write(&[
                    &system_time(s.time_ms),
                    &system_time(r.received_ms),
                    &event_time,
                    &pg_text(&r.tenant_id),
                    &pg_text(&r.project_id),
                    &pg_text(&r.device_id),
                    &pg_text(&r.mqtt_topic),
                    &r.id,
                    &payload,
                    &r.payload.as_ref(),
                ])
                .await
                .map_err(|e| StoreError::pg("COPY rows", e))?;
        }
        writer.finish().await.map_err(|e| StoreError::pg("finish COPY", e))?;
        written.rows = tx.execute(INSERT_SQL, &[]).await.map_err(|e| StoreError::pg("insert from staging", e))?;
    }
    if !dead.is_empty() {
        let stmt = tx.prepare(DEAD_LETTER_SQL).await.map_err(|e| StoreError::pg("prepare dead-letter insert", e))?;
        for d in dead {
            let headers = headers_json(&d.headers);
            let topic = d.mqtt_topic.as_deref().map(pg_text);
            written.dead_letters += tx
                .execute(
                    &stmt,
                    &[
                        &pg_text(&d.source),
                        &system_time(d.received_ms),
                        &pg_text(&d.reason),
                        &pg_text(&d.error),
                        &topic,
                        &headers,
                        &d.payload.as_ref(),
                    ],
                )
                .await
                .map_err(|e| StoreError::pg("insert dead letter", e))?;
        }
    }
    tx.commit().await.map_err(|e| StoreError::pg("commit", e))?;
    Ok(written)
}

/// Epoch milliseconds as a `SystemTime` (timestamptz).
pub fn system_time(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// PostgreSQL text cannot hold NUL: it becomes U+FFFD.
pub fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Headers as a JSON object (a repeated name keeps its last value).
fn headers_json(headers: &[(String, String)]) -> serde_json::Value {
    let map = headers
        .iter()
        .map(|(k, v)| (pg_text(k).into_owned(), serde_json::Value::String(pg_text(v).into_owned())))
        .collect();
    serde_json::Value::Object(map)
}

/// Whether `payload` is JSON that `jsonb` accepts: valid UTF-8 JSON (as
/// serde_json reads it, surrogate escapes checked) with no NUL character in
/// a string or key, which jsonb refuses ([`JsonRules::JSONB`]).
pub fn is_jsonb(payload: &[u8]) -> bool {
    json::is_json(payload, JsonRules::JSONB)
}

/// JSON text sent as `jsonb` without parsing it on our side (binary format:
/// version byte 1, then the text).
#[derive(Debug)]
struct JsonbText<'a>(&'a [u8]);

impl ToSql for JsonbText<'_> {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonb_takes_json_but_not_nul_escapes() {
        assert!(is_jsonb(br#"{"temp": 21.5, "ok": true}"#));
        assert!(is_jsonb(b"42"));
        assert!(is_jsonb(br#""text""#));
        assert!(is_jsonb(br#"{"path": "C:\\u0000"}"#), "an escaped backslash followed by u0000 is plain text");
        assert!(!is_jsonb(br#"{"bad": "a\u0000b"}"#));
        assert!(!is_jsonb(b"not json"));
        assert!(!is_jsonb(b""));
        assert!(!is_jsonb(b"{\"a\": 1"));
        assert!(!is_jsonb(&[0xff, 0xfe]));
        assert!(!is_jsonb(b"\"\xff\""), "invalid UTF-8 inside a string");
        assert!(!is_jsonb(br#"{"k\u0000": 1}"#), "NUL in a key");
        assert!(!is_jsonb(br#""\ud800""#), "lone surrogate");
        assert!(is_jsonb(br#"{"a": [1, {"b": null}], "c": "\u00e9\ud83d\ude00"}"#));
    }

    #[test]
    fn text_loses_only_nul() {
        assert_eq!(pg_text("dev-1"), "dev-1");
        assert!(matches!(pg_text("dev-1"), Cow::Borrowed(_)));
        assert_eq!(pg_text("a\0b"), "a\u{FFFD}b");
    }

    #[test]
    fn times_before_1970_work() {
        assert_eq!(system_time(1_500), UNIX_EPOCH + Duration::from_millis(1_500));
        assert_eq!(system_time(-1_500), UNIX_EPOCH - Duration::from_millis(1_500));
    }

    #[test]
    fn headers_become_an_object() {
        let h = headers_json(&[("a".into(), "1".into()), ("b".into(), "x\0".into()), ("a".into(), "2".into())]);
        assert_eq!(h, serde_json::json!({"a": "2", "b": "x\u{FFFD}"}));
    }
}
