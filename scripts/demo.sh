#!/usr/bin/env bash
# The README's first command: builds iotpipe (release) and runs `iotpipe demo`:
# an embedded MQTT broker, simulated devices, the single-node pipeline
# (journal -> SQLite) and the dashboard, all on loopback. Arguments are passed
# to `iotpipe demo` (see `iotpipe demo --help`). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "demo.sh: cargo is not installed; install the Rust toolchain first (https://rustup.rs)" >&2
    exit 1
fi
if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
    echo "demo.sh: installing the C toolchain the bundled librdkafka and SQLite build with" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential >/dev/null
fi
cargo build --release --quiet --bin iotpipe
exec target/release/iotpipe demo "$@"
