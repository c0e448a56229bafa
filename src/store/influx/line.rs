//! InfluxDB line protocol: escaping, one line per row or dead letter, and
//! the timestamp that keeps records apart. Pure.
//!
//! `telemetry,tenant_id=..,project_id=..,device_id=.. <payload fields>,id="..",mqtt_topic=".." <ns>`
//!
//! A point is identified by measurement, tag set and timestamp. Timestamps
//! are `time_ms * 1_000_000 + hash(id) % 1_000_000` ns: two records of one
//! device in the same millisecond land on different nanoseconds, and a
//! replay of one record lands on the same one and overwrites itself.

use super::fields::{payload_fields, truncate, FieldValue};
use crate::store::{DeadLetterRow, StoreRow};
use std::fmt::Write as _;

/// Measurement of telemetry points.
pub const TELEMETRY: &str = "telemetry";
/// Measurement of dead letters.
pub const DEAD_LETTERS: &str = "dead_letters";
/// Dead-letter payloads are stored as (lossy) text cut at this many bytes.
pub const DEAD_LETTER_PAYLOAD_MAX: usize = 4096;

/// InfluxDB's timestamp range, ns (about 1677-09-21 to 2262-04-11).
const MIN_NS: i64 = i64::MIN + 2;
const MAX_NS: i64 = i64::MAX - 1;

/// The point's timestamp: `time_ms` plus sub-millisecond nanoseconds from a
/// stable hash of `key` (the record id, or a dead letter's source).
pub fn timestamp_ns(time_ms: i64, key: &[u8]) -> i64 {
    let offset = (xxhash_rust::xxh3::xxh3_64(key) % 1_000_000) as i64;
    time_ms.saturating_mul(1_000_000).saturating_add(offset).clamp(MIN_NS, MAX_NS)
}

/// Append the line of one telemetry row, filed at `time_ms`.
pub fn telemetry_line(out: &mut String, row: &StoreRow, time_ms: i64) {
    out.push_str(TELEMETRY);
    tag(out, "tenant_id", &row.tenant_id);
    tag(out, "project_id", &row.project_id);
    tag(out, "device_id", &row.device_id);
    out.push(' ');
    for (key, value) in payload_fields(&row.payload) {
        field_key(out, &key);
        out.push('=');
        field_value(out, &value);
        out.push(',');
    }
    out.push_str("id=");
    string_value(out, &row.id.hyphenated().to_string());
    out.push_str(",mqtt_topic=");
    string_value(out, &row.mqtt_topic);
    if let Some(event) = row.event_time_ms.filter(|e| *e != time_ms) {
        // Filed under the receive time (time rule): keep the device's time.
        let _ = write!(out, ",event_time_ms={event}i");
    }
    let _ = writeln!(out, " {}", timestamp_ns(time_ms, row.id.as_bytes()));
}

/// Append the line of one dead letter, filed at its receive time.
pub fn dead_letter_line(out: &mut String, d: &DeadLetterRow) {
    out.push_str(DEAD_LETTERS);
    tag(out, "reason", &d.reason);
    out.push_str(" error=");
    string_value(out, &d.error);
    out.push_str(",source=");
    string_value(out, &d.source);
    if let Some(topic) = &d.mqtt_topic {
        out.push_str(",mqtt_topic=");
        string_value(out, topic);
    }
    out.push_str(",payload=");
    let text = String::from_utf8_lossy(&d.payload);
    string_value(out, truncate(&text, DEAD_LETTER_PAYLOAD_MAX));
    let _ = writeln!(out, " {}", timestamp_ns(d.received_ms, d.source.as_bytes()));
}

/// `,key=value`; an empty value is left out (InfluxDB refuses empty tag
/// values; a missing tag reads as `''` in queries).
fn tag(out: &mut String, key: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    out.push(',');
    escape_key(out, key);
    out.push('=');
    escape_key(out, value);
}

fn field_key(out: &mut String, key: &str) {
    escape_key(out, key);
}

/// Tag keys, tag values and field keys: `,`, `=` and space are escaped with
/// a backslash; newlines become spaces (line protocol cannot carry them
/// there); a trailing backslash, which would escape the separator after it,
/// becomes `/`.
fn escape_key(out: &mut String, s: &str) {
    let trimmed = s.trim_end_matches('\\');
    for c in trimmed.chars() {
        match c {
            ',' | '=' | ' ' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push_str("\\ "),
            _ => out.push(c),
        }
    }
    for _ in trimmed.len()..s.len() {
        out.push('/');
    }
}

