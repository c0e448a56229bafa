//! Direct I/O (`O_DIRECT`) for preallocated segments: records go from an
//! aligned buffer of the writer's straight to the disk, not through the page
//! cache, and so does the zero-fill of the next segment.
//!
//! A buffered append copies the records into page-cache pages, marks them
//! dirty, and the `fdatasync` then looks them up again and writes them out;
//! a direct write does the I/O in the `write` itself, and the `fdatasync`
//! only has the device cache to flush (and, on ext4 without a journal, the
//! inode's block). Measured on this machine's ext4: a 128 KiB append plus
//! its `fdatasync` took 77 µs of CPU buffered and 31 µs direct. The pages
//! written are not left in the page cache either, where they counted
//! against a container's memory limit until reclaimed.
//!
//! Direct I/O wants the file offset, the length and the buffer aligned to
//! the device's block size, so a commit writes whole blocks: it starts with
//! the partial last block of the previous commit (kept here, so it is never
//! read back), then the new frames, then zeros up to the next block
//! boundary. That is only correct in a preallocated segment, whose bytes
//! after the last record are zeros anyway and whose size does not change;
//! a growing segment is written through the page cache. Where the
//! filesystem refuses `O_DIRECT` (tmpfs before Linux 6.6, some network
//! filesystems), or a direct write with `EINVAL` (a block size above
//! [`BLOCK`]), the segment falls back to buffered writes at the same offsets.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment of direct writes: offsets, lengths and the buffer. 4 KiB
/// covers every device block size in use (512 and 4096 bytes).
pub const BLOCK: usize = 4096;

/// Bytes one direct write takes at most (a commit larger than this takes
/// several writes before its one `fdatasync`). Also what the buffer holds.
const CHUNK: usize = 256 << 10;

/// A buffer whose usable part starts at a [`BLOCK`] boundary, in safe code:
/// a `Vec` one block longer than needed, used from its first aligned byte.
pub struct Aligned {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    /// `len` usable bytes of zeros.
    pub fn zeroed(len: usize) -> Self {
        let bytes = vec![0u8; len + BLOCK];
        let start = bytes.as_ptr().align_offset(BLOCK).min(BLOCK);
        Self { bytes, start, len }
    }

