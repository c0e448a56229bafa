//! The `[journal]` section of the config file, and its validation.

use super::frame::{FRAME_HEADER, MAX_PAYLOAD, SEGMENT_HEADER};
use crate::units::{ByteSize, HumanDuration, KeyError};
use serde::Deserialize;
use std::path::PathBuf;

/// Smallest accepted `segment_size`.
const MIN_SEGMENT_SIZE: u64 = 4 * 1024;
/// Smallest accepted `max_batch` and `forward_max_bytes`.
const MIN_BATCH: u64 = 1024;
/// Largest accepted `commit_delay`: every append under load waits this long.
const MAX_COMMIT_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// Largest accepted `forward_max_records` (tokio's semaphore has a limit, and
/// more would defeat the bound).
const MAX_FORWARD_RECORDS: usize = 1 << 20;

/// Where the local journal lives and how large it may grow.
///
/// TOML: `[journal] path = "data/journal"  max_size = "1GiB"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Directory of the segment files and the ack file; created when missing.
    pub path: PathBuf,
    /// Most bytes the live segments may take; an append beyond it fails with
    /// `JournalError::Full` (backpressure). At least twice `segment_size`.
    pub max_size: ByteSize,
    /// A segment file is closed and a new one started once it reaches this size.
    /// Delivered records are freed a whole segment at a time.
    pub segment_size: ByteSize,
    /// Most bytes written per `fdatasync` (one group commit). Also bounds the
    /// torn tail that recovery accepts after a crash.
    pub max_batch: ByteSize,
    /// Under continuous load (the previous group commit ended less than
    /// this long before the next append arrived), how long the writer waits
    /// for more appends before it writes and fsyncs them: fewer, larger
    /// commits for at most this much more latency per append. The bridge's
    /// ingest cuts the wait short once half the MQTT window waits for it.
    /// `0s`: commit at once.
    pub commit_delay: HumanDuration,
    /// How often the delivered position is written to disk while acks arrive.
    pub ack_sync_interval: HumanDuration,
    /// Most records read from the journal and not yet delivered downstream
    /// (Kafka or the store) at any time: what bounds the forwarder's memory,
    /// however large the backlog on disk.
    pub forward_max_records: usize,
    /// Most payload bytes read from the journal and not yet delivered (a
    /// record larger than this is forwarded on its own).
    pub forward_max_bytes: ByteSize,
    /// Zero-fill each segment file to `segment_size` before appending to it
    /// (the next one in the background), so a group commit's `fdatasync`
    /// writes only data: no file size, no block allocation. Costs up to two
    /// segments of disk beyond `max_size`; skipped while the filesystem has
    /// no room for them, and on tmpfs, ramfs, btrfs and ZFS (memory, or
    /// copy-on-write: no use there).
    pub preallocate: bool,
    /// Write preallocated segments (and their zero-fill) with direct I/O
    /// (`O_DIRECT`), not through the page cache: less CPU per record and
    /// no page-cache pages charged to the container's memory, but each
    /// write then waits for the disk (measured here: 0.88x the journal's
    /// CPU per record, and the bridge alone at 0.87x the rate). Off by
    /// default; where the filesystem refuses it, segments are written
    /// buffered, as with `false`.
    pub direct_io: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/journal"),
            max_size: ByteSize::mib(1024),
            segment_size: ByteSize::mib(64),
            max_batch: ByteSize::mib(1),
            commit_delay: HumanDuration::millis(20),
            ack_sync_interval: HumanDuration::millis(100),
            forward_max_records: 4096,
            forward_max_bytes: ByteSize::mib(8),
            preallocate: true,
            direct_io: false,
        }
    }
}

