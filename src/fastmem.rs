//! `memcpy` and `memmove` for the static x86_64 build (exported by
//! `main.rs` only when linking against musl).
//!
//! musl's x86_64 `memcpy` copies byte by byte up to an 8-byte boundary, then
//! with `rep movsq`, then byte by byte again: slow for the short copies that
//! dominate here (headers, varints, ~200-byte payloads). A profile of the
//! image's binary put 10% of the bridge's samples in it, against 5.8% for
//! glibc's `memmove` in the glibc build (BENCHMARKS.md, "2026-12-05: the
//! static build's memcpy"). These are the usual replacements:
//!
//! - up to 256 bytes: unaligned 1/2/4/8/16-byte loads of the head and the
//!   tail (overlapping when the length is not a multiple), all loads before
//!   any store, so the same code is a correct `memmove` (from 65 bytes, up
//!   to 8 blocks of 16 bytes from each end: a record's ~200-byte payload
//!   copied without a loop);
//! - up to 4 KiB: a loop of 64-byte blocks (16-byte moves), the last 64
//!   bytes loaded first and stored last;
//! - longer: `rep movsb`, which CPUs with ERMS (2013 on) run with wide
//!   moves;
//! - backwards (`rep movsb` with the direction flag set) when the
//!   destination overlaps the end of the source: rare, and slow.
//!
//! No loops in Rust (the block loop is assembly): the compiler could turn a copy loop back into a call to
//! `memcpy`, i.e. into this function.

use core::arch::asm;
use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_storeu_si128};

/// Copies `$len` bytes (65 to 256) as 16-byte blocks, one per listed index
/// from the head and as many from the tail (overlapping in the middle),
/// every block loaded before the first store: written out, as a loop could
/// be compiled back into a call to `memcpy`. At 8 blocks a side, all 16 SSE
/// registers.
macro_rules! head_and_tail {
    ($dst:expr, $src:expr, $len:expr, [$($i:literal)*]) => {{
        let (dst, src, tail) = ($dst, $src, $len - 16 * [$($i),*].len());
        let head = [$(load16(src.add(16 * $i))),*];
        let last = [$(load16(src.add(tail + 16 * $i))),*];
        $(store16(dst.add(16 * $i), head[$i]);)*
        $(store16(dst.add(tail + 16 * $i), last[$i]);)*
    }};
}

/// Copy `n` bytes from `src` to `dst`; the ranges may overlap.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes.
#[inline(always)]
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY (for each arm): every load is within `src[..n]` and every
    // store within `dst[..n]`, as the caller promises; all loads of an arm
    // happen before its first store, so overlapping ranges copy correctly.
    unsafe {
        match n {
            0 => {}
            1 => *dst = *src,
            2..=3 => {
                let a = src.cast::<u16>().read_unaligned();
                let b = src.add(n - 2).cast::<u16>().read_unaligned();
                dst.cast::<u16>().write_unaligned(a);
                dst.add(n - 2).cast::<u16>().write_unaligned(b);
            }
            4..=7 => {
                let a = src.cast::<u32>().read_unaligned();
                let b = src.add(n - 4).cast::<u32>().read_unaligned();
                dst.cast::<u32>().write_unaligned(a);
                dst.add(n - 4).cast::<u32>().write_unaligned(b);
            }
            8..=16 => {
                let a = src.cast::<u64>().read_unaligned();
                let b = src.add(n - 8).cast::<u64>().read_unaligned();
                dst.cast::<u64>().write_unaligned(a);
                dst.add(n - 8).cast::<u64>().write_unaligned(b);
            }
            17..=32 => {
                let a = load16(src);
                let b = load16(src.add(n - 16));
                store16(dst, a);
                store16(dst.add(n - 16), b);
            }
            33..=64 => {
                let a = load16(src);
                let b = load16(src.add(16));
                let c = load16(src.add(n - 32));
                let d = load16(src.add(n - 16));
                store16(dst, a);
                store16(dst.add(16), b);
                store16(dst.add(n - 32), c);
                store16(dst.add(n - 16), d);
            }
            65..=128 => head_and_tail!(dst, src, n, [0 1 2 3]),
            129..=256 => head_and_tail!(dst, src, n, [0 1 2 3 4 5 6 7]),
            // From here on, upwards is safe unless `dst` lies inside `src[1..n]`.
            _ if (dst as usize).wrapping_sub(src as usize) < n => rep_movsb_backward(dst, src, n),
            _ if n < REP_MOVSB_FROM => blocks_forward(dst, src, n),
            _ => rep_movsb_forward(dst, src, n),
        }
    }
}

#[inline(always)]
unsafe fn load16(p: *const u8) -> __m128i {
    // SAFETY: the caller's range holds these 16 bytes; SSE2 is part of x86_64.
    unsafe { _mm_loadu_si128(p.cast()) }
}

#[inline(always)]
unsafe fn store16(p: *mut u8, v: __m128i) {
    // SAFETY: as for `load16`.
    unsafe { _mm_storeu_si128(p.cast(), v) }
}

/// Lengths from which an upward copy uses `rep movsb`: below it, a loop of
/// 64-byte blocks is faster on AMD's cores, whose `rep movsb` starts slowly
/// for short ranges even with FSRM (the first version used it from 65
/// bytes: 62% of the function's samples sat on that one instruction).
const REP_MOVSB_FROM: usize = 4096;

