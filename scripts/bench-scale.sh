#!/usr/bin/env bash
# Scaling benchmark: bridge, sink and `iotpipe run` at 10 -> 10,000
# tenant/project pairs, in both Kafka topologies (scripts/bench_scale.py says
# what is measured). Builds the release binary unless IOTPIPE_BIN names one.
# --short is the CI form (1,000 pairs; exit 1 when a peak is over its bound).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${IOTPIPE_BIN:-} ]]; then
    cargo build --release --locked --quiet --bin iotpipe
fi
exec python3 scripts/bench_scale.py "$@"
