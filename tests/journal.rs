//! The local journal against real files: group commit, recovery after
//! simulated crashes, acks, segment deletion, the size bound, tailing readers.

use bytes::Bytes;
use iotpipe::config::{ByteSize, HumanDuration};
use iotpipe::journal::{decode_inbound_shared, encode_inbound, Batch, Journal, JournalConfig, JournalError, Reader};
use iotpipe::record::Inbound;
use proptest::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bytes of a segment header and of a frame header (docs/journal.md).
const SEGMENT_HEADER: u64 = 24;
const FRAME_HEADER: u64 = 16;

/// Small segments so that a few hundred records span several of them.
fn config(dir: &Path) -> JournalConfig {
    JournalConfig {
        path: dir.join("journal"),
        max_size: ByteSize::mib(1),
        segment_size: ByteSize::kib(4),
        max_batch: ByteSize::kib(1),
        ack_sync_interval: HumanDuration::millis(20),
        // These tests mostly append one record at a time, each waiting for
        // its commit, so each waits out the commit delay: the default
        // (20 ms, for the bridge's pipelined appends) would make them 4x slower.
        commit_delay: HumanDuration::millis(5),
        ..JournalConfig::default()
    }
}

/// A payload whose bytes say which record it is.
fn payload(i: usize, len: usize) -> Bytes {
    Bytes::from((0..len).map(|k| (i * 31 + k * 7) as u8).collect::<Vec<u8>>())
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Every committed record from `reader`'s position on, without waiting.
fn drain(reader: &mut Reader) -> Vec<(u64, Bytes)> {
    let mut out = Vec::new();
    while let Some(r) = reader.try_next().unwrap() {
        out.push(r);
    }
    out
}

async fn append_all(j: &Journal, payloads: &[Bytes]) -> Vec<u64> {
    let a = j.appender();
    let mut seqs = Vec::new();
    for p in payloads {
        seqs.push(a.append(p.clone()).await.unwrap());
    }
    seqs
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() != "lock" {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[tokio::test]
async fn appends_are_read_back_and_survive_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let payloads: Vec<Bytes> = (0..300).map(|i| payload(i, i % 80)).collect();
    let (j, rec) = Journal::open(cfg.clone()).unwrap();
    assert_eq!((rec.next_seq, rec.truncated_bytes, rec.undelivered), (0, 0, 0));
    assert_eq!(append_all(&j, &payloads).await, (0..300).collect::<Vec<u64>>());
    assert_eq!((j.committed_seq(), j.acked_seq(), j.depth()), (Some(299), None, 300));
    assert!(segments(&cfg.path).len() > 3, "records span several segments");
    j.close().await.unwrap();

    let (j, rec) = Journal::open(cfg).unwrap();
    assert_eq!((rec.first_seq, rec.next_seq, rec.replay_from, rec.truncated_bytes), (0, 300, 0, 0));
    let read = drain(&mut j.reader_from_ack().unwrap());
    assert_eq!(read.len(), 300);
    for (i, (seq, p)) in read.iter().enumerate() {
        assert_eq!((*seq, p), (i as u64, &payloads[i]));
    }
    assert_eq!(j.appender().append(Bytes::from_static(b"next")).await.unwrap(), 300);
    j.close().await.unwrap();
}

/// A batch is one request and one completion, however many segments its
/// records span; a batch that does not fit is refused whole.
#[tokio::test]
async fn a_batch_spans_segments_and_is_refused_whole_when_full() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig { max_size: ByteSize::kib(32), ..config(tmp.path()) };
    let payloads: Vec<Bytes> = (0..100).map(|i| payload(i, 40 + i % 30)).collect();
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    let a = j.appender();
    assert_eq!(a.append(payloads[0].clone()).await.unwrap(), 0);
    let mut batch = Batch::new();
    for p in &payloads[1..] {
        batch.push(p);
    }
    let Ok(done) = a.enqueue_batch(batch) else { panic!("the batch fits") };
    assert_eq!(done.await.unwrap(), 1, "resolves with its first record's sequence number");
    assert_eq!(j.committed_seq(), Some(99));
    assert!(segments(&cfg.path).len() > 1, "the batch spans segments");
    let mut huge = Batch::new();
    for _ in 0..400 {
        huge.push(&payload(0, 100));
    }
    let used = j.used_bytes();
    match a.enqueue_batch(huge) {
        Err((JournalError::Full { .. }, back)) => assert_eq!(back.len(), 400, "the batch comes back whole"),
        _ => panic!("expected Full"),
    }
    assert_eq!(j.used_bytes(), used, "nothing of it was written");
    assert_eq!(a.append(payload(0, 10)).await.unwrap(), 100, "smaller appends still fit");
    j.close().await.unwrap();

    let (j, rec) = Journal::open(cfg).unwrap();
    assert_eq!(rec.next_seq, 101);
    let read = drain(&mut j.reader_from_ack().unwrap());
    for (i, (seq, p)) in read.iter().take(100).enumerate() {
        assert_eq!((*seq, p), (i as u64, &payloads[i]));
    }
    j.close().await.unwrap();
}

/// A reader skips records within its segment and across segments, and
/// reads on from there; it never goes back, and never past what is committed.
#[tokio::test]
async fn a_reader_skips_to_a_later_record_within_and_across_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let payloads: Vec<Bytes> = (0..400).map(|i| payload(i, 30 + i % 20)).collect();
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    append_all(&j, &payloads).await;
    assert!(segments(&cfg.path).len() > 3, "the records span several segments");
    let mut r = j.reader(0).unwrap();
    assert_eq!(r.try_next().unwrap().unwrap().0, 0);
    r.skip_to(5).unwrap(); // within the open segment
    assert_eq!(r.try_next().unwrap().unwrap(), (5, payloads[5].clone()));
    r.skip_to(300).unwrap(); // segments later
    assert_eq!(r.try_next().unwrap().unwrap(), (300, payloads[300].clone()));
    r.skip_to(100).unwrap(); // behind: stays
    assert_eq!(r.position(), 301);
    r.skip_to(400).unwrap(); // the end of what is committed
    assert!(r.try_next().unwrap().is_none());
    assert!(matches!(r.skip_to(401), Err(JournalError::OutOfRange { seq: 401, .. })));
    let read = drain(&mut {
        let mut r = j.reader(0).unwrap();
        r.skip_to(399).unwrap();
        r
    });
    assert_eq!(read, vec![(399, payloads[399].clone())]);
    j.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_contiguous_seqs_and_each_record_is_read_once() {
    const TASKS: usize = 8;
    const EACH: usize = 2_000;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig { segment_size: ByteSize::kib(64), max_size: ByteSize::mib(16), ..config(tmp.path()) };
    let (j, _) = Journal::open(cfg).unwrap();
    let mut reader = j.reader(0).unwrap();
    let consumer = tokio::spawn(async move {
        let mut got = Vec::with_capacity(TASKS * EACH);
        while got.len() < TASKS * EACH {
            let (seq, p) = reader.next().await.unwrap().unwrap();
            got.push((seq, p));
        }
        got
    });
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let a = j.appender();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let p = Bytes::from(format!("task {t} record {i}"));
                mine.push((a.append(p.clone()).await.unwrap(), p));
            }
            mine
        }));
    }
    let mut by_seq = HashMap::new();
    for t in tasks {
        for (seq, p) in t.await.unwrap() {
            assert!(by_seq.insert(seq, p).is_none(), "seq {seq} given twice");
        }
    }
    let got = consumer.await.unwrap();
    for (i, (seq, p)) in got.iter().enumerate() {
        assert_eq!(*seq, i as u64, "read in seq order, contiguous");
        assert_eq!(by_seq.get(seq), Some(p));
    }
    assert_eq!(by_seq.len(), TASKS * EACH);
    j.close().await.unwrap();
}

