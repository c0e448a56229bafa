//! The delivered position: the `ack` file, the thread that persists it, and
//! the deletion of segments whose records are all delivered.
//!
//! `<dir>/ack` is 20 bytes: `[magic "IOTPACK1"][next u64 LE][crc32c of the
//! first 16 bytes u32 LE]`, where every record with a sequence number below
//! `next` has been delivered. It is created (and, by recovery, replaced)
//! atomically: write `ack.tmp`, fsync it, rename it over `ack`, fsync the
//! directory. The ack thread then overwrites it in place ([`InPlace`]).

use super::segment;
use super::shared::Shared;
use super::JournalError;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use tokio::sync::oneshot;

const ACK_FILE: &str = "ack";
const ACK_TMP: &str = "ack.tmp";
const MAGIC: [u8; 8] = *b"IOTPACK1";
const LEN: usize = 20;

/// What the ack file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckFile {
    /// No ack file: nothing was delivered yet.
    Missing,
    /// Records below this sequence number are delivered.
    At(u64),
    /// The file is unreadable (wrong size, magic or checksum).
    Damaged(String),
}

/// Read `<dir>/ack`.
pub fn read(dir: &Path) -> Result<AckFile, JournalError> {
    let p = dir.join(ACK_FILE);
    let b = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AckFile::Missing),
        Err(e) => return Err(JournalError::io(p, e)),
    };
    if b.len() != LEN || b[..8] != MAGIC {
        return Ok(AckFile::Damaged(format!("{} bytes, not a journal ack file", b.len())));
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&b[16..20]);
    if crc32c::crc32c(&b[..16]) != u32::from_le_bytes(crc) {
        return Ok(AckFile::Damaged("checksum mismatch".into()));
    }
    let mut next = [0u8; 8];
    next.copy_from_slice(&b[8..16]);
    Ok(AckFile::At(u64::from_le_bytes(next)))
}

