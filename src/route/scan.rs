//! A validating byte scanner: the fast path of [`super::payload::parse_and_find`].
//!
//! Why it exists: the route reads two top-level members of every payload
//! (device id, event time) and must also validate the whole document. The
//! serde pass this replaces (a `Visitor` over the top-level object, still
//! the fallback) pays for every member through the visitor machinery: the
//! key decoded into a `Cow<str>`, a `MapAccess` step, and for the members
//! not asked for `next_value::<IgnoredAny>()`. (In serde_json 1.0.154 that
//! skips values with `ignore_value`, which does not convert numbers to
//! `f64`; the cost is the per-member machinery, not number parsing.) This
//! scanner walks the bytes once, in place, allocates nothing, and returns
//! the wanted members as slices of the text: see `scan_speed` below.
//!
//! It accepts exactly what `serde_json::from_str::<&RawValue>` (serde_json's
//! `ignore_value`) accepts: whitespace is space, tab, LF and CR only; numbers
//! are `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` with no range check;
//! strings reject bytes below 0x20 and allow the escapes `\" \\ \/ \b \f \n
//! \r \t` and `\u` with four hex digits of any value (lone surrogates too);
//! nothing but whitespace may follow the document. That parse has no nesting
//! limit (`ignore_value` is iterative; serde_json's recursion limit of 128
//! applies only to visitor-driven parsing), so neither does this, but it
//! tracks only `MAX_DEPTH` levels and leaves deeper documents to serde.
//!
//! What it does not decide ([`Scan::Unsure`]) the caller leaves to serde: a
//! document that is not an object or array, one nested deeper than
//! `MAX_DEPTH`, and a top-level key with a backslash escape (comparing it
//! with a token would need decoding it) when a token is asked for.

use super::payload::array_index;

/// Containers tracked inside a top-level member (one bit each, on the stack).
const MAX_DEPTH: usize = 256;

/// What a scan found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scan<'a> {
    /// Valid: the raw text of the top-level members the two tokens name (an
    /// object's key, the last one if repeated, or an array's RFC 6901 index).
    Valid([Option<&'a str>; 2]),
    /// Invalid: serde's parse rejects it too (and gives the error).
    Invalid,
    /// Not decided here (see the module doc): serde decides.
    Unsure,
}

/// Why a scan stopped early.
enum Stop {
    Invalid,
    Unsure,
}

type Step<T = ()> = Result<T, Stop>;

/// Validate `text` and find the top-level members named by `tokens`
/// (already unescaped from `~0` and `~1`).
pub(super) fn scan<'a>(text: &'a str, tokens: [Option<&str>; 2]) -> Scan<'a> {
    let mut s = Scanner { b: text.as_bytes(), i: 0 };
    s.ws();
    let found = match s.peek() {
        Some(b'{') => s.object(tokens),
        Some(b'[') => s.array(tokens.map(|t| t.and_then(array_index))),
        _ => return Scan::Unsure,
    };
    let found = match found {
        Ok(found) => found,
        Err(Stop::Invalid) => return Scan::Invalid,
        Err(Stop::Unsure) => return Scan::Unsure,
    };
    s.ws();
    if s.i != s.b.len() {
        return Scan::Invalid;
    }
    // Every range starts and ends next to an ASCII byte, so on a char
    // boundary; `get` rather than indexing all the same.
    let mut values = [None, None];
    for (slot, range) in values.iter_mut().zip(found) {
        if let Some((start, end)) = range {
            match text.get(start..end) {
                Some(v) => *slot = Some(v),
                None => return Scan::Unsure,
            }
        }
    }
    Scan::Valid(values)
}

/// The byte ranges of the members found.
type Found = [Option<(usize, usize)>; 2];

struct Scanner<'a> {
    b: &'a [u8],
    /// The next byte to read.
    i: usize,
}

