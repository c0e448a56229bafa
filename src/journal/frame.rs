//! Record framing and segment headers. Pure: bytes in, bytes out.
//!
//! A record on disk:
//!
//! ```text
//! [len u32 LE][crc u32 LE][seq u64 LE][payload: len bytes]
//! crc = CRC-32C (Castagnoli) of seq (8 bytes LE) followed by the payload
//! ```
//!
//! A segment file starts with a 24-byte header:
//!
//! ```text
//! [magic "IOTPJRN1" or "IOTPJRN2"][first_seq u64 LE][tail_window u32 LE][crc u32 LE of the first 20 bytes]
//! ```
//!
//! `tail_window` is the writer's `max_batch`: the most bytes it ever had
//! written but not yet fsync'd, so the longest torn tail a crash can leave.
//! `IOTPJRN2` marks a preallocated segment: zero-filled to its full size
//! before its first record, so what follows the last record is zeros.

/// Bytes before the payload of every record.
pub const FRAME_HEADER: usize = 16;
/// Bytes of the segment header.
pub const SEGMENT_HEADER: usize = 24;
/// Largest payload a frame may declare; a larger length field is corruption.
pub const MAX_PAYLOAD: usize = 1 << 30;
/// First bytes of a segment file that grows as it is written.
const SEGMENT_MAGIC: [u8; 8] = *b"IOTPJRN1";
/// First bytes of a preallocated (zero-filled) segment file.
const PREALLOCATED_MAGIC: [u8; 8] = *b"IOTPJRN2";

/// A decoded record, borrowing its payload from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Sequence number.
    pub seq: u64,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// Why the bytes at a position are not a whole, valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends inside the frame.
    Incomplete {
        /// Bytes from the frame's start that would complete it.
        needed: usize,
    },
    /// The length field is larger than any frame the writer produces.
    BadLength(u32),
    /// The checksum does not match the sequence number and payload.
    Checksum {
        /// The checksum in the frame.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Incomplete { needed } => write!(f, "short frame ({needed} bytes needed)"),
            Self::BadLength(len) => write!(f, "bad length field {len}"),
            Self::Checksum { stored, computed } => {
                write!(f, "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
        }
    }
}

/// Bytes a record with a payload of `payload_len` bytes takes on disk.
pub fn frame_len(payload_len: usize) -> usize {
    FRAME_HEADER + payload_len
}

/// The checksum stored in a frame.
pub fn checksum(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

/// Append the frame of `(seq, payload)` to `out`. `payload` must not exceed
/// [`MAX_PAYLOAD`] (the appender checks). The writer seals frames laid
/// out in place ([`seal`]); this is the same for one record.
#[cfg(test)]
pub fn encode(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(frame_len(payload.len()));
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.extend_from_slice(payload);
    seal(&mut out[start..], seq);
}

/// Fill in the header of a frame laid out in place: `frame` is
/// [`FRAME_HEADER`] bytes of any value followed by the payload, and gets
/// its length, checksum and sequence number `seq`.
pub fn seal(frame: &mut [u8], seq: u64) {
    let Some((header, payload)) = frame.split_first_chunk_mut::<FRAME_HEADER>() else {
        return; // not a frame: never produced by `Batch`
    };
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    header[0..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&checksum(seq, payload).to_le_bytes());
    header[8..16].copy_from_slice(&seq.to_le_bytes());
}

/// Decode the frame at the start of `buf`; returns it and its length on disk.
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER) else {
        return Err(FrameError::Incomplete { needed: FRAME_HEADER });
    };
    let len = le_u32(&header[0..4]);
    let stored = le_u32(&header[4..8]);
    let seq = le_u64(&header[8..16]);
    let payload_len = usize::try_from(len).unwrap_or(usize::MAX);
    if payload_len > MAX_PAYLOAD {
        return Err(FrameError::BadLength(len));
    }
    let total = frame_len(payload_len);
    let Some(payload) = buf.get(FRAME_HEADER..total) else {
        return Err(FrameError::Incomplete { needed: total });
    };
    let computed = checksum(seq, payload);
    if computed != stored {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok((Frame { seq, payload }, total))
}

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the segment's first record.
    pub first_seq: u64,
    /// Longest torn tail a crash of the writer that wrote the segment can leave.
    pub tail_window: u32,
    /// The file was zero-filled to its full size before its first record.
    pub preallocated: bool,
}

