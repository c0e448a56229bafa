//! The journal's filesystem as a second size bound: appends stop with
//! `JournalError::NoSpace` (backpressure, like `Full`) while the filesystem
//! has less than a reserve free, so that the writer never meets ENOSPC in
//! the middle of a batch and the ack file and the next segment header can
//! always be written. Without this, a journal directory on a filesystem
//! smaller than `journal.max_size` would poison the writer when it fills up.

use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a free-space reading is trusted.
const RECHECK: Duration = Duration::from_millis(100);

/// Bytes kept free besides the frames: the ack file, a segment header and
/// the directory entries (the batch itself is reserved frame by frame).
const SLACK: u64 = 256 << 10;

/// Free space of the journal's filesystem, read at most every [`RECHECK`]
/// or every quarter of the reserve admitted.
pub struct DiskGuard {
    reserve: u64,
    last: Mutex<Option<Reading>>,
}

#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    /// Free bytes minus the frames admitted but not yet written, at `at`.
    budget: u64,
    /// `Shared::reserved` at `at`.
    reserved: u64,
}

/// Not enough free space for an append.
#[derive(Debug, Clone, Copy)]
pub struct LowSpace {
    /// Bytes the filesystem can still take for the journal.
    pub available: u64,
    /// Bytes kept free.
    pub reserve: u64,
}

impl DiskGuard {
    /// A guard keeping `max_batch` twice over plus [`SLACK`] free.
    pub fn new(max_batch: u64) -> Self {
        Self { reserve: reserve(max_batch), last: Mutex::new(None) }
    }

    /// May `bytes` more be admitted, with `reserved` admitted now of which
    /// `used` are on disk? A filesystem that cannot be queried does not stop
    /// appends (the writer still reports a failed write).
    pub fn admit(&self, dir: &Path, reserved: u64, used: u64, bytes: u64) -> Result<(), LowSpace> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = match *last {
            None => true,
            Some(r) => r.at.elapsed() >= RECHECK || reserved.saturating_sub(r.reserved) > self.reserve / 4,
        };
        if stale {
            match free_bytes(dir) {
                Some(free) => {
                    let unwritten = reserved.saturating_sub(used);
                    *last = Some(Reading { at: Instant::now(), budget: free.saturating_sub(unwritten), reserved });
                }
                None => return Ok(()),
            }
        }
        let Some(r) = *last else { return Ok(()) };
        // Frames admitted since the reading take from the budget; deleted segments give back.
        let available = if reserved >= r.reserved {
            r.budget.saturating_sub(reserved - r.reserved)
        } else {
            r.budget.saturating_add(r.reserved - reserved)
        };
        if available < bytes.saturating_add(self.reserve) {
            return Err(LowSpace { available, reserve: self.reserve });
        }
        Ok(())
    }
}

/// Bytes kept free for a writer with this `max_batch`.
pub fn reserve(max_batch: u64) -> u64 {
    max_batch.saturating_mul(2).saturating_add(SLACK)
}

/// Filesystems where zero-filling a file ahead buys nothing: memory-backed
/// ones (tmpfs, ramfs: the zeros would be memory, and an fsync writes
/// nothing) and copy-on-write ones (btrfs, ZFS: an overwrite allocates
/// anyway). `statfs(2)` magic numbers.
const NO_PREALLOCATION: [(i64, &str); 4] =
    [(0x0102_1994, "tmpfs"), (0x8584_58f6, "ramfs"), (0x9123_683e, "btrfs"), (0x2fc1_2fc1, "zfs")];

/// The kind of `dir`'s filesystem when preallocating segments there is of
/// no use (see [`NO_PREALLOCATION`]); `None` for any other filesystem, or
/// one that cannot be queried.
pub fn no_preallocation(dir: &Path) -> Option<&'static str> {
    let s = rustix::fs::statfs(dir).ok()?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let kind = s.f_type as i64;
    NO_PREALLOCATION.iter().find(|(magic, _)| *magic == kind).map(|(_, name)| *name)
}

/// Bytes an unprivileged writer may still allocate on `dir`'s filesystem.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_backed_filesystems_are_not_preallocated_on() {
        if std::path::Path::new("/dev/shm").is_dir() {
            assert_eq!(no_preallocation(std::path::Path::new("/dev/shm")), Some("tmpfs"));
        }
        assert_eq!(no_preallocation(std::path::Path::new("/nonexistent/dir")), None);
    }

    #[test]
    fn a_budget_smaller_than_the_reserve_refuses_and_a_freed_one_admits() {
        let dir = tempfile::tempdir().unwrap();
        let g = DiskGuard::new(1 << 20);
        let free = free_bytes(dir.path()).unwrap();
        // Pretend almost all of the free space is admitted but unwritten.
        let unwritten = free.saturating_sub(g.reserve / 2);
        let err = g.admit(dir.path(), unwritten, 0, 100).unwrap_err();
        assert!(err.available < g.reserve, "{err:?}");
        // The same reservations released (segments deleted): admitted again without a new reading.
        g.admit(dir.path(), 0, 0, 100).unwrap();
    }
}
