//! Telling JSON payloads from the rest, in one pass without building a tree.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Whether the payload is JSON as serde_json reads it: UTF-8, one value,
/// every number within the double range (`1e400` is not, as on PostgreSQL).
/// Such a payload is also JSON to SQLite, whose reader accepts a superset
/// (JSON5), so the JSON functions of the dashboard's queries never fail on
/// a stored row.
pub fn is_json(payload: &[u8]) -> bool {
    std::str::from_utf8(payload).is_ok_and(|s| serde_json::from_str::<Check>(s).is_ok())
}

/// Any JSON value; parsing numbers (unlike `IgnoredAny`) checks their range.
struct Check;

impl<'de> Deserialize<'de> for Check {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckVisitor)
    }
}

struct CheckVisitor;

impl<'de> Visitor<'de> for CheckVisitor {
    type Value = Check;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Check, E> {
        Ok(Check)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Check, E> {
        Ok(Check)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Check, E> {
        Ok(Check)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Check, E> {
        Ok(Check)
    }
    fn visit_str<E>(self, _: &str) -> Result<Check, E> {
        Ok(Check)
    }
    fn visit_unit<E>(self) -> Result<Check, E> {
        Ok(Check)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Check, A::Error> {
        while seq.next_element::<Check>()?.is_some() {}
        Ok(Check)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Check, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, Check>()?.is_some() {}
        Ok(Check)
    }
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
