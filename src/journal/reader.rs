//! Reading committed records in sequence order, and waiting for new ones.
//!
//! A reader only returns records the writer has fsync'd (`Committed`), and
//! only reads bytes the last fsync covered, so it never sees a partial write.
//! Reads are plain `pread`s, normally served from the page cache, into
//! chunks that the returned payloads share (no copy per record): a chunk is
//! freed once the reader has moved past it and every payload of it is
//! dropped, so what is kept is about what the caller keeps, plus a chunk.

use super::frame::{self, FRAME_HEADER, SEGMENT_HEADER};
use super::segment;
use super::shared::{Committed, Shared};
use super::JournalError;
use bytes::{Bytes, BytesMut};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// Bytes read at a time.
const CHUNK: usize = 64 * 1024;

/// Yields `(seq, payload)` from a position onward, including records
/// appended later; obtained from `Journal::reader` or `Journal::reader_from_ack`.
pub struct Reader {
    shared: Arc<Shared>,
    rx: watch::Receiver<Committed>,
    /// Sequence number of the next record to return.
    next_seq: u64,
    /// The open segment, positioned at `next_seq`.
    cur: Option<Cursor>,
    /// The committed state last read from the writer: records below its
    /// `next_seq` are read without asking again (a lock per record).
    seen: Committed,
}

impl Reader {
    pub(super) fn new(shared: Arc<Shared>, seq: u64) -> Result<Self, JournalError> {
        let rx = shared.committed.subscribe();
        let first = shared.segments().first().map_or(0, |s| s.first_seq);
        let next = rx.borrow().next_seq;
        if seq < first || seq > next {
            return Err(JournalError::OutOfRange { seq, first, next });
        }
        let seen = *rx.borrow();
        Ok(Self { shared, rx, next_seq: seq, cur: None, seen })
    }

    /// Sequence number of the record the next call returns.
    pub fn position(&self) -> u64 {
        self.next_seq
    }

    /// The next record, waiting until one is committed. `Ok(None)` once the
    /// journal is closed and every committed record has been returned.
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Result<Option<(u64, Bytes)>, JournalError> {
        loop {
            let c = *self.rx.borrow_and_update();
            self.seen = c;
            if self.next_seq < c.next_seq {
                return self.read(c).map(Some);
            }
            if c.closed || self.rx.changed().await.is_err() {
                return Ok(None);
            }
        }
    }

    /// The next record if one is committed now, without waiting.
    pub fn try_next(&mut self) -> Result<Option<(u64, Bytes)>, JournalError> {
        // An older committed state is still true of the records it covers
        // (a commit only adds), so it is asked for again only once they are read.
        if self.next_seq >= self.seen.next_seq {
            self.seen = *self.rx.borrow_and_update();
        }
        let c = self.seen;
        if self.next_seq < c.next_seq {
            return self.read(c).map(Some);
        }
        Ok(None)
    }

    /// Move on to record `seq` without returning the records before it
    /// (they were passed on another way). `seq` is between the position and
    /// the next record to be committed; a position already there or past it
    /// stays. Within the open segment it steps over frame headers; elsewhere
    /// the next read opens the segment holding `seq` and seeks in it.
    pub fn skip_to(&mut self, seq: u64) -> Result<(), JournalError> {
        if seq <= self.next_seq {
            return Ok(());
        }
        let c = *self.rx.borrow_and_update();
        self.seen = c;
        if seq > c.next_seq {
            let first = self.shared.segments().first().map_or(0, |s| s.first_seq);
            return Err(JournalError::OutOfRange { seq, first, next: c.next_seq });
        }
        let holder = self.shared.segments().iter().rev().find(|s| s.first_seq <= seq).map(|s| s.first_seq);
        match &mut self.cur {
            Some(cur) if Some(cur.first_seq) == holder => cur.skip(self.next_seq, seq, c)?,
            _ => self.cur = None,
        }
        self.next_seq = seq;
        Ok(())
    }

    fn read(&mut self, c: Committed) -> Result<(u64, Bytes), JournalError> {
        let mut switched = false;
        loop {
            let cur = match &mut self.cur {
                Some(cur) => cur,
                None => self.cur.insert(Cursor::open(&self.shared, self.next_seq, c)?),
            };
            match cur.frame(c)? {
                Some((seq, payload)) if seq == self.next_seq => {
                    self.next_seq += 1;
                    return Ok((seq, payload));
                }
                Some((seq, _)) => {
                    let reason = format!("record {seq} where {} was expected", self.next_seq);
                    return Err(cur.corrupt(reason));
                }
                // The end of a closed segment: the record is in the next one.
                None if !switched && cur.first_seq != c.active_first => {
                    self.cur = None;
                    switched = true;
                }
                None => return Err(cur.corrupt(format!("committed record {} is missing", self.next_seq))),
            }
        }
    }
}

