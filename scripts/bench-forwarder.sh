#!/usr/bin/env bash
# The bridge against a minimal forwarder (its performance baseline): builds the
# release binary and examples/minimal_forwarder.rs (release profile), then
# runs both under the same load, taking turns (scripts/bench_forwarder.py;
# BENCHMARKS.md, "Bridge against a minimal forwarder").
#
#   scripts/bench-forwarder.sh [--rounds N] [--count N] [--max-in-flight N] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin iotpipe
cargo build --release --locked --quiet --example minimal_forwarder
exec python3 scripts/bench_forwarder.py "$@"
