//! The journal's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The live segments would exceed `journal.max_size`: stop accepting input
    /// (do not ack upstream) until the forwarder has delivered and acked records.
    #[error("journal is full: {used} of {max} bytes in use; waiting for delivered records to be acked")]
    Full {
        /// Bytes of the live segments plus appends already queued.
        used: u64,
        /// `journal.max_size`.
        max: u64,
    },
    /// The journal's filesystem has less free space than the journal keeps in
    /// reserve: stop accepting input (do not ack upstream) until space frees,
    /// by delivered segments being deleted or by something else on the disk.
    #[error("journal {path}: filesystem nearly full ({available} bytes free for the journal, {reserve} kept in reserve); waiting for space")]
    NoSpace {
        /// The journal directory.
        path: PathBuf,
        /// Bytes the filesystem can still take, less appends not yet written.
        available: u64,
        /// Bytes the journal leaves free (ack file, segment header, a batch).
        reserve: u64,
    },
    /// A payload larger than one segment can hold.
    #[error("record of {size} bytes is larger than the journal accepts ({max} bytes; raise journal.segment_size)")]
    TooLarge {
        /// Payload size.
        size: u64,
        /// Largest accepted payload.
        max: u64,
    },
    /// Damage that is not a torn tail: a defect inside a segment older than the
    /// last one, a gap between segments, or a defect in the last segment further
    /// from its end than a crash can leave. Never skipped silently.
    #[error("journal segment {path} is corrupt at byte {offset}: {reason}; move the damaged segment aside (losing its records) or restore it")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the first bad frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An invalid `[journal]` setting (its key without the `journal.` prefix).
    #[error("journal.{}: {}", .0.key, .0.message)]
    Config(#[from] crate::units::KeyError),
    /// Another process holds the journal directory.
    #[error("journal {path} is in use by another process")]
    Locked {
        /// The journal directory.
        path: PathBuf,
    },
    /// A read asked for a record that is not (or no longer, or not yet) in the journal.
    #[error("record {seq} is not in the journal (it holds {first}..{next})")]
    OutOfRange {
        /// The requested sequence number.
        seq: u64,
        /// Oldest record still held.
        first: u64,
        /// Sequence number the next append gets.
        next: u64,
    },
    /// An ack for a record that has not been committed.
    #[error("ack of record {seq}, but only records before {next} are committed")]
    AckBeyondCommitted {
        /// The acked sequence number.
        seq: u64,
        /// First sequence number not yet committed.
        next: u64,
    },
    /// A write or fsync failed earlier; what reached the disk is unknown, so the
    /// journal refuses appends until it is reopened (recovery truncates the tail).
    #[error("journal writer failed earlier ({0}); reopen the journal to recover")]
    Poisoned(String),
    /// The journal was closed.
    #[error("journal is closed")]
    Closed,
    /// A stored message could not be decoded (see `decode_inbound`).
    #[error("journal record cannot be decoded: {0}")]
    BadRecord(&'static str),
}

impl JournalError {
    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
