#!/usr/bin/env bash
# Single-node benchmark: `iotpipe run` into SQLite, and demo time to first data.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin iotpipe
exec python3 scripts/bench_run.py "$@"
