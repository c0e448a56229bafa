//! Reading back what the InfluxDB store wrote, with InfluxQL: points of
//! `telemetry` (tags tenant/project/device; fields from the payload plus
//! `id`, `mqtt_topic`, `event_time_ms`) and of `dead_letters`.

use super::{Device, Stored, StoredDeadLetter};
use crate::common::influx::{query, records, series, Row};
use base64::Engine as _;
use serde_json::Value;
use std::collections::HashMap;

/// Fields iotpipe writes itself, next to the payload's.
const OWN_FIELDS: [&str; 3] = ["id", "mqtt_topic", "event_time_ms"];
const TAGS: [&str; 3] = ["tenant_id", "project_id", "device_id"];

fn text(row: &Row, column: &str) -> String {
    row.get(column).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn time_ms(row: &Row) -> i64 {
    row["time"].as_i64().expect("epoch=ns time").div_euclid(1_000_000)
}

/// Every point, or the one with record id `id`.
pub async fn rows(database: &str, id: Option<uuid::Uuid>) -> Vec<Stored> {
    let q = match id {
        Some(id) => format!("SELECT * FROM telemetry WHERE id = '{id}'"),
        None => "SELECT * FROM telemetry".to_string(),
    };
    records(&query(database, &q).await).iter().map(point).collect()
}

fn point(row: &Row) -> Stored {
    let time_ms = time_ms(row);
    let mut fields = serde_json::Map::new();
    for (column, value) in row {
        if value.is_null()
            || column == "time"
            || TAGS.contains(&column.as_str())
            || OWN_FIELDS.contains(&column.as_str())
        {
            continue;
        }
        let value = match value.as_f64() {
            Some(f) => Value::from(f),
            None => value.clone(),
        };
        fields.insert(column.clone(), value);
    }
    let raw = match (fields.get("raw"), fields.get("raw_base64")) {
        (Some(Value::String(text)), _) => Some(text.as_bytes().to_vec()),
        (_, Some(Value::String(b64))) => {
            Some(base64::engine::general_purpose::STANDARD.decode(b64).expect("raw_base64 is base64"))
        }
        _ => None,
    };
    Stored {
        id: text(row, "id"),
        time_ms,
        event_time_ms: Some(row.get("event_time_ms").and_then(Value::as_i64).unwrap_or(time_ms)),
        received_ms: None,
        tenant_id: text(row, "tenant_id"),
        project_id: text(row, "project_id"),
        device_id: text(row, "device_id"),
        mqtt_topic: text(row, "mqtt_topic"),
        json: raw.is_none().then_some(Value::Object(fields)),
        raw,
    }
}

pub async fn counts_by_device(database: &str) -> HashMap<Device, i64> {
    let answer = query(database, "SELECT count(id) FROM telemetry GROUP BY tenant_id, project_id, device_id").await;
    series(&answer)
        .into_iter()
        .map(|(tags, rows)| {
            let tag = |k: &str| tags.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let n = rows.first().and_then(|r| r["count"].as_i64()).unwrap_or(0);
            ((tag("tenant_id"), tag("project_id"), tag("device_id")), n)
        })
        .collect()
}

pub async fn dead_letters(database: &str) -> Vec<StoredDeadLetter> {
    records(&query(database, "SELECT * FROM dead_letters").await)
        .iter()
        .map(|row| StoredDeadLetter {
            source: text(row, "source"),
            received_ms: time_ms(row),
            reason: text(row, "reason"),
            error: text(row, "error"),
            mqtt_topic: row.get("mqtt_topic").and_then(Value::as_str).map(String::from),
            headers: None,
            payload: text(row, "payload").into_bytes(),
        })
        .collect()
}

/// The `iotpipe` retention policy: `iotpipe <duration>[ default]`.
pub async fn retention_policies(database: &str) -> Vec<String> {
    let answer = query(database, &format!("SHOW RETENTION POLICIES ON \"{database}\"")).await;
    records(&answer)
        .iter()
        .filter(|p| p["name"] == "iotpipe")
        .map(|p| {
            let default = if p["default"] == true { " default" } else { "" };
            format!("iotpipe {}{default}", p["duration"].as_str().unwrap_or("?"))
        })
        .collect()
}
