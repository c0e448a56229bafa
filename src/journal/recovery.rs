//! Recovery on open: scan the segments, truncate a torn tail, refuse real damage.
//!
//! Rules:
//! - Segments whose records were all delivered (per the ack file) are deleted
//!   unread.
//! - Every other segment is read in full and every frame's checksum and
//!   sequence number checked; segments must follow each other without a gap.
//! - In the last segment a defect (short frame, bad length, checksum or
//!   sequence mismatch) within `tail_window` bytes (the writer's `max_batch`,
//!   stored in the segment header) of the end is a torn write: the file is
//!   truncated there, reported in [`Recovery`] and logged. Only unsynced bytes
//!   can be torn, and the writer never has more than one batch unsynced.
//! - In a preallocated last segment (zero-filled before its first record)
//!   the same holds with "the end" read as the end of the written bytes: a
//!   defect followed only by zeros is where the records end (the zeros are
//!   cut, nothing is reported), one within `tail_window` bytes of the last
//!   non-zero byte is a torn write.
//! - Any other defect is `JournalError::Corrupt`: never skipped.
//! - A new segment is started, so each segment is written by one process
//!   with one `max_batch`.

use super::ack::{self, AckFile};
use super::frame::{SegmentHeader, SEGMENT_HEADER};
use super::prealloc;
use super::scan::scan_frames;
use super::segment::{self, SegmentInfo};
use super::{JournalConfig, JournalError};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// What `Journal::open` found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Oldest record still held.
    pub first_seq: u64,
    /// Sequence number the next append gets.
    pub next_seq: u64,
    /// Replay starts here: the first record not yet delivered.
    pub replay_from: u64,
    /// Records held (`next_seq - first_seq`), delivered or not.
    pub records: u64,
    /// Records not yet delivered (`next_seq - replay_from`).
    pub undelivered: u64,
    /// Live segment files after recovery (including the new active one).
    pub segments: usize,
    /// Segments deleted because all their records had been delivered.
    pub removed_segments: usize,
    /// Bytes cut off the end of the last segment (0 after a clean shutdown).
    pub truncated_bytes: u64,
    /// Where and why the tail was cut, if it was.
    pub torn_tail: Option<TornTail>,
    /// The ack file was unreadable: replay starts from the oldest record (duplicates, no loss).
    pub ack_reset: bool,
}

/// A torn tail that recovery truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub segment: PathBuf,
    /// Offset of the first bad byte: the file's new length.
    pub offset: u64,
    /// What was wrong there.
    pub reason: String,
}

/// The journal's state after recovery, ready for the writer.
pub struct Recovered {
    /// Live segments, ascending; the last is the new, empty, active one.
    pub segments: Vec<SegmentInfo>,
    /// The active segment, open for appending.
    pub active: File,
    /// The active segment is preallocated.
    pub preallocated: bool,
    /// Segments are to be preallocated (configured, and of use on this filesystem).
    pub preallocate: bool,
    /// First undelivered sequence number.
    pub acked: u64,
    /// The report.
    pub recovery: Recovery,
}

/// Recover the journal in `cfg.path` (which exists and is locked by the caller).
pub fn recover(cfg: &JournalConfig) -> Result<Recovered, JournalError> {
    let dir = cfg.path.as_path();
    let window = u32::try_from(cfg.max_batch.bytes()).unwrap_or(u32::MAX);
    let io_err = |e| JournalError::io(dir, e);
    let ack_file = ack::read(dir)?;
    let (mut acked, ack_reset) = match &ack_file {
        AckFile::Missing => (0, false),
        AckFile::At(n) => (*n, false),
        AckFile::Damaged(reason) => {
            tracing::warn!(path = %dir.display(), reason, "Journal ack file is damaged; replaying every record held.");
            (0, true)
        }
    };

    // A preparation cut short by a crash: never a segment.
    match std::fs::remove_file(dir.join(segment::PREPARED)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(e)),
        _ => {}
    }
    let mut seqs = segment::list(dir).map_err(io_err)?;
    let mut removed_segments = 0;
    while seqs.len() > 1 && seqs[1] <= acked {
        let p = segment::path(dir, seqs[0]);
        std::fs::remove_file(&p).map_err(|e| JournalError::io(&p, e))?;
        seqs.remove(0);
        removed_segments += 1;
    }

    let mut segments = Vec::with_capacity(seqs.len() + 1);
    let mut truncated_bytes = 0;
    let mut torn_tail = None;
    let mut expected: Option<u64> = None;
    for (i, &first) in seqs.iter().enumerate() {
        let is_last = i + 1 == seqs.len();
        let p = segment::path(dir, first);
        if let Some(exp) = expected {
            if first != exp {
                let reason = format!("records {exp}..{first} are missing: no segment holds them");
                return Err(JournalError::Corrupt { path: p, offset: 0, reason });
            }
        }
        let (info, torn) = scan_segment(&p, first, is_last)?;
        if let Some(t) = torn {
            truncated_bytes += info.len_before - info.len;
            torn_tail = Some(t);
        }
        expected = Some(info.next_seq);
        segments.push(SegmentInfo { first_seq: first, len: info.len });
        if is_last && info.records == 0 {
            // Empty last segment: it is recreated below with this run's header.
            segments.pop();
        }
    }
    let next_seq = expected.unwrap_or(acked);
    let preallocate = prealloc::wanted(dir, cfg);
    let prepared = if preallocate { prealloc::prepare_now(dir, cfg) } else { None };
    let (active, preallocated) = prealloc::create(dir, prepared, next_seq, window).map_err(io_err)?;
    segments.push(SegmentInfo { first_seq: next_seq, len: segment::EMPTY_LEN });

    let oldest = segments[0].first_seq;
    if acked < oldest || acked > next_seq {
        if matches!(ack_file, AckFile::At(_)) {
            tracing::warn!(acked, oldest, next_seq, "Journal ack position is outside the records held; clamping it.");
        }
        acked = acked.clamp(oldest, next_seq);
    }
    if ack_file != AckFile::At(acked) {
        ack::write(dir, acked).map_err(io_err)?;
    }
    // The segment that was last before this open may be fully delivered.
    while segments.len() > 1 && segments[1].first_seq <= acked {
        let p = segment::path(dir, segments[0].first_seq);
        std::fs::remove_file(&p).map_err(|e| JournalError::io(&p, e))?;
        segments.remove(0);
        removed_segments += 1;
    }
    let first_seq = segments[0].first_seq;
    let recovery = Recovery {
        first_seq,
        next_seq,
        replay_from: acked,
        records: next_seq - first_seq,
        undelivered: next_seq - acked,
        segments: segments.len(),
        removed_segments,
        truncated_bytes,
        torn_tail,
        ack_reset,
    };
    Ok(Recovered { segments, active, preallocated, preallocate, acked, recovery })
}

