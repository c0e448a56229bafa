//! Kafka's lz4 codec: LZ4 frames (magic, descriptor, blocks, end mark,
//! optional checksums), written by [`FrameWriter`] and read back by
//! [`decompress`], each with buffers reused from call to call.
//!
//! Why not `lz4_flex::frame::FrameDecoder`: it allocates its block buffers
//! for every frame and zero-fills them (64 KiB to 12 MiB), and Kafka puts
//! one frame in every batch. With a topic per tenant a fetch carries
//! thousands of small batches, and that filling was a tenth of the sink's
//! CPU. Here the output buffer keeps its length between calls, so it is
//! zero-filled only where it grows.
//!
//! Frames are written by lz4_flex's `FrameEncoder`, one per batch, but the
//! encoder is kept between batches ([`FrameWriter`]): a new one allocates a
//! 64 KiB input buffer, an output buffer of the same size and a zeroed
//! 16 KiB match table for every frame.
//!
//! Both block modes are read (Java's producer writes independent blocks,
//! LZ4's library default is linked ones), and every checksum the frame
//! declares (header, blocks, content) is verified.

use super::codec_error::CodecError;
use lz4_flex::block::{decompress_into_with_dict, DecompressError};
use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
use std::io::Write;
use xxhash_rust::xxh32::xxh32;

const MAGIC: u32 = 0x184D_2204;
/// Skippable frames: magic 0x184D2A50 to 0x184D2A5F.
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE: u32 = 0x184D_2A50;
/// How far back a linked block may refer.
const WINDOW: usize = 64 * 1024;

/// Writes LZ4 frames of independent 64 KiB blocks, one per call, with
/// lz4_flex's frame encoder kept between calls: its buffers and match table
/// are allocated once, and each frame starts from a cleared table, so every
/// frame is byte for byte what a new encoder would write.
pub struct FrameWriter(FrameEncoder<Vec<u8>>);

impl Default for FrameWriter {
    fn default() -> Self {
        Self(new_encoder())
    }
}

fn new_encoder() -> FrameEncoder<Vec<u8>> {
    let info = FrameInfo::new().block_size(BlockSize::Max64KB).block_mode(BlockMode::Independent);
    FrameEncoder::with_frame_info(info, Vec::new())
}

impl FrameWriter {
    /// `input` as one frame.
    pub fn compress(&mut self, input: &[u8]) -> std::io::Result<&[u8]> {
        if input.is_empty() {
            // A used encoder writes no frame header for empty input: only a
            // new one writes the empty frame.
            self.0 = new_encoder();
        }
        self.0.get_mut().clear();
        self.0.write_all(input)?;
        self.0.try_finish().map_err(std::io::Error::other)?;
        Ok(self.0.get_ref())
    }
}