#[tokio::test]
async fn a_reader_tails_new_appends_and_ends_on_close() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(config(tmp.path())).unwrap();
    let mut reader = j.reader_from_ack().unwrap();
    let waiting = tokio::spawn(async move {
        let first = reader.next().await.unwrap();
        let second = reader.next().await.unwrap();
        let end = reader.next().await.unwrap();
        (first, second, end)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "nothing committed yet");
    let a = j.appender();
    a.append(Bytes::from_static(b"one")).await.unwrap();
    a.append(Bytes::from_static(b"two")).await.unwrap();
    j.close().await.unwrap();
    let (first, second, end) = waiting.await.unwrap();
    assert_eq!(first, Some((0, Bytes::from_static(b"one"))));
    assert_eq!(second, Some((1, Bytes::from_static(b"two"))));
    assert_eq!(end, None);
    assert!(matches!(a.append(Bytes::from_static(b"late")).await, Err(JournalError::Closed)));
}

#[tokio::test]
async fn replay_starts_at_the_persisted_ack_position() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    let payloads: Vec<Bytes> = (0..100).map(|i| payload(i, 40)).collect();
    append_all(&j, &payloads).await;
    j.ack(39).unwrap();
    j.ack(20).unwrap(); // stale: ignored
    assert!(matches!(j.ack(100), Err(JournalError::AckBeyondCommitted { seq: 100, next: 100 })));
    assert_eq!((j.acked_seq(), j.depth()), (Some(39), 60));
    // Dropped without close(): the threads still persist the ack and release the lock.
    drop(j);
    let (j, rec) = reopen(&cfg).await;
    assert_eq!((rec.replay_from, rec.undelivered, rec.next_seq), (40, 60, 100));
    assert_eq!(j.acked_seq(), Some(39));
    let read = drain(&mut j.reader_from_ack().unwrap());
    assert_eq!(read.first().map(|r| r.0), Some(40));
    assert_eq!(read.len(), 60);
    assert_eq!(read[0].1, payloads[40]);
    j.close().await.unwrap();
}

