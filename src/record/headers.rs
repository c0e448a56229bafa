//! The record contract between stages: the Kafka header names, how the
//! bridge writes them and how the sink (and `run`) reads them back. One
//! place, so the two sides cannot drift apart. Header names and value
//! formats are public: consumers outside iotpipe read them.
//!
//! Values are UTF-8 text. Times are RFC 3339 UTC with milliseconds
//! (`2026-01-01T00:00:00.000Z`); readers also accept epoch milliseconds.

use super::{DeadLetterReason, RecordId};

pub const TENANT_ID: &str = "tenant_id";
pub const PROJECT_ID: &str = "project_id";
pub const DEVICE_ID: &str = "device_id";
pub const MQTT_TOPIC: &str = "mqtt_topic";
pub const ID: &str = "id";
pub const RECEIVED_AT: &str = "received_at";
pub const EVENT_TIME: &str = "event_time";
/// Dead letters only: the [`DeadLetterReason`].
pub const REASON: &str = "reason";
/// Dead letters only: a human-readable detail.
pub const ERROR: &str = "error";
/// Dead letters only: `true` when the payload was cut to `kafka.dead_letter_max_payload`.
pub const TRUNCATED: &str = "truncated";
/// Dead letters only: the payload's size before truncation.
pub const ORIGINAL_SIZE: &str = "original_size";

/// What a routed record carries besides its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta<'a> {
    pub tenant_id: &'a str,
    pub project_id: &'a str,
    pub device_id: &'a str,
    pub mqtt_topic: &'a str,
    pub id: RecordId,
    pub received_ms: i64,
    pub event_ms: Option<i64>,
}

/// Most headers a record carries (a dead letter's seven).
const MAX_HEADERS: usize = 8;

/// A record's headers in one allocation: the values back to back in one
/// string, in the documented order. The message path builds one per
/// message; a `Vec` of `String`s cost the bridge eight allocations (and
/// frees) per message (BENCHMARKS.md, "Bridge profile").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderList {
    text: String,
    names: [&'static str; MAX_HEADERS],
    ends: [u32; MAX_HEADERS],
    len: usize,
}

impl HeaderList {
    fn with_capacity(bytes: usize) -> Self {
        Self { text: String::with_capacity(bytes), names: [""; MAX_HEADERS], ends: [0; MAX_HEADERS], len: 0 }
    }

    /// Close the value written since the previous header as `name`'s.
    fn end(&mut self, name: &'static str) {
        if self.len < MAX_HEADERS {
            self.names[self.len] = name;
            self.ends[self.len] = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
            self.len += 1;
        }
    }

    fn push(&mut self, name: &'static str, value: &str) {
        self.text.push_str(value);
        self.end(name);
    }

    /// The headers, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        (0..self.len).map(move |i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
            (self.names[i], self.text.get(start..self.ends[i] as usize).unwrap_or(""))
        })
    }

    /// The value of the first header named `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A record's headers as a reader finds them: any producer, any number of
/// headers, names and values back to back in one string. The sink reads
/// one per record; a `Vec` of `String` pairs cost it two allocations (and
/// frees) per header (BENCHMARKS.md, "sink, one buffer per record's headers").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadHeaders {
    text: String,
    /// Per header, where its name ends and where its value ends in `text`.
    ends: Vec<(usize, usize)>,
}

impl ReadHeaders {
    /// Room for `headers` headers of `bytes` bytes of names and values.
    pub fn with_capacity(headers: usize, bytes: usize) -> Self {
        Self { text: String::with_capacity(bytes), ends: Vec::with_capacity(headers) }
    }

    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len()));
    }

    /// A header whose value may not be UTF-8: invalid bytes are replaced.
    pub fn push_lossy(&mut self, name: &str, value: &[u8]) {
        self.push(name, &String::from_utf8_lossy(value));
    }

    /// The headers, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let name = self.text.get(start..name_end).unwrap_or("");
            let value = self.text.get(name_end..value_end).unwrap_or("");
            start = value_end;
            (name, value)
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The headers as owned pairs (a dead letter keeps them so).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for ReadHeaders {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut h = Self::default();
        for (k, v) in pairs {
            h.push(k.as_ref(), v.as_ref());
        }
        h
    }
}