/// 257 to [`REP_MOVSB_FROM`] bytes upwards, when `dst` does not lie inside
/// `src[1..n]`: the last 64 bytes are loaded first, then 64-byte blocks
/// are copied upwards (each loaded before it is stored, and no block's
/// store reaches a later block's source, as `dst <= src` or the ranges are
/// apart), then the last 64 bytes are stored.
#[inline(always)]
unsafe fn blocks_forward(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: `n` > 256; every access lies within `src[..n]` or `dst[..n]`.
    // In assembly so that the compiler cannot turn the loop into a call to
    // `memcpy`.
    unsafe {
        asm!(
            "movups xmm4, [{s} + {n} - 64]",
            "movups xmm5, [{s} + {n} - 48]",
            "movups xmm6, [{s} + {n} - 32]",
            "movups xmm7, [{s} + {n} - 16]",
            "lea {end}, [{d} + {n} - 64]",
            "2:",
            "movups xmm0, [{s}]",
            "movups xmm1, [{s} + 16]",
            "movups xmm2, [{s} + 32]",
            "movups xmm3, [{s} + 48]",
            "movups [{d}], xmm0",
            "movups [{d} + 16], xmm1",
            "movups [{d} + 32], xmm2",
            "movups [{d} + 48], xmm3",
            "add {s}, 64",
            "add {d}, 64",
            "cmp {d}, {end}",
            "jb 2b",
            "movups [{end}], xmm4",
            "movups [{end} + 16], xmm5",
            "movups [{end} + 32], xmm6",
            "movups [{end} + 48], xmm7",
            s = inout(reg) src => _,
            d = inout(reg) dst => _,
            n = in(reg) n,
            end = out(reg) _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            options(nostack)
        );
    }
}

/// `rep movsb` upwards: correct whenever `dst` does not lie inside
/// `src[1..n]` (byte-by-byte semantics, also when `dst` is below `src`).
#[inline(always)]
unsafe fn rep_movsb_forward(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller's ranges; the direction flag is clear, as the ABI
    // requires at every call.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
}

/// `rep movsb` downwards, from the last byte: for `dst` inside `src[1..n]`.
#[inline(always)]
unsafe fn rep_movsb_backward(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: the caller's ranges (`n` > 0 here); the direction flag is
    // set only for this instruction and cleared again, as the ABI requires.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dst.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::copy;

    /// The expected result of copying `len` bytes from `from` to `to`
    /// within `buf`, as `memmove` defines it.
    fn reference(buf: &[u8], from: usize, to: usize, len: usize) -> Vec<u8> {
        let mut out = buf.to_vec();
        let piece: Vec<u8> = buf[from..from + len].to_vec();
        for (i, b) in piece.into_iter().enumerate() {
            out[to + i] = b;
        }
        out
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 131 + 7) as u8).collect()
    }

    /// `len` bytes moved `shift` up (the destination overlaps the source's
    /// end) and `shift` down (it overlaps the source's start), within a
    /// buffer with `spare` more bytes after both ranges.
    fn check_overlaps(len: usize, shift: usize, spare: usize) {
        let buf = pattern(len + shift + spare);
        let mut up = buf.clone();
        // SAFETY: `shift` + `len` lies within the buffer.
        unsafe { copy(up.as_mut_ptr().add(shift), up.as_ptr(), len) };
        assert_eq!(up, reference(&buf, 0, shift, len), "up, len {len}, shift {shift}");
        let mut down = buf.clone();
        // SAFETY: as above.
        unsafe { copy(down.as_mut_ptr(), down.as_ptr().add(shift), len) };
        assert_eq!(down, reference(&buf, shift, 0, len), "down, len {len}, shift {shift}");
    }

    #[test]
    fn copies_every_length_and_alignment_between_separate_buffers() {
        for len in 0..=600 {
            for src_off in 0..8 {
                for dst_off in 0..8 {
                    let src = pattern(len + 16);
                    let mut dst = vec![0xAAu8; len + 16];
                    // SAFETY: both offsets plus `len` lie within the buffers.
                    unsafe { copy(dst.as_mut_ptr().add(dst_off), src.as_ptr().add(src_off), len) };
                    assert_eq!(&dst[dst_off..dst_off + len], &src[src_off..src_off + len], "len {len}");
                    assert!(dst[..dst_off].iter().all(|&b| b == 0xAA), "before, len {len}");
                    assert!(dst[dst_off + len..].iter().all(|&b| b == 0xAA), "after, len {len}");
                }
            }
        }
    }

    #[test]
    fn overlapping_copies_move_like_memmove_in_both_directions() {
        for len in 0..=300 {
            for shift in 1..=(len + 2).min(260) {
                check_overlaps(len, shift, 8);
            }
            // Onto itself.
            let buf = pattern(len + 1);
            let mut same = buf.clone();
            // SAFETY: the range lies within the buffer.
            unsafe { copy(same.as_mut_ptr(), same.as_ptr(), len) };
            assert_eq!(same, buf);
        }
    }

    #[test]
    fn large_copies_and_large_overlaps() {
        for &len in &[65, 127, 128, 129, 1_000, 4_095, 4_096, 4_097, 65_537, 1 << 20] {
            let src = pattern(len);
            let mut dst = vec![0u8; len];
            // SAFETY: both buffers hold `len` bytes.
            unsafe { copy(dst.as_mut_ptr(), src.as_ptr(), len) };
            assert_eq!(dst, src);
            for shift in [1, 7, 64, len / 3] {
                check_overlaps(len, shift, 0);
            }
        }
    }
}
