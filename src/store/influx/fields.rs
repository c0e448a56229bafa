//! From a payload to InfluxDB fields. Pure.
//!
//! - JSON object: every leaf becomes a field; nested objects are flattened
//!   with `.` (`{"battery": {"v": 3.7}}` → `battery.v`), arrays with their
//!   index (`{"acc": [1, 2]}` → `acc.0`, `acc.1`), at most [`MAX_DEPTH`]
//!   levels and [`MAX_FIELDS`] fields; `null` is skipped.
//! - Numbers are floats (always: InfluxDB fixes a field's type per shard,
//!   and `1` then `1.5` must not conflict), booleans are booleans, strings
//!   are strings (cut at [`MAX_STRING`] bytes).
//! - Keys that InfluxDB refuses or that clash with iotpipe's own fields and
//!   tags (`time`, `id`, `mqtt_topic`, `event_time_ms`, `tenant_id`, `project_id`,
//!   `device_id`, and the empty key) get the prefix `payload.`.
//! - A JSON value that is not an object is the field `value`.
//! - A payload that is not JSON is the string field `raw` when it is UTF-8
//!   text, else `raw_base64` (standard base64).

use base64::Engine as _;
use serde_json::Value;
use std::collections::HashSet;

/// Deepest nesting that is flattened; deeper values are skipped.
pub const MAX_DEPTH: usize = 8;
/// Most fields taken from one payload; the rest are skipped.
pub const MAX_FIELDS: usize = 256;
/// InfluxDB 1.x limits string fields to 64 KiB.
pub const MAX_STRING: usize = 64 * 1024 - 1;

/// Field keys that iotpipe writes itself, or InfluxDB refuses.
const RESERVED: [&str; 8] = ["time", "id", "mqtt_topic", "event_time_ms", "tenant_id", "project_id", "device_id", ""];

/// One field value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Every JSON number.
    Float(f64),
    /// A JSON boolean.
    Bool(bool),
    /// A JSON string, or the raw payload.
    Str(String),
}

/// The fields of one payload, keys unique, in key order (serde_json's maps
/// are sorted), so the first of two keys that flatten alike wins.
pub fn payload_fields(payload: &[u8]) -> Vec<(String, FieldValue)> {
    let mut out = Flattener { fields: Vec::new(), seen: HashSet::new() };
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => {
            for (key, value) in &map {
                let key = if RESERVED.contains(&key.as_str()) { format!("payload.{key}") } else { key.clone() };
                out.flatten(key, value, 1);
            }
        }
        Ok(other) => out.flatten("value".to_string(), &other, 1),
        Err(_) => match std::str::from_utf8(payload) {
            Ok(text) => out.push("raw".into(), FieldValue::Str(truncate(text, MAX_STRING).to_string())),
            Err(_) => {
                let cut = &payload[..payload.len().min(MAX_STRING / 4 * 3)];
                out.push("raw_base64".into(), FieldValue::Str(base64::engine::general_purpose::STANDARD.encode(cut)));
            }
        },
    }
    out.fields
}

struct Flattener {
    fields: Vec<(String, FieldValue)>,
    seen: HashSet<String>,
}

impl Flattener {
    fn push(&mut self, key: String, value: FieldValue) {
        if self.fields.len() < MAX_FIELDS && self.seen.insert(key.clone()) {
            self.fields.push((key, value));
        }
    }

    fn flatten(&mut self, key: String, value: &Value, depth: usize) {
        if self.fields.len() >= MAX_FIELDS {
            return;
        }
        match value {
            Value::Null => {}
            Value::Bool(b) => self.push(key, FieldValue::Bool(*b)),
            Value::Number(n) => {
                if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                    self.push(key, FieldValue::Float(f));
                }
            }
            Value::String(s) => self.push(key, FieldValue::Str(truncate(s, MAX_STRING).to_string())),
            Value::Array(items) if depth < MAX_DEPTH => {
                for (i, item) in items.iter().enumerate() {
                    self.flatten(format!("{key}.{i}"), item, depth + 1);
                }
            }
            Value::Object(map) if depth < MAX_DEPTH => {
                for (k, item) in map {
                    self.flatten(format!("{key}.{k}"), item, depth + 1);
                }
            }
            Value::Array(_) | Value::Object(_) => {}
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use FieldValue::*;

    fn keys(fields: &[(String, FieldValue)]) -> Vec<&str> {
        fields.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn numbers_are_floats_and_types_are_kept() {
        let f = payload_fields(br#"{"temp": 21, "hum": 40.5, "ok": true, "mode": "eco", "none": null}"#);
        assert_eq!(
            f,
            vec![
                ("hum".into(), Float(40.5)),
                ("mode".into(), Str("eco".into())),
                ("ok".into(), Bool(true)),
                ("temp".into(), Float(21.0)),
            ]
        );
    }

    #[test]
    fn nested_objects_and_arrays_are_flattened_with_dots() {
        let f = payload_fields(br#"{"battery": {"v": 3.7, "cells": [1, 2]}, "acc": [0.1, {"x": 5}]}"#);
        assert_eq!(keys(&f), vec!["acc.0", "acc.1.x", "battery.cells.0", "battery.cells.1", "battery.v"]);
    }

    #[test]
    fn reserved_keys_get_a_prefix() {
        let f = payload_fields(br#"{"time": 1, "id": "x", "device_id": "d", "": 2, "t": 3}"#);
        assert_eq!(keys(&f), vec!["payload.", "payload.device_id", "payload.id", "t", "payload.time"]);
    }

    #[test]
    fn scalars_and_non_json() {
        assert_eq!(payload_fields(b"42"), vec![("value".into(), Float(42.0))]);
        assert_eq!(payload_fields(b"[1,2]"), vec![("value.0".into(), Float(1.0)), ("value.1".into(), Float(2.0))]);
        assert_eq!(payload_fields(b"hello"), vec![("raw".into(), Str("hello".into()))]);
        assert_eq!(payload_fields(&[0xff, 0x00]), vec![("raw_base64".into(), Str("/wA=".into()))]);
        assert_eq!(payload_fields(b"{}"), vec![]);
    }

    #[test]
    fn limits_depth_count_duplicates_and_string_length() {
        let deep = br#"{"a":{"b":{"c":{"d":{"e":{"f":{"g":{"h":{"i":1}}}}}}}}, "z": 2}"#;
        assert_eq!(keys(&payload_fields(deep)), vec!["z"]);
        let many: String = format!("{{{}}}", (0..300).map(|i| format!("\"k{i}\":{i}")).collect::<Vec<_>>().join(","));
        assert_eq!(payload_fields(many.as_bytes()).len(), MAX_FIELDS);
        let dup = br#"{"a.b": 1, "a": {"b": 2}}"#;
        assert_eq!(payload_fields(dup), vec![("a.b".into(), Float(2.0))], "`a` sorts before `a.b`");
        let long = format!("{{\"s\": \"{}\"}}", "é".repeat(40_000));
        let Str(s) = &payload_fields(long.as_bytes())[0].1 else { panic!() };
        assert!(s.len() <= MAX_STRING && s.chars().all(|c| c == 'é'));
    }
}
