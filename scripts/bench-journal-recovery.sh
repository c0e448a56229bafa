#!/usr/bin/env bash
# Journal recovery: fills a journal (default 1 GiB) through a bridge with
# Kafka stalled, kills the bridge with SIGKILL, then times how long a new
# bridge takes to recover it (start → /readyz no longer "recovering
# journal"), with a cold and a warm page cache. Builds the release binary.
#   scripts/bench-journal-recovery.sh [--size 1GiB] [--runs 3] [--cache both|cold|warm]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin iotpipe
exec python3 scripts/bench_journal_recovery.py "$@"
