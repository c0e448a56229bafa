//! Preallocated segments: when to zero-fill one, and the background
//! preparation of the next while the active one fills.
//!
//! Not on filesystems where it is of no use (`disk::no_preallocation`:
//! memory-backed or copy-on-write). A segment is preallocated only while the filesystem has room for it and
//! twice the disk guard's reserve besides, so a preparation never takes the
//! space that admitted appends were promised. A preparation runs in the
//! background only while the active segment is itself preallocated (its
//! appends need no new blocks); otherwise the writer prepares at the roll,
//! itself. Any failure falls back to a plain segment that grows as it is
//! written: preallocation changes what an fsync costs, never what is durable.

use super::disk;
use super::segment;
use super::JournalConfig;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;

/// Does the filesystem of `dir` have room for a preallocated segment?
fn room_for(dir: &Path, cfg: &JournalConfig) -> bool {
    let need = cfg.segment_size.bytes().saturating_add(disk::reserve(cfg.max_batch.bytes()).saturating_mul(2));
    disk::free_bytes(dir).is_some_and(|free| free >= need)
}

/// Is `journal.preallocate` on, and of use on `dir`'s filesystem?
pub fn wanted(dir: &Path, cfg: &JournalConfig) -> bool {
    if !cfg.preallocate {
        return false;
    }
    match disk::no_preallocation(dir) {
        None => true,
        Some(kind) => {
            tracing::info!(path = %dir.display(), filesystem = kind, "Journal segments are not preallocated on this filesystem.");
            false
        }
    }
}

/// Zero-fill the next segment now, if there is room (the caller checked
/// [`wanted`]).
pub fn prepare_now(dir: &Path, cfg: &JournalConfig) -> Option<File> {
    prepare_unless(dir, cfg, &AtomicBool::new(false))
}

fn prepare_unless(dir: &Path, cfg: &JournalConfig, cancel: &AtomicBool) -> Option<File> {
    if !room_for(dir, cfg) {
        return None;
    }
    match segment::prepare(dir, cfg.segment_size.bytes(), cfg.direct_io, cancel) {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::debug!(path = %dir.display(), %error, "Could not preallocate a journal segment; using a growing one.");
            None
        }
    }
}

/// Create the segment starting at `first_seq` from `prepared` when there is
/// one (returns `true`: preallocated), else as a plain, growing segment.
pub fn create(dir: &Path, prepared: Option<File>, first_seq: u64, tail_window: u32) -> io::Result<(File, bool)> {
    match prepared {
        Some(file) => Ok((segment::activate(dir, file, first_seq, tail_window)?, true)),
        None => Ok((segment::create(dir, first_seq, tail_window)?, false)),
    }
}

/// The next segment, being zero-filled on a thread of its own.
pub struct Preparation {
    done: Receiver<Option<File>>,
    cancel: Arc<AtomicBool>,
}

impl Preparation {
    /// Start preparing the next segment in the background (`None` when the
    /// thread cannot start).
    pub fn start(dir: PathBuf, cfg: JournalConfig) -> Option<Self> {
        let (tx, done) = mpsc::sync_channel(1);
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        let spawned = std::thread::Builder::new().name("journal-prealloc".into()).spawn(move || {
            let _ = tx.send(prepare_unless(&dir, &cfg, &stop));
        });
        spawned.ok().map(|_| Self { done, cancel })
    }

    /// The prepared file, once the preparation is done (waits for it).
    pub fn finish(self) -> Option<File> {
        self.done.recv().ok().flatten()
    }

    /// Stop the preparation (within one write) and wait for its thread, so
    /// that nothing writes in the directory once its lock is released.
    /// Returns the file if it was already prepared.
    pub fn cancel(self) -> Option<File> {
        self.cancel.store(true, Ordering::Relaxed);
        self.finish()
    }
}
