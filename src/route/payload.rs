//! Fields read from a JSON payload through JSON pointers (RFC 6901).
//!
//! Lookups walk the raw text level by level with `serde_json`'s borrowed
//! `RawValue` instead of building a `Value` tree: the message path parses
//! each payload once and allocates almost nothing.

use super::scan::{self, Scan};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Epoch values at or above this are milliseconds, below it seconds
/// (1e11 s is the year 5138; 1e11 ms is 1973).
const MILLIS_THRESHOLD: f64 = 1e11;

/// Parse (and so validate) a whole JSON document without building a tree.
pub fn parse(text: &str) -> Result<&RawValue, serde_json::Error> {
    serde_json::from_str(text)
}

/// The value at `pointer` (`""` is the whole document).
pub fn lookup<'a>(doc: &'a RawValue, pointer: &str) -> Option<&'a RawValue> {
    let mut cur = doc;
    if pointer.is_empty() {
        return Some(cur);
    }
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = unescape(token);
        let mut de = serde_json::Deserializer::from_str(cur.get());
        let [found, _] = Children { tokens: [Some(&token), None] }.deserialize(&mut de).ok()?;
        cur = found?;
    }
    Some(cur)
}

/// Parse (and so validate) a whole document and find the values at up to
/// two pointers in the same pass: the route reads the device id and the
/// event time of every message, and a parse plus one walk per pointer read
/// each payload three times (BENCHMARKS.md, "Bridge profile"). Agrees with
/// [`parse`] on what is valid and with [`lookup`] on what is found.
///
/// Each value comes back as its JSON text (what `RawValue::get` gives):
/// the scanner's slices are used as they are, not parsed again.
pub fn parse_and_find<'a>(
    text: &'a str,
    pointers: [Option<&str>; 2],
) -> Result<[Option<&'a str>; 2], serde_json::Error> {
    find(text, pointers, true)
}

/// [`parse_and_find`], through the byte scanner ([`super::scan`]) or not:
/// without it, the serde pass it replaced, still used for what the scanner
/// leaves undecided, and kept selectable to compare the two.
pub(super) fn find<'a>(
    text: &'a str,
    pointers: [Option<&str>; 2],
    scanner: bool,
) -> Result<[Option<&'a str>; 2], serde_json::Error> {
    // Each pointer as its first token and what follows it, if anything.
    let split = pointers.map(|p| {
        p.and_then(|p| p.strip_prefix('/')).map(|p| match p.split_once('/') {
            Some((first, rest)) => (first, Some(rest)),
            None => (p, None),
        })
    });
    let general = || -> Result<[Option<&'a str>; 2], serde_json::Error> {
        let doc = parse(text)?;
        Ok(pointers.map(|p| p.and_then(|p| lookup(doc, p)).map(RawValue::get)))
    };
    // One pass for an object or array at the top; any other document, or a
    // pointer that does not start with `/`, takes the general path.
    let container = matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['));
    if !container || pointers.iter().zip(&split).any(|(p, t)| p.is_some() && t.is_none()) {
        return general();
    }
    let tokens = split.map(|t| t.map(|(first, _)| unescape(first)));
    let tokens = [tokens[0].as_deref(), tokens[1].as_deref()];
    let verdict = if scanner { scan::scan(text, tokens) } else { Scan::Unsure };
    let top: [Option<&'a str>; 2] = match verdict {
        Scan::Valid(values) => values,
        // The general path gives serde's error.
        Scan::Invalid => return general(),
        Scan::Unsure => {
            let mut de = serde_json::Deserializer::from_str(text);
            match (Children { tokens }).deserialize(&mut de) {
                Ok(top) if de.end().is_ok() => top.map(|v| v.map(RawValue::get)),
                // Invalid, or a key this pass cannot read (a lone surrogate
                // escape, which `parse` accepts): the general path decides.
                _ => return general(),
            }
        }
    };
    let mut found = [None, None];
    for (i, slot) in found.iter_mut().enumerate() {
        if let (Some(value), Some((_, rest))) = (top[i], split[i]) {
            *slot = match rest {
                None => Some(value),
                // Deeper pointers walk the value, parsed as a `RawValue` for that.
                Some(rest) => match serde_json::from_str::<&RawValue>(value) {
                    Ok(raw) => lookup(raw, &format!("/{rest}")).map(RawValue::get),
                    Err(_) => return general(),
                },
            };
        }
    }
    Ok(found)
}

fn unescape(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(token)
    }
}

