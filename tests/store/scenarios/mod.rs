//! The store scenarios, each written once for every engine (the engines
//! differ only where `Engine`'s capability methods say so), and the checks
//! they share.

pub mod dead_letters;
pub mod retention;
pub mod rows;
pub mod schema;

use crate::engine::{Device, Engine, Kind, Stored};
use iotpipe::store::StoreRow;
use serde_json::Value;
use std::collections::HashMap;

/// Rows per (tenant, project, device).
pub fn per_device(rows: &[StoreRow]) -> HashMap<Device, i64> {
    let mut expected: HashMap<Device, i64> = HashMap::new();
    for r in rows {
        *expected.entry((r.tenant_id.clone(), r.project_id.clone(), r.device_id.clone())).or_default() += 1;
    }
    expected
}

/// The store kept `row` (a JSON payload, event time inside the window) as written.
pub fn assert_kept(engine: &Engine, s: &Stored, row: &StoreRow) {
    assert_eq!(s.id, row.id.to_string());
    assert_eq!(s.time_ms, row.time_ms, "event time inside the window is the row's time");
    assert_eq!(s.event_time_ms, Some(row.time_ms));
    assert_received(engine, s, row);
    assert_eq!(
        (&s.tenant_id, &s.project_id, &s.device_id, &s.mqtt_topic),
        (&row.tenant_id, &row.project_id, &row.device_id, &row.mqtt_topic)
    );
    let doc: Value = serde_json::from_slice(&row.payload).expect("a JSON payload");
    if engine.flattens_json() {
        assert_eq!(s.raw, None, "JSON becomes fields");
        assert_eq!(s.json, Some(flatten(&doc)), "every leaf of the payload is a field");
    } else {
        assert_eq!(s.raw.as_deref(), Some(row.payload.as_ref()), "raw is byte-identical");
        assert_eq!(s.json, Some(doc));
    }
}

/// The receive time is kept (every engine but InfluxDB keeps it).
pub fn assert_received(engine: &Engine, s: &Stored, row: &StoreRow) {
    match s.received_ms {
        Some(received) => assert_eq!(received, row.received_ms),
        None => assert_eq!(engine.kind, Kind::Influx, "only InfluxDB drops the receive time"),
    }
}

/// InfluxDB's fields of a JSON object (docs/storage.md): leaves, nested keys
/// joined with `.`, array items by index, numbers as floats, nulls skipped.
pub fn flatten(doc: &Value) -> Value {
    fn walk(prefix: &str, v: &Value, out: &mut serde_json::Map<String, Value>) {
        let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
        match v {
            Value::Object(map) => map.iter().for_each(|(k, v)| walk(&join(k), v, out)),
            Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| walk(&join(&i.to_string()), v, out)),
            Value::Null => {}
            Value::Number(n) => {
                out.insert(prefix.to_string(), Value::from(n.as_f64().expect("finite")));
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let mut out = serde_json::Map::new();
    walk("", doc, &mut out);
    Value::Object(out)
}
