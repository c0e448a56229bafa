//! Records appended together: their payloads in one buffer, handed to the
//! writer in one request and settled by one completion.

use super::frame;

/// Payloads in append order, stored back to back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    data: Vec<u8>,
    /// End offset in `data` of each payload.
    ends: Vec<usize>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `records` records of `bytes` in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Self { data: Vec::with_capacity(bytes), ends: Vec::with_capacity(records) }
    }

    /// Append one payload.
    pub fn push(&mut self, payload: &[u8]) {
        self.push_with(|out| out.extend_from_slice(payload));
    }

    /// Append one payload written by `write` (which only appends to the buffer).
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
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
        self.data.len()
    }

    /// Bytes the records take on disk, frames included.
    pub fn frame_bytes(&self) -> u64 {
        (self.data.len() + self.ends.len() * frame::FRAME_HEADER) as u64
    }

    /// The largest payload.
    pub fn largest(&self) -> usize {
        self.records().map(<[u8]>::len).max().unwrap_or(0)
    }

    /// The payloads, in order.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let r = &self.data[start..end];
            start = end;
            r
        })
    }

    /// Split off the records from index `at` on (the first `at` stay).
    pub fn split_off(&mut self, at: usize) -> Batch {
        let at = at.min(self.ends.len());
        let cut = if at == 0 { 0 } else { self.ends[at - 1] };
        let data = self.data.split_off(cut);
        let ends = self.ends.split_off(at).into_iter().map(|e| e - cut).collect();
        Batch { data, ends }
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
        assert_eq!(b.frame_bytes(), (6 + 4 * frame::FRAME_HEADER) as u64);
        assert_eq!(b.largest(), 3);
        let tail = b.split_off(2);
        assert_eq!(b.records().collect::<Vec<_>>(), [&b"a"[..], b""]);
        assert_eq!(tail.records().collect::<Vec<_>>(), [&b"bcd"[..], b"ef"]);
        let mut whole = tail.clone();
        assert!(whole.split_off(0).len() == 2 && whole.is_empty());
    }
}