/// Open `cfg`, waiting (up to 5 s) for a dropped journal's threads to release the lock.
async fn reopen(cfg: &JournalConfig) -> (Journal, iotpipe::journal::Recovery) {
    for _ in 0..500 {
        match Journal::open(cfg.clone()) {
            Err(JournalError::Locked { .. }) => tokio::time::sleep(Duration::from_millis(10)).await,
            other => return other.unwrap(),
        }
    }
    panic!("the journal stayed locked");
}

/// Wait (up to 5 s) until `dir` holds fewer than `n` segments.
async fn wait_for_fewer_segments(dir: &Path, n: usize) -> usize {
    for _ in 0..500 {
        let now = segments(dir).len();
        if now < n {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("still {n} segments");
}

#[tokio::test]
async fn delivered_segments_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    append_all(&j, &(0..400).map(|i| payload(i, 60)).collect::<Vec<_>>()).await;
    let before = segments(&cfg.path).len();
    let used = j.used_bytes();
    assert!(before >= 6, "{before} segments");
    j.ack(199).unwrap();
    // Persisted by the ack thread within ack_sync_interval, without sync_acks().
    let middle = wait_for_fewer_segments(&cfg.path, before).await;
    assert!(middle < before && middle > 1, "{middle} of {before} left");
    assert!(j.used_bytes() < used);
    assert_eq!(drain(&mut j.reader_from_ack().unwrap()).first().map(|r| r.0), Some(200));
    assert!(matches!(j.reader(0), Err(JournalError::OutOfRange { seq: 0, .. })));
    j.ack(399).unwrap();
    j.sync_acks().await.unwrap();
    assert_eq!(segments(&cfg.path).len(), 1, "only the active segment is kept");
    assert_eq!(j.depth(), 0);
    j.close().await.unwrap();
    let (j, rec) = Journal::open(cfg.clone()).unwrap();
    assert_eq!((rec.first_seq, rec.next_seq, rec.undelivered), (400, 400, 0));
    assert_eq!(segments(&cfg.path).len(), 1, "the segment left active is deleted at reopen");
    j.close().await.unwrap();
}

#[tokio::test]
async fn a_full_journal_refuses_appends_until_acks_free_space() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg =
        JournalConfig { max_size: ByteSize::kib(8), ack_sync_interval: HumanDuration::secs(60), ..config(tmp.path()) };
    let (j, _) = Journal::open(cfg).unwrap();
    let a = j.appender();
    let mut last = None;
    let err = loop {
        match a.append(payload(0, 100)).await {
            Ok(seq) => last = Some(seq),
            Err(e) => break e,
        }
    };
    let JournalError::Full { used, max } = err else { panic!("expected Full, got {err}") };
    assert_eq!(max, 8 * 1024);
    assert!(used <= max && used + FRAME_HEADER + 100 > max, "used {used}");
    assert!(j.used_bytes() <= max);
    let last = last.unwrap();
    assert!(last > 50, "{last} records fit");
    j.ack(last).unwrap();
    assert!(
        matches!(a.append(payload(0, 100)).await, Err(JournalError::Full { .. })),
        "not freed before the ack is persisted"
    );
    j.sync_acks().await.unwrap();
    assert_eq!(a.append(payload(0, 100)).await.unwrap(), last + 1);
    assert!(matches!(a.append(Bytes::from(vec![0u8; 8 * 1024])).await, Err(JournalError::TooLarge { .. })));
    j.close().await.unwrap();
}

