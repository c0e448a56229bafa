//! One batch in one transaction: the rows go by binary `COPY` straight into
//! `telemetry`, or, while duplicates are expected ([`Method`]), a bounded
//! chunk at a time ([`CHUNK_ROWS`], [`CHUNK_PAYLOAD_BYTES`]) as ten column
//! arrays to `INSERT .. SELECT .. FROM unnest(..) ON CONFLICT DO NOTHING`;
//! then the batch's dead letters. Both statements are prepared once per
//! connection. `COPY` is the cheaper of the two for the server (no executor
//! per row, rows inserted in groups) but stops at the first row whose key is
//! already stored (SQLSTATE 23505, `unique_violation`): the caller then
//! writes the same batch again by `INSERT`, which skips such rows, so what is
//! stored is the same either way (docs/storage.md, "Writes"). No staging
//! table: creating and dropping a temporary table per batch cost the server
//! more than the rows did (BENCHMARKS.md, 2026-12-04). A batch that is one
//! statement and nothing else runs without BEGIN and COMMIT: one statement
//! is one transaction.

use crate::store::json::{self, JsonRules};
use crate::store::{DeadLetterRow, StoreError, StoreRow};
use bytes::{BufMut, Bytes, BytesMut};
use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, CopyInSink, GenericClient, Statement, Transaction};

/// The batch insert, for batches that may hold rows already stored.
const INSERT_SQL: &str = "INSERT INTO telemetry \
    (time, received_at, event_time, tenant_id, project_id, device_id, mqtt_topic, id, payload, raw) \
    SELECT * FROM unnest($1::timestamptz[], $2::timestamptz[], $3::timestamptz[], $4::text[], $5::text[], \
    $6::text[], $7::text[], $8::uuid[], $9::jsonb[], $10::bytea[]) ON CONFLICT DO NOTHING";

/// The batch copy: same columns, same order as [`INSERT_SQL`].
const COPY_SQL: &str = "COPY telemetry \
    (time, received_at, event_time, tenant_id, project_id, device_id, mqtt_topic, id, payload, raw) \
    FROM STDIN (FORMAT binary)";

/// The column types of [`COPY_SQL`], in its order.
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

/// SQLSTATE `unique_violation`: a copied row's key is already stored.
pub const UNIQUE_VIOLATION: &str = "23505";

const DEAD_LETTER_SQL: &str = "INSERT INTO dead_letters \
    (source, received_at, reason, error, mqtt_topic, headers, payload) \
    VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";

/// How a batch's rows are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Binary `COPY`: fails on a row already stored.
    Copy,
    /// `INSERT .. ON CONFLICT DO NOTHING`: skips rows already stored.
    Insert,
}

/// The two statements, prepared on one connection.
pub struct Prepared {
    insert: Statement,
    copy: Statement,
}

/// Most rows per INSERT: each statement's parameters are encoded whole in
/// one message (and the connection's write buffer keeps that size), so the
/// chunk, not the batch, sets that memory: about 250 KiB for 500 rows of
/// ~200-byte payloads (sent twice, as `payload` and `raw`).
const CHUNK_ROWS: usize = 500;

/// Most payload bytes per INSERT (a larger single payload goes alone): keeps
/// the message near 256 KiB when payloads are large.
const CHUNK_PAYLOAD_BYTES: usize = 128 * 1024;

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

/// Prepare the batch statements on `client` (valid for that connection only).
pub async fn prepare(client: &Client) -> Result<Prepared, StoreError> {
    let insert = client.prepare(INSERT_SQL).await.map_err(|e| StoreError::pg("prepare the batch insert", e))?;
    let copy = client.prepare(COPY_SQL).await.map_err(|e| StoreError::pg("prepare the batch copy", e))?;
    Ok(Prepared { insert, copy })
}

