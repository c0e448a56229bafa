//! Property checks over arbitrary bytes, one per fuzz target in `fuzz/`.
//!
//! Each function takes the raw fuzzer input, drives the real code path and
//! panics (via `assert!`) when an invariant does not hold. The same functions
//! run under `cargo fuzz` (nightly, `fuzz/fuzz_targets/*.rs`) and in
//! `tests/fuzz_corpus.rs` (stable), which replays the committed corpus and
//! the regression inputs: one definition, so the two cannot drift apart.
//! They live in the library because several checks need crate-private
//! functions (frame decoding, JSON pointer lookup); nothing else uses them.
//! See docs/fuzzing.md for the input layouts and the invariants.

use crate::journal::{self, Journal, JournalConfig, JournalError};
use crate::pipeline::decode::{decode, Decoded};
use crate::record::headers::{self, RecordMeta};
use crate::record::{DurableRecord, Position, RecordId};
use crate::route::{validate_filter, Template, TopicPattern};
use bytes::Bytes;
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// The byte that separates the parts of a multi-part input. MQTT topics,
/// templates and JSON pointers written in config files never contain it.
const SEP: u8 = 0;

/// Split at `SEP` into at most `n` parts (the last keeps any further separators).
fn parts(data: &[u8], n: usize) -> Vec<Cow<'_, str>> {
    data.splitn(n, |b| *b == SEP).map(String::from_utf8_lossy).collect()
}

