//! The static (musl) build, the one the image ships, allocates with
//! jemalloc, for Rust and (unprefixed `malloc`) for librdkafka's C code
//! alike: with musl's own allocator the bridge cost up to 1.5x the CPU per
//! message of the glibc build (BENCHMARKS.md, "Allocator";
//! scripts/bench-allocator.sh measures it). The glibc build keeps glibc's.

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

fn main() -> std::process::ExitCode {
    iotpipe::cli::main()
}
