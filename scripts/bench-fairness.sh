#!/usr/bin/env bash
# Fairness under a flood: quiet tenants' publish -> stored latency while one
# tenant floods, in both Kafka topologies (scripts/bench_fairness.py says
# what is measured). Builds the release binary unless IOTPIPE_BIN names one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${IOTPIPE_BIN:-} ]]; then
    cargo build --release --locked --quiet --bin iotpipe
fi
exec python3 scripts/bench_fairness.py "$@"