fn encode(next: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(&MAGIC);
    b[8..16].copy_from_slice(&next.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Replace `<dir>/ack` atomically with `next`.
pub fn write(dir: &Path, next: u64) -> io::Result<()> {
    let tmp = dir.join(ACK_TMP);
    let mut f = File::create(&tmp)?;
    f.write_all(&encode(next))?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(ACK_FILE))?;
    segment::sync_dir(dir)
}

/// The ack file as the ack thread updates it: created atomically once
/// ([`write`]), then kept open and overwritten in place — one `pwrite` and
/// one `fdatasync` of an allocated block, where each replacement took a
/// file creation, two fsyncs and a rename, ten times a second under load.
/// Its 20 bytes lie in the file's first disk sector, whose write the disk
/// does whole or not at all (what PostgreSQL assumes of `pg_control`); a
/// torn write would fail the checksum, and recovery then replays every
/// record held: duplicates, never a loss.
#[derive(Default)]
pub struct InPlace {
    file: Option<File>,
}

impl InPlace {
    /// Record `next` as the delivered position in `<dir>/ack`, durably.
    pub fn write(&mut self, dir: &Path, next: u64) -> io::Result<()> {
        if let Some(f) = &self.file {
            let written = f.write_all_at(&encode(next), 0).and_then(|()| f.sync_data());
            if written.is_err() {
                // Next time, replace the file again.
                self.file = None;
            }
            return written;
        }
        write(dir, next)?;
        self.file = OpenOptions::new().write(true).open(dir.join(ACK_FILE)).ok();
        Ok(())
    }
}

/// A message to the ack thread.
pub enum AckRequest {
    /// Persist the ack position and delete delivered segments now.
    Sync(oneshot::Sender<Result<(), JournalError>>),
    /// The same, then stop.
    Shutdown(oneshot::Sender<Result<(), JournalError>>),
}

/// Start the thread that persists acks every `ack_sync_interval` and on
/// request. It holds `lock` (the directory lock) until it has stopped.
pub fn spawn(
    shared: Arc<Shared>,
    rx: Receiver<AckRequest>,
    lock: Arc<File>,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("journal-acks".into()).spawn(move || {
        let interval = shared.cfg.ack_sync_interval.get();
        let mut file = InPlace::default();
        let shutdown = loop {
            match rx.recv_timeout(interval) {
                Ok(AckRequest::Sync(done)) => {
                    let _ = done.send(flush(&shared, &mut file));
                }
                Ok(AckRequest::Shutdown(done)) => break Some((done, flush(&shared, &mut file))),
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(error) = flush(&shared, &mut file) {
                        tracing::warn!(%error, "Could not persist the journal ack position; retrying.");
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if let Err(error) = flush(&shared, &mut file) {
                        tracing::warn!(%error, "Could not persist the journal ack position.");
                    }
                    break None;
                }
            }
        };
        drop(shared);
        drop(lock);
        if let Some((done, result)) = shutdown {
            let _ = done.send(result);
        }
    })
}

/// Persist the in-memory ack position if it moved, then delete delivered segments.
pub fn flush(shared: &Shared, file: &mut InPlace) -> Result<(), JournalError> {
    let acked = shared.acked.load(Ordering::Acquire);
    if acked > shared.ack_persisted.load(Ordering::Acquire) {
        file.write(&shared.dir, acked).map_err(|e| JournalError::io(shared.dir.join(ACK_FILE), e))?;
        shared.ack_persisted.store(acked, Ordering::Release);
    }
    remove_delivered(shared);
    Ok(())
}

/// Delete the segments (never the active one) whose records are all below
/// the persisted ack position.
pub fn remove_delivered(shared: &Shared) {
    let persisted = shared.ack_persisted.load(Ordering::Acquire);
    let doomed: Vec<_> = {
        let mut segs = shared.segments();
        let n = segs.windows(2).take_while(|w| w[1].first_seq <= persisted).count();
        segs.drain(..n).collect()
    };
    for s in &doomed {
        shared.shrank(s.len);
        let p = segment::path(&shared.dir, s.first_seq);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                // Left on disk: recovery deletes it on the next open (the ack file covers it).
                tracing::warn!(segment = %p.display(), error = %e, "Could not delete a delivered journal segment.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_file_round_trips_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), AckFile::Missing);
        write(dir.path(), 12345).unwrap();
        assert_eq!(read(dir.path()).unwrap(), AckFile::At(12345));
        assert!(!dir.path().join(ACK_TMP).exists());
        let mut b = std::fs::read(dir.path().join(ACK_FILE)).unwrap();
        b[9] ^= 0x40;
        std::fs::write(dir.path().join(ACK_FILE), &b).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), AckFile::Damaged(_)));
        std::fs::write(dir.path().join(ACK_FILE), b"12").unwrap();
        assert!(matches!(read(dir.path()).unwrap(), AckFile::Damaged(_)));
    }

    #[test]
    fn the_ack_thread_creates_the_file_once_then_overwrites_it_in_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut file = InPlace::default();
        file.write(dir.path(), 7).unwrap();
        assert_eq!(read(dir.path()).unwrap(), AckFile::At(7));
        let inode = std::fs::metadata(dir.path().join(ACK_FILE)).unwrap().ino();
        for next in [8, 1 << 40, 9] {
            file.write(dir.path(), next).unwrap();
            assert_eq!(read(dir.path()).unwrap(), AckFile::At(next));
        }
        let meta = std::fs::metadata(dir.path().join(ACK_FILE)).unwrap();
        assert_eq!((meta.ino(), meta.len()), (inode, LEN as u64), "the same file, still 20 bytes");
        // Replaced behind its back (recovery does, on the next open): a new
        // thread's first write replaces it again, and the file reads back.
        write(dir.path(), 3).unwrap();
        let mut again = InPlace::default();
        again.write(dir.path(), 4).unwrap();
        assert_eq!(read(dir.path()).unwrap(), AckFile::At(4));
    }
}