/// A tmpfs of `size` mounted on a fresh directory (root only: the journal's
/// filesystem filling up needs a small filesystem); unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs failed (this test needs root)");
        Self { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A journal whose filesystem is smaller than `max_size`: when it fills up,
/// appends fail with `NoSpace` (backpressure, nothing written) instead of
/// meeting ENOSPC and poisoning the journal; every record before is intact,
/// and deleting delivered segments lets appends go on.
#[tokio::test]
async fn a_full_filesystem_refuses_appends_without_poisoning_until_space_frees() {
    let fs = SmallFs::mount("2m");
    let cfg = JournalConfig {
        max_size: ByteSize::mib(1024),
        segment_size: ByteSize::kib(64),
        max_batch: ByteSize::kib(16),
        ack_sync_interval: HumanDuration::secs(60),
        ..config(fs.dir.path())
    };
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    let a = j.appender();
    let mut next = 0usize;
    let err = loop {
        match a.append(payload(next, 1000)).await {
            Ok(seq) => {
                assert_eq!(seq, next as u64);
                next += 1;
            }
            Err(e) => break e,
        }
    };
    let JournalError::NoSpace { available, reserve, .. } = err else { panic!("expected NoSpace, got {err}") };
    assert!(available < reserve + FRAME_HEADER + 1000, "{available} free, {reserve} reserve");
    assert!(next > 500, "{next} records fit");
    // Refused again, not poisoned; what was written reads back whole.
    assert!(matches!(a.append(payload(next, 1000)).await, Err(JournalError::NoSpace { .. })));
    let got = drain(&mut j.reader(0).unwrap());
    assert_eq!(got.len(), next);
    assert!(got.iter().enumerate().all(|(i, (seq, b))| *seq == i as u64 && *b == payload(i, 1000)));
    // Delivered segments deleted: space is free again.
    j.ack(next as u64 - 1).unwrap();
    j.sync_acks().await.unwrap();
    assert_eq!(a.append(payload(next, 1000)).await.unwrap(), next as u64);
    j.close().await.unwrap();
    let (j, rec) = Journal::open(cfg).unwrap();
    assert_eq!((rec.next_seq, rec.undelivered), (next as u64 + 1, 1));
    j.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_write_poisons_the_journal_until_it_is_reopened() {
    if !Path::new("/dev/full").exists() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Growing segments: a preallocated one would be renamed over the link below.
    let cfg = JournalConfig { preallocate: false, ..config(tmp.path()) };
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    // 100-byte records: 35 fit in a 4 KiB segment; the next segment's file
    // is /dev/full, so creating it fails with ENOSPC.
    std::os::unix::fs::symlink("/dev/full", cfg.path.join("00000000000000000035.seg")).unwrap();
    let a = j.appender();
    for i in 0..35 {
        assert_eq!(a.append(payload(i, 100)).await.unwrap(), i as u64);
    }
    assert!(matches!(a.append(payload(35, 100)).await, Err(JournalError::Poisoned(_))));
    assert!(matches!(a.append(payload(35, 10)).await, Err(JournalError::Poisoned(_))));
    assert_eq!(j.committed_seq(), Some(34));
    j.close().await.unwrap();
    std::fs::remove_file(cfg.path.join("00000000000000000035.seg")).unwrap();
    let (j, rec) = Journal::open(cfg).unwrap();
    assert_eq!(rec.next_seq, 35);
    assert_eq!(drain(&mut j.reader(0).unwrap()).len(), 35);
    assert_eq!(j.appender().append(payload(35, 100)).await.unwrap(), 35);
    j.close().await.unwrap();
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(config(tmp.path())).unwrap();
    assert!(matches!(Journal::open(config(tmp.path())), Err(JournalError::Locked { .. })));
    j.close().await.unwrap();
    let (j, _) = Journal::open(config(tmp.path())).unwrap();
    j.close().await.unwrap();
}

#[tokio::test]
async fn inbound_messages_round_trip_through_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(config(tmp.path())).unwrap();
    let msg = Inbound {
        topic: "mtic/msg/client/realtime/t1/p1".into(),
        payload: Bytes::from_static(br#"{"v":1}"#),
        received_ms: 1_700_000_000_123,
        redelivered: true,
    };
    let seq = j.appender().append(Bytes::from(encode_inbound(&msg))).await.unwrap();
    let (got, bytes) = j.reader(seq).unwrap().try_next().unwrap().unwrap();
    let back = decode_inbound_shared(&bytes).unwrap();
    assert_eq!(
        (got, back.topic, back.payload, back.received_ms, back.redelivered),
        (seq, msg.topic, msg.payload, msg.received_ms, true)
    );
    j.close().await.unwrap();
}

/// Write `sizes.len()` records, close, and return the journal directory and
/// the payloads. The last segment holds the newest records.
fn build(root: &Path, sizes: &[usize]) -> (JournalConfig, Vec<Bytes>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cfg = config(root);
    let payloads: Vec<Bytes> = sizes.iter().enumerate().map(|(i, &n)| payload(i, n)).collect();
    rt.block_on(async {
        let (j, _) = Journal::open(cfg.clone()).unwrap();
        append_all(&j, &payloads).await;
        j.close().await.unwrap();
    });
    (cfg, payloads)
}

/// Frame end offsets of the last segment (records in order).
fn frame_ends(seg: &[u8]) -> Vec<u64> {
    let mut ends = Vec::new();
    let mut pos = SEGMENT_HEADER as usize;
    while pos + FRAME_HEADER as usize <= seg.len() {
        let len = u32::from_le_bytes(seg[pos..pos + 4].try_into().unwrap()) as usize;
        pos += FRAME_HEADER as usize + len;
        ends.push(pos as u64);
    }
    ends
}

/// Where the written bytes of a damaged last segment end: its length, or
/// for a preallocated one (zero-filled before it was written) the end of its
/// last non-zero byte, since zeros there cannot be told from unwritten space.
fn written_end(seg: &[u8]) -> u64 {
    if seg.starts_with(b"IOTPJRN2") && seg.len() as u64 >= SEGMENT_HEADER {
        seg.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1)
    } else {
        seg.len() as u64
    }
}

/// Reopen a damaged copy and check: every record wholly before the cut is
/// back, nothing after it, and the tail (up to `written`, see
/// [`written_end`]) is reported.
fn check_recovery(
    cfg: &JournalConfig,
    payloads: &[Bytes],
    in_earlier_segments: usize,
    ends: &[u64],
    cut: u64,
    written: u64,
) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (j, rec) = Journal::open(cfg.clone()).unwrap_or_else(|e| panic!("cut {cut} written {written}: {e}"));
    let kept = in_earlier_segments + ends.iter().filter(|&&e| e <= cut).count();
    let boundary = ends.iter().copied().filter(|&e| e <= cut).max().unwrap_or(SEGMENT_HEADER.min(cut));
    let boundary = if cut < SEGMENT_HEADER { 0 } else { boundary };
    assert_eq!(rec.next_seq, kept as u64, "cut {cut}");
    assert_eq!(rec.truncated_bytes, written.max(boundary) - boundary, "cut {cut} written {written}");
    if cut > 0 {
        assert_eq!(rec.torn_tail.is_some(), rec.truncated_bytes > 0, "cut {cut}");
    }
    let read = drain(&mut j.reader(0).unwrap());
    assert_eq!(read.len(), kept);
    for (i, (seq, p)) in read.iter().enumerate() {
        assert_eq!((*seq, p), (i as u64, &payloads[i]), "cut {cut}");
    }
    rt.block_on(j.close()).unwrap();
}