/// What a reader of a record written by iotpipe finds.
impl From<&HeaderList> for ReadHeaders {
    fn from(written: &HeaderList) -> Self {
        let mut h = Self::with_capacity(written.len(), written.text.len() + 16 * written.len());
        for (k, v) in written.iter() {
            h.push(k, v);
        }
        h
    }
}

/// Headers of a routed record, in the documented order.
pub fn encode_record(m: &RecordMeta<'_>) -> HeaderList {
    let fixed = m.tenant_id.len() + m.project_id.len() + m.device_id.len() + m.mqtt_topic.len();
    let mut h = HeaderList::with_capacity(fixed + 36 + 2 * TIME_LEN);
    h.push(TENANT_ID, m.tenant_id);
    h.push(PROJECT_ID, m.project_id);
    h.push(DEVICE_ID, m.device_id);
    h.push(MQTT_TOPIC, m.mqtt_topic);
    h.push(ID, m.id.0.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
    write_ms(&mut h.text, m.received_ms);
    h.end(RECEIVED_AT);
    if let Some(ms) = m.event_ms {
        write_ms(&mut h.text, ms);
        h.end(EVENT_TIME);
    }
    h
}

/// What a dead letter carries besides its (possibly truncated) payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterMeta<'a> {
    pub reason: DeadLetterReason,
    pub detail: &'a str,
    pub mqtt_topic: &'a str,
    pub id: RecordId,
    pub received_ms: i64,
    /// The original size, when the payload was truncated.
    pub truncated_from: Option<usize>,
}

/// Headers of a dead letter, in the documented order.
pub fn encode_dead_letter(m: &DeadLetterMeta<'_>) -> HeaderList {
    let mut h = HeaderList::with_capacity(m.detail.len() + m.mqtt_topic.len() + 36 + TIME_LEN + 32);
    h.push(REASON, m.reason.as_str());
    h.push(ERROR, m.detail);
    h.push(MQTT_TOPIC, m.mqtt_topic);
    h.push(ID, m.id.0.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()));
    write_ms(&mut h.text, m.received_ms);
    h.end(RECEIVED_AT);
    if let Some(size) = m.truncated_from {
        h.push(TRUNCATED, "true");
        h.push(ORIGINAL_SIZE, &size.to_string());
    }
    h
}

/// Headers as a reader finds them (any producer; every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub tenant_id: Option<&'a str>,
    pub project_id: Option<&'a str>,
    pub device_id: Option<&'a str>,
    pub mqtt_topic: Option<&'a str>,
    /// The `id` header as written (parse with [`Decoded::record_id`]).
    pub id: Option<&'a str>,
    pub received_ms: Option<i64>,
    pub event_ms: Option<i64>,
    /// The `reason` header as written; a dead letter has one.
    pub reason: Option<&'a str>,
    pub error: Option<&'a str>,
}

impl<'a> Decoded<'a> {
    /// Read the known headers; unknown ones are ignored, the last of a repeated one wins.
    pub fn parse(headers: &'a ReadHeaders) -> Self {
        let mut d = Self::default();
        for (k, v) in headers.iter() {
            match k {
                TENANT_ID => d.tenant_id = Some(v),
                PROJECT_ID => d.project_id = Some(v),
                DEVICE_ID => d.device_id = Some(v),
                MQTT_TOPIC => d.mqtt_topic = Some(v),
                ID => d.id = Some(v),
                RECEIVED_AT => d.received_ms = parse_time(v),
                EVENT_TIME => d.event_ms = parse_time(v),
                REASON => d.reason = Some(v),
                ERROR => d.error = Some(v),
                _ => {}
            }
        }
        d
    }

    /// The record id, when the `id` header holds a UUID.
    pub fn record_id(&self) -> Option<Result<uuid::Uuid, uuid::Error>> {
        self.id.map(uuid::Uuid::parse_str)
    }