/// Decompress the frames of `input` into `out[..n]` and return `n`.
/// `out`'s length is the caller's to keep: it only grows (to at most
/// `limit` plus one block), and what lies past `n` is garbage. More than
/// `limit` bytes of output is [`CodecError::TooLarge`].
pub fn decompress(input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<usize, CodecError> {
    let mut r = Input(input);
    let mut n = 0;
    while !r.0.is_empty() {
        let magic = r.u32()?;
        if magic & SKIPPABLE_MASK == SKIPPABLE {
            let size = r.u32()?;
            r.take(usize::try_from(size).unwrap_or(usize::MAX))?;
            continue;
        }
        if magic != MAGIC {
            return Err("not an LZ4 frame (bad magic number)".into());
        }
        n = frame(&mut r, n, limit, out)?;
    }
    Ok(n)
}

/// One frame after its magic number, appended at `out[n..]`; the new end.
fn frame(r: &mut Input, mut n: usize, limit: usize, out: &mut Vec<u8>) -> Result<usize, CodecError> {
    let descriptor = r.0;
    let flg = r.u8()?;
    let bd = r.u8()?;
    if flg >> 6 != 1 {
        return Err("unknown LZ4 frame version".into());
    }
    let independent = flg & 0x20 != 0;
    let block_checksums = flg & 0x10 != 0;
    let content_size = flg & 0x08 != 0;
    let content_checksum = flg & 0x04 != 0;
    if flg & 0x01 != 0 {
        return Err("LZ4 frames with a dictionary id are not supported".into());
    }
    let block_max = match (bd >> 4) & 0x07 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        _ => return Err("unknown LZ4 block size".into()),
    };
    if content_size {
        r.take(8)?;
    }
    let described = descriptor.len() - r.0.len();
    let hc = r.u8()?;
    if (xxh32(&descriptor[..described], 0) >> 8) as u8 != hc {
        return Err("LZ4 frame header checksum mismatch".into());
    }
    let start = n;
    loop {
        let word = r.u32()?;
        if word == 0 {
            break;
        }
        let stored = word & 0x8000_0000 != 0;
        let len = (word & 0x7FFF_FFFF) as usize;
        if len > block_max {
            return Err("an LZ4 block is larger than its frame allows".into());
        }
        let data = r.take(len)?;
        if block_checksums && xxh32(data, 0) != r.u32()? {
            return Err("LZ4 block checksum mismatch".into());
        }
        // Room for one whole block, but not beyond one byte past the limit.
        let room = block_max.min((limit + 1).saturating_sub(n));
        if out.len() < n + room {
            out.resize(n + room, 0);
        }
        let (before, after) = out.split_at_mut(n);
        let dst = after.get_mut(..room).ok_or("LZ4 output buffer too short")?;
        if stored {
            let dst = dst.get_mut(..len).ok_or(CodecError::TooLarge)?;
            dst.copy_from_slice(data);
            n += len;
        } else {
            let dict = if independent { &[][..] } else { &before[start.max(n.saturating_sub(WINDOW))..] };
            match decompress_into_with_dict(data, dst, dict) {
                Ok(k) => n += k,
                Err(DecompressError::OutputTooSmall { .. }) if room < block_max => return Err(CodecError::TooLarge),
                Err(e) => return Err(CodecError::Failed(e.to_string())),
            }
        }
        if n > limit {
            return Err(CodecError::TooLarge);
        }
    }
    if content_checksum && xxh32(&out[start..n], 0) != r.u32()? {
        return Err("LZ4 content checksum mismatch".into());
    }
    Ok(n)
}