#[test]
fn truncation_at_every_byte_of_the_last_segment_keeps_the_committed_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    // Two full segments of 72 records, then a short last one with assorted sizes.
    let mut sizes = vec![40; 144];
    sizes.extend([0, 1, 5, 17, 33, 64, 90, 3]);
    let (cfg, payloads) = build(tmp.path(), &sizes);
    let pristine = tmp.path().join("pristine");
    copy_dir(&cfg.path, &pristine);
    let segs = segments(&pristine);
    let last = std::fs::read(segs.last().unwrap()).unwrap();
    let ends = frame_ends(&last);
    assert_eq!((ends.len(), segs.len()), (6, 3), "72 + 74 + 6 records");
    let earlier = payloads.len() - ends.len();
    for cut in 0..=last.len() as u64 {
        std::fs::remove_dir_all(&cfg.path).unwrap();
        copy_dir(&pristine, &cfg.path);
        let victim = segments(&cfg.path).pop().unwrap();
        std::fs::OpenOptions::new().write(true).open(&victim).unwrap().set_len(cut).unwrap();
        check_recovery(&cfg, &payloads, earlier, &ends, cut, written_end(&last[..cut as usize]));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A crash leaves the last segment cut short and/or followed by junk.
    #[test]
    fn random_crashes_keep_the_committed_prefix(
        sizes in proptest::collection::vec(0usize..200, 1..150),
        cut in any::<proptest::sample::Index>(),
        garbage in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, payloads) = build(tmp.path(), &sizes);
        let victim = segments(&cfg.path).pop().unwrap();
        let bytes = std::fs::read(&victim).unwrap();
        let ends = frame_ends(&bytes);
        // Cut inside the records (a torn header never has bytes after it).
        let cut = SEGMENT_HEADER + cut.index(bytes.len() - SEGMENT_HEADER as usize + 1) as u64;
        let mut damaged = bytes[..cut as usize].to_vec();
        damaged.extend_from_slice(&garbage);
        std::fs::write(&victim, &damaged).unwrap();
        check_recovery(&cfg, &payloads, payloads.len() - ends.len(), &ends, cut, written_end(&damaged));
    }
}