/// A segment after its scan.
struct Scanned {
    records: u64,
    next_seq: u64,
    /// Length of the written bytes before any truncation (a preallocated
    /// segment's zeros not counted).
    len_before: u64,
    /// Length after.
    len: u64,
}

/// Check one segment; truncate a torn tail if it is the last one.
fn scan_segment(p: &Path, first: u64, is_last: bool) -> Result<(Scanned, Option<TornTail>), JournalError> {
    let io_err = |e| JournalError::io(p, e);
    let mut file = std::fs::OpenOptions::new().read(true).write(is_last).open(p).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let mut head = Vec::with_capacity(SEGMENT_HEADER);
    (&mut file).take(SEGMENT_HEADER as u64).read_to_end(&mut head).map_err(io_err)?;
    let corrupt = |offset, reason: String| JournalError::Corrupt { path: p.to_path_buf(), offset, reason };
    let header = match SegmentHeader::decode(&head) {
        Some(h) => h,
        // Torn creation: the writer fsyncs the header before the first record.
        None if is_last && len <= SEGMENT_HEADER as u64 => {
            let reason = "incomplete segment header".to_string();
            warn_torn(p, 0, len, &reason);
            let torn = TornTail { segment: p.to_path_buf(), offset: 0, reason };
            return Ok((Scanned { records: 0, next_seq: first, len_before: len, len: 0 }, Some(torn)));
        }
        None => return Err(corrupt(0, "bad segment header".into())),
    };
    if header.first_seq != first {
        return Err(corrupt(0, format!("the header says the segment starts at record {}", header.first_seq)));
    }
    let scan = scan_frames(&mut file, SEGMENT_HEADER as u64, len, first).map_err(io_err)?;
    let mut scanned = Scanned { records: scan.records, next_seq: scan.next_seq, len_before: len, len };
    let Some((offset, reason)) = scan.defect else {
        return Ok((scanned, None));
    };
    if !is_last {
        return Err(corrupt(offset, format!("{reason}, in a segment that is not the last")));
    }
    // Where the written bytes end: the file's end, or in a preallocated
    // segment the last non-zero byte (the zeros after it were never written).
    let end = if header.preallocated { written_end(&mut file, offset, len).map_err(io_err)? } else { len };
    if end == offset {
        // Zeros from the defect on: the unwritten rest of a preallocated segment.
        file.set_len(offset).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        scanned.len = offset;
        scanned.len_before = offset;
        return Ok((scanned, None));
    }
    let tail = end - offset;
    if tail > u64::from(header.tail_window) {
        let reason = format!(
            "{reason}, {tail} bytes before the end of the last segment (a crash tears at most {} bytes)",
            header.tail_window
        );
        return Err(corrupt(offset, reason));
    }
    file.set_len(offset).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    warn_torn(p, offset, tail, &reason);
    scanned.len = offset;
    scanned.len_before = end;
    Ok((scanned, Some(TornTail { segment: p.to_path_buf(), offset, reason })))
}

/// Offset just past the last non-zero byte of `file` in `from..len` (`from` if there is none).
fn written_end(file: &mut File, from: u64, len: u64) -> io::Result<u64> {
    file.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut at, mut end) = (from, from);
    while at < len {
        let want = usize::try_from(len - at).unwrap_or(buf.len()).min(buf.len());
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            end = at + i as u64 + 1;
        }
        at += n as u64;
    }
    Ok(end)
}

fn warn_torn(p: &Path, offset: u64, truncated_bytes: u64, reason: &str) {
    tracing::warn!(segment = %p.display(), offset, truncated_bytes, reason, "Truncated a torn journal tail.");
}