fn part<'a>(p: &'a [Cow<'_, str>], i: usize) -> &'a str {
    p.get(i).map_or("", |s| s.as_ref())
}

// ---------------------------------------------------------------------------
// topic_pattern: `pattern \0 topic`

/// `TopicPattern::parse` and `captures` agree with plain MQTT filter matching
/// (names read as `+`), captured values are exactly the named topic levels
/// and never empty, and every parsed pattern is a legal subscription filter.
pub fn topic_pattern(data: &[u8]) {
    let p = parts(data, 2);
    let (text, topic) = (part(&p, 0), part(&p, 1));
    let Ok(pattern) = TopicPattern::parse(text) else { return };
    let levels: Vec<&str> = text.split('/').collect();
    let filter: Vec<&str> = levels.iter().map(|l| if is_name(l) { "+" } else { l }).collect();
    let filter_text = filter.join("/");
    assert!(validate_filter(&filter_text).is_ok(), "pattern {text:?} is not a legal filter {filter_text:?}");
    assert_eq!(pattern.names().len(), levels.iter().filter(|l| is_name(l)).count());

    let got = pattern.captures(topic);
    let topic_levels: Vec<&str> = topic.split('/').collect();
    // Named levels must be non-empty; `+` levels may be empty, as in MQTT.
    let named_ok = |t: &[&str]| levels.iter().zip(t).all(|(l, v)| !is_name(l) || !v.is_empty());
    let want = mqtt_matches(&filter, topic) && named_ok(&topic_levels);
    assert_eq!(got.is_some(), want, "pattern {text:?} topic {topic:?}");
    if let Some(caps) = got {
        assert_eq!(caps.len(), pattern.names().len());
        let named: Vec<&str> = levels.iter().zip(&topic_levels).filter(|(l, _)| is_name(l)).map(|(_, v)| *v).collect();
        assert_eq!(caps.as_slice(), named.as_slice(), "pattern {text:?} topic {topic:?}");
    }
}

fn is_name(level: &str) -> bool {
    level.len() > 2 && level.starts_with('{') && level.ends_with('}')
}

/// MQTT 4.7 topic matching, written from the specification.
fn mqtt_matches(filter: &[&str], topic: &str) -> bool {
    if topic.starts_with('$') && matches!(filter.first(), Some(&"+") | Some(&"#")) {
        return false;
    }
    let topic: Vec<&str> = topic.split('/').collect();
    let mut i = 0;
    for f in filter {
        match *f {
            "#" => return true,
            "+" if i < topic.len() => {}
            lit if i < topic.len() && topic[i] == lit => {}
            _ => return false,
        }
        i += 1;
    }
    i == topic.len()
}

// ---------------------------------------------------------------------------
// template: `template \0 tenant \0 project \0 device`

const FIELDS: [&str; 3] = ["tenant_id", "project_id", "device_id"];

/// A parsed template renders back to its own text when each value is its
/// placeholder; a rendered topic name is legal, and values never add or
/// remove a `.` level separator (they cannot steer the name).
pub fn template(data: &[u8]) {
    let p = parts(data, 4);
    let text = part(&p, 0);
    let values = [part(&p, 1), part(&p, 2), part(&p, 3)];
    let Ok(t) = Template::parse(text, &FIELDS) else { return };
    let placeholders = FIELDS.map(|f| format!("{{{f}}}"));
    let own: Vec<&str> = placeholders.iter().map(String::as_str).collect();
    assert_eq!(t.render(&own), text, "template does not render back to its text");
    let plain = t.render(&values);
    let literal = t.render(&["", "", ""]);
    assert!(plain.len() >= literal.len());
    if let Ok(name) = t.render_topic(&values) {
        assert!(crate::route::check_topic_name(&name).is_ok(), "{name:?}");
        assert_eq!(name.matches('.').count(), literal.matches('.').count(), "values changed the levels: {name:?}");
    }
}

// ---------------------------------------------------------------------------
// payload: `pointer \0 json`

/// The borrowed JSON-pointer lookup agrees with `serde_json::Value::pointer`
/// (and the one-pass search with parse + lookup, validity included),
/// device ids are never empty, and every extracted event time survives the
/// header contract (`format_ms` then `parse_time`) unchanged.
pub fn payload(data: &[u8]) {
    use crate::route::payload;
    let p = parts(data, 2);
    let (pointer, text) = (part(&p, 0), part(&p, 1));
    let one_pass = payload::parse_and_find(text, [Some(pointer), Some("/ts")]);
    let Ok(doc) = payload::parse(text) else {
        assert!(one_pass.is_err(), "the one-pass search accepted {text:?}, which parse rejects");
        return;
    };
    let found = one_pass.unwrap_or_else(|e| panic!("the one-pass search rejected {text:?}, which parse accepts: {e}"));
    assert_eq!(
        found,
        [payload::lookup(doc, pointer), payload::lookup(doc, "/ts")].map(|v| v.map(|r| r.get())),
        "pointer {pointer:?} in {text:?}"
    );
    let tree: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let raw = payload::lookup(doc, pointer);
    if let Some(tree) = &tree {
        let ours = raw.map(|r| serde_json::from_str::<serde_json::Value>(r.get()).ok());
        assert_eq!(ours, tree.pointer(pointer).map(|v| Some(v.clone())), "pointer {pointer:?} in {text:?}");
    }
    if let Some(id) = payload::device_id(doc, pointer) {
        assert!(!id.is_empty());
    }
    if let Some(ms) = payload::event_time_ms(doc, pointer) {
        let header = headers::format_ms(ms);
        assert_eq!(headers::parse_time(&header), Some(ms), "event time {ms} written as {header:?}");
    }
}

// ---------------------------------------------------------------------------
// journal_reader: `[mode u8][segment file bytes]`

/// Where the journal check puts its directories (tmpfs when there is one).
fn scratch_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    base.join(format!("iotpipe-fuzz-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Removes the scratch directory however the check ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bytes become the journal's only segment file (with mode bit 0 set, a
/// valid segment header is put in front of them, so the fuzzer works on the
/// frames; mode bit 1 makes it a preallocated segment's header, whose
/// trailing zeros are unwritten space, not a torn tail). Then the journal is opened the way the bridge opens it, and every
/// record is read with the real reader. Invariants: open either reports
/// `Corrupt` or recovers exactly the valid prefix of frames (decoded here
/// independently), the reader returns exactly those records in order and
/// then nothing, a torn tail is cut at the end of that prefix (and reported
/// as the bytes up to the last non-zero one in a preallocated segment), reopening
/// finds the same records and cuts nothing more, and every stored message
/// that decodes re-encodes to the same bytes.
pub fn journal_reader(data: &[u8]) {
    let (mode, body) = data.split_first().map_or((0, data), |(m, b)| (*m, b));
    let window = 1024 * (1 + u32::from(mode >> 4));
    let mut file = Vec::with_capacity(body.len() + journal::SEGMENT_HEADER);
    if mode & 1 == 1 {
        let preallocated = mode & 2 == 2;
        file.extend_from_slice(&journal::SegmentHeader { first_seq: 0, tail_window: window, preallocated }.encode());
    }
    file.extend_from_slice(body);

    let scratch = Scratch(scratch_dir());
    let dir = scratch.0.clone();
    if std::fs::create_dir_all(&dir).is_err() || std::fs::write(dir.join(format!("{:020}.seg", 0)), &file).is_err() {
        return; // the machine, not the input
    }
    let expected = valid_prefix(&file);
    // The new active segment need not be zero-filled: recovery is what is checked.
    let cfg = JournalConfig { preallocate: false, ..JournalConfig::at(&dir) };
    let opened = match Journal::open(cfg.clone()) {
        Ok(o) => o,
        Err(JournalError::Corrupt { .. }) => return,
        Err(e) => panic!("journal open failed with other than Corrupt: {e}"),
    };
    let records = read_all(opened);
    let (valid_len, want) = match &expected {
        Some((len, recs)) => (*len, recs.clone()),
        None => (0, Vec::new()), // torn header: an empty journal
    };
    assert_eq!(records.0, want, "records read differ from the valid frames");
    assert_eq!(records.1.first_seq, 0);
    let written = match journal::SegmentHeader::decode(&file) {
        Some(h) if h.preallocated => file.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1).max(valid_len),
        _ => file.len() as u64,
    };
    assert_eq!(records.1.truncated_bytes, written - valid_len);

    let again = match Journal::open(cfg) {
        Ok(o) => read_all(o),
        Err(e) => panic!("reopening a recovered journal failed: {e}"),
    };
    assert_eq!(again.0, want, "a reopened journal holds other records");
    assert_eq!(again.1.truncated_bytes, 0, "a second recovery cut more");

    for (_, payload) in &want {
        if let Ok(msg) = journal::decode_inbound(payload) {
            assert_eq!(&journal::encode_inbound(&msg), payload, "decoded message re-encodes differently");
        }
    }
}

/// The records a clean reading of `file` yields, and the length they cover;
/// `None` when the segment header is missing (only a short file is accepted).
fn valid_prefix(file: &[u8]) -> Option<(u64, Records)> {
    journal::SegmentHeader::decode(file)?;
    let mut at = journal::SEGMENT_HEADER;
    let mut out = Vec::new();
    while let Ok((f, n)) = journal::decode_frame(&file[at..]) {
        if f.seq != out.len() as u64 {
            break;
        }
        out.push((f.seq, f.payload.to_vec()));
        at += n;
    }
    Some((at as u64, out))
}

/// Records as `(seq, payload)`, in order.
type Records = Vec<(u64, Vec<u8>)>;

type Read = (Records, journal::Recovery);

/// Read every record of an open journal from its first one, then close it.
fn read_all((j, rec): (Journal, journal::Recovery)) -> Read {
    let mut out = Vec::new();
    let mut reader = match j.reader(rec.first_seq) {
        Ok(r) => r,
        Err(e) => panic!("no reader at the first record {}: {e}", rec.first_seq),
    };
    loop {
        match reader.try_next() {
            Ok(Some((seq, payload))) => out.push((seq, payload.to_vec())),
            Ok(None) => break,
            Err(e) => panic!("reading record {} failed: {e}", reader.position()),
        }
        assert!(out.len() as u64 <= rec.records, "the reader returned more records than recovery found");
    }
    assert_eq!(out.len() as u64, rec.records);
    if let Err(e) = futures::executor::block_on(j.close()) {
        panic!("closing the journal failed: {e}");
    }
    (out, rec)
}

// ---------------------------------------------------------------------------
// kafka_decode: `[flags u8][timestamp i64 LE, if flags bit 0][header lines] \n\n [payload]`

/// The record the sink's consumer hands over, from the fuzzer's bytes:
/// header lines `key=value` (values lossily UTF-8, as the consumer does),
/// then an empty line, then the payload.
fn kafka_record(data: &[u8]) -> DurableRecord {
    let (flags, mut rest) = data.split_first().map_or((0, data), |(f, r)| (*f, r));
    let mut timestamp_ms = None;
    if flags & 1 == 1 {
        let mut ts = [0u8; 8];
        let n = rest.len().min(8);
        ts[..n].copy_from_slice(&rest[..n]);
        timestamp_ms = Some(i64::from_le_bytes(ts));
        rest = &rest[n..];
    }
    let split = rest.windows(2).position(|w| w == b"\n\n");
    let (head, payload) = match split {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (&b""[..], rest),
    };
    let headers = head
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = match l.iter().position(|b| *b == b'=') {
                Some(i) => (&l[..i], &l[i + 1..]),
                None => (l, &b""[..]),
            };
            (String::from_utf8_lossy(k), String::from_utf8_lossy(v))
        })
        .collect();
    DurableRecord {
        position: Position::Kafka { topic: "iot.t.p".into(), partition: i32::from(flags >> 4), offset: 7 },
        timestamp_ms,
        headers,
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Fixed "now" of the decode check, so results are reproducible.
const NOW_MS: i64 = 1_700_000_000_000;

/// Decoding is deterministic; a dead letter keeps the record's bytes and
/// headers; a row has a tenant and project and a payload taken from the
/// record; and a row re-encoded with the bridge's headers decodes to the
/// same row (what the sink stores does not depend on who wrote the headers).
pub fn kafka_decode(data: &[u8]) {
    let rec = kafka_record(data);
    let first = decode(&rec, NOW_MS);
    let second = decode(&rec, NOW_MS);
    match (&first, &second) {
        (Decoded::Row(a), Decoded::Row(b)) => assert_eq!(a, b, "decoding is not deterministic"),
        (Decoded::Dead(a, ra), Decoded::Dead(b, rb)) => assert_eq!((a, ra), (b, rb), "decoding is not deterministic"),
        _ => panic!("decoding is not deterministic"),
    }
    let row = match first {
        Decoded::Dead(d, _) => {
            assert_eq!(d.payload, rec.payload);
            assert_eq!(d.headers, rec.headers.to_pairs());
            assert_eq!(d.source, rec.source());
            return;
        }
        Decoded::Row(row) => row,
    };
    assert!(!row.tenant_id.is_empty() && !row.project_id.is_empty());
    assert_eq!(row.time_ms, row.event_time_ms.unwrap_or(row.received_ms));
    let inside = row.payload.is_empty() || rec.payload.windows(row.payload.len()).any(|w| w == &row.payload[..]);
    assert!(inside, "the row's payload is not taken from the record");

    let hdrs = headers::encode_record(&RecordMeta {
        tenant_id: &row.tenant_id,
        project_id: &row.project_id,
        device_id: &row.device_id,
        mqtt_topic: &row.mqtt_topic,
        id: RecordId(row.id),
        received_ms: row.received_ms,
        event_ms: row.event_time_ms,
    });
    let again = DurableRecord { headers: (&hdrs).into(), payload: row.payload.clone(), ..rec };
    match decode(&again, NOW_MS - 1) {
        Decoded::Row(back) => assert_eq!(back, row, "a re-encoded row decodes differently"),
        Decoded::Dead(d, _) => panic!("a re-encoded row became a dead letter: {} {}", d.reason, d.error),
    }
}

// ---------------------------------------------------------------------------
// config: `toml \0 env lines (NAME=value)`

/// Loading either fails with a typed error or returns a config that passes
/// its own validation again and compiles its routing rules. Inputs naming a
/// `*_file` key are skipped: they would make the check read (or block on)
/// arbitrary files of the machine.
pub fn config(data: &[u8]) {
    let p = parts(data, 2);
    let (text, env_text) = (part(&p, 0), part(&p, 1));
    if text.contains("_file") || env_text.contains("_FILE") || env_text.contains("_file") {
        return;
    }
    let env: Vec<(String, String)> =
        env_text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let Ok(c) = crate::config::load_str(text, "fuzz.toml", env) else { return };
    if let Err(e) = crate::config::validate::validate(&c) {
        panic!("a loaded config fails its own validation: {e}");
    }
    if let Err(e) = c.router() {
        panic!("a loaded config has routing rules that do not compile: {e}");
    }
}