fn field_value(out: &mut String, v: &FieldValue) {
    match v {
        FieldValue::Float(f) => {
            let _ = write!(out, "{f}");
        }
        FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        FieldValue::Str(s) => string_value(out, s),
    }
}

/// A double-quoted string field: `"` and `\` are escaped.
fn string_value(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn row(payload: &str) -> StoreRow {
        StoreRow {
            id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            time_ms: 1_700_000_000_123,
            event_time_ms: Some(1_700_000_000_123),
            received_ms: 1_700_000_000_200,
            tenant_id: "acme".into(),
            project_id: "p 1".into(),
            device_id: "dev,=1".into(),
            mqtt_topic: "mtic/msg/client/realtime/acme/p 1".into(),
            payload: Bytes::from(payload.to_string()),
        }
    }

    #[test]
    fn a_row_becomes_one_escaped_line() {
        let r = row(r#"{"temp": 21, "ok": true, "mode": "say \"hi\" \\o/", "gps": {"lat": 1.5}}"#);
        let mut out = String::new();
        telemetry_line(&mut out, &r, r.time_ms);
        let ts = timestamp_ns(r.time_ms, r.id.as_bytes());
        assert_eq!(
            out,
            format!(
                "telemetry,tenant_id=acme,project_id=p\\ 1,device_id=dev\\,\\=1 \
                 gps.lat=1.5,mode=\"say \\\"hi\\\" \\\\o/\",ok=true,temp=21,\
                 id=\"01900000-0000-7000-8000-000000000001\",mqtt_topic=\"mtic/msg/client/realtime/acme/p 1\" {ts}\n"
            )
        );
    }

    #[test]
    fn a_payload_without_fields_still_has_the_id() {
        let mut out = String::new();
        let mut r = row("{}");
        r.device_id = String::new();
        telemetry_line(&mut out, &r, r.time_ms);
        assert!(out.starts_with("telemetry,tenant_id=acme,project_id=p\\ 1 id=\"0190"), "{out}");
    }

    #[test]
    fn the_event_time_is_kept_when_the_row_is_filed_under_the_receive_time() {
        let mut out = String::new();
        let r = row("{}");
        telemetry_line(&mut out, &r, r.received_ms);
        assert!(out.contains(",event_time_ms=1700000000123i "), "{out}");
        assert!(out.ends_with(&format!(" {}\n", timestamp_ns(r.received_ms, r.id.as_bytes()))));
    }

    #[test]
    fn timestamps_are_stable_distinct_and_within_the_millisecond() {
        let a = timestamp_ns(1_700_000_000_123, b"a");
        assert_eq!(a, timestamp_ns(1_700_000_000_123, b"a"));
        assert_ne!(a, timestamp_ns(1_700_000_000_123, b"b"));
        assert_eq!(a / 1_000_000, 1_700_000_000_123);
        assert_eq!(timestamp_ns(i64::MAX, b"a"), MAX_NS);
    }

    #[test]
    fn keys_escape_separators_newlines_and_trailing_backslashes() {
        let mut out = String::new();
        escape_key(&mut out, "a b,c=d\ne\\x\\");
        assert_eq!(out, "a\\ b\\,c\\=d\\ e\\x/");
    }

    #[test]
    fn dead_letters_have_reason_tag_and_text_fields() {
        let d = DeadLetterRow {
            source: "kafka:iot-dead-letters/0@7".into(),
            received_ms: 1_700_000_000_000,
            reason: "invalid_json".into(),
            error: "payload is not JSON".into(),
            mqtt_topic: Some("t/x".into()),
            headers: vec![],
            payload: Bytes::from_static(b"\xffoops"),
        };
        let mut out = String::new();
        dead_letter_line(&mut out, &d);
        assert!(out.starts_with(
            "dead_letters,reason=invalid_json error=\"payload is not JSON\",source=\"kafka:iot-dead-letters/0@7\",mqtt_topic=\"t/x\",payload=\"\u{FFFD}oops\" "
        ), "{out}");
    }
}
