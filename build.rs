//! Link settings that depend on the target.
//!
//! musl gives a thread it creates without a stack size 128 KiB of stack
//! (glibc: 8 MiB). librdkafka's threads are created that way, and with
//! thousands of topics its main thread needs more: the static musl binary
//! (the image's) crashed with SIGSEGV on its stack guard page when a sink
//! subscribed to 10,000 per-pair topics (BENCHMARKS.md, "the sink at
//! 10,000 per-pair topics"). musl takes its default thread stack size from the program's
//! PT_GNU_STACK size, so the binary is linked with glibc's default, 8 MiB
//! (musl's ceiling for it). It is address space: only the pages a thread
//! touches are memory. Rust's own threads set their stack size themselves.
//! scripts/dist.sh checks the size in the binary it ships.

/// glibc's default thread stack size, and the largest musl accepts as its default.
const THREAD_STACK_BYTES: u32 = 8 * 1024 * 1024;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,stack-size={THREAD_STACK_BYTES}");
    }
}