#[tokio::test]
async fn corruption_in_an_older_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    append_all(&j, &(0..200).map(|i| payload(i, 50)).collect::<Vec<_>>()).await;
    j.close().await.unwrap();
    let first = segments(&cfg.path).remove(0);
    let mut b = std::fs::read(&first).unwrap();
    b[200] ^= 0x10;
    std::fs::write(&first, &b).unwrap();
    match Journal::open(cfg.clone()) {
        Err(JournalError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, first);
            assert!(offset <= 200 && offset > SEGMENT_HEADER, "{offset}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened a journal with a corrupt older segment"),
    }
    // A missing middle segment is a gap, also an error.
    b[200] ^= 0x10;
    std::fs::write(&first, &b).unwrap();
    std::fs::remove_file(&segments(&cfg.path)[1]).unwrap();
    assert!(matches!(Journal::open(cfg), Err(JournalError::Corrupt { .. })));
}

#[tokio::test]
async fn corruption_far_from_the_end_of_the_last_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig { segment_size: ByteSize::kib(64), ..config(tmp.path()) };
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    append_all(&j, &(0..300).map(|i| payload(i, 50)).collect::<Vec<_>>()).await;
    j.close().await.unwrap();
    let last = segments(&cfg.path).pop().unwrap();
    let pristine = std::fs::read(&last).unwrap();
    // Damage 15 KB before the end: more than a crash can tear (max_batch = 1 KiB).
    let mut b = pristine.clone();
    b[100] ^= 1;
    std::fs::write(&last, &b).unwrap();
    let err = Journal::open(cfg.clone()).err().expect("must refuse to open");
    assert!(matches!(err, JournalError::Corrupt { ref path, .. } if *path == last), "{err}");
    assert!(err.to_string().contains("a crash tears at most 1024 bytes"), "{err}");
    // Damage in the last record: within one batch of the end, a torn write.
    let mut b = pristine;
    let n = b.len();
    b[n - 3] ^= 1;
    std::fs::write(&last, &b).unwrap();
    let (j, rec) = Journal::open(cfg).unwrap();
    assert_eq!((rec.next_seq, rec.truncated_bytes), (299, FRAME_HEADER + 50));
    j.close().await.unwrap();
}

/// Length of each segment file of `dir`, in order.
fn segment_lens(dir: &Path) -> Vec<u64> {
    segments(dir).iter().map(|p| std::fs::metadata(p).unwrap().len()).collect()
}

/// Preallocated segments: the active one is zero-filled to `segment_size`
/// (the next one prepared once it is half full), a rolled one is cut to its
/// records, and close cuts the active one too.
#[tokio::test]
async fn preallocated_segments_are_full_size_while_active_and_cut_to_their_records_when_sealed() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig { segment_size: ByteSize::kib(64), ..config(tmp.path()) };
    let seg = cfg.segment_size.bytes();
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    assert_eq!(segment_lens(&cfg.path), vec![seg], "zero-filled from the start");
    let payloads: Vec<Bytes> = (0..1000).map(|i| payload(i, 100 + i % 50)).collect();
    append_all(&j, &payloads).await;
    let lens = segment_lens(&cfg.path);
    assert!(lens.len() >= 3, "{lens:?}");
    assert_eq!(*lens.last().unwrap(), seg, "the active segment keeps its preallocated size");
    for (i, &len) in lens[..lens.len() - 1].iter().enumerate() {
        assert!(len < seg && len > seg - 300, "sealed segment {i} is {len} bytes");
    }
    assert_eq!(drain(&mut j.reader(0).unwrap()).len(), 1000);
    j.close().await.unwrap();
    let lens = segment_lens(&cfg.path);
    assert!(*lens.last().unwrap() < seg, "close cuts the active segment: {lens:?}");
    assert!(!cfg.path.join("next.seg.tmp").exists(), "no prepared file is left behind");
    for p in segments(&cfg.path) {
        assert_eq!(&std::fs::read(&p).unwrap()[..8], b"IOTPJRN2", "{}", p.display());
    }
    let (j, rec) = Journal::open(cfg).unwrap();
    assert_eq!((rec.next_seq, rec.truncated_bytes, rec.torn_tail), (1000, 0, None));
    let read = drain(&mut j.reader(0).unwrap());
    assert!(read.iter().enumerate().all(|(i, (seq, p))| *seq == i as u64 && *p == payloads[i]));
    j.close().await.unwrap();
}