impl JournalConfig {
    /// A config with the defaults and the given directory.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), ..Self::default() }
    }

    /// Check the sizes against each other; the error names the key.
    /// Keys are relative to `[journal]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        let bad = |key: &'static str, reason: String| Err(KeyError::new(key, reason));
        if self.path.as_os_str().is_empty() {
            return bad("path", "must not be empty".into());
        }
        let seg = self.segment_size.bytes();
        if seg < MIN_SEGMENT_SIZE {
            return bad(
                "segment_size",
                format!("{} is too small (at least {})", self.segment_size, ByteSize(MIN_SEGMENT_SIZE)),
            );
        }
        let max_seg = MAX_PAYLOAD as u64 + (FRAME_HEADER + SEGMENT_HEADER) as u64;
        if seg > max_seg {
            return bad("segment_size", format!("{} is too large (at most {})", self.segment_size, ByteSize(max_seg)));
        }
        if self.max_size.bytes() < seg.saturating_mul(2) {
            return bad(
                "max_size",
                format!("{} must be at least twice journal.segment_size ({})", self.max_size, self.segment_size),
            );
        }
        if self.max_batch.bytes() < MIN_BATCH || self.max_batch.bytes() > u64::from(u32::MAX) {
            return bad("max_batch", format!("{} must be between 1KiB and 4GiB", self.max_batch));
        }
        if self.commit_delay.get() > MAX_COMMIT_DELAY {
            return bad("commit_delay", format!("{} is above {MAX_COMMIT_DELAY:?}", self.commit_delay));
        }
        if self.ack_sync_interval.get().is_zero() {
            return bad("ack_sync_interval", "must be greater than zero".into());
        }
        if !(1..=MAX_FORWARD_RECORDS).contains(&self.forward_max_records) {
            return bad(
                "forward_max_records",
                format!("{} is outside 1..={MAX_FORWARD_RECORDS}", self.forward_max_records),
            );
        }
        if self.forward_max_bytes.bytes() < MIN_BATCH || self.forward_max_bytes.bytes() > u64::from(u32::MAX) {
            return bad("forward_max_bytes", format!("{} must be between 1KiB and 4GiB", self.forward_max_bytes));
        }
        Ok(())
    }

    /// Largest payload one append accepts: a frame must fit in an empty segment.
    pub fn max_record(&self) -> u64 {
        self.segment_size.bytes().saturating_sub((SEGMENT_HEADER + FRAME_HEADER) as u64).min(MAX_PAYLOAD as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_keys_with_defaults() {
        let cfg: JournalConfig = toml::from_str("path = \"/var/lib/iotpipe/journal\"\nmax_size = \"2GiB\"\n").unwrap();
        assert_eq!(cfg.path, PathBuf::from("/var/lib/iotpipe/journal"));
        assert_eq!(cfg.max_size, ByteSize(2 << 30));
        assert_eq!(cfg.segment_size, ByteSize::mib(64));
        assert_eq!(cfg.ack_sync_interval.get(), std::time::Duration::from_millis(100));
        assert_eq!(cfg.commit_delay.get(), std::time::Duration::from_millis(20));
        assert!(cfg.preallocate);
        assert!(!cfg.direct_io, "direct I/O is opt-in");
        cfg.validate().unwrap();
        JournalConfig::default().validate().unwrap();
    }

    #[test]
    fn rejects_unknown_keys_and_inconsistent_sizes() {
        assert!(toml::from_str::<JournalConfig>("max_sise = \"1GiB\"").is_err());
        let cfg = JournalConfig { max_size: ByteSize::mib(100), ..JournalConfig::default() };
        assert_eq!(cfg.validate().unwrap_err().key, "max_size");
        let cfg = JournalConfig { segment_size: ByteSize(100), ..JournalConfig::default() };
        assert_eq!(cfg.validate().unwrap_err().key, "segment_size");
        let cfg: JournalConfig = toml::from_str("commit_delay = \"2s\"").unwrap();
        assert_eq!(cfg.validate().unwrap_err().key, "commit_delay");
        let cfg: JournalConfig = toml::from_str("commit_delay = \"0s\"\npreallocate = false").unwrap();
        assert_eq!((cfg.commit_delay.get(), cfg.preallocate), (std::time::Duration::ZERO, false));
        cfg.validate().unwrap();
    }
}