/// The bytes not read yet.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, k: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < k {
            return Err("LZ4 frame cut short".into());
        }
        let (head, rest) = self.0.split_at(k);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(info: FrameInfo, plain: &[u8]) -> Vec<u8> {
        let mut e = FrameEncoder::with_frame_info(info, Vec::new());
        e.write_all(plain).unwrap();
        e.finish().unwrap()
    }

    /// Compressible, with repeats across 64 KiB blocks, and a stretch of
    /// noise that the encoder stores uncompressed.
    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        let mut x = 0x2545_F491_u32;
        for i in 0..40_000u32 {
            v.extend_from_slice(format!("{{\"device\":\"d{}\",\"t\":{}}}", i % 37, i % 1000).as_bytes());
        }
        for _ in 0..70_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            v.push(x as u8);
        }
        v
    }

    fn read(input: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        let n = decompress(input, limit, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    #[test]
    fn a_kept_writer_writes_what_a_new_encoder_writes() {
        let sample = sample();
        let info = FrameInfo::new().block_size(BlockSize::Max64KB).block_mode(BlockMode::Independent);
        let mut w = FrameWriter::default();
        for (name, plain) in [
            ("text, several blocks", &sample[..800_000]),
            ("one byte", &b"x"[..]),
            ("noise, stored blocks", &sample[800_000..]),
            ("empty", &b""[..]),
            ("exactly one block", &sample[..64 << 10]),
            ("empty again", &b""[..]),
            ("one block and a byte", &sample[..(64 << 10) + 1]),
            ("everything", &sample[..]),
            ("short text", &sample[..300]),
        ] {
            let frame = w.compress(plain).unwrap().to_vec();
            assert_eq!(frame, encode(info.clone(), plain), "{name}");
            assert_eq!(read(&frame, 16 << 20).unwrap(), plain, "{name}");
        }
    }

    #[test]
    fn every_frame_layout_reads_back() {
        let plain = sample();
        for mode in [BlockMode::Independent, BlockMode::Linked] {
            for size in [BlockSize::Max64KB, BlockSize::Max256KB, BlockSize::Max1MB, BlockSize::Max4MB] {
                for checks in [false, true] {
                    let info = FrameInfo::new()
                        .block_mode(mode)
                        .block_size(size)
                        .block_checksums(checks)
                        .content_checksum(checks)
                        .content_size(checks.then_some(plain.len() as u64));
                    let enc = encode(info, &plain);
                    assert_eq!(read(&enc, 16 << 20).unwrap(), plain, "{mode:?} {size:?} checksums={checks}");
                }
            }
        }
    }

    #[test]
    fn linked_blocks_refer_to_the_previous_block() {
        // Linked 64 KiB blocks of a repeating text: the later blocks are
        // small only because they refer back across the boundary.
        let plain: Vec<u8> = b"0123456789abcdefghij".iter().copied().cycle().take(300_000).collect();
        let info = FrameInfo::new().block_mode(BlockMode::Linked).block_size(BlockSize::Max64KB);
        let enc = encode(info, &plain);
        assert!(enc.len() < 10_000, "{}", enc.len());
        assert_eq!(read(&enc, 1 << 20).unwrap(), plain);
    }

    #[test]
    fn frames_follow_one_another_and_skippable_frames_are_skipped() {
        let a = encode(FrameInfo::new(), b"first frame;");
        let b = encode(FrameInfo::new().block_mode(BlockMode::Linked), b"second frame");
        let mut input = a.clone();
        input.extend_from_slice(&0x184D_2A5Au32.to_le_bytes());
        input.extend_from_slice(&3u32.to_le_bytes());
        input.extend_from_slice(b"xyz");
        input.extend_from_slice(&b);
        assert_eq!(read(&input, 1000).unwrap(), b"first frame;second frame");
        assert_eq!(read(&[], 1000).unwrap(), b"", "no frames: nothing");
    }

    #[test]
    fn the_buffer_is_reused_and_only_grows() {
        let mut out = Vec::new();
        let big = encode(FrameInfo::new(), &sample());
        let n = decompress(&big, 16 << 20, &mut out).unwrap();
        let len = out.len();
        assert!(len >= n);
        let small = encode(FrameInfo::new(), b"small");
        assert_eq!(decompress(&small, 16 << 20, &mut out).unwrap(), 5);
        assert_eq!(&out[..5], b"small");
        assert_eq!(out.len(), len, "not shrunk, so not filled again");
    }

    #[test]
    fn output_past_the_limit_is_too_large() {
        let plain = vec![0u8; 1 << 20];
        for mode in [BlockMode::Independent, BlockMode::Linked] {
            let enc = encode(FrameInfo::new().block_mode(mode), &plain);
            assert_eq!(read(&enc, (1 << 20) - 1), Err(CodecError::TooLarge), "{mode:?}");
            assert_eq!(read(&enc, 100), Err(CodecError::TooLarge));
            assert_eq!(read(&enc, 1 << 20).unwrap().len(), 1 << 20, "exactly the limit is fine");
        }
        // A stored (uncompressed) block past the limit.
        let noise: Vec<u8> = sample()[800_000..].to_vec();
        let enc = encode(FrameInfo::new(), &noise);
        assert_eq!(read(&enc, noise.len() - 1), Err(CodecError::TooLarge));
        assert_eq!(read(&enc, noise.len()).unwrap(), noise);
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let plain = sample();
        let info = FrameInfo::new().block_checksums(true).content_checksum(true);
        let enc = encode(info, &plain);
        for cut in [1, 4, 5, 6, 7, 10, 100, enc.len() / 2, enc.len() - 5, enc.len() - 1] {
            assert!(matches!(read(&enc[..cut], 16 << 20), Err(CodecError::Failed(_))), "cut at {cut}");
        }
        let failed = |input: &[u8], what: &str| match read(input, 16 << 20) {
            Err(CodecError::Failed(e)) => assert!(e.contains(what), "{e}"),
            other => panic!("{other:?}"),
        };
        let mut bad = enc.clone();
        bad[0] ^= 1;
        failed(&bad, "magic");
        let mut bad = enc.clone();
        bad[6] ^= 1;
        failed(&bad, "header checksum");
        let mut bad = enc.clone();
        bad[20] ^= 0x55;
        failed(&bad, "block checksum");
        let mut bad = enc.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        failed(&bad, "content checksum");
        // Without checksums, a damaged block is caught by the decoder or
        // comes out as different bytes; either way nothing panics.
        let plain_enc = encode(FrameInfo::new(), &plain);
        for at in (11..plain_enc.len()).step_by(997) {
            let mut bad = plain_enc.clone();
            bad[at] ^= 0xA5;
            let _ = read(&bad, 16 << 20);
        }
    }
}