/// An open segment and a read buffer.
struct Cursor {
    file: File,
    path: PathBuf,
    first_seq: u64,
    /// Offset of the next frame.
    pos: u64,
    /// Bytes read ahead, starting at file offset `buf_pos`.
    buf: Bytes,
    buf_pos: u64,
    /// Length of the file once the segment is closed (read lazily).
    sealed_len: Option<u64>,
}

impl Cursor {
    /// Open the segment holding `seq` and skip to it.
    fn open(shared: &Shared, seq: u64, c: Committed) -> Result<Self, JournalError> {
        let (first_seq, first) = {
            let segs = shared.segments();
            let first = segs.first().map_or(0, |s| s.first_seq);
            (segs.iter().rev().find(|s| s.first_seq <= seq).map(|s| s.first_seq), first)
        };
        let out_of_range = JournalError::OutOfRange { seq, first, next: c.next_seq };
        let Some(first_seq) = first_seq else {
            return Err(out_of_range);
        };
        let path = segment::path(&shared.dir, first_seq);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(out_of_range),
            Err(e) => return Err(JournalError::io(path, e)),
        };
        let pos = SEGMENT_HEADER as u64;
        let mut cur = Self { file, path, first_seq, pos, buf: Bytes::new(), buf_pos: pos, sealed_len: None };
        cur.skip(first_seq, seq, c)?;
        Ok(cur)
    }

    /// From record `from` (at `pos`) to record `to`, reading frame headers only.
    fn skip(&mut self, from: u64, to: u64, c: Committed) -> Result<(), JournalError> {
        for want in from..to {
            let bound = self.bound(c)?;
            let header = match self.fill(FRAME_HEADER, bound)? {
                FRAME_HEADER => Some((read_u32(&self.available()[0..4]), read_u64(&self.available()[8..16]))),
                _ => None,
            };
            match header {
                Some((len, found)) if found == want => self.pos += frame::frame_len(len as usize) as u64,
                _ => return Err(self.corrupt(format!("cannot find record {want} while seeking to {to}"))),
            }
        }
        Ok(())
    }

    /// The next frame within the committed bytes, or `None` at their end.
    fn frame(&mut self, c: Committed) -> Result<Option<(u64, Bytes)>, JournalError> {
        let bound = self.bound(c)?;
        let n = self.fill(FRAME_HEADER, bound)?;
        if n == 0 {
            return Ok(None);
        }
        if n < FRAME_HEADER {
            return Err(self.corrupt("short frame header".into()));
        }
        let total = frame::frame_len(read_u32(&self.available()[0..4]) as usize);
        if total > frame::MAX_PAYLOAD + FRAME_HEADER || self.fill(total, bound)? < total {
            return Err(self.corrupt("short frame".into()));
        }
        let (seq, len) = match frame::decode(self.available()) {
            Ok((f, len)) => (f.seq, len),
            Err(e) => return Err(self.corrupt(e.to_string())),
        };
        let start = self.offset() + FRAME_HEADER;
        let payload = self.buf.slice(start..start + (len - FRAME_HEADER));
        self.pos += len as u64;
        Ok(Some((seq, payload)))
    }

    /// How far this segment may be read: what the last fsync covered.
    fn bound(&mut self, c: Committed) -> Result<u64, JournalError> {
        if self.first_seq == c.active_first {
            return Ok(c.active_len);
        }
        if let Some(len) = self.sealed_len {
            return Ok(len);
        }
        let len = self.file.metadata().map_err(|e| JournalError::io(&self.path, e))?.len();
        self.sealed_len = Some(len);
        Ok(len)
    }

    /// Buffered bytes from `pos` on.
    fn available(&self) -> &[u8] {
        self.buf.get(self.offset()..).unwrap_or(&[])
    }

    /// Offset of `pos` in the buffer.
    fn offset(&self) -> usize {
        usize::try_from(self.pos - self.buf_pos).unwrap_or(usize::MAX)
    }

    /// Make at least `n` bytes from `pos` available, reading no further than
    /// `bound`; returns how many are (fewer only at the bound). Reads into a
    /// new chunk (payloads returned earlier share the old one), starting with
    /// the unread bytes of the old one.
    fn fill(&mut self, n: usize, bound: u64) -> Result<usize, JournalError> {
        let have = self.available().len();
        if have >= n {
            return Ok(n);
        }
        let room = usize::try_from(bound.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let want = n.max(CHUNK).min(room);
        if want <= have {
            return Ok(have.min(n));
        }
        let mut next = BytesMut::with_capacity(want);
        next.extend_from_slice(self.available());
        next.resize(want, 0);
        let mut filled = have;
        while filled < want {
            match self.file.read_at(&mut next[filled..], self.pos + filled as u64) {
                Ok(0) => break,
                Ok(k) => filled += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(JournalError::io(&self.path, e)),
            }
        }
        next.truncate(filled);
        self.buf = next.freeze();
        self.buf_pos = self.pos;
        Ok(filled.min(n))
    }

    fn corrupt(&self, reason: String) -> JournalError {
        JournalError::Corrupt { path: self.path.clone(), offset: self.pos, reason }
    }
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn read_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}
