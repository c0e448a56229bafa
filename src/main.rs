//! The static (musl) build, the one the image ships, allocates with
//! jemalloc, for Rust and (unprefixed `malloc`) for librdkafka's C code
//! alike: with musl's own allocator the bridge cost up to 1.5x the CPU per
//! message of the glibc build (BENCHMARKS.md, "Allocator";
//! scripts/bench-allocator.sh measures it). The glibc build keeps glibc's.
//!
//! The static x86_64 build also brings its own `memcpy` and `memmove`
//! (`iotpipe::fastmem`): musl's copy short ranges byte by byte and cost that
//! binary 4% more of its CPU than glibc's (BENCHMARKS.md, "the static
//! build's memcpy"). Defining both keeps musl's `memcpy.o` and `memmove.o`
//! out of the link; C code (librdkafka) calls these too.

#[cfg(all(target_env = "musl", not(feature = "musl-system-allocator")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation: one arena (the
/// default is four per CPU, each with its own partly used slabs: 2-3 MiB
/// more peak RSS in the bridge with two) and unused pages returned to the
/// kernel within a second, for the 64 MiB pods (BENCHMARKS.md). `MALLOC_CONF`
/// in the environment still overrides them.
#[cfg(all(target_env = "musl", not(feature = "musl-system-allocator")))]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static malloc_conf: &[u8; 47] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// `memcpy(3)`, for Rust and C code alike (see the module docs).
///
/// # Safety
/// As `memcpy(3)`: `src` readable and `dst` writable for `n` bytes.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's promise, passed on; overlap is allowed there too.
    unsafe { iotpipe::fastmem::copy(dst, src, n) };
    dst
}

/// `memmove(3)`, for Rust and C code alike (see the module docs).
///
/// # Safety
/// As `memmove(3)`: `src` readable and `dst` writable for `n` bytes.
#[cfg(all(target_env = "musl", target_arch = "x86_64"))]
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's promise, passed on.
    unsafe { iotpipe::fastmem::copy(dst, src, n) };
    dst
}

fn main() -> std::process::ExitCode {
    // The relocation table was read before `main`; nothing reads it again.
    iotpipe::residency::release_startup_pages();
    iotpipe::cli::main()
}