    /// The dead-letter reason, for labels (unknown text is `Other`).
    pub fn reason(&self) -> Option<DeadLetterReason> {
        self.reason.map(DeadLetterReason::parse)
    }
}

/// Length of a formatted time (`2026-01-01T00:00:00.000Z`).
const TIME_LEN: usize = 24;

/// The first and last millisecond of RFC 3339's years 0000–9999.
const RFC3339_MS: std::ops::RangeInclusive<i64> = -62_167_219_200_000..=253_402_300_799_999;

/// Epoch milliseconds as RFC 3339 UTC with milliseconds; a time outside
/// RFC 3339's years 0000–9999 as epoch milliseconds, which [`parse_time`]
/// reads back as well.
pub fn format_ms(ms: i64) -> String {
    let mut s = String::with_capacity(TIME_LEN);
    write_ms(&mut s, ms);
    s
}

/// [`format_ms`] appended to `out`, without allocating (this runs twice per
/// message: the general-purpose formatter cost the bridge ~3% of its CPU).
pub fn write_ms(out: &mut String, ms: i64) {
    if !RFC3339_MS.contains(&ms) {
        out.push_str(&ms.to_string());
        return;
    }
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (secs, millis) = (in_day / 1000, in_day % 1000);
    let mut b = *b"0000-00-00T00:00:00.000Z";
    // Two digits at a time; every value here is in 0..=9999 (years) or smaller.
    let mut put2 = |at: usize, v: i64| b[at..at + 2].copy_from_slice(&DIGIT_PAIRS[v.rem_euclid(100) as usize]);
    put2(0, year / 100);
    put2(2, year);
    put2(5, month);
    put2(8, day);
    put2(11, secs / 3600);
    put2(14, secs / 60 % 60);
    put2(17, secs % 60);
    put2(21, millis);
    b[20] = b'0' + (millis / 100) as u8;
    // ASCII by construction, so this is never the empty default.
    out.push_str(std::str::from_utf8(&b).unwrap_or_default());
}

/// "00" to "99": [`write_ms`] writes two digits at a time. The bridge writes
/// one or two times per message; one digit at a time that took about 3% of
/// its CPU (BENCHMARKS.md, "record times two digits at a time").
const DIGIT_PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        pairs[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    pairs
};