/// Write one batch by `method`: all of it or nothing. `prepared` is
/// [`prepare`]d on `client`. By [`Method::Copy`] a row already stored fails
/// the batch with [`UNIQUE_VIOLATION`] and nothing of it is kept.
pub async fn write_batch(
    client: &mut Client,
    prepared: &Prepared,
    rows: &[Staged<'_>],
    dead: &[DeadLetterRow],
    method: Method,
) -> Result<Written, StoreError> {
    let one_statement = match method {
        Method::Copy => !rows.is_empty(),
        Method::Insert => chunk_len(rows) == rows.len(),
    };
    if dead.is_empty() && one_statement {
        // One statement is one transaction: no BEGIN and COMMIT round trips.
        let rows = match method {
            Method::Copy => copy_rows(copy_sink(&*client, &prepared.copy).await?, rows).await?,
            Method::Insert => insert_rows(&*client, &prepared.insert, rows).await?,
        };
        return Ok(Written { rows, dead_letters: 0 });
    }
    let tx = client.transaction().await.map_err(|e| StoreError::pg("begin", e))?;
    let mut written = Written { rows: 0, dead_letters: 0 };
    match method {
        Method::Copy if !rows.is_empty() => {
            let sink = tx.copy_in(&prepared.copy).await.map_err(|e| StoreError::pg("copy rows", e))?;
            written.rows = copy_rows(sink, rows).await?;
        }
        Method::Copy => {}
        Method::Insert => {
            let mut rest = rows;
            while !rest.is_empty() {
                let (chunk, after) = rest.split_at(chunk_len(rest));
                rest = after;
                written.rows += insert_rows(&tx, &prepared.insert, chunk).await?;
            }
        }
    }
    written.dead_letters = insert_dead_letters(&tx, dead).await?;
    tx.commit().await.map_err(|e| StoreError::pg("commit", e))?;
    Ok(written)
}

/// Start the batch copy on `client`, outside a transaction.
async fn copy_sink(client: &Client, copy: &Statement) -> Result<CopyInSink<Bytes>, StoreError> {
    client.copy_in(copy).await.map_err(|e| StoreError::pg("copy rows", e))
}

/// Send `rows` through `sink` in binary COPY format (flushed every few KiB,
/// so memory does not grow with the batch); how many were stored.
async fn copy_rows(sink: CopyInSink<Bytes>, rows: &[Staged<'_>]) -> Result<u64, StoreError> {
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &COPY_TYPES));
    for s in rows {
        let v = RowValues::of(s);
        writer
            .as_mut()
            .write(&[
                &v.time,
                &v.received,
                &v.event,
                &v.tenant,
                &v.project,
                &v.device,
                &v.topic,
                &v.id,
                &v.payload,
                &v.raw,
            ])
            .await
            .map_err(|e| StoreError::pg("copy rows", e))?;
    }
    writer.finish().await.map_err(|e| StoreError::pg("copy rows", e))
}