/// The members of an object (by key) or array (by index) that up to two
/// tokens name, validating the rest as it goes; a scalar has none.
struct Children<'t> {
    tokens: [Option<&'t str>; 2],
}

impl<'de> DeserializeSeed<'de> for Children<'_> {
    type Value = [Option<&'de RawValue>; 2];
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Children<'_> {
    type Value = [Option<&'de RawValue>; 2];
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object or array")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // A repeated key: the last one counts, as in `serde_json::Value`, the
        // sink's decoder and the envelope, so every stage reads the same value.
        let mut found = [None, None];
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let hits = self.tokens.map(|t| t == Some(key.as_ref()));
            if hits.contains(&true) {
                let value = map.next_value::<&'de RawValue>()?;
                for (slot, hit) in found.iter_mut().zip(hits) {
                    if hit {
                        *slot = Some(value);
                    }
                }
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let indexes = self.tokens.map(|t| t.and_then(array_index));
        let mut found = [None, None];
        let mut i = 0;
        while let Some(v) = seq.next_element::<&'de RawValue>()? {
            for (slot, index) in found.iter_mut().zip(indexes) {
                if index == Some(i) {
                    *slot = Some(v);
                }
            }
            i += 1;
        }
        Ok(found)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok([None, None])
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok([None, None])
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok([None, None])
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok([None, None])
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok([None, None])
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok([None, None])
    }
}

/// An array index token (RFC 6901: `0` or digits without a leading zero; no sign).
pub(super) fn array_index(token: &str) -> Option<usize> {
    let canonical = token == "0" || (!token.starts_with('0') && token.bytes().all(|b| b.is_ascii_digit()));
    if canonical {
        token.parse().ok()
    } else {
        None
    }
}

/// The device id at `pointer`: strings verbatim, numbers and booleans as text.
#[cfg(any(test, feature = "fuzzing"))]
pub fn device_id(doc: &RawValue, pointer: &str) -> Option<String> {
    device_id_of(lookup(doc, pointer)?.get()).map(Cow::into_owned)
}

/// A device id value (its JSON text, found with [`parse_and_find`]) as
/// text, borrowed from the payload unless it has escapes.
pub fn device_id_of(value: &str) -> Option<Cow<'_, str>> {
    let raw = value.trim();
    match raw.as_bytes().first()? {
        b'"' => string_of(raw).filter(|s| !s.is_empty()),
        b'-' | b'0'..=b'9' | b't' | b'f' => Some(Cow::Borrowed(raw)),
        _ => None,
    }
}

/// The text of a JSON string (`raw` starts with `"`): between its quotes
/// when it has no backslash, since a valid string without escapes is its
/// own text; decoded by serde otherwise.
fn string_of(raw: &str) -> Option<Cow<'_, str>> {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Some(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(raw).ok().map(Cow::Owned),
    }
}

/// The event time at `pointer` in epoch milliseconds: epoch ms or s (number or
/// numeric string) or an RFC 3339 string.
#[cfg(any(test, feature = "fuzzing"))]
pub fn event_time_ms(doc: &RawValue, pointer: &str) -> Option<i64> {
    event_time_of(lookup(doc, pointer)?.get())
}

