//! Segment files: names, listing, creation, and the list of live segments.

use super::frame::{SegmentHeader, SEGMENT_HEADER};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Suffix of segment file names (`<first_seq:020>.seg`).
const SUFFIX: &str = ".seg";

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
    file.write_all(&SegmentHeader { first_seq, tail_window }.encode())?;
    file.sync_all()?;
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
}
