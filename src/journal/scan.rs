//! Scanning a run of frames for recovery. Pure over any `Read`.

use super::frame::{self, FrameError};
use std::io::{self, Read};

/// Bytes read at a time while scanning.
const CHUNK: usize = 256 * 1024;

/// A scanned run of frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Valid records found.
    pub records: u64,
    /// Sequence number after the last valid record.
    pub next_seq: u64,
    /// Offset just past the last valid record.
    pub valid_len: u64,
    /// The first defect, if the frames do not run cleanly to the end.
    pub defect: Option<(u64, String)>,
}

/// Scan frames from `r`, which is at file offset `offset` of a `file_len`-byte
/// file, expecting sequence numbers from `first_seq` on.
pub fn scan_frames(mut r: impl Read, offset: u64, file_len: u64, first_seq: u64) -> io::Result<Scan> {
    let mut scan = Scan { records: 0, next_seq: first_seq, valid_len: offset, defect: None };
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0usize;
    let mut eof = false;
    loop {
        match frame::decode(&buf[start..]) {
            Ok((f, n)) => {
                if f.seq != scan.next_seq {
                    let reason = format!("sequence number {} where {} was expected", f.seq, scan.next_seq);
                    scan.defect = Some((scan.valid_len, reason));
                    return Ok(scan);
                }
                start += n;
                scan.valid_len += n as u64;
                scan.next_seq += 1;
                scan.records += 1;
            }
            Err(FrameError::Incomplete { needed }) => {
                let have = buf.len() - start;
                if have == 0 && (eof || scan.valid_len >= file_len) {
                    return Ok(scan);
                }
                if eof || scan.valid_len + needed as u64 > file_len {
                    let reason = format!(
                        "{} (only {} bytes left)",
                        FrameError::Incomplete { needed },
                        file_len.saturating_sub(scan.valid_len)
                    );
                    scan.defect = Some((scan.valid_len, reason));
                    return Ok(scan);
                }
                buf.drain(..start);
                start = 0;
                let want = needed.max(CHUNK);
                let mut filled = buf.len();
                buf.resize(want, 0);
                while filled < want {
                    match r.read(&mut buf[filled..]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                buf.truncate(filled);
            }
            Err(e) => {
                scan.defect = Some((scan.valid_len, e.to_string()));
                return Ok(scan);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(sizes: &[usize]) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            frame::encode(i as u64, &vec![i as u8; n], &mut buf);
            ends.push(buf.len());
        }
        (buf, ends)
    }

    #[test]
    fn a_clean_run_has_no_defect_and_a_gap_in_sequence_is_one() {
        let (buf, _) = build(&[3, 0, 400_000, 5]);
        let scan = scan_frames(&buf[..], 0, buf.len() as u64, 0).unwrap();
        assert_eq!((scan.records, scan.next_seq, scan.valid_len, scan.defect), (4, 4, buf.len() as u64, None));
        let mut other = Vec::new();
        frame::encode(0, b"a", &mut other);
        frame::encode(2, b"b", &mut other);
        let scan = scan_frames(&other[..], 0, other.len() as u64, 0).unwrap();
        assert_eq!(scan.records, 1);
        assert!(scan.defect.unwrap().1.contains("sequence number 2"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A cut anywhere keeps exactly the records wholly before it and reports the rest.
        #[test]
        fn a_cut_keeps_every_whole_record(sizes in proptest::collection::vec(0usize..40, 1..12), cut in any::<proptest::sample::Index>()) {
            let (buf, ends) = build(&sizes);
            let cut = cut.index(buf.len() + 1);
            let scan = scan_frames(&buf[..cut], 0, cut as u64, 0).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count() as u64;
            prop_assert_eq!(scan.records, whole);
            prop_assert_eq!(scan.defect.is_some(), !ends.contains(&cut) && cut != 0);
        }

        /// A flipped bit is a defect at or before the damaged record; nothing after it is yielded.
        #[test]
        fn a_flipped_bit_stops_the_scan_at_its_record(sizes in proptest::collection::vec(0usize..40, 1..12), bit in any::<proptest::sample::Index>()) {
            let (mut buf, ends) = build(&sizes);
            let i = bit.index(buf.len() * 8);
            buf[i / 8] ^= 1 << (i % 8);
            let damaged = ends.iter().filter(|&&e| e <= i / 8).count() as u64;
            let scan = scan_frames(&buf[..], 0, buf.len() as u64, 0).unwrap();
            prop_assert_eq!(scan.records, damaged);
            prop_assert!(scan.defect.is_some());
        }
    }
}
