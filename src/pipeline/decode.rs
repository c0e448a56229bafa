//! From a record read back from Kafka or the journal ([`DurableRecord`]) to
//! a store row or a dead letter. Pure.
//!
//! Understood, in order: the bridge's dead letters (`reason` header); the
//! bridge's records (headers `tenant_id`, `project_id`, `id`, …); the
//! `envelope` JSON format; and plain JSON that names `tenant_id` and
//! `project_id` itself. Anything else is dead-lettered with the reason.

use crate::record::headers::{self, parse_time};
use crate::record::{DeadLetterReason as Reason, DurableRecord};
use crate::store::{DeadLetterRow, StoreRow};
use bytes::Bytes;
use serde_json::value::RawValue;
use std::collections::HashMap;

/// What a record becomes.
#[derive(Debug)]
pub enum Decoded {
    Row(StoreRow),
    /// A dead letter, and the reason for the metrics' label (the row keeps
    /// the reason text as the producer wrote it).
    Dead(DeadLetterRow, Reason),
}

/// A record's row, or its dead letter (named after the record's position:
/// `kafka:<topic>/<partition>@<offset>`, `journal:<seq>`).
pub fn decode(rec: &DurableRecord, now_ms: i64) -> Decoded {
    let hdr = headers::Decoded::parse(&rec.headers);
    let received_ms = hdr.received_ms.or(rec.timestamp_ms).unwrap_or(now_ms);
    let dead = |reason: Reason, text: &str, detail: &str| dead_letter(rec, &hdr, received_ms, reason, text, detail);
    if let Some(text) = hdr.reason {
        return dead(Reason::parse(text), text, hdr.error.unwrap_or(""));
    }
    if let (Some(t), Some(p)) = (hdr.tenant_id, hdr.project_id) {
        if t.is_empty() || p.is_empty() {
            let r = Reason::MissingTenant;
            return dead(r, r.as_str(), "empty tenant_id or project_id header");
        }
        let id = match hdr.record_id() {
            Some(Ok(id)) => id,
            Some(Err(e)) => {
                let r = Reason::InvalidId;
                return dead(r, r.as_str(), &format!("id header `{}`: {e}", hdr.id.unwrap_or("")));
            }
            None => rec.position_id(received_ms).0,
        };
        return Decoded::Row(StoreRow {
            id,
            time_ms: hdr.event_ms.unwrap_or(received_ms),
            event_time_ms: hdr.event_ms,
            received_ms,
            tenant_id: t.to_string(),
            project_id: p.to_string(),
            device_id: hdr.device_id.unwrap_or("").to_string(),
            mqtt_topic: hdr.mqtt_topic.unwrap_or("").to_string(),
            payload: rec.payload.clone(),
        });
    }
    if rec.payload.is_empty() {
        let r = Reason::EmptyPayload;
        return dead(r, r.as_str(), "no headers and an empty payload");
    }
    match from_json(rec, received_ms) {
        Ok(row) => Decoded::Row(row),
        Err((r, detail)) => dead(r, r.as_str(), &detail),
    }
}

