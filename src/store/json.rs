//! JSON in the stores, one place for each rule: whether a payload is one JSON
//! value the store's JSON type takes (one streaming pass with serde_json, no
//! tree built; what differs between the stores is a [`JsonRules`]
//! parameter), and the object a dead letter's headers are stored as.

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};

/// What a store's JSON type refuses beyond what every store refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonRules {
    /// Whether a string or key may hold U+0000 (written `\u0000`).
    pub nul_in_strings: bool,
}

impl JsonRules {
    /// PostgreSQL `jsonb`: no NUL in a string or key.
    pub const JSONB: Self = Self { nul_in_strings: false };
    /// SQLite's JSON functions: NUL is a character like any other.
    pub const SQLITE: Self = Self { nul_in_strings: true };
}

/// Whether `payload` is exactly one JSON value as serde_json reads it and
/// `rules` allow. Every store refuses: invalid UTF-8 (also inside strings),
/// an unpaired surrogate escape (`"\ud800"`), a number beyond the double
/// range (`1e400`, as on PostgreSQL), anything but whitespace after the
/// value, and an empty payload.
pub fn is_json(payload: &[u8], rules: JsonRules) -> bool {
    let mut de = serde_json::Deserializer::from_slice(payload);
    Check(rules).deserialize(&mut de).is_ok() && de.end().is_ok()
}

/// A record's headers as the JSON object the dead-letter tables hold: one
/// member per name, a repeated name keeping its last value. `text` maps
/// each name and value to what the store can hold (PostgreSQL has no NUL in
/// text).
pub fn headers_object(headers: &[(String, String)], text: impl Fn(&str) -> String) -> serde_json::Value {
    let map = headers.iter().map(|(k, v)| (text(k), serde_json::Value::String(text(v)))).collect();
    serde_json::Value::Object(map)
}

/// Reads any JSON value under `rules`; parsing numbers (unlike `IgnoredAny`)
/// checks their range.
#[derive(Clone, Copy)]
struct Check(JsonRules);

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: Error>(self, s: &str) -> Result<(), E> {
        if !self.0.nul_in_strings && s.contains('\0') {
            return Err(E::custom("NUL in a string"));
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry_seed(self, self)?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: [JsonRules; 2] = [JsonRules::JSONB, JsonRules::SQLITE];

    #[test]
    fn every_store_takes_json_values_of_any_shape() {
        for ok in [
            &br#"{"a": 1, "b": [1.5, {"c": null}], "d": true, "e": -3, "f": 18446744073709551615}"#[..],
            b"[]",
            b"{}",
            b" 3 ",
            b"\"text\"",
            b"null",
            br#"{"path": "C:\\u0000"}"#,
            br#"{"c": "\u00e9\ud83d\ude00"}"#,
            "{\"\u{e9}\": \"\u{1F600}\"}".as_bytes(),
        ] {
            for rules in BOTH {
                assert!(is_json(ok, rules), "{rules:?}: {}", String::from_utf8_lossy(ok));
            }
        }
    }

    #[test]
    fn every_store_refuses_what_is_not_one_json_value() {
        for bad in [
            &b""[..],
            b"   ",
            b"plain text",
            b"\xff\xfe{}",
            b"\"\xff\"",
            b"{\"a\": 1",
            b"{\"a\": 1,}",
            b"1e400",
            b"{\"a\": [1e400]}",
            b"{} {}",
            b"[1] x",
            br#""\ud800""#,
            br#"{"\udc00": 1}"#,
            b"\"a\x01b\"",
            b"NaN",
            b"\xef\xbb\xbf{}",
        ] {
            for rules in BOTH {
                assert!(!is_json(bad, rules), "{rules:?}: {}", String::from_utf8_lossy(bad));
            }
        }
    }

    #[test]
    fn only_jsonb_refuses_nul_in_strings_and_keys() {
        for nul in
            [&br#"{"n": "a\u0000b"}"#[..], br#"{"k\u0000": 1}"#, br#"["\u0000"]"#, br#"{"a": {"b": ["x", "\u0000"]}}"#]
        {
            assert!(!is_json(nul, JsonRules::JSONB), "{}", String::from_utf8_lossy(nul));
            assert!(is_json(nul, JsonRules::SQLITE), "{}", String::from_utf8_lossy(nul));
        }
    }

    #[test]
    fn nesting_deeper_than_serde_json_reads_is_refused_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        for rules in BOTH {
            assert!(!is_json(deep.as_bytes(), rules));
        }
    }
}
