#!/usr/bin/env bash
# Sink benchmark: Kafka -> PostgreSQL rows/s, peak RSS, naive baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin iotpipe --example bench_store
exec python3 scripts/bench_sink.py "$@"