/// A crash leaves the active segment at full size, zeros after its last
/// record (and maybe a prepared next file): recovery keeps every record,
/// cuts the zeros and reports no torn tail. A torn write before the zeros
/// is cut and reported like one at the end of a growing segment; damage
/// further than `max_batch` before the last written byte is corruption.
#[tokio::test]
async fn recovery_of_a_crashed_preallocated_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig { segment_size: ByteSize::kib(64), ..config(tmp.path()) };
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    let payloads: Vec<Bytes> = (0..300).map(|i| payload(i, 150)).collect();
    append_all(&j, &payloads).await;
    // The files as a crash now would leave them (everything appended is fsync'd).
    let crashed = tmp.path().join("crashed");
    copy_dir(&cfg.path, &crashed);
    std::fs::write(crashed.join("next.seg.tmp"), vec![0u8; 4096]).unwrap();
    j.close().await.unwrap();
    let active = segments(&crashed).pop().unwrap();
    let pristine = std::fs::read(&active).unwrap();
    assert_eq!(pristine.len() as u64, cfg.segment_size.bytes());
    let written = pristine.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
    let records_in_active = frame_ends(&pristine[..written as usize]).len();
    let at = |dir: &Path| JournalConfig { path: dir.to_path_buf(), ..cfg.clone() };

    let clean = tmp.path().join("clean");
    copy_dir(&crashed, &clean);
    let (j, rec) = Journal::open(at(&clean)).unwrap();
    assert_eq!((rec.next_seq, rec.truncated_bytes, rec.torn_tail), (300, 0, None));
    assert!(!clean.join("next.seg.tmp").exists(), "a leftover preparation is removed");
    let read = drain(&mut j.reader(0).unwrap());
    assert!(read.len() == 300 && read.iter().enumerate().all(|(i, (s, p))| *s == i as u64 && *p == payloads[i]));
    j.close().await.unwrap();
    let cut = segments(&clean).iter().map(|p| std::fs::metadata(p).unwrap().len()).nth(segments(&crashed).len() - 1);
    assert_eq!(cut, Some(written), "the zeros are cut, the records kept");

    // A torn write: 200 bytes of junk after the last record, zeros after that.
    let torn = tmp.path().join("torn");
    copy_dir(&crashed, &torn);
    let mut b = pristine.clone();
    b[written as usize..written as usize + 200].fill(0xA5);
    std::fs::write(segments(&torn).pop().unwrap(), &b).unwrap();
    let (j, rec) = Journal::open(at(&torn)).unwrap();
    assert_eq!((rec.next_seq, rec.truncated_bytes), (300, 200));
    assert_eq!(rec.torn_tail.map(|t| t.offset), Some(written));
    j.close().await.unwrap();

    // The last record damaged: within one batch of the written end, torn.
    let last = tmp.path().join("last");
    copy_dir(&crashed, &last);
    let mut b = pristine.clone();
    b[written as usize - 3] ^= 1;
    std::fs::write(segments(&last).pop().unwrap(), &b).unwrap();
    let (j, rec) = Journal::open(at(&last)).unwrap();
    assert_eq!((rec.next_seq, rec.truncated_bytes), (299, FRAME_HEADER + 150));
    j.close().await.unwrap();

    // Damage far before the written end, whatever zeros follow it: corrupt.
    assert!(records_in_active > 20, "{records_in_active} records in the active segment");
    let far = tmp.path().join("far");
    copy_dir(&crashed, &far);
    let mut b = pristine;
    b[SEGMENT_HEADER as usize + 20] ^= 1;
    std::fs::write(segments(&far).pop().unwrap(), &b).unwrap();
    let err = Journal::open(at(&far)).err().expect("must refuse to open");
    assert!(matches!(err, JournalError::Corrupt { .. }), "{err}");
}

/// File descriptors of this process open on files in `dir`, with whether
/// each was opened with `O_DIRECT` (from `/proc/self/fdinfo`).
fn open_in(dir: &Path) -> Vec<(PathBuf, bool)> {
    let direct = u64::from(rustix::fs::OFlags::DIRECT.bits());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else { continue };
        if target.parent() != Some(dir) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(e.file_name())) else { continue };
        let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap().trim();
        out.push((target, u64::from_str_radix(flags, 8).unwrap() & direct != 0));
    }
    out
}

