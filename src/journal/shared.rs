//! State shared by the journal handle, the writer thread, the ack thread and readers.

use super::disk::DiskGuard;
use super::segment::SegmentInfo;
use super::{JournalConfig, JournalError};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

/// What is durable, published by the writer after every fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Records with a smaller sequence number are fsync'd and may be read.
    pub next_seq: u64,
    /// First sequence number of the segment being appended to.
    pub active_first: u64,
    /// Bytes of the active segment covered by the last fsync.
    pub active_len: u64,
    /// The journal was closed: nothing more will be committed.
    pub closed: bool,
}

/// The shared state.
pub struct Shared {
    /// The journal directory.
    pub dir: PathBuf,
    /// The validated config.
    pub cfg: JournalConfig,
    /// Live segments in sequence order; the last one is the active one.
    pub segments: Mutex<Vec<SegmentInfo>>,
    /// The committed position; readers subscribe to wait for new records.
    pub committed: watch::Sender<Committed>,
    /// Bytes of the live segment files.
    pub used: AtomicU64,
    /// `used` plus the frames of appends admitted but not yet written: what the
    /// size bound is checked against, so concurrent appenders cannot overshoot it.
    pub reserved: AtomicU64,
    /// First undelivered sequence number, as acked in memory.
    pub acked: AtomicU64,
    /// First undelivered sequence number, as last written to the ack file.
    pub ack_persisted: AtomicU64,
    /// Set by `close()`: new appends fail with `Closed`.
    pub closed: AtomicBool,
    /// `fdatasync` calls made for appends (group commits), for metrics.
    pub fsyncs: AtomicU64,
    /// Free space of the journal's filesystem, the second size bound.
    pub disk: DiskGuard,
    /// Segments are preallocated (`preallocate`, and of use on this filesystem).
    pub preallocate: bool,
    /// Appenders ask here for a commit without the rest of the commit delay.
    pub hurry: super::hurry::Hurry,
}

impl Shared {
    /// Lock the segment list (a panic elsewhere does not make it unusable).
    pub fn segments(&self) -> MutexGuard<'_, Vec<SegmentInfo>> {
        self.segments.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admit a frame of `bytes` against `max_size`, or fail fast with `Full`,
    /// and against the filesystem's free space, or fail fast with `NoSpace`.
    pub fn reserve(&self, bytes: u64) -> Result<(), JournalError> {
        let max = self.cfg.max_size.bytes();
        let mut cur = self.reserved.load(Ordering::Acquire);
        loop {
            let want = cur.saturating_add(bytes);
            if want > max {
                return Err(JournalError::Full { used: cur, max });
            }
            let used = self.used.load(Ordering::Acquire);
            if let Err(low) = self.disk.admit(&self.dir, cur, used, bytes) {
                return Err(JournalError::NoSpace {
                    path: self.dir.clone(),
                    available: low.available,
                    reserve: low.reserve,
                });
            }
            match self.reserved.compare_exchange_weak(cur, want, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    /// Give back a reservation that was not written.
    pub fn release(&self, bytes: u64) {
        self.reserved.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Account for bytes added to the segment files (written frames are already reserved).
    pub fn grew(&self, bytes: u64, reserved_already: bool) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        if !reserved_already {
            self.reserved.fetch_add(bytes, Ordering::AcqRel);
        }
    }

    /// Account for deleted segment files.
    pub fn shrank(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.reserved.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// The committed position now.
    pub fn committed(&self) -> Committed {
        *self.committed.borrow()
    }
}