    pub fn get(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }

    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

/// Open `path` for direct writes; `None` where the filesystem refuses them.
fn open_direct(path: &Path, create: bool) -> io::Result<Option<File>> {
    let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
    let mut opts = OpenOptions::new();
    opts.write(true).custom_flags(flags);
    if create {
        opts.create(true).truncate(true);
    }
    match opts.open(path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if is_einval(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Create (or truncate) `path` for direct writes; `None` where the
/// filesystem refuses them.
pub fn create(path: &Path) -> io::Result<Option<File>> {
    open_direct(path, true)
}

/// The filesystem refused a direct open or write (`EINVAL`: `O_DIRECT`
/// itself, or the alignment).
pub fn is_einval(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

/// The active preallocated segment, written with direct I/O.
pub struct DirectSegment {
    file: File,
    buf: Aligned,
    /// Bytes at the start of `buf` that are the partial last block on disk.
    tail: usize,
    /// File offset where the next record goes (just after the last one written).
    end: u64,
}

impl DirectSegment {
    /// Direct writes to the segment at `path`, whose records end at `len`
    /// (the partial block before `len` is read once, buffered). `None`
    /// where the filesystem refuses `O_DIRECT`.
    pub fn open(path: &Path, len: u64) -> io::Result<Option<Self>> {
        let Some(direct) = open_direct(path, false)? else {
            return Ok(None);
        };
        let mut buf = Aligned::zeroed(CHUNK);
        let tail = (len % BLOCK as u64) as usize;
        File::open(path)?.read_exact_at(&mut buf.get_mut()[..tail], len - tail as u64)?;
        Ok(Some(Self { file: direct, buf, tail, end: len }))
    }

    /// Write `parts` in order after the last record, as whole blocks. The
    /// caller fsyncs. `Ok(false)`: the filesystem refused the alignment
    /// (`EINVAL`) before writing anything; write them buffered instead.
    pub fn write(&mut self, parts: &[IoSlice<'_>]) -> io::Result<bool> {
        let mut at = self.end - self.tail as u64;
        let mut filled = self.tail;
        for part in parts {
            let mut part: &[u8] = part;
            while !part.is_empty() {
                let n = part.len().min(CHUNK - filled);
                self.buf.get_mut()[filled..filled + n].copy_from_slice(&part[..n]);
                filled += n;
                part = &part[n..];
                if filled == CHUNK {
                    if !self.write_blocks(at, CHUNK)? {
                        return Ok(false);
                    }
                    at += CHUNK as u64;
                    filled = 0;
                }
            }
        }
        if filled > 0 {
            let padded = filled.next_multiple_of(BLOCK);
            self.buf.get_mut()[filled..padded].fill(0);
            if !self.write_blocks(at, padded)? {
                return Ok(false);
            }
        }
        // Keep the partial last block for the next commit.
        let whole = filled - filled % BLOCK;
        self.buf.get_mut().copy_within(whole..filled, 0);
        self.tail = filled - whole;
        self.end = at + filled as u64;
        Ok(true)
    }

    /// File offset just after the last record written.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// One direct write of the buffer's first `len` bytes at `at`.
    fn write_blocks(&self, at: u64, len: usize) -> io::Result<bool> {
        match self.file.write_all_at(&self.buf.get()[..len], at) {
            Ok(()) => Ok(true),
            // Refused as a whole: nothing was written.
            Err(e) if is_einval(&e) && at == self.end - self.tail as u64 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(dir: &Path, size: usize, head: &[u8]) -> std::path::PathBuf {
        let p = dir.join("s");
        let mut bytes = vec![0u8; size];
        bytes[..head.len()].copy_from_slice(head);
        std::fs::write(&p, &bytes).unwrap();
        p
    }

    /// The filesystem of the temp dir may refuse O_DIRECT (tmpfs): then
    /// these tests check nothing of direct writes, and say so.
    fn direct_here(dir: &Path) -> bool {
        let ok = open_direct(&dir.join("probe"), true).unwrap().is_some();
        if !ok {
            eprintln!("O_DIRECT refused in {}: direct-write tests skipped", dir.display());
        }
        ok
    }

    #[test]
    fn commits_of_any_size_leave_exactly_the_records_then_zeros() {
        let dir = tempfile::tempdir().unwrap();
        if !direct_here(dir.path()) {
            return;
        }
        let head = b"header-of-24-bytes......";
        let p = segment(dir.path(), 4 << 20, head);
        let mut seg = DirectSegment::open(&p, head.len() as u64).unwrap().unwrap();
        let mut expect = head.to_vec();
        let mut x = 7u32;
        // Sizes around block and chunk boundaries, several parts per commit.
        for size in [1, 4071, 4096, 5000, 3, CHUNK - 100, CHUNK + 9000, 2 * CHUNK + 1, 17, 8192] {
            let a: Vec<u8> = (0..size)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8 | 1
                })
                .collect();
            let (p1, p2) = a.split_at(size / 3);
            assert!(seg.write(&[IoSlice::new(p1), IoSlice::new(&[]), IoSlice::new(p2)]).unwrap());
            expect.extend_from_slice(&a);
            let disk = std::fs::read(&p).unwrap();
            assert_eq!(disk.len(), 4 << 20, "the segment's size does not change");
            assert_eq!(&disk[..expect.len()], &expect[..], "after a commit of {size} bytes");
            assert!(disk[expect.len()..].iter().all(|&b| b == 0), "zeros after the records");
        }
    }

    #[test]
    fn reopening_mid_block_keeps_what_the_block_held() {
        let dir = tempfile::tempdir().unwrap();
        if !direct_here(dir.path()) {
            return;
        }
        let head: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8 + 1).collect();
        let p = segment(dir.path(), 1 << 20, &head);
        let mut seg = DirectSegment::open(&p, head.len() as u64).unwrap().unwrap();
        assert!(seg.write(&[IoSlice::new(b"more")]).unwrap());
        assert_eq!(seg.end(), 6004);
        let disk = std::fs::read(&p).unwrap();
        assert_eq!(&disk[..6000], &head[..]);
        assert_eq!(&disk[6000..6004], b"more");
        assert!(disk[6004..].iter().all(|&b| b == 0));
    }
}