/// `direct_io` (on by default) changes how records reach the disk, not what
/// is there: the same appends leave byte-identical segments with it and
/// without it, and a reader tailing the active segment (buffered `pread`s
/// of the block that the next direct write rewrites) reads every record as
/// it is committed. With it, the active segment is open with `O_DIRECT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_buffered_writes_leave_the_same_segments_and_tailing_readers_see_every_record() {
    let tmp = tempfile::tempdir().unwrap();
    let payloads: Vec<Bytes> = (0..3000).map(|i| payload(i, 1 + (i * 37) % 700)).collect();
    let mut files = Vec::new();
    for direct_io in [true, false] {
        let cfg = JournalConfig {
            path: tmp.path().join(format!("direct-{direct_io}")),
            segment_size: ByteSize::kib(64),
            max_batch: ByteSize::kib(16),
            max_size: ByteSize::mib(8),
            direct_io,
            ..config(tmp.path())
        };
        let (j, _) = Journal::open(cfg.clone()).unwrap();
        let mut reader = j.reader(0).unwrap();
        let tailing = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(r) = reader.next().await.unwrap() {
                got.push(r);
            }
            got
        });
        let a = j.appender();
        let mut done = Vec::new();
        for (k, chunk) in payloads.chunks(7).enumerate() {
            let mut b = Batch::new();
            for p in chunk {
                b.push(p);
            }
            done.push(a.enqueue_batch(b).map_err(|(e, _)| e).unwrap());
            if k % 50 == 49 {
                // Let the reader catch up with the active segment now and then.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        for d in done {
            d.await.unwrap();
        }
        let active: Vec<_> =
            open_in(&cfg.path).into_iter().filter(|(p, _)| p.extension().is_some_and(|x| x == "seg")).collect();
        assert_eq!(active.iter().any(|(_, d)| *d), direct_io, "O_DIRECT on the active segment's handles: {active:?}");
        j.close().await.unwrap();
        let got = tailing.await.unwrap();
        assert_eq!(got.len(), payloads.len());
        for (i, (seq, p)) in got.iter().enumerate() {
            assert_eq!((*seq, p), (i as u64, &payloads[i]));
        }
        assert!(segments(&cfg.path).len() >= 10, "spans many segments");
        files.push(
            segments(&cfg.path)
                .iter()
                .map(|p| (p.file_name().unwrap().to_owned(), std::fs::read(p).unwrap()))
                .collect::<Vec<_>>(),
        );
    }
    assert!(files[0] == files[1], "the same segment files, byte for byte");
}

/// Without `preallocate` segments grow as they are written, as before.
#[tokio::test]
async fn without_preallocation_segments_grow_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = JournalConfig { segment_size: ByteSize::kib(64), preallocate: false, ..config(tmp.path()) };
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    assert_eq!(segment_lens(&cfg.path), vec![SEGMENT_HEADER]);
    append_all(&j, &[payload(0, 10)]).await;
    assert_eq!(segment_lens(&cfg.path), vec![SEGMENT_HEADER + FRAME_HEADER + 10]);
    j.close().await.unwrap();
    assert_eq!(&std::fs::read(&segments(&cfg.path)[0]).unwrap()[..8], b"IOTPJRN1");
}

/// `commit_delay`: under continuous load the writer waits for more appends
/// and commits them together (far fewer fsyncs than appends); an append
/// after a quiet spell is committed at once, not after the delay.
#[tokio::test]
async fn commit_delay_groups_appends_under_load_and_never_delays_an_idle_one() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg =
        JournalConfig { commit_delay: HumanDuration::millis(20), max_size: ByteSize::mib(16), ..config(tmp.path()) };
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    let a = j.appender();
    // 100 appends, one every millisecond, each awaited by its own task.
    let mut tasks = Vec::new();
    for i in 0..100 {
        tasks.push(tokio::spawn(a.enqueue(payload(i, 20)).unwrap()));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let grouped = j.fsyncs();
    assert!(grouped <= 40, "{grouped} fsyncs for 100 appends a millisecond apart with a 20 ms commit delay");
    j.close().await.unwrap();

    let cfg = JournalConfig { commit_delay: HumanDuration::secs(1), ..cfg };
    let cfg = JournalConfig { path: tmp.path().join("idle"), ..cfg };
    let (j, _) = Journal::open(cfg).unwrap();
    let a = j.appender();
    a.append(payload(0, 10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = std::time::Instant::now();
    a.append(payload(1, 10)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(600),
        "an append after a quiet spell waited {:?}",
        started.elapsed()
    );
    j.close().await.unwrap();
}