/// Year, month (1–12) and day (1–31) of a day count since 1970-01-01 in the
/// proleptic Gregorian calendar (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A header time: epoch milliseconds or RFC 3339.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let dt = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owned(h: HeaderList) -> ReadHeaders {
        ReadHeaders::from(&h)
    }

    /// The formatter the header contract was first written with.
    fn format_ms_reference(ms: i64) -> String {
        let dt = match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
            Ok(dt) if (0..=9999).contains(&dt.year()) => dt,
            _ => return ms.to_string(),
        };
        let fmt =
            time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
        dt.format(&fmt).unwrap_or_else(|_| ms.to_string())
    }

    #[test]
    fn header_list_keeps_order_and_values() {
        let mut h = HeaderList::with_capacity(4);
        h.push(TENANT_ID, "acme");
        h.push(ERROR, "");
        h.push(PROJECT_ID, "p-1");
        assert_eq!(h.iter().collect::<Vec<_>>(), [(TENANT_ID, "acme"), (ERROR, ""), (PROJECT_ID, "p-1")]);
        assert_eq!(h.get(PROJECT_ID), Some("p-1"));
        assert_eq!(h.get(ERROR), Some(""));
        assert_eq!(h.get(DEVICE_ID), None);
        assert_eq!(h.len(), 3);
    }

    #[test]
    fn read_headers_keep_any_names_in_order() {
        let mut h = ReadHeaders::with_capacity(2, 8);
        h.push("x-trace", "abc");
        h.push("", "");
        h.push_lossy("bin", b"a\xffb");
        h.push(TENANT_ID, "acme");
        let got: Vec<_> = h.iter().collect();
        assert_eq!(got, [("x-trace", "abc"), ("", ""), ("bin", "a\u{fffd}b"), (TENANT_ID, "acme")]);
        assert_eq!(h.len(), 4);
        assert_eq!(h.to_pairs()[2], ("bin".to_string(), "a\u{fffd}b".to_string()));
        let again: ReadHeaders = h.to_pairs().into_iter().collect();
        assert_eq!(again, h);
        assert!(ReadHeaders::default().is_empty());
        // Ten headers, more than the bridge ever writes: none is dropped.
        let many: ReadHeaders = (0..10).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
        assert_eq!(many.iter().last(), Some(("k9", "v9")));
    }

    #[test]
    fn what_the_bridge_writes_the_sink_reads() {
        let id = RecordId::derive(Some(1_700_000_000_123), 0, "t", b"{}");
        let meta = RecordMeta {
            tenant_id: "acme",
            project_id: "p1",
            device_id: "d1",
            mqtt_topic: "mtic/msg/client/realtime/acme/p1",
            id,
            received_ms: 1_700_000_000_500,
            event_ms: Some(1_700_000_000_123),
        };
        let h = owned(encode_record(&meta));
        assert_eq!(h.iter().nth(5), Some(("received_at", "2023-11-14T22:13:20.500Z")));
        let d = Decoded::parse(&h);
        assert_eq!(d.tenant_id, Some("acme"));
        assert_eq!(d.device_id, Some("d1"));
        assert_eq!(d.received_ms, Some(1_700_000_000_500));
        assert_eq!(d.event_ms, Some(1_700_000_000_123));
        assert_eq!(d.record_id().and_then(Result::ok), Some(id.0));
        assert_eq!(d.reason, None);
    }

    #[test]
    fn dead_letters_carry_reason_detail_and_truncation() {
        let id = RecordId::derive(None, 5, "t", b"x");
        let meta = DeadLetterMeta {
            reason: DeadLetterReason::Oversize,
            detail: "too big",
            mqtt_topic: "t",
            id,
            received_ms: 5,
            truncated_from: Some(9000),
        };
        let h = owned(encode_dead_letter(&meta));
        let d = Decoded::parse(&h);
        assert_eq!(d.reason(), Some(DeadLetterReason::Oversize));
        assert_eq!(d.error, Some("too big"));
        assert!(h.iter().any(|kv| kv == ("original_size", "9000")));
    }

    #[test]
    fn times_parse_as_rfc3339_or_epoch_ms() {
        assert_eq!(parse_time("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20.123Z"), Some(1_700_000_000_123));
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    /// Fuzz finding (fuzz/regressions/kafka_decode/negative-year): a
    /// `received_at` of -62200000000000 (year -0002) was written back as
    /// `-0002-…`, which no RFC 3339 parser reads, so the time was lost when a
    /// decoded record's headers were written again.
    #[test]
    fn times_outside_rfc3339_years_are_written_as_epoch_ms() {
        for ms in [-62_200_000_000_000, -62_167_219_200_001, 253_402_300_800_000, i64::MIN, i64::MAX] {
            assert_eq!(format_ms(ms), ms.to_string());
            assert_eq!(parse_time(&format_ms(ms)), Some(ms), "{ms}");
        }
        assert_eq!(format_ms(-62_167_219_200_000), "0000-01-01T00:00:00.000Z");
        assert_eq!(format_ms(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    proptest! {
        #[test]
        fn any_time_parses_back(ms in any::<i64>()) {
            prop_assert_eq!(parse_time(&format_ms(ms)), Some(ms));
        }

        /// The fast formatter writes what the general-purpose one wrote,
        /// inside RFC 3339's years and outside them.
        #[test]
        fn times_are_written_as_before(ms in prop_oneof![any::<i64>(), -62_167_219_300_000i64..253_402_300_900_000]) {
            prop_assert_eq!(format_ms(ms), format_ms_reference(ms));
        }

        #[test]
        fn formatted_times_parse_back(ms in 0i64..253_402_300_799_000) {
            prop_assert_eq!(parse_time(&format_ms(ms)), Some(ms));
        }
    }
}
