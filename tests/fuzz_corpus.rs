//! Replays the committed fuzz corpus and the inputs of past findings through
//! the same checks the fuzz targets run (`iotpipe::fuzzing`), on the stable
//! toolchain: CI exercises every invariant without nightly or cargo-fuzz.
//!
//! Inputs: `fuzz/corpus/<target>/*` (the minimized corpus), `fuzz/seeds/<target>/*` (hand-written seeds) and
//! `fuzz/regressions/<target>/*` (one file per finding, see docs/fuzzing.md).

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries {
            let path = e.expect("corpus directory entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Run `check` on every input of `target`; the corpus must not be empty.
fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for fuzz target {target} under fuzz/seeds/{target}");
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("read corpus file");
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "fuzz check {target} fails on {} of {} inputs: {failed:?}", failed.len(), files.len());
}

#[test]
fn topic_pattern_corpus() {
    replay("topic_pattern", iotpipe::fuzzing::topic_pattern);
}

#[test]
fn template_corpus() {
    replay("template", iotpipe::fuzzing::template);
}

#[test]
fn payload_corpus() {
    replay("payload", iotpipe::fuzzing::payload);
}

#[test]
fn journal_reader_corpus() {
    replay("journal_reader", iotpipe::fuzzing::journal_reader);
}

#[test]
fn kafka_decode_corpus() {
    replay("kafka_decode", iotpipe::fuzzing::kafka_decode);
}

#[test]
fn config_corpus() {
    replay("config", iotpipe::fuzzing::config);
}

/// The journal seed `clean` really holds three records: the checks above
/// would also pass if the seeds' frames were all rejected as damage.
#[test]
fn the_clean_journal_seed_is_read_back_whole() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/journal_reader/clean");
    let data = std::fs::read(path).expect("read seed");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file =
        iotpipe::journal::SegmentHeader { first_seq: 0, tail_window: 1024, preallocated: false }.encode().to_vec();
    file.extend_from_slice(&data[1..]);
    std::fs::write(dir.path().join(format!("{:020}.seg", 0)), file).expect("write segment");
    let (journal, rec) =
        iotpipe::journal::Journal::open(iotpipe::journal::JournalConfig::at(dir.path())).expect("open");
    assert_eq!((rec.records, rec.truncated_bytes), (3, 0));
    let mut reader = journal.reader(0).expect("reader");
    let (seq, payload) = reader.try_next().expect("read").expect("a record");
    let msg = iotpipe::journal::decode_inbound(&payload).expect("an inbound message");
    assert_eq!((seq, msg.topic.as_str(), &msg.payload[..]), (0, "mtic/msg/client/realtime/t/p", &b"{\"v\":0}"[..]));
}