// `inline(always)` on the small steps: without it the scan of a typical
// payload took about a quarter longer (the position lives in a register).
impl Scanner<'_> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }

    /// Skip JSON whitespace (not form feed, not Unicode spaces).
    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// The top-level object, at its `{`.
    fn object(&mut self, tokens: [Option<&str>; 2]) -> Step<Found> {
        let mut found = [None, None];
        let mut escaped_key = false;
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(found);
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(Stop::Invalid);
            }
            let start = self.i + 1;
            escaped_key |= self.string()?;
            let key = self.b.get(start..self.i - 1).unwrap_or_default();
            self.colon()?;
            let value = self.i;
            self.value()?;
            for (slot, token) in found.iter_mut().zip(&tokens) {
                if token.map(str::as_bytes) == Some(key) {
                    *slot = Some((value, self.i));
                }
            }
            self.ws();
            match self.next() {
                Some(b',') => self.ws(),
                // Validity first: an invalid document is `Invalid` even with an escaped key.
                Some(b'}') if escaped_key && tokens.iter().any(Option::is_some) => return Err(Stop::Unsure),
                Some(b'}') => return Ok(found),
                _ => return Err(Stop::Invalid),
            }
        }
    }

    /// The top-level array, at its `[`.
    fn array(&mut self, indexes: [Option<usize>; 2]) -> Step<Found> {
        let mut found = [None, None];
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(found);
        }
        let mut n = 0;
        loop {
            let value = self.i;
            self.value()?;
            for (slot, index) in found.iter_mut().zip(&indexes) {
                if *index == Some(n) {
                    *slot = Some((value, self.i));
                }
            }
            n += 1;
            self.ws();
            match self.next() {
                Some(b',') => self.ws(),
                Some(b']') => return Ok(found),
                _ => return Err(Stop::Invalid),
            }
        }
    }

    /// Whitespace, a colon, whitespace.
    #[inline(always)]
    fn colon(&mut self) -> Step {
        self.ws();
        if self.next() != Some(b':') {
            return Err(Stop::Invalid);
        }
        self.ws();
        Ok(())
    }

    /// One value of any kind, at its first byte.
    #[inline(always)]
    fn value(&mut self) -> Step {
        match self.peek() {
            Some(b'[' | b'{') => self.nested(),
            _ => self.scalar(),
        }
    }

    /// A string, number or literal, at its first byte.
    #[inline(always)]
    fn scalar(&mut self) -> Step {
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => Err(Stop::Invalid),
        }
    }

    /// An array or object, at its `[` or `{`: iterative like serde's
    /// `ignore_value`, with the open containers in a bit stack.
    fn nested(&mut self) -> Step {
        // Bit `d` is set when the container at depth `d` is an object.
        let mut objects = [0u64; MAX_DEPTH / 64];
        let mut depth = 0;
        loop {
            if let Some(open @ (b'[' | b'{')) = self.peek() {
                if depth == MAX_DEPTH {
                    return Err(Stop::Unsure);
                }
                let object = open == b'{';
                let (word, bit) = (depth / 64, 1u64 << (depth % 64));
                objects[word] = if object { objects[word] | bit } else { objects[word] & !bit };
                depth += 1;
                self.i += 1;
                self.ws();
                if self.peek() != Some(if object { b'}' } else { b']' }) {
                    if object {
                        self.key()?;
                    }
                    continue;
                }
                self.i += 1;
                depth -= 1;
            } else {
                self.scalar()?;
            }
            // A value ended: a comma and the next one, or containers closing.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                let object = objects[(depth - 1) / 64] & (1u64 << ((depth - 1) % 64)) != 0;
                self.ws();
                match self.next() {
                    Some(b',') => {
                        self.ws();
                        if object {
                            self.key()?;
                        }
                        break;
                    }
                    Some(b'}') if object => depth -= 1,
                    Some(b']') if !object => depth -= 1,
                    _ => return Err(Stop::Invalid),
                }
            }
        }
    }

    /// A nested object's key and colon, at the key's opening quote.
    #[inline(always)]
    fn key(&mut self) -> Step {
        if self.peek() != Some(b'"') {
            return Err(Stop::Invalid);
        }
        self.string()?;
        self.colon()
    }

    /// Skip to the next byte that ends or interrupts a string: a quote, a
    /// backslash or a control byte (or the end). Eight bytes at a time, as
    /// serde_json does: the strings are most of a typical payload.
    #[inline(always)]
    fn plain(&mut self) {
        const ONES: u64 = u64::MAX / 255;
        let stop = |c: &u8| *c == b'"' || *c == b'\\' || *c < 0x20;
        let rest = self.b.get(self.i..).unwrap_or_default();
        let mut chunks = rest.chunks_exact(8);
        for chunk in chunks.by_ref() {
            let Ok(bytes) = <[u8; 8]>::try_from(chunk) else { break };
            let v = u64::from_le_bytes(bytes);
            // The high bit of each byte below 0x20, equal to `"` or to `\`
            // (exact for the first such byte, which is all that is used).
            let ctrl = v.wrapping_sub(ONES * 0x20) & !v;
            let quote = v ^ (ONES * u64::from(b'"'));
            let quote = quote.wrapping_sub(ONES) & !quote;
            let backslash = v ^ (ONES * u64::from(b'\\'));
            let backslash = backslash.wrapping_sub(ONES) & !backslash;
            let hits = (ctrl | quote | backslash) & (ONES << 7);
            if hits != 0 {
                self.i += hits.trailing_zeros() as usize / 8;
                return;
            }
            self.i += 8;
        }
        let tail = chunks.remainder();
        self.i += tail.iter().position(stop).unwrap_or(tail.len());
    }

    /// A string, at its opening quote; whether it has a backslash escape.
    #[inline(always)]
    fn string(&mut self) -> Step<bool> {
        self.i += 1;
        let mut escaped = false;
        loop {
            self.plain();
            match self.next() {
                Some(b'"') => return Ok(escaped),
                Some(b'\\') => {
                    escaped = true;
                    match self.next() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {}
                        Some(b'u') => match self.b.get(self.i..self.i + 4) {
                            Some(hex) if hex.iter().all(u8::is_ascii_hexdigit) => self.i += 4,
                            _ => return Err(Stop::Invalid),
                        },
                        _ => return Err(Stop::Invalid),
                    }
                }
                // A control byte, or the end of the text.
                _ => return Err(Stop::Invalid),
            }
        }
    }

    /// A number, at its sign or first digit.
    #[inline(always)]
    fn number(&mut self) -> Step {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.digits() {
            0 => return Err(Stop::Invalid),
            // One leading zero only (a container would reject the digit
            // after it anyway; kept to mirror serde).
            n if n > 1 && self.b.get(self.i - n) == Some(&b'0') => return Err(Stop::Invalid),
            _ => {}
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Stop::Invalid);
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Stop::Invalid);
            }
        }
        Ok(())
    }

    /// Skip digits; how many.
    #[inline(always)]
    fn digits(&mut self) -> usize {
        let n = self.b.get(self.i..).unwrap_or_default().iter().take_while(|c| c.is_ascii_digit()).count();
        self.i += n;
        n
    }

    #[inline(always)]
    fn literal(&mut self, word: &[u8]) -> Step {
        if !self.b.get(self.i..).is_some_and(|rest| rest.starts_with(word)) {
            return Err(Stop::Invalid);
        }
        self.i += word.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::payload::{find, lookup, parse, parse_and_find};
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use serde_json::value::RawValue;

    /// `text` is decided (not `Unsure`) and as `valid` says; serde agrees.
    fn check(text: &str, valid: bool) {
        assert_eq!(parse(text).is_ok(), valid, "serde on {text:?}");
        match scan(text, [Some("a"), Some("b")]) {
            Scan::Valid(_) => assert!(valid, "scanner accepted {text:?}"),
            Scan::Invalid => assert!(!valid, "scanner rejected {text:?}"),
            Scan::Unsure => panic!("scanner undecided on {text:?}"),
        }
        assert_eq!(parse_and_find(text, [Some("/a"), Some("/b")]).is_ok(), valid, "parse_and_find on {text:?}");
    }

    /// `value` in an array, in an object, nested, and at the top of an
    /// object member (the scanner's two entry points).
    fn check_value(value: &str, valid: bool) {
        for text in [
            format!("[{value}]"),
            format!("[1, {value}, 2]"),
            format!(r#"{{"a": {value}}}"#),
            format!(r#"{{"x": [{{"y": {value}}}], "b": 1}}"#),
        ] {
            check(&text, valid);
        }
    }

    #[test]
    fn numbers_follow_serde_grammar() {
        for good in
            ["0", "-0", "1", "-1", "10", "1.5", "-0.0", "0e5", "1E5", "1e+5", "1e-5", "1.5E-05", "1e400", "-1e400"]
        {
            check_value(good, true);
        }
        for bad in ["01", "-01", "1.", ".5", "-", "1e", "1e+", "1E-", "+1", "1.e5", "0x1", "1e5.5", "--1", "1 2", "- 1"]
        {
            check_value(bad, false);
        }
        check_value("123456789012345678901234567890.123456789", true);
    }

    #[test]
    fn literals_are_exact() {
        for good in ["true", "false", "null"] {
            check_value(good, true);
        }
        for bad in ["tru", "True", "nul", "fals", "truex", "nan", "NaN", "Infinity", "undefined"] {
            check_value(bad, false);
        }
    }

    #[test]
    fn strings_reject_control_bytes() {
        for c in (0u8..0x20).map(char::from) {
            check_value(&format!("\"a{c}b\""), false);
        }
        // DEL and non-ASCII are fine.
        check_value("\"a\u{7f}b\"", true);
        check_value("\"é\u{a0}😀\"", true);
        check_value("\"", false);
        check_value("\"abc", false);
    }

    #[test]
    fn every_escape_is_accepted() {
        for e in [r#"\""#, r"\\", r"\/", r"\b", r"\f", r"\n", r"\r", r"\t", r"\u0041", r"\uFFff", r"\uD800", r"\uDC00x"]
        {
            check_value(&format!("\"x{e}y\""), true);
        }
    }

    #[test]
    fn bad_escapes_are_rejected() {
        for e in [r"\a", r"\x41", r"\U0041", r"\0", r"\'", r"\ ", "\\\u{e9}", r"\"] {
            check_value(&format!("\"{e}\""), false);
        }
    }

    #[test]
    fn unicode_escape_needs_four_hex_digits() {
        for e in [r"\u", r"\u1", r"\u12", r"\u123", r"\u123g", r"\ug123", r"\u-123", r"\u 123", r"\u12\u"] {
            check_value(&format!("\"{e}\""), false);
        }
        // Only four: what follows is ordinary text.
        check_value(r#""\u12345""#, true);
        check(r#"["\u123"#, false);
    }

    /// `from_str::<&RawValue>` skips values with serde_json's iterative
    /// `ignore_value`, which has no recursion limit: 127, 128, 129 and far
    /// more levels are all accepted. The scanner decides up to its own
    /// bound and leaves deeper documents to serde.
    #[test]
    fn nesting_depth_matches_serde() {
        for depth in (1..=140).chain(250..=262).chain([1000, 100_000]) {
            let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let objects = format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
            let mixed = format!("{}null{}", r#"[{"a":"#.repeat(depth), "}]".repeat(depth));
            let unclosed = format!("{}{}", "[".repeat(depth), "]".repeat(depth - 1));
            let crossed = format!("{}{}}}", "[".repeat(depth), "]".repeat(depth - 1));
            for (text, valid) in [(arrays, true), (objects, true), (mixed, true), (unclosed, false), (crossed, false)] {
                assert_eq!(parse(&text).is_ok(), valid, "serde, depth {depth}");
                let verdict = scan(&text, [Some("a"), Some("0")]);
                // The top container plus MAX_DEPTH inside it (`mixed` opens two per level).
                let decided = if text.starts_with("[{") { 2 * depth <= MAX_DEPTH + 1 } else { depth <= MAX_DEPTH + 1 };
                match verdict {
                    Scan::Valid(_) => assert!(valid && decided, "depth {depth}: {verdict:?}"),
                    Scan::Invalid => assert!(!valid && decided, "depth {depth}: {verdict:?}"),
                    Scan::Unsure => assert!(!decided, "depth {depth} undecided"),
                }
                assert_eq!(parse_and_find(&text, [Some("/a"), Some("/0")]).is_ok(), valid, "depth {depth}");
            }
        }
    }

    #[test]
    fn structure_errors_are_rejected() {
        for bad in [
            "[1,]",
            "[[1,]]",
            r#"{"a":[1,]}"#,
            r#"[{"a":1,}]"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":{,}}"#,
            "[[,]]",
            "[,1]",
            "[1,,2]",
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a" 1}"#,
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a"::1}"#,
            r#"{"a":1 "b":2}"#,
            "[1 2]",
            r#"{1:2}"#,
            r#"{a:1}"#,
            r#"{'a':1}"#,
            "[}",
            "{]",
            r#"{"a":[1}}"#,
            r#"[{"a":1]]"#,
            "[",
            "{",
            r#"{"a":1"#,
            "[1]]",
            "[1] x",
            "[1] [2]",
            r#"{"a":1}}"#,
            r#"{"a":1} {"#,
            "[1]\0",
            "[1] //",
        ] {
            check(bad, false);
        }
        // No object or array at the top: serde decides (and rejects).
        for bad in ["]", "}", "", " ", ",[1]", ":{}"] {
            assert_eq!(scan(bad, [Some("a"), None]), Scan::Unsure, "{bad:?}");
            assert!(parse(bad).is_err() && parse_and_find(bad, [Some("/a"), None]).is_err(), "{bad:?}");
        }
        for good in ["[]", "{}", "[[]]", "[{}]", r#"{"":{}}"#, r#"{"a":[],"b":{}}"#, "[1,[2,[3]],{\"c\":[]}]"] {
            check(good, true);
        }
    }

    #[test]
    fn only_json_whitespace_between_tokens() {
        for ws in [" ", "\t", "\n", "\r", " \r\n\t "] {
            check(&format!(r#"{ws}{{{ws}"a"{ws}:{ws}[{ws}1{ws},{ws}2{ws}]{ws},{ws}"b"{ws}:{ws}{{}}{ws}}}{ws}"#), true);
        }
        for ws in ["\u{0c}", "\u{0b}", "\u{a0}", "\u{2028}", "\u{feff}", "\u{3000}", "\0"] {
            for text in [
                format!(r#"{{"a":{ws}1}}"#),
                format!(r#"{{"a":1{ws}}}"#),
                format!(r#"[1,{ws}2]"#),
                format!(r#"[1]{ws}"#),
                format!(r#"{{"a":[{ws}]}}"#),
            ] {
                check(&text, false);
            }
            // Before the top value the scanner leaves it to serde, which rejects it.
            let text = format!("{ws}[1]");
            assert!(parse(&text).is_err());
            assert_ne!(scan(&text, [None, None]), Scan::Valid([None, None]));
            assert!(parse_and_find(&text, [Some("/0"), None]).is_err());
        }
    }

    #[test]
    fn found_values_are_exact_slices() {
        let text = "{ \"a\" :\t[1, {\"b\": 2}] \n, \"x\": \"a\", \"b\"  :  -1.5e3 ,\"a\":\"last\" }  ";
        assert_eq!(scan(text, [Some("a"), Some("b")]), Scan::Valid([Some(r#""last""#), Some("-1.5e3")]));
        assert_eq!(scan(text, [Some("x"), Some("c")]), Scan::Valid([Some(r#""a""#), None]));
        assert_eq!(scan(text, [Some("b"), Some("b")]), Scan::Valid([Some("-1.5e3"), Some("-1.5e3")]));
        let arr = " [ 10 , {\"k\" : [ ] } ,\"s\", null ] ";
        assert_eq!(scan(arr, [Some("1"), Some("3")]), Scan::Valid([Some(r#"{"k" : [ ] }"#), Some("null")]));
        // RFC 6901 indexes only: no leading zero, sign or `-`.
        assert_eq!(scan(arr, [Some("01"), Some("-")]), Scan::Valid([None, None]));
        assert_eq!(scan(arr, [Some("+1"), Some("4")]), Scan::Valid([None, None]));
        // The same slices serde's RawValue gives.
        let doc = parse(text).unwrap();
        assert_eq!(lookup(doc, "/a").map(RawValue::get), Some(r#""last""#));
        assert_eq!(lookup(parse(arr).unwrap(), "/1").map(RawValue::get), Some(r#"{"k" : [ ] }"#));
    }

    /// A top-level key with an escape is left to serde (when a token is
    /// asked for), which decodes it; an invalid document is still `Invalid`.
    #[test]
    fn escaped_keys_are_left_to_serde() {
        let text = r#"{"deviceId": "first", "dev\u0069ceId": "second", "n": 1}"#;
        assert_eq!(scan(text, [Some("deviceId"), None]), Scan::Unsure);
        assert_eq!(scan(text, [None, None]), Scan::Valid([None, None]));
        let found = parse_and_find(text, [Some("/deviceId"), Some("/n")]).unwrap();
        assert_eq!(found, [Some(r#""second""#), Some("1")]);
        assert_eq!(scan(r#"{"\n": 1,}"#, [Some("a"), None]), Scan::Invalid);
        // Escapes in values and nested keys do not matter.
        let text = r#"{"a": "x\"y", "b": {"k\u0020": 1}}"#;
        assert_eq!(scan(text, [Some("a"), Some("b")]), Scan::Valid([Some(r#""x\"y""#), Some(r#"{"k\u0020": 1}"#)]));
    }

    #[test]
    fn scalars_at_the_top_are_left_to_serde() {
        for text in ["1", "\"s\"", "null", " true ", "", "  ", "x", "1e400"] {
            assert_eq!(scan(text, [Some("a"), None]), Scan::Unsure, "{text:?}");
        }
    }

    /// Checks the scanner's verdict on `text` against serde's parse and
    /// `lookup`, and `parse_and_find` with and without the scanner.
    fn agrees(text: &str, tokens: [&str; 2]) -> Result<(), TestCaseError> {
        let reference = parse(text);
        match scan(text, tokens.map(Some)) {
            Scan::Valid(found) => {
                let Ok(doc) = reference else {
                    return Err(TestCaseError::fail(format!("scanner accepted {text:?}, serde rejects it")));
                };
                let expected = tokens.map(|t| lookup(doc, &format!("/{t}")).map(RawValue::get));
                prop_assert_eq!(found, expected, "{:?}", text);
            }
            Scan::Invalid => prop_assert!(reference.is_err(), "scanner rejected {:?}, serde accepts it", text),
            Scan::Unsure => {}
        }
        let pointers = tokens.map(|t| format!("/{t}"));
        let pointers = [Some(pointers[0].as_str()), Some(pointers[1].as_str())];
        let get = |f: [Option<&str>; 2]| f.map(|v| v.map(str::to_string));
        let ours = parse_and_find(text, pointers).map(get);
        let serde_pass = find(text, pointers, false).map(get);
        let theirs = parse(text).map(|d| get(pointers.map(|p| p.and_then(|p| lookup(d, p).map(RawValue::get)))));
        prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?}", text);
        prop_assert_eq!(serde_pass.is_ok(), theirs.is_ok(), "{:?}", text);
        if let (Ok(o), Ok(s), Ok(t)) = (ours, serde_pass, theirs) {
            prop_assert_eq!(&o, &t, "{:?}", text);
            prop_assert_eq!(&s, &t, "{:?}", text);
        }
        Ok(())
    }

    /// What the generated documents' top levels are keyed and indexed by.
    static TOKENS: [&str; 8] = ["a", "b", "", "0", "1", "2", "01", "-"];

    /// Single characters and short runs that make or break JSON.
    static ALPHABET: [&str; 46] = [
        "{", "}", "[", "]", ",", ":", "\"", "\"a\"", "\"b\"", "\"0\"", "\\", "u", "0", "1", "9", "e", "E", "-", "+",
        ".", "a", "b", "f", "/", "t", "n", "true", "false", "null", " ", "\t", "\n", "\r", "\u{0c}", "\u{0b}", "\0",
        "\u{1f}", "\u{7f}", "\u{a0}", "é", "\\u", "\\u00", "\\\"", "1e400", ",]", ",}",
    ];

    fn token() -> impl Strategy<Value = &'static str> {
        prop::sample::select(&TOKENS[..])
    }

    /// A scalar, array or object: strings with quotes, backslashes, control
    /// characters and non-ASCII, so serialized with escapes.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
            r#"[a-z0-9 "\\/\x00-\x1f\x7fé😀]{0,6}"#.prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..5).prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![prop::sample::select(&TOKENS[..]).prop_map(String::from), r#"[ab"\\\x01é/~]{0,3}"#]
    }

    /// A valid document with an object or array at the top (repeated keys
    /// possible), whitespace around its members, values compact or pretty.
    fn document() -> impl Strategy<Value = String> {
        let ws = || r"[ \t\n\r]{0,2}";
        let member = move || {
            (ws(), json_value(), any::<bool>(), ws()).prop_map(|(a, v, pretty, b)| {
                let v = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) };
                format!("{a}{}{b}", v.unwrap_or_default())
            })
        };
        let object = prop::collection::vec((key(), ws(), member()), 0..6).prop_map(|members| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(k, ws, v)| format!("{}{ws}:{v}", serde_json::to_string(&k).unwrap_or_default()))
                .collect();
            format!("{{{}}}", members.join(","))
        });
        let array = prop::collection::vec(member(), 0..6).prop_map(|members| format!("[{}]", members.join(",")));
        (ws(), prop_oneof![object, array], ws()).prop_map(|(a, doc, b)| format!("{a}{doc}{b}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary JSON-ish text: the scanner accepts and rejects what
        /// serde does and finds what `lookup` finds.
        #[test]
        fn scanner_agrees_with_serde_on_arbitrary_text(
            prefix in prop::sample::select(&["{", "[", " {", "{\"a\":", "[0,", "{\"b\":1,\"a\":"][..]),
            parts in prop::collection::vec(prop::sample::select(&ALPHABET[..]), 0..24),
            suffix in prop::sample::select(&["", "}", "]", "1}", "1]", "\"}", "\"]", "]}", "}]", " ]\n"][..]),
            a in token(),
            b in token(),
        ) {
            agrees(&format!("{prefix}{}{suffix}", parts.concat()), [a, b])?;
        }

        /// Valid documents: the scanner decides them (unless a key has an
        /// escape) and finds the slices `lookup` finds.
        #[test]
        fn scanner_agrees_with_lookup_on_valid_documents(text in document(), a in token(), b in token()) {
            prop_assert!(parse(&text).is_ok(), "{:?}", text);
            let verdict = scan(&text, [Some(a), Some(b)]);
            prop_assert!(verdict != Scan::Invalid, "{:?}", text);
            prop_assert!(text.contains('\\') || verdict != Scan::Unsure, "{:?}", text);
            agrees(&text, [a, b])?;
        }

        /// Valid documents with a few characters inserted, replaced or
        /// removed: near-misses of every kind.
        #[test]
        fn scanner_agrees_with_serde_on_damaged_documents(
            text in document(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0..3u8, prop::sample::select(&ALPHABET[..])), 1..4),
            a in token(),
            b in token(),
        ) {
            let mut chars: Vec<char> = text.chars().collect();
            for (at, kind, with) in edits {
                let at = at.index(chars.len() + 1);
                match kind {
                    0 => { chars.splice(at..at, with.chars()); }
                    1 if at < chars.len() => { chars.splice(at..=at, with.chars()); }
                    _ if at < chars.len() => { chars.remove(at); }
                    _ => {}
                }
            }
            agrees(&chars.into_iter().collect::<String>(), [a, b])?;
        }
    }

    /// The one-pass search of a typical payload, through serde (as before
    /// the scanner) and through the scanner. Run with
    /// `cargo test --release --lib scan_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn scan_speed() {
        use std::hint::black_box;
        use std::time::Instant;
        let text =
            r#"{"deviceId":"dev-17","ts":1764970000123,"temperature":21.53,"humidity":48.2,"status":"ok","seq":123}"#;
        let pointers = [Some("/deviceId"), Some("/ts")];
        let get = |f: [Option<&str>; 2]| f.map(|v| v.map(str::to_string));
        assert_eq!(find(text, pointers, true).map(get).unwrap(), find(text, pointers, false).map(get).unwrap());
        const N: u32 = 1_000_000;
        let time = |name: &str, f: &dyn Fn() -> bool| {
            for _ in 0..N / 10 {
                black_box(f());
            }
            let start = Instant::now();
            for _ in 0..N {
                black_box(f());
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(N);
            println!("{name:<44} {ns:7.1} ns/call");
        };
        time("serde one pass (before)", &|| find(black_box(text), black_box(pointers), false).is_ok());
        time("scanner one pass (parse_and_find now)", &|| find(black_box(text), black_box(pointers), true).is_ok());
        time("  of which scan alone", &|| {
            matches!(scan(black_box(text), black_box([Some("deviceId"), Some("ts")])), Scan::Valid(_))
        });
        time("  for scale: parse (from_str::<&RawValue>)", &|| parse(black_box(text)).is_ok());
    }
}
