//! Segment files: names, listing, creation, and the list of live segments.

use super::direct;
use super::frame::{SegmentHeader, SEGMENT_HEADER};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Suffix of segment file names (`<first_seq:020>.seg`).
const SUFFIX: &str = ".seg";

/// Name of the file a preallocated segment is zero-filled in before it gets
/// its header and its name. Never a live segment: removed on open.
pub const PREPARED: &str = "next.seg.tmp";

/// Bytes of zeros written per `write` while preparing.
const ZERO_CHUNK: usize = 1 << 20;

/// A live segment, as the writer, readers and the ack task see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Sequence number of its first record; also its name.
    pub first_seq: u64,
    /// Bytes on disk, header included (of the active segment: as last committed).
    pub len: u64,
}

/// Path of the segment whose first record is `first_seq`.
pub fn path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SUFFIX}"))
}

/// The first sequence number a segment file name stands for, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// First sequence numbers of the segment files in `dir`, ascending.
pub fn list(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Create (or reset) the segment starting at `first_seq`: write its header,
/// fsync it and the directory. Returns the file positioned for appending.
pub fn create(dir: &Path, first_seq: u64, tail_window: u32) -> io::Result<File> {
    let p = path(dir, first_seq);
    let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(&p)?;
    file.write_all(&SegmentHeader { first_seq, tail_window, preallocated: false }.encode())?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(file)
}

/// Zero-fill `size` bytes into `<dir>/next.seg.tmp` and fsync it: a segment
/// whose appends then overwrite allocated, initialised blocks, so that their
/// `fdatasync` has no file size or block allocation to write, only the data
/// (half the CPU and time per fsync on ext4, more on a journalling
/// filesystem; docs/journal.md, "Preallocated segments"). A failed
/// preparation (`ENOSPC` included) removes the file, and so does one that
/// sees `cancel` set between two writes.
///
/// `direct`: zero-fill with direct I/O where the filesystem takes it
/// (`direct.rs`), so the zeros do not pass through the page cache.
pub fn prepare(dir: &Path, size: u64, direct: bool, cancel: &AtomicBool) -> io::Result<File> {
    let p = dir.join(PREPARED);
    let fill = || -> io::Result<File> {
        let buffered = || OpenOptions::new().create(true).write(true).truncate(true).open(&p);
        // Direct writes where asked and taken: no page-cache pages to fill and write back.
        let (mut file, mut direct) = match direct.then(|| direct::create(&p)).transpose()?.flatten() {
            Some(file) => (file, true),
            None => (buffered()?, false),
        };
        // Aligned, so that a direct handle takes it too.
        let zeros = direct::Aligned::zeroed(ZERO_CHUNK);
        let mut at = 0u64;
        while at < size {
            if cancel.load(Ordering::Relaxed) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "preparation cancelled"));
            }
            let n = usize::try_from(size - at).unwrap_or(ZERO_CHUNK).min(ZERO_CHUNK);
            // A direct write is whole blocks; the excess is cut below.
            let n = if direct { n.next_multiple_of(direct::BLOCK) } else { n };
            match file.write_all_at(&zeros.get()[..n], at) {
                Ok(()) => at += n as u64,
                // The filesystem refused the alignment before anything was written.
                Err(e) if direct && at == 0 && direct::is_einval(&e) => (file, direct) = (buffered()?, false),
                Err(e) => return Err(e),
            }
        }
        if at != size {
            file.set_len(size)?;
        }
        file.sync_all()?;
        if direct {
            // The segment is then written through ordinary handles.
            file = OpenOptions::new().read(true).write(true).open(&p)?;
        }
        Ok(file)
    };
    fill().inspect_err(|_| {
        let _ = std::fs::remove_file(&p);
    })
}

/// Turn a [`prepare`]d file into the segment starting at `first_seq`: write
/// its header over the zeros, fsync, rename it into place and fsync the
/// directory. Returns the file positioned for appending.
pub fn activate(dir: &Path, mut file: File, first_seq: u64, tail_window: u32) -> io::Result<File> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&SegmentHeader { first_seq, tail_window, preallocated: true }.encode())?;
    file.sync_data()?;
    std::fs::rename(dir.join(PREPARED), path(dir, first_seq))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Make a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Bytes of a segment that holds no record.
pub const EMPTY_LEN: u64 = SEGMENT_HEADER as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_sequence_number() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [10u64, 2, 300] {
            create(dir.path(), seq, 4096).unwrap();
        }
        std::fs::write(dir.path().join("ack"), b"x").unwrap();
        std::fs::write(dir.path().join("12.seg"), b"x").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![2, 10, 300]);
        assert_eq!(path(dir.path(), 2).file_name().unwrap(), "00000000000000000002.seg");
        assert_eq!(parse_name("0000000000000000000a.seg"), None);
        assert_eq!(std::fs::metadata(path(dir.path(), 2)).unwrap().len(), EMPTY_LEN);
    }

    #[test]
    fn a_prepared_segment_is_zeros_until_activated_then_a_named_segment_with_its_header() {
        // Direct writes too (where the temp dir's filesystem refuses them,
        // the buffered fallback), and a size that is not whole blocks.
        for direct in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path();
            assert!(prepare(dir, 1 << 20, direct, &AtomicBool::new(true)).is_err(), "cancelled");
            assert!(!dir.join(PREPARED).exists(), "a cancelled preparation leaves no file");
            std::fs::write(dir.join(PREPARED), b"an older preparation's bytes").unwrap();
            let size = 3 * ZERO_CHUNK / 2 + 1000;
            let file = prepare(dir, size as u64, direct, &AtomicBool::new(false)).unwrap();
            let zeros = std::fs::read(dir.join(PREPARED)).unwrap();
            assert_eq!(zeros.len(), size, "direct: {direct}");
            assert!(zeros.iter().all(|&b| b == 0));
            assert_eq!(list(dir).unwrap(), Vec::<u64>::new(), "the prepared file is not a segment");
            let mut file = activate(dir, file, 7, 4096).unwrap();
            assert!(!dir.join(PREPARED).exists());
            file.write_all(b"next").unwrap();
            let seg = std::fs::read(path(dir, 7)).unwrap();
            assert_eq!(seg.len(), size, "activation keeps the preallocated size");
            assert_eq!(
                SegmentHeader::decode(&seg).map(|h| (h.first_seq, h.tail_window, h.preallocated)),
                Some((7, 4096, true))
            );
            assert_eq!(&seg[SEGMENT_HEADER..SEGMENT_HEADER + 4], b"next", "appends start after the header");
            assert!(seg[SEGMENT_HEADER + 4..].iter().all(|&b| b == 0));
        }
    }
}
