//! Records appended together: laid out as their frames in one buffer, handed
//! to the writer in one request and settled by one completion.
//!
//! Each record is written once, by the appender, behind room for its frame
//! header; the writer fills in the headers ([`Batch::seal`]) and writes the
//! buffer as it is, without copying the records into a buffer of its own.

use super::frame::{self, FRAME_HEADER};

/// Records in append order, as frames stored back to back (headers filled
/// in by [`Batch::seal`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    data: Vec<u8>,
    /// End offset in `data` of each frame.
    ends: Vec<usize>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `records` records of `payload_bytes` in all.
    pub fn with_capacity(records: usize, payload_bytes: usize) -> Self {
        let bytes = payload_bytes.saturating_add(records.saturating_mul(FRAME_HEADER));
        Self { data: Vec::with_capacity(bytes), ends: Vec::with_capacity(records) }
    }

    /// Append one payload.
    pub fn push(&mut self, payload: &[u8]) {
        self.push_with(|out| out.extend_from_slice(payload));
    }

    /// Append one payload written by `write` (which only appends to the buffer).
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.data.extend_from_slice(&[0u8; FRAME_HEADER]);
        write(&mut self.data);
        self.ends.push(self.data.len());
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// No record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Payload bytes of all records.
    pub fn payload_bytes(&self) -> usize {
        self.data.len() - self.ends.len() * FRAME_HEADER
    }

    /// Bytes the records take on disk, frames included.
    pub fn frame_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// The largest payload.
    pub fn largest(&self) -> usize {
        self.records().map(<[u8]>::len).max().unwrap_or(0)
    }

    /// The payloads, in order.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.frames().map(|f| &f[FRAME_HEADER..])
    }

    fn frames(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let f = &self.data[start..end];
            start = end;
            f
        })
    }

    /// How many records, from the first, fit in `bytes` bytes of frames.
    pub fn fitting(&self, bytes: u64) -> usize {
        self.ends.partition_point(|&end| end as u64 <= bytes)
    }

    /// Split off the records from index `at` on (the first `at` stay).
    pub fn split_off(&mut self, at: usize) -> Batch {
        let at = at.min(self.ends.len());
        if at == self.ends.len() {
            return Batch::new();
        }
        let cut = if at == 0 { 0 } else { self.ends[at - 1] };
        let data = self.data.split_off(cut);
        let ends = self.ends.split_off(at).into_iter().map(|e| e - cut).collect();
        Batch { data, ends }
    }

    /// Number the records from `first_seq` on and fill in their frame
    /// headers; returns the frames, ready to be written.
    pub fn seal(self, first_seq: u64) -> Vec<u8> {
        let Batch { mut data, ends } = self;
        let mut start = 0;
        for (seq, &end) in (first_seq..).zip(&ends) {
            frame::seal(&mut data[start..end], seq);
            start = end;
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_and_split_keeps_them() {
        let mut b = Batch::new();
        for p in [&b"a"[..], b"", b"bcd", b"ef"] {
            b.push(p);
        }
        assert_eq!(b.len(), 4);
        assert_eq!(b.payload_bytes(), 6);
        assert_eq!(b.frame_bytes(), (6 + 4 * FRAME_HEADER) as u64);
        assert_eq!(b.largest(), 3);
        let tail = b.split_off(2);
        assert_eq!(b.records().collect::<Vec<_>>(), [&b"a"[..], b""]);
        assert_eq!(tail.records().collect::<Vec<_>>(), [&b"bcd"[..], b"ef"]);
        let mut whole = tail.clone();
        assert!(whole.split_off(0).len() == 2 && whole.is_empty());
        let mut all = tail.clone();
        assert!(all.split_off(2).is_empty() && all == tail);
    }

    #[test]
    fn fitting_counts_whole_frames_from_the_first() {
        let mut b = Batch::new();
        for p in [&b"ab"[..], b"cde", b""] {
            b.push(p);
        }
        let one = (FRAME_HEADER + 2) as u64;
        assert_eq!(b.fitting(0), 0);
        assert_eq!(b.fitting(one - 1), 0);
        assert_eq!(b.fitting(one), 1);
        assert_eq!(b.fitting(one + FRAME_HEADER as u64 + 3), 2);
        assert_eq!(b.fitting(u64::MAX), 3);
    }

    #[test]
    fn sealed_frames_are_the_encoded_records() {
        let mut b = Batch::new();
        let mut expected = Vec::new();
        for (seq, p) in (40..).zip([&b"first"[..], b"", b"third"]) {
            b.push(p);
            frame::encode(seq, p, &mut expected);
        }
        assert_eq!(b.seal(40), expected);
    }
}