/// An event time value (its JSON text, found with [`parse_and_find`]) in
/// epoch milliseconds.
pub fn event_time_of(value: &str) -> Option<i64> {
    let raw = value.trim();
    match raw.as_bytes().first()? {
        b'"' => parse_time_str(&string_of(raw)?),
        b'-' | b'0'..=b'9' => epoch_to_ms(raw.parse::<f64>().ok()?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc(text: &str) -> &RawValue {
        parse(text).unwrap()
    }

    #[test]
    fn device_id_from_string_or_number() {
        let d = doc(
            r#"{"deviceId": "dev-1", "meta": {"id": 42, "list": ["a", "b"]}, "empty": "", "n": null, "a/b": "slash", "t~x": "tilde"}"#,
        );
        assert_eq!(device_id(d, "/deviceId").as_deref(), Some("dev-1"));
        assert_eq!(device_id(d, "/meta/id").as_deref(), Some("42"));
        assert_eq!(device_id(d, "/meta/list/1").as_deref(), Some("b"));
        assert_eq!(device_id(d, "/a~1b").as_deref(), Some("slash"));
        assert_eq!(device_id(d, "/t~0x").as_deref(), Some("tilde"));
        assert_eq!(device_id(d, "/empty"), None);
        assert_eq!(device_id(d, "/n"), None);
        assert_eq!(device_id(d, "/meta"), None);
        assert_eq!(device_id(d, "/missing"), None);
        assert_eq!(device_id(d, "/meta/list/9"), None);
        assert_eq!(device_id(d, "/deviceId/deeper"), None);
    }

    #[test]
    fn escaped_keys_and_values_are_decoded() {
        let d = doc(r#"{"dev\u0069ceId": "d\"1"}"#);
        assert_eq!(device_id(d, "/deviceId").as_deref(), Some("d\"1"));
    }

    #[test]
    fn event_time_accepts_ms_seconds_and_rfc3339() {
        let d = doc(r#"{"ms": 1700000000123, "s": 1700000000, "f": 1700000000.5, "rfc": "2023-11-14T22:13:20.123Z",
                "str": "1700000000123", "bad": "yesterday", "neg": -5, "obj": {}}"#);
        assert_eq!(event_time_ms(d, "/ms"), Some(1_700_000_000_123));
        assert_eq!(event_time_ms(d, "/s"), Some(1_700_000_000_000));
        assert_eq!(event_time_ms(d, "/f"), Some(1_700_000_000_500));
        assert_eq!(event_time_ms(d, "/rfc"), Some(1_700_000_000_123));
        assert_eq!(event_time_ms(d, "/str"), Some(1_700_000_000_123));
        assert_eq!(event_time_ms(d, "/bad"), None);
        assert_eq!(event_time_ms(d, "/neg"), None);
        assert_eq!(event_time_ms(d, "/obj"), None);
    }

    #[test]
    fn invalid_documents_are_rejected_by_parse() {
        assert!(parse("{\"a\":1").is_err());
        assert!(parse("{\"a\":1} trailing").is_err());
        assert!(parse("[1, 2,]").is_err());
        assert!(parse(" {\"a\": [1, {\"b\": null}]} ").is_ok());
    }

    /// Fuzz finding (fuzz/regressions/payload/leading-zero-index): `/list/01`
    /// and `/list/+1` named element 1; RFC 6901 allows neither.
    #[test]
    fn array_indexes_have_no_leading_zero_or_sign() {
        let d = doc(r#"{"list": ["a", "b"]}"#);
        assert_eq!(device_id(d, "/list/1").as_deref(), Some("b"));
        assert_eq!(device_id(d, "/list/0").as_deref(), Some("a"));
        assert_eq!(device_id(d, "/list/01"), None);
        assert_eq!(device_id(d, "/list/+1"), None);
        assert_eq!(device_id(d, "/list/00"), None);
    }

    /// A string without escapes is borrowed from the payload as it is (no
    /// allocation per message); one with escapes is decoded; both as serde
    /// decodes them.
    #[test]
    fn a_plain_device_id_is_borrowed_and_an_escaped_one_decoded() {
        for (raw, text, borrowed) in [
            (r#""dev-1""#, "dev-1", true),
            (r#" "dev 1" "#, "dev 1", true),
            (r#""dév/ü""#, "dév/ü", true),
            (r#""a\"b""#, "a\"b", false),
            (r#""\u00e9t\u00e9""#, "été", false),
            (r#""a\\""#, "a\\", false),
            ("42", "42", true),
            ("true", "true", true),
        ] {
            let id = device_id_of(raw).unwrap();
            assert_eq!(id, text, "{raw}");
            assert_eq!(matches!(id, Cow::Borrowed(_)), borrowed, "{raw}");
            if raw.trim().starts_with('"') {
                assert_eq!(serde_json::from_str::<String>(raw).unwrap(), text, "{raw}");
            }
        }
        for none in [r#""""#, "null", "{}", "[1]", ""] {
            assert_eq!(device_id_of(none), None, "{none}");
        }
        assert_eq!(event_time_of(r#""1700000000123""#), Some(1_700_000_000_123));
        assert_eq!(event_time_of(r#""2023-11-14T22:13:20.5Z""#), Some(1_700_000_000_500));
        assert_eq!(event_time_of(r#""2023-11-14T22:13:20\u002e5Z""#), Some(1_700_000_000_500));
    }

    /// Fuzz finding (fuzz/regressions/payload/duplicate-key): with a repeated
    /// key the route took the first value while the envelope and the sink take
    /// the last, so a record's device id depended on the stage reading it.
    #[test]
    fn a_repeated_key_resolves_to_its_last_value() {
        let d = doc(r#"{"d": "first", "n": {"x": 1}, "d": "last", "n": {"x": 2}}"#);
        assert_eq!(device_id(d, "/d").as_deref(), Some("last"));
        assert_eq!(lookup(d, "/n/x").map(RawValue::get), Some("2"));
        let tree: serde_json::Value = serde_json::from_str(d.get()).unwrap();
        assert_eq!(tree.pointer("/d").and_then(|v| v.as_str()), Some("last"));
    }

    #[test]
    fn one_pass_finds_what_lookup_finds() {
        let text = r#"{"d": "first", "meta": {"id": 42, "a/b": [1, 2]}, "ts": 1700000000123, "d": "last"}"#;
        for (a, b) in
            [("/d", "/ts"), ("/meta/id", "/meta/a~1b/1"), ("/missing", "/d"), ("/ts", "/ts"), ("/meta", "/d/x")]
        {
            let found = parse_and_find(text, [Some(a), Some(b)]).unwrap();
            let doc = parse(text).unwrap();
            assert_eq!(found, [lookup(doc, a), lookup(doc, b)].map(|v| v.map(RawValue::get)));
        }
        let arr = parse_and_find(r#"[{"x": 1}, "y"]"#, [Some("/1"), Some("/0/x")]).unwrap();
        assert_eq!(arr, [Some(r#""y""#), Some("1")]);
        assert!(parse_and_find("7", [Some("/a"), None]).unwrap().iter().all(Option::is_none));
        assert!(parse_and_find(r#"{"a": 1}"#, [None, None]).unwrap().iter().all(Option::is_none));
    }

    #[test]
    fn one_pass_rejects_what_parse_rejects() {
        for bad in ["{\"a\":1", "{\"a\":1} trailing", "[1, 2,]", "{\"a\": tru}", "{\"a\": \"\\x\"}", ""] {
            assert!(parse(bad).is_err());
            assert!(parse_and_find(bad, [Some("/a"), Some("/b")]).is_err(), "{bad}");
        }
        assert!(parse_and_find(r#"{"a": 1e400, "b": [1e400]}"#, [Some("/b"), None]).is_ok());
        assert!(parse_and_find("1e400", [Some("/a"), None]).is_ok());
    }

    proptest! {
        /// The one-pass search agrees with parse + lookup on arbitrary text
        /// (validity included) for arbitrary pointers.
        #[test]
        fn one_pass_agrees_with_parse_and_lookup(
            text in r#"[\[\]{}",:0-9a-z ]{0,40}"#,
            a in "(/[a-z0-9~]{0,3}){1,3}",
            b in "(/[a-z0-9~]{0,3}){1,3}",
        ) {
            let ours = parse_and_find(&text, [Some(&a), Some(&b)]).map(|f| f.map(|v| v.map(str::to_string)));
            let theirs = parse(&text).map(|d| [lookup(d, &a), lookup(d, &b)].map(|v| v.map(|r| r.get().to_string())));
            prop_assert_eq!(ours.is_ok(), theirs.is_ok());
            if let (Ok(o), Ok(t)) = (ours, theirs) { prop_assert_eq!(o, t); }
        }

        /// The raw lookup agrees with serde_json's own pointer on arbitrary documents.
        #[test]
        fn lookup_agrees_with_value_pointer(keys in proptest::collection::vec("[a-z~/]{1,4}", 1..5), n in 0i64..1000) {
            let mut v = serde_json::json!(n);
            for k in keys.iter().rev() {
                v = serde_json::json!({ k.clone(): v, "other": [1, "x"] });
            }
            let text = v.to_string();
            let pointer: String = keys.iter().map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1"))).collect();
            let raw = lookup(parse(&text).unwrap(), &pointer).map(|r| r.get().to_string());
            prop_assert_eq!(raw, v.pointer(&pointer).map(|x| x.to_string()));
        }
    }
}
