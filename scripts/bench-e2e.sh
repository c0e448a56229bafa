#!/usr/bin/env bash
# End-to-end latency benchmark: publish -> row committed in PostgreSQL through
# bridge, Kafka (Tansu) and sink, with a per-stage breakdown
# (scripts/bench_e2e.py; BENCHMARKS.md, "End-to-end latency").
#
#   scripts/bench-e2e.sh [--rate 2000] [--seconds 30] [--journal] [--batch-wait D] [--linger D] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up mosquitto tansu postgres >/dev/null
[[ -n ${IOTPIPE_BIN:-} ]] || cargo build --release --locked --quiet --bin iotpipe
exec python3 scripts/bench_e2e.py "$@"
