#!/usr/bin/env bash
# The static build's allocator, measured: builds the glibc release binary,
# the static (musl) binary as shipped (jemalloc) and the static binary with
# musl's own allocator (feature `musl-system-allocator`, its own target dir),
# then compares them on the bridge benchmark, the three bridges side by side
# on one load (scripts/bench_binaries.py --together; BENCHMARKS.md,
# "Allocator" and "the builds side by side").
#
#   scripts/bench-allocator.sh [--rounds N] [--count N] [--journal] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
rustup target list --installed 2>/dev/null | grep -qx "$target" || rustup target add "$target" >&2
command -v musl-gcc >/dev/null || bash scripts/dist.sh >/dev/null
cargo build --release --locked --quiet --bin iotpipe
cargo build --release --locked --quiet --target "$target" --bin iotpipe
CARGO_TARGET_DIR=target/musl-system-allocator \
    cargo build --release --locked --quiet --target "$target" --bin iotpipe --features musl-system-allocator
exec python3 scripts/bench_binaries.py \
    "glibc=target/release/iotpipe" \
    "musl+jemalloc=target/$target/release/iotpipe" \
    "musl=target/musl-system-allocator/$target/release/iotpipe" --together "$@"