impl SegmentHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER] {
        let mut b = [0u8; SEGMENT_HEADER];
        b[0..8].copy_from_slice(if self.preallocated { &PREALLOCATED_MAGIC } else { &SEGMENT_MAGIC });
        b[8..16].copy_from_slice(&self.first_seq.to_le_bytes());
        b[16..20].copy_from_slice(&self.tail_window.to_le_bytes());
        let crc = crc32c::crc32c(&b[..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse a header; `None` when it is short, of another format or damaged.
    pub fn decode(buf: &[u8]) -> Option<Self> {
        let b = buf.get(..SEGMENT_HEADER)?;
        let preallocated = match &b[0..8] {
            m if m == SEGMENT_MAGIC => false,
            m if m == PREALLOCATED_MAGIC => true,
            _ => return None,
        };
        if crc32c::crc32c(&b[..20]) != le_u32(&b[20..24]) {
            return None;
        }
        Some(Self { first_seq: le_u64(&b[8..16]), tail_window: le_u32(&b[16..20]), preallocated })
    }
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_reports_its_length() {
        let mut buf = Vec::new();
        encode(7, b"hello", &mut buf);
        encode(8, b"", &mut buf);
        let (f, n) = decode(&buf).unwrap();
        assert_eq!((f.seq, f.payload, n), (7, &b"hello"[..], FRAME_HEADER + 5));
        let (f, m) = decode(&buf[n..]).unwrap();
        assert_eq!((f.seq, f.payload, m), (8, &b""[..], FRAME_HEADER));
    }

    #[test]
    fn a_frame_sealed_in_place_is_the_encoded_frame() {
        let mut encoded = Vec::new();
        encode(9, b"payload", &mut encoded);
        let mut in_place = vec![0xAA; FRAME_HEADER];
        in_place.extend_from_slice(b"payload");
        seal(&mut in_place, 9);
        assert_eq!(in_place, encoded);
    }

    #[test]
    fn short_buffers_are_incomplete_and_huge_lengths_are_bad() {
        let mut buf = Vec::new();
        encode(1, b"abc", &mut buf);
        for cut in 0..buf.len() {
            assert!(matches!(decode(&buf[..cut]), Err(FrameError::Incomplete { .. })), "cut {cut}");
        }
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&buf), Err(FrameError::BadLength(u32::MAX)));
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let h = SegmentHeader { first_seq: 42, tail_window: 1 << 20, preallocated: false };
        let p = SegmentHeader { preallocated: true, ..h };
        assert_eq!(SegmentHeader::decode(&p.encode()), Some(p));
        assert_eq!(&p.encode()[..8], b"IOTPJRN2");
        let mut b = h.encode();
        assert_eq!(&b[..8], b"IOTPJRN1");
        assert_eq!(SegmentHeader::decode(&b), Some(h));
        assert_eq!(SegmentHeader::decode(&b[..SEGMENT_HEADER - 1]), None);
        b[9] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), None);
    }

    proptest! {
        #[test]
        fn any_record_round_trips(seq in any::<u64>(), payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = Vec::new();
            encode(seq, &payload, &mut buf);
            let (f, n) = decode(&buf).unwrap();
            prop_assert_eq!(f.seq, seq);
            prop_assert_eq!(f.payload, &payload[..]);
            prop_assert_eq!(n, buf.len());
        }

        #[test]
        fn every_single_bit_flip_is_detected(
            seq in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            bit in any::<proptest::sample::Index>(),
        ) {
            let mut buf = Vec::new();
            encode(seq, &payload, &mut buf);
            let i = bit.index(buf.len() * 8);
            buf[i / 8] ^= 1 << (i % 8);
            // A flip in the length field shows up as a short or bad frame, anywhere
            // else as a checksum mismatch: never as a valid record.
            prop_assert!(decode(&buf).is_err());
        }
    }
}
