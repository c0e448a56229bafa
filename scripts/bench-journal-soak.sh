#!/usr/bin/env bash
# Journal-mode soak: a large backlog on disk while Kafka is stalled, then the
# replay. Builds the release binary and prints peak RSS during the stall and
# during the replay, and whether every message reached Kafka.
#   scripts/bench-journal-soak.sh [--count 1000000] [--stall 120]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 scripts/bench_journal_soak.py "$@"
