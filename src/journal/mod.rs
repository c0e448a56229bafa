//! The local journal: an append-only, segmented, checksummed log on disk.
//!
//! The bridge acks an MQTT message once the journal has fsync'd it; a
//! forwarder reads the journal, delivers to Kafka (or the store) and acks
//! what was delivered, which frees whole segments. See `docs/journal.md`.
//!
//! ```text
//! Journal::open(cfg) ─┬─ appender() ── append(payload).await ─► seq, once fsync'd
//!                     ├─ reader_from_ack() ── next().await ─► (seq, payload)
//!                     └─ ack(seq) ── persisted every ack_sync_interval
//! ```
//!
//! Files: `frame` (framing and checksums, pure), `segment` (segment files),
//! `prealloc` (zero-filled segments, and preparing the next one),
//! `writer` (the group commit thread), `reader`, `recovery` and `scan`, `ack` (the ack
//! file and its thread), `codec` (what the bridge stores), `config`.

mod ack;
mod batch;
mod codec;
mod config;
mod direct;
mod disk;
mod error;
mod frame;
mod hurry;
mod prealloc;
mod reader;
mod recovery;
mod scan;
mod segment;
mod shared;
mod writer;

pub use batch::Batch;
pub use codec::{decode_inbound, decode_inbound_shared, encode_inbound, encode_inbound_into, encoded_len};
pub use config::JournalConfig;
pub use error::JournalError;
/// Frame and segment-header decoding, for `crate::fuzzing`'s independent
/// reading of a segment (and `tests/fuzz_corpus.rs`): only with the
/// `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use frame::{decode as decode_frame, SegmentHeader, SEGMENT_HEADER};
pub use hurry::HurryAt;
pub use reader::Reader;
pub use recovery::{Recovery, TornTail};
pub use writer::Appender;

use ack::AckRequest;
use shared::{Committed, Shared};
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, watch};
use writer::{Request, Writer};

/// Name of the lock file in the journal directory.
const LOCK_FILE: &str = "lock";

/// An open journal. Share it behind an `Arc`; every method takes `&self`.
pub struct Journal {
    shared: Arc<Shared>,
    /// Requests to the writer thread.
    writer: Sender<Request>,
    /// Requests to the ack thread.
    acks: Sender<AckRequest>,
}