/// Envelope `{tenant_id, project_id, payload, …}` or a plain JSON object that
/// carries `tenant_id` and `project_id` (or `tenantId` / `projectId`).
fn from_json(rec: &DurableRecord, received_ms: i64) -> Result<StoreRow, (Reason, String)> {
    let text = std::str::from_utf8(&rec.payload).map_err(|e| (Reason::Undecodable, format!("not UTF-8: {e}")))?;
    let obj: HashMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|e| (Reason::Undecodable, format!("not a JSON object: {e}")))?;
    let field = |names: &[&str]| -> Option<String> {
        names.iter().find_map(|n| obj.get(*n)).and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
    };
    let (Some(tenant), Some(project)) = (field(&["tenant_id", "tenantId"]), field(&["project_id", "projectId"])) else {
        return Err((Reason::MissingTenant, "no tenant_id/project_id headers or fields".into()));
    };
    if tenant.is_empty() || project.is_empty() {
        return Err((Reason::MissingTenant, "empty tenant_id or project_id".into()));
    }
    let is_envelope = obj.contains_key("payload") && obj.contains_key("mqtt_topic");
    let payload = match (is_envelope, obj.get("payload")) {
        (true, Some(inner)) => Bytes::copy_from_slice(inner.get().as_bytes()),
        _ => rec.payload.clone(),
    };
    let event_ms = obj
        .get("timestamp")
        .or_else(|| obj.get("ts"))
        .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw.get()).ok())
        .and_then(|v| match v {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => parse_time(&s),
            _ => None,
        });
    let id =
        field(&["id"]).and_then(|s| uuid::Uuid::parse_str(&s).ok()).unwrap_or_else(|| rec.position_id(received_ms).0);
    Ok(StoreRow {
        id,
        time_ms: event_ms.unwrap_or(received_ms),
        event_time_ms: event_ms,
        received_ms,
        tenant_id: tenant,
        project_id: project,
        device_id: field(&["device_id", "deviceId"]).unwrap_or_default(),
        mqtt_topic: field(&["mqtt_topic"]).unwrap_or_default(),
        payload,
    })
}

