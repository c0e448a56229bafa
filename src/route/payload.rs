//! Fields read from a JSON payload through JSON pointers (RFC 6901).

use serde_json::Value;

/// Epoch values at or above this are milliseconds, below it seconds
/// (1e11 s is the year 5138; 1e11 ms is 1973).
const MILLIS_THRESHOLD: f64 = 1e11;

/// The device id at `pointer`: strings verbatim, numbers and booleans as text.
pub fn device_id(doc: &Value, pointer: &str) -> Option<String> {
    match doc.pointer(pointer)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The event time at `pointer` in epoch milliseconds: epoch ms or s (number or
/// numeric string) or an RFC 3339 string.
pub fn event_time_ms(doc: &Value, pointer: &str) -> Option<i64> {
    match doc.pointer(pointer)? {
        Value::Number(n) => epoch_to_ms(n.as_f64()?),
        Value::String(s) => parse_time_str(s),
        _ => None,
    }
}

fn epoch_to_ms(v: f64) -> Option<i64> {
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let ms = if v >= MILLIS_THRESHOLD { v } else { v * 1000.0 };
    (ms < 4.0e15).then_some(ms as i64)
}

fn parse_time_str(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Ok(v) = t.parse::<f64>() {
        return epoch_to_ms(v);
    }
    let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Milliseconds since the epoch as RFC 3339 UTC with millisecond precision.
pub fn format_ms(ms: i64) -> String {
    let Ok(dt) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    dt.format(&fmt).unwrap_or_else(|_| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn device_id_from_string_or_number() {
        let doc = json!({"deviceId": "dev-1", "meta": {"id": 42}, "empty": ""});
        assert_eq!(device_id(&doc, "/deviceId").as_deref(), Some("dev-1"));
        assert_eq!(device_id(&doc, "/meta/id").as_deref(), Some("42"));
        assert_eq!(device_id(&doc, "/empty"), None);
        assert_eq!(device_id(&doc, "/missing"), None);
    }

    #[test]
    fn event_time_accepts_ms_seconds_and_rfc3339() {
        let doc = json!({
            "ms": 1_700_000_000_123_i64, "s": 1_700_000_000, "f": 1_700_000_000.5,
            "rfc": "2023-11-14T22:13:20.123Z", "str": "1700000000123", "bad": "yesterday", "neg": -5
        });
        assert_eq!(event_time_ms(&doc, "/ms"), Some(1_700_000_000_123));
        assert_eq!(event_time_ms(&doc, "/s"), Some(1_700_000_000_000));
        assert_eq!(event_time_ms(&doc, "/f"), Some(1_700_000_000_500));
        assert_eq!(event_time_ms(&doc, "/rfc"), Some(1_700_000_000_123));
        assert_eq!(event_time_ms(&doc, "/str"), Some(1_700_000_000_123));
        assert_eq!(event_time_ms(&doc, "/bad"), None);
        assert_eq!(event_time_ms(&doc, "/neg"), None);
    }

    #[test]
    fn formats_rfc3339_millis() {
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