/// Insert the batch's dead letters (none: nothing sent); how many were new.
async fn insert_dead_letters(tx: &Transaction<'_>, dead: &[DeadLetterRow]) -> Result<u64, StoreError> {
    if dead.is_empty() {
        return Ok(0);
    }
    let stmt = tx.prepare(DEAD_LETTER_SQL).await.map_err(|e| StoreError::pg("prepare dead-letter insert", e))?;
    let mut inserted = 0;
    for d in dead {
        let headers = headers_json(&d.headers);
        let topic = d.mqtt_topic.as_deref().map(pg_text);
        inserted += tx
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
    Ok(inserted)
}

/// How many of `rows` (from the start) go in one INSERT: at least one, at
/// most [`CHUNK_ROWS`], and no more than [`CHUNK_PAYLOAD_BYTES`] of payload
/// unless the first row alone has more.
fn chunk_len(rows: &[Staged<'_>]) -> usize {
    let mut bytes = 0;
    for (i, s) in rows.iter().take(CHUNK_ROWS).enumerate() {
        bytes += s.row.payload.len();
        if bytes > CHUNK_PAYLOAD_BYTES {
            return i.max(1);
        }
    }
    rows.len().min(CHUNK_ROWS)
}

/// Insert `rows` (none: nothing sent); how many were new.
async fn insert_rows(client: &impl GenericClient, insert: &Statement, rows: &[Staged<'_>]) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let c = Columns::new(rows);
    client
        .execute(
            insert,
            &[&c.time, &c.received, &c.event, &c.tenant, &c.project, &c.device, &c.topic, &c.id, &c.payload, &c.raw],
        )
        .await
        .map_err(|e| StoreError::pg("insert rows", e))
}

/// A batch as the insert's ten column arrays, borrowing the rows' text and bytes.
struct Columns<'a> {
    time: Vec<SystemTime>,
    received: Vec<SystemTime>,
    event: Vec<Option<SystemTime>>,
    tenant: Vec<Cow<'a, str>>,
    project: Vec<Cow<'a, str>>,
    device: Vec<Cow<'a, str>>,
    topic: Vec<Cow<'a, str>>,
    id: Vec<uuid::Uuid>,
    payload: Vec<Option<JsonbText<'a>>>,
    raw: Vec<&'a [u8]>,
}

impl<'a> Columns<'a> {
    fn new(rows: &[Staged<'a>]) -> Self {
        let n = rows.len();
        let mut c = Columns {
            time: Vec::with_capacity(n),
            received: Vec::with_capacity(n),
            event: Vec::with_capacity(n),
            tenant: Vec::with_capacity(n),
            project: Vec::with_capacity(n),
            device: Vec::with_capacity(n),
            topic: Vec::with_capacity(n),
            id: Vec::with_capacity(n),
            payload: Vec::with_capacity(n),
            raw: Vec::with_capacity(n),
        };
        for s in rows {
            let v = RowValues::of(s);
            c.time.push(v.time);
            c.received.push(v.received);
            c.event.push(v.event);
            c.tenant.push(v.tenant);
            c.project.push(v.project);
            c.device.push(v.device);
            c.topic.push(v.topic);
            c.id.push(v.id);
            c.payload.push(v.payload);
            c.raw.push(v.raw);
        }
        c
    }
}

/// One row's ten column values, in the order of both statements' columns,
/// borrowing the row's text and bytes: what `COPY` sends per row and
/// [`Columns`] collects per column.
struct RowValues<'a> {
    time: SystemTime,
    received: SystemTime,
    event: Option<SystemTime>,
    tenant: Cow<'a, str>,
    project: Cow<'a, str>,
    device: Cow<'a, str>,
    topic: Cow<'a, str>,
    id: uuid::Uuid,
    payload: Option<JsonbText<'a>>,
    raw: &'a [u8],
}

impl<'a> RowValues<'a> {
    fn of(s: &Staged<'a>) -> Self {
        let r = s.row;
        RowValues {
            time: system_time(s.time_ms),
            received: system_time(r.received_ms),
            event: pg_event_time(r.event_time_ms),
            tenant: pg_text(&r.tenant_id),
            project: pg_text(&r.project_id),
            device: pg_text(&r.device_id),
            topic: pg_text(&r.mqtt_topic),
            id: r.id,
            payload: is_jsonb(&r.payload).then_some(JsonbText(&r.payload)),
            raw: r.payload.as_ref(),
        }
    }
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

/// The event time as `timestamptz`: none when PostgreSQL's range cannot hold it.
fn pg_event_time(ms: Option<i64>) -> Option<SystemTime> {
    ms.filter(|ms| (PG_MIN_MS..=PG_MAX_MS).contains(ms)).map(system_time)
}

/// PostgreSQL text cannot hold NUL: it becomes U+FFFD.
pub fn pg_text(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Headers as a JSON object ([`json::headers_object`]), NUL replaced.
fn headers_json(headers: &[(String, String)]) -> serde_json::Value {
    json::headers_object(headers, |s| pg_text(s).into_owned())
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

    fn rows(sizes: &[usize]) -> Vec<StoreRow> {
        sizes
            .iter()
            .map(|&n| StoreRow {
                id: uuid::Uuid::nil(),
                time_ms: 0,
                event_time_ms: None,
                received_ms: 0,
                tenant_id: "t".into(),
                project_id: "p".into(),
                device_id: "d".into(),
                mqtt_topic: "x".into(),
                payload: bytes::Bytes::from(vec![b'1'; n]),
            })
            .collect()
    }

    fn lens(sizes: &[usize]) -> Vec<usize> {
        let rows = rows(sizes);
        let staged: Vec<Staged<'_>> = rows.iter().map(|row| Staged { row, time_ms: 0 }).collect();
        let mut rest = &staged[..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let n = chunk_len(rest);
            out.push(n);
            rest = &rest[n..];
        }
        out
    }

    #[test]
    fn chunks_end_at_the_row_or_the_byte_bound() {
        assert_eq!(lens(&[200; 1_200]), [500, 500, 200]);
        assert_eq!(lens(&[200; 3]), [3]);
        assert_eq!(lens(&[64 * 1024, 64 * 1024, 10]), [2, 1], "128 KiB of payload fit");
        assert_eq!(lens(&[64 * 1024, 64 * 1024 + 1, 10]), [1, 2]);
        assert_eq!(lens(&[1 << 20, 10, 1 << 20]), [1, 1, 1], "a payload above the bound goes alone");
        assert!(lens(&[]).is_empty());
    }

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