fn dead_letter(
    rec: &DurableRecord,
    hdr: &headers::Decoded<'_>,
    received_ms: i64,
    reason: Reason,
    text: &str,
    detail: &str,
) -> Decoded {
    let row = DeadLetterRow {
        source: rec.source(),
        received_ms,
        reason: text.to_string(),
        error: detail.to_string(),
        mqtt_topic: hdr.mqtt_topic.map(str::to_string),
        headers: rec.headers.to_pairs(),
        payload: rec.payload.clone(),
    };
    Decoded::Dead(row, reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Position;

    fn rec(headers: &[(&str, &str)], payload: &[u8]) -> DurableRecord {
        DurableRecord {
            position: Position::Kafka { topic: "iot.a.p".into(), partition: 1, offset: 42 },
            timestamp_ms: Some(1_700_000_000_000),
            headers: headers.iter().copied().collect(),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    const ID: &str = "018bcfe5-6800-7000-8000-000000000001";

    #[test]
    fn bridge_records_become_rows() {
        let r = rec(
            &[
                ("tenant_id", "acme"),
                ("project_id", "p1"),
                ("device_id", "d1"),
                ("mqtt_topic", "mtic/msg/client/realtime/acme/p1"),
                ("id", ID),
                ("received_at", "2023-11-14T22:13:20.500Z"),
                ("event_time", "2023-11-14T22:13:20.123Z"),
            ],
            br#"{"v":1}"#,
        );
        let Decoded::Row(row) = decode(&r, 0) else { panic!("row expected") };
        assert_eq!((row.tenant_id.as_str(), row.project_id.as_str(), row.device_id.as_str()), ("acme", "p1", "d1"));
        assert_eq!(row.id.to_string(), ID);
        assert_eq!(row.received_ms, 1_700_000_000_500);
        assert_eq!(row.event_time_ms, Some(1_700_000_000_123));
        assert_eq!(row.time_ms, 1_700_000_000_123);
        assert_eq!(&row.payload[..], br#"{"v":1}"#);
    }

    #[test]
    fn bridge_dead_letters_stay_dead_letters() {
        let r = rec(&[("reason", "invalid_json"), ("error", "bad"), ("mqtt_topic", "t")], b"{x");
        let Decoded::Dead(d, reason) = decode(&r, 0) else { panic!("dead letter expected") };
        assert_eq!(d.reason, "invalid_json");
        assert_eq!(reason, Reason::InvalidJson);
        assert_eq!(d.source, "kafka:iot.a.p/1@42");
        assert_eq!(d.mqtt_topic.as_deref(), Some("t"));
    }

    #[test]
    fn envelope_payload_is_unwrapped_byte_for_byte() {
        let env = br#"{"id":"018bcfe5-6800-7000-8000-000000000001","tenant_id":"a","project_id":"p","device_id":"d","mqtt_topic":"x/a/p","timestamp":1700000000000,"payload":{"t": 1.50}}"#;
        let Decoded::Row(row) = decode(&rec(&[], env), 0) else { panic!("row expected") };
        assert_eq!(&row.payload[..], br#"{"t": 1.50}"#);
        assert_eq!(row.id.to_string(), ID);
        assert_eq!(row.event_time_ms, Some(1_700_000_000_000));
        assert_eq!(row.mqtt_topic, "x/a/p");
    }

    #[test]
    fn headerless_json_with_tenant_fields_is_stored_with_a_stable_id() {
        let r = rec(&[], br#"{"tenantId":"a","projectId":"p","deviceId":"d","ts":1700000000000}"#);
        let (Decoded::Row(a), Decoded::Row(b)) = (decode(&r, 1), decode(&r, 2)) else { panic!("rows expected") };
        assert_eq!(a.id, b.id, "re-reading the same Kafka position gives the same id");
        assert_eq!(a.device_id, "d");
    }

    /// Rows of records without an id keep the id every earlier version
    /// derived from the Kafka position: the store deduplicates re-reads by it.
    #[test]
    fn ids_from_kafka_positions_are_unchanged() {
        let json = rec(&[], br#"{"tenantId":"a","projectId":"p","deviceId":"d","ts":1700000000000}"#);
        let Decoded::Row(row) = decode(&json, 1_700_000_000_999) else { panic!("row expected") };
        assert_eq!(row.id.to_string(), "018bcfe5-6800-76ea-a9a6-21616ef11607");
        let headers =
            DurableRecord { timestamp_ms: None, ..rec(&[("tenant_id", "acme"), ("project_id", "p1")], br#"{"v":1}"#) };
        let Decoded::Row(row) = decode(&headers, 1_700_000_000_999) else { panic!("row expected") };
        assert_eq!(row.id.to_string(), "018bcfe5-6be7-784b-bc71-011421edeeed");
    }

    #[test]
    fn journal_dead_letters_name_the_journal_position() {
        let r = DurableRecord { position: Position::Journal { seq: 9 }, ..rec(&[("reason", "invalid_json")], b"{x") };
        let Decoded::Dead(d, _) = decode(&r, 0) else { panic!("dead letter expected") };
        assert_eq!(d.source, "journal:9");
    }

    #[test]
    fn poison_records_are_dead_lettered_with_reasons() {
        let cases: Vec<(DurableRecord, Reason)> = vec![
            (rec(&[], b"\xff\xfe"), Reason::Undecodable),
            (rec(&[], b"[1,2]"), Reason::Undecodable),
            (rec(&[], br#"{"deviceId":"d"}"#), Reason::MissingTenant),
            (rec(&[], b""), Reason::EmptyPayload),
            (rec(&[("tenant_id", ""), ("project_id", "p")], b"{}"), Reason::MissingTenant),
            (rec(&[("tenant_id", "a"), ("project_id", "p"), ("id", "nope")], b"{}"), Reason::InvalidId),
        ];
        for (r, want) in cases {
            match decode(&r, 0) {
                Decoded::Dead(d, reason) => {
                    assert_eq!(reason, want, "{:?}", r.payload);
                    assert_eq!(d.reason, want.as_str());
                }
                Decoded::Row(_) => panic!("{:?} should be dead-lettered", r.payload),
            }
        }
    }

    #[test]
    fn a_reason_nobody_knows_keeps_its_text_but_is_labelled_other() {
        let r = rec(&[("reason", "made_up_by_someone"), ("error", "x")], b"{}");
        let Decoded::Dead(d, reason) = decode(&r, 0) else { panic!("dead letter expected") };
        assert_eq!(d.reason, "made_up_by_someone");
        assert_eq!(reason, Reason::Other);
    }
}
