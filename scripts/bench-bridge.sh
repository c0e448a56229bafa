#!/usr/bin/env bash
# Bridge benchmark: builds the release binary, starts a private Mosquitto and
# Tansu, and prints throughput, CPU per message, peak RSS and latency
# (scripts/bench_bridge.py [--count N] [--journal] [--json FILE]).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 scripts/bench_bridge.py "$@"
