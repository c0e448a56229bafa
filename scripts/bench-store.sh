#!/usr/bin/env bash
# Store benchmark: starts PostgreSQL and InfluxDB (scripts/services.sh), then
# measures, in a release build, rows/s into PostgreSQL through the store's
# batch path (one INSERT .. FROM unnest per batch), the naive
# one-INSERT-per-row baseline, and rows/s into
# InfluxDB. Prints the figures; asserts nothing about them.
#
# Usage: scripts/bench-store.sh [--copy-rows N] [--batch N] [--naive-rows N] [--influx-rows N]
# Defaults: 200000 COPY rows in batches of 5000, 20000 naive rows, 100000 InfluxDB rows.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up postgres influxdb >/dev/null
cargo build --release --quiet --example bench_store
exec target/release/examples/bench_store "$@"