impl Journal {
    /// Open (or create) the journal in `cfg.path`: lock the directory, recover
    /// (see [`Recovery`]), start the writer and ack threads.
    ///
    /// Blocking: it reads every undelivered segment. Call it at start-up or
    /// from `spawn_blocking`.
    pub fn open(cfg: JournalConfig) -> Result<(Self, Recovery), JournalError> {
        cfg.validate()?;
        let dir = cfg.path.clone();
        std::fs::create_dir_all(&dir).map_err(|e| JournalError::io(&dir, e))?;
        let lock = Arc::new(lock_dir(&dir)?);
        let rec = recovery::recover(&cfg)?;
        let recovery = rec.recovery;
        let used: u64 = rec.segments.iter().map(|s| s.len).sum();
        let next_seq = recovery.next_seq;
        let (committed, _) = watch::channel(Committed {
            next_seq,
            active_first: next_seq,
            active_len: segment::EMPTY_LEN,
            closed: false,
        });
        let cfg_max_batch = cfg.max_batch.bytes();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            cfg,
            segments: Mutex::new(rec.segments),
            committed,
            used: AtomicU64::new(used),
            reserved: AtomicU64::new(used),
            acked: AtomicU64::new(rec.acked),
            ack_persisted: AtomicU64::new(rec.acked),
            closed: AtomicBool::new(false),
            fsyncs: AtomicU64::new(0),
            disk: disk::DiskGuard::new(cfg_max_batch),
            preallocate: rec.preallocate,
            hurry: hurry::Hurry::default(),
        });
        let (writer, rx) = mpsc::channel();
        Writer::new(shared.clone(), rec.active, next_seq, segment::EMPTY_LEN, next_seq, rec.preallocated)
            .spawn(rx, lock.clone())
            .map_err(|e| JournalError::io(&dir, e))?;
        let (acks, rx) = mpsc::channel();
        if let Err(e) = ack::spawn(shared.clone(), rx, lock) {
            let (done, _) = oneshot::channel();
            let _ = writer.send(Request::Shutdown { done });
            return Err(JournalError::io(&dir, e));
        }
        tracing::info!(
            path = %dir.display(),
            first_seq = recovery.first_seq,
            next_seq,
            replay_from = recovery.replay_from,
            truncated_bytes = recovery.truncated_bytes,
            "Journal opened."
        );
        Ok((Self { shared, writer, acks }, recovery))
    }

    /// A handle for appending; clone it freely.
    pub fn appender(&self) -> Appender {
        Appender::new(self.shared.clone(), self.writer.clone())
    }

    /// A reader starting at record `seq` (between the oldest record held and
    /// the next one to be appended).
    pub fn reader(&self, seq: u64) -> Result<Reader, JournalError> {
        Reader::new(self.shared.clone(), seq)
    }

    /// A reader starting at the first undelivered record: the replay after a restart.
    pub fn reader_from_ack(&self) -> Result<Reader, JournalError> {
        self.reader(self.shared.acked.load(Ordering::Acquire))
    }

    /// Mark every record up to and including `seq` delivered. Acks must come
    /// in order; a stale one (at or below the current position) is ignored.
    /// Persisted within `ack_sync_interval` (or by [`sync_acks`](Self::sync_acks)),
    /// after which fully delivered segments are deleted.
    pub fn ack(&self, seq: u64) -> Result<(), JournalError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(JournalError::Closed);
        }
        let next = self.shared.committed().next_seq;
        if seq >= next {
            return Err(JournalError::AckBeyondCommitted { seq, next });
        }
        let prev = self.shared.acked.fetch_max(seq + 1, Ordering::AcqRel);
        if seq < prev {
            tracing::debug!(seq, acked = prev, "Ignored a stale journal ack.");
        }
        Ok(())
    }

    /// Persist the ack position now and delete fully delivered segments.
    pub async fn sync_acks(&self) -> Result<(), JournalError> {
        let (done, rx) = oneshot::channel();
        self.acks.send(AckRequest::Sync(done)).map_err(|_| JournalError::Closed)?;
        rx.await.unwrap_or(Err(JournalError::Closed))
    }

    /// Stop: refuse new appends, commit the queued ones, persist the ack
    /// position, stop both threads and release the directory lock. Readers
    /// return the remaining committed records, then `None`. Idempotent.
    pub async fn close(&self) -> Result<(), JournalError> {
        self.shared.closed.store(true, Ordering::Release);
        let (done, rx) = oneshot::channel();
        if self.writer.send(Request::Shutdown { done }).is_ok() {
            let _ = rx.await;
        }
        let (done, rx) = oneshot::channel();
        if self.acks.send(AckRequest::Shutdown(done)).is_err() {
            return Ok(());
        }
        rx.await.unwrap_or(Ok(()))
    }

    /// The journal directory.
    pub fn path(&self) -> &Path {
        &self.shared.dir
    }

    /// Bytes of the live segment files.
    pub fn used_bytes(&self) -> u64 {
        self.shared.used.load(Ordering::Acquire)
    }

    /// `journal.max_size` in bytes.
    pub fn max_size(&self) -> u64 {
        self.shared.cfg.max_size.bytes()
    }

    /// Records committed and not yet acked.
    pub fn depth(&self) -> u64 {
        let next = self.shared.committed().next_seq;
        next.saturating_sub(self.shared.acked.load(Ordering::Acquire))
    }

    /// Sequence number of the last committed (fsync'd) record, if any.
    pub fn committed_seq(&self) -> Option<u64> {
        self.shared.committed().next_seq.checked_sub(1)
    }

    /// `fdatasync` calls made for appends since open: one per group commit
    /// (more when a batch crosses a segment or exceeds `max_batch`).
    pub fn fsyncs(&self) -> u64 {
        self.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// Sequence number of the last acked (delivered) record, if any.
    pub fn acked_seq(&self) -> Option<u64> {
        self.shared.acked.load(Ordering::Acquire).checked_sub(1)
    }
}

impl Drop for Journal {
    /// Without `close()`: ask both threads to commit, persist and stop, without waiting.
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        let (done, _) = oneshot::channel();
        let _ = self.writer.send(Request::Shutdown { done });
        let (done, _) = oneshot::channel();
        let _ = self.acks.send(AckRequest::Shutdown(done));
    }
}

/// Take an exclusive `flock` on `<dir>/lock`, so two processes never share a journal.
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let p = dir.join(LOCK_FILE);
    let file =
        OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(|e| JournalError::io(&p, e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(JournalError::Locked { path: dir.to_path_buf() }),
        Err(e) => Err(JournalError::io(p, e.into())),
    }
}
