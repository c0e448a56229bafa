#!/usr/bin/env bash
# TimescaleDB benchmark: starts PostgreSQL and the TimescaleDB cluster
# (scripts/services.sh), then, in a release build, writes the same rows into
# both through the store's path, measures a million rows' size before and
# after compression, and times the dashboard's typical queries on raw rows
# and on the rollup. Prints the figures; asserts nothing about them.
#
# Usage: scripts/bench-timescale.sh [--rows N] [--batch N] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up postgres timescaledb >/dev/null
cargo build --release --quiet --example bench_timescale
exec target/release/examples/bench_timescale "$@"
