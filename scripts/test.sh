#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine and runs
# it: Debian packages and Tansu (via scripts/services.sh), formatting and lint
# checks, every unit and integration test against real services, then the
# deployment manifests (scripts/check-deploy.sh), the dashboards and alerts
# against live processes (scripts/check-observability.sh), the container
# image under a 64 MiB limit (scripts/container-test.sh) and the short fault
# matrix (scripts/fault-matrix.sh --short) and the short scaling benchmark
# (scripts/bench_scale.py --short). The container stage's static binaries
# build in the background from the start, at idle priority (below).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo is not installed; install the Rust toolchain first (https://rustup.rs)" >&2
    exit 1
fi

if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
    echo "test.sh: installing the C toolchain the bundled librdkafka and SQLite build with" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential >/dev/null
fi

# Each stage's header carries the minutes since the start, and the summary at
# the end lists them, so a slow CI run shows where its time went.
started=$SECONDS
stage_names=()
stage_starts=()
stage() {
    stage_names+=("$1")
    stage_starts+=("$SECONDS")
    printf '== %s (at %dm%02ds)\n' "$1" $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60))
}
summary() {
    local rc=$? i end
    stop_early_dist
    echo "== stage times (exit $rc)"
    for i in "${!stage_names[@]}"; do
        end=${stage_starts[$((i + 1))]:-$SECONDS}
        printf '   %-28s %4ds\n' "${stage_names[$i]}" $((end - stage_starts[i]))
    done
    printf '   %-28s %4ds\n' total $((SECONDS - started))
    df -h . 2>/dev/null | awk 'NR == 2 { print "   disk: " $4 " free of " $2 " after the run" }'
}
# The static builds started in the background below (stopped on any exit).
export IOTPIPE_DIST_TARGET_DIR=target/dist
early_dist_pid=
early_dist_log=target/dist-early.log
early_dist_pidfile=target/dist-early.pid
stop_early_dist() {
    [[ -n $early_dist_pid ]] || return 0
    kill -- "-$(cat "$early_dist_pidfile" 2>/dev/null)" 2>/dev/null || true
    early_dist_pid=
}
trap summary EXIT

# A fresh clone gains nothing from incremental compilation, which writes
# about 2 GB of its own under target/debug.
if [[ ${CI:-} == true ]]; then
    export CARGO_INCREMENTAL=0
fi

stage services
bash scripts/services.sh install
bash scripts/services.sh up
bash scripts/services.sh tools
# Opt in to the Kafka SASL tests: they need a Tansu built with SQLite storage.
if [[ ${IOTPIPE_TEST_SASL:-0} == 1 ]]; then
    bash scripts/services.sh tansu-sql
    bash scripts/services.sh up tansu >/dev/null
fi

# The static binaries the container stage packs (scripts/dist.sh, amd64 and
# arm64: 15-20 minutes of compiling from scratch on a 2-core machine) build
# from here on in the background, in a session of their own at the lowest
# priority (autogroup nice 19, SCHED_IDLE, idle I/O class): they take the CPU
# that the lint and the tests leave idle (the end-to-end tests mostly wait on
# their services) and yield it to everything else; the container stage waits
# for what is left. amd64 builds in target/dist and arm64 in target/cross, so
# no cargo run here waits for their lock. IOTPIPE_TEST_EARLY_DIST=0 builds them
# in the container stage instead.
if [[ ${IOTPIPE_TEST_EARLY_DIST:-1} == 1 ]] && command -v setsid >/dev/null && command -v chrt >/dev/null &&
    command -v ionice >/dev/null; then
    mkdir -p target
    rm -f "$early_dist_pidfile"
    # setsid -w: $! ends with the build and carries its status; the build's
    # own session (its process group) is what a failed run stops.
    setsid -w bash -c 'echo $$ >"$1"; echo 19 >"/proc/$$/autogroup" 2>/dev/null
        exec ionice -c 3 chrt --idle 0 bash scripts/dist.sh --arch "$2"' \
        _ "$early_dist_pidfile" "${IOTPIPE_IMAGE_ARCHES:-amd64,arm64}" >"$early_dist_log" 2>&1 &
    early_dist_pid=$!
    echo "test.sh: the static builds (scripts/dist.sh) run in the background at idle priority; log in $early_dist_log"
fi

stage "format and lint"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The fuzz checks (src/fuzzing.rs) are compiled only with their feature.
cargo clippy --all-targets --locked --features fuzzing -- -D warnings

stage tests
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --profile ci
    # The sink's end-to-end tests again, on librdkafka's consumer (the
    # default, "auto", is the native one here; docs/sink.md, "Two consumers").
    IOTPIPE_TEST_KAFKA_CONSUMER=librdkafka cargo nextest run --locked --profile ci --test sink
    # The fuzz corpus replay needs the `fuzzing` feature (docs/fuzzing.md).
    cargo nextest run --locked --profile ci --features fuzzing --test fuzz_corpus
else
    cargo test --locked -- --test-threads=2
    IOTPIPE_TEST_KAFKA_CONSUMER=librdkafka cargo test --locked --test sink -- --test-threads=2
    cargo test --locked --features fuzzing --test fuzz_corpus
fi

# The checks below run the binary the tests just built (the integration
# tests build it; a plain `cargo build` would build it again with other
# features, since dev-dependencies unify differently).
[[ -x target/debug/iotpipe ]] || cargo build --locked --bin iotpipe

stage "deployment manifests"
IOTPIPE_BIN="$PWD/target/debug/iotpipe" bash scripts/check-deploy.sh

stage "dashboards and alerts"
IOTPIPE_BIN="$PWD/target/debug/iotpipe" bash scripts/check-observability.sh

stage "container image"
if [[ -n $early_dist_pid ]]; then
    echo "test.sh: waiting for the static builds started at the beginning ($early_dist_log)"
    early_dist_rc=0
    wait "$early_dist_pid" || early_dist_rc=$?
    early_dist_pid=
    grep '^dist.sh:' "$early_dist_log" || true
    if ((early_dist_rc != 0)); then
        tail -n 40 "$early_dist_log" >&2
        echo "test.sh: the static builds failed (exit $early_dist_rc); the whole log is $early_dist_log" >&2
        exit 1
    fi
fi
bash scripts/container-test.sh

# The short fault matrix (RELIABILITY.md): a quiet run, a PostgreSQL outage
# and a Kafka stall in direct and in journal mode, nothing lost or stored twice, every bridge and sink
# below 64 MiB, and a Prometheus with the shipped rules raising the alerts
# each scenario expects and no others.
# It runs the release binary the container test just built (what the image
# ships; a debug build's memory says little about the 64 MiB limit), or the
# debug one when there is none.
stage "fault matrix (--short)"
fm_bin="$PWD/dist/amd64/iotpipe"
[[ -x $fm_bin ]] || fm_bin="$PWD/target/debug/iotpipe"
IOTPIPE_BIN="$fm_bin" bash scripts/fault-matrix.sh --short

# The short scaling benchmark (docs/topology.md): 1,000 tenant/project pairs
# through the bridge, the sink and `iotpipe run` with the default (shared)
# topology, then through the bridge and the sink with a topic per pair (both
# on their default, native, Kafka clients); fails when a peak RSS is over its bound (bridge
# 24 MiB, sink 48 MiB, run 48 MiB) or a message is missing. Same binary as
# the matrix.
stage "scaling (--short)"
IOTPIPE_BIN="$fm_bin" python3 scripts/bench_scale.py --short
IOTPIPE_BIN="$fm_bin" python3 scripts/bench_scale.py --short --topologies per-pair --components bridge,sink \
    --count 5000
