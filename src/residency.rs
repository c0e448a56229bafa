//! Pages of the executable that are read once, before `main`, and never
//! after: unmapped at start so that they do not stay resident for the life
//! of the process.
//!
//! The first segment of a position-independent executable holds its ELF
//! headers and the dynamic relocation table (`.rela.dyn`). The startup code
//! reads the table once to relocate the binary; in the static image binary
//! it is 1.1 MiB, all of it resident from then on, which was 7% of the
//! bridge's peak RSS (BENCHMARKS.md, "bridge peak RSS, the relocation
//! table"). The segment is a read-only private file mapping, so dropping
//! its pages (`MADV_DONTNEED`) cannot lose anything: a later read (the
//! unwinder walking the program headers, the dynamic linker looking up a
//! symbol) faults the same bytes back in from the file.
//!
//! A binary linked without position independence has no such table: its
//! first segment is the headers alone (well under a page), and nothing is
//! dropped.

/// `PT_LOAD`, `PT_GNU_RELRO` and `PF_R` of the ELF specification.
const PT_LOAD: u32 = 1;
const PT_GNU_RELRO: u32 = 0x6474_e552;
const PF_R: u32 = 4;

/// Where the executable's read-only first segment is mapped: `(address, length)`.
/// `None` when the headers are not those of a 64-bit ELF executable whose
/// first segment is read-only and outside the RELRO range (the only shape
/// in which dropping its pages is known to be harmless).
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
pub fn first_segment() -> Option<(usize, usize)> {
    extern "C" {
        /// The ELF header, defined by the linker (GNU ld, gold, lld) at the
        /// address where file offset 0 is mapped.
        static __ehdr_start: u8;
    }
    // Only the address is taken: the linker puts the symbol at the mapped ELF header.
    let base = std::ptr::addr_of!(__ehdr_start);
    // SAFETY: the ELF header (64 bytes) is mapped at `base`: it is the start
    // of the first segment, which the kernel or the loader mapped.
    let ehdr = unsafe { std::slice::from_raw_parts(base, 64) };
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 {
        return None;
    }
    let phoff = usize::try_from(u64::from_ne_bytes(ehdr[32..40].try_into().ok()?)).ok()?;
    let phentsize = usize::from(u16::from_ne_bytes(ehdr[54..56].try_into().ok()?));
    let phnum = usize::from(u16::from_ne_bytes(ehdr[56..58].try_into().ok()?));
    if phentsize < 56 || phnum == 0 || phnum >= 0xffff {
        return None;
    }
    let headers = phoff.checked_add(phentsize.checked_mul(phnum)?)?;
    // Read the program headers only where they lie in the ELF header's own
    // page, which is mapped whatever else is.
    if headers > 4096 {
        return None;
    }
    let phdr = |i: usize| {
        // SAFETY: `phoff + i * phentsize + 56 <= headers <= 4096`, within the
        // mapped first page of the first segment.
        let bytes = unsafe { std::slice::from_raw_parts(base.add(phoff + i * phentsize), 56) };
        Phdr::parse(bytes)
    };
    let phdrs: Vec<Phdr> = (0..phnum).map(phdr).collect();
    let first = phdrs.iter().find(|p| p.kind == PT_LOAD && p.offset == 0)?;
    if first.flags != PF_R || usize::try_from(first.filesz).ok()? < headers {
        return None;
    }
    let (start, end) = (first.vaddr, first.vaddr.checked_add(first.memsz)?);
    let relro_overlaps =
        phdrs.iter().any(|p| p.kind == PT_GNU_RELRO && p.vaddr < end && p.vaddr.saturating_add(p.memsz) > start);
    if relro_overlaps {
        return None;
    }
    Some((base as usize, usize::try_from(first.memsz).ok()?))
}

/// One program header (`Elf64_Phdr`), the fields used here.
#[derive(Debug, Clone, Copy)]
struct Phdr {
    kind: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
}

impl Phdr {
    fn parse(b: &[u8]) -> Self {
        let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_ne_bytes(a)
        };
        Self {
            kind: u32_at(0),
            flags: u32_at(4),
            offset: u64_at(8),
            vaddr: u64_at(16),
            filesz: u64_at(32),
            memsz: u64_at(40),
        }
    }
}

/// Unmap the whole pages of the executable's first segment (see the module
/// docs); the bytes unmapped, 0 when there is nothing to drop.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
pub fn release_startup_pages() -> usize {
    let Some((start, len)) = first_segment() else { return 0 };
    let page = rustix::param::page_size();
    // Whole pages only: the segment starts on a page boundary (file offset
    // 0), and its last, partial page is kept.
    let len = len / page * page;
    if len == 0 {
        return 0;
    }
    // SAFETY: [start, start + len) is a read-only private file mapping of
    // the executable (checked by `first_segment`): MADV_DONTNEED only drops
    // its page-table entries, and any later access reads the file again.
    match unsafe { rustix::mm::madvise(start as *mut _, len, rustix::mm::Advice::LinuxDontNeed) } {
        Ok(()) => len,
        Err(_) => 0,
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
pub fn release_startup_pages() -> usize {
    0
}

#[cfg(all(test, target_os = "linux", target_pointer_width = "64"))]
mod tests {
    use super::*;

    /// The `/proc/self/smaps` entry that holds `addr`: its header line and
    /// its `Rss` in KiB.
    fn mapping_of(addr: usize) -> (String, u64) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
        let mut current: Option<(String, bool)> = None;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = first.split_once('-') {
                if let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) {
                    current = Some((line.to_string(), lo <= addr && addr < hi));
                    continue;
                }
            }
            if let (Some((header, true)), Some(rss)) = (&current, line.strip_prefix("Rss:")) {
                let kib = rss.trim().trim_end_matches("kB").trim().parse().expect("Rss in kB");
                return (header.clone(), kib);
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    #[test]
    fn the_first_segment_is_the_executables_read_only_mapping_at_offset_zero() {
        let (start, len) = first_segment().expect("the test binary is a position-independent executable");
        assert!(len >= 4096, "a PIE's first segment holds its relocation table: {len} bytes");
        let (header, _) = mapping_of(start);
        let fields: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(fields[1], "r--p", "{header}");
        assert_eq!(fields[2], "00000000", "{header}");
        let exe = std::fs::read_link("/proc/self/exe").expect("read /proc/self/exe");
        assert_eq!(fields.last().copied(), exe.to_str(), "{header}");
    }

    #[test]
    fn released_pages_leave_residency_and_read_back_the_same() {
        let (start, len) = first_segment().expect("the test binary is a position-independent executable");
        // SAFETY: the first segment is mapped readable for `len` bytes.
        let before: Vec<u8> = unsafe { std::slice::from_raw_parts(start as *const u8, len) }.to_vec();
        let (_, resident) = mapping_of(start);
        let released = release_startup_pages();
        assert_eq!(released, len / rustix::param::page_size() * rustix::param::page_size());
        let (_, after) = mapping_of(start);
        assert!(after < resident, "resident {resident} KiB before, {after} KiB after dropping {released} bytes");
        // SAFETY: as above; the pages fault back in from the file.
        let again = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
        assert!(again == before.as_slice(), "the segment reads back differently");
    }
}
