#!/usr/bin/env bash
# Sink benchmark: Kafka -> PostgreSQL rows/s, peak RSS, against two raw COPY
# streams of the same rows and the naive one-INSERT-per-row baseline
# (scripts/bench_sink.py; BENCHMARKS.md, "Sink").
#
#   scripts/bench-sink.sh [--count N] [--timescale] [--no-naive] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin iotpipe --example bench_store
exec python3 scripts/bench_sink.py "$@"
