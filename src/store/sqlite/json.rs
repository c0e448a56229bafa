//! Telling JSON payloads from the rest (the `is_json` column).

use crate::store::json::{self, JsonRules};

/// Whether the payload is JSON as serde_json reads it: UTF-8, one value,
/// every number within the double range (`1e400` is not, as on PostgreSQL);
/// NUL in a string is allowed ([`JsonRules::SQLITE`]). Such a payload is
/// also JSON to SQLite, whose reader accepts a superset (JSON5), so the JSON
/// functions of the dashboard's queries never fail on a stored row.
pub fn is_json(payload: &[u8]) -> bool {
    json::is_json(payload, JsonRules::SQLITE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_recognised_and_everything_else_is_not() {
        for ok in [&br#"{"a": 1, "b": [1.5, {"c": null}]}"#[..], b"[1, 2]", b"3", b"\"text\"", br#"{"n": "a\u0000b"}"#]
        {
            assert!(is_json(ok), "{}", String::from_utf8_lossy(ok));
        }
        for bad in [&b""[..], b"plain text", b"\xff\xfe{}", b"{\"a\": 1", b"1e400", b"{\"a\": [1e400]}", b"{} {}"] {
            assert!(!is_json(bad), "{}", String::from_utf8_lossy(bad));
        }
    }
}
