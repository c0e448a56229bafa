#!/usr/bin/env bash
# CPU profile of the bridge under the bridge benchmark's load, as flame
# graphs (docs/profiling.md): builds a release binary with symbols and line
# tables into target/profiling (the shipped build is stripped), runs
# scripts/bench_bridge.py with `perf record --call-graph dwarf` attached to
# the bridge during its throughput run, once in direct and once in journal
# mode, and writes target/profiling/bridge-{direct,journal}.{data,folded,svg}
# plus the top functions of each to stdout.
#
#   scripts/profile-bridge.sh [--count N]      (default 100,000 messages)
#
# Needs Debian's linux-perf (`perf record` as root) and inferno
# (`cargo install inferno`; installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
count=100000
while (($#)); do
    case $1 in
    --count) count=$2; shift 2 ;;
    *) echo "profile-bridge.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
command -v perf >/dev/null || { echo "profile-bridge.sh: perf is missing (apt-get install linux-perf)" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || cargo install --locked inferno >&2
out=target/profiling
CARGO_TARGET_DIR=$out CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
    cargo build --release --locked --quiet --bin iotpipe
for mode in direct journal; do
    flag=(); [[ $mode == journal ]] && flag=(--journal)
    IOTPIPE_BIN=$PWD/$out/release/iotpipe python3 scripts/bench_bridge.py "${flag[@]}" --count "$count" \
        --latency-count 2000 --perf "$out/bridge-$mode.data" | grep -E 'msg/s|CPU'
    perf script -i "$out/bridge-$mode.data" 2>/dev/null | inferno-collapse-perf >"$out/bridge-$mode.folded"
    inferno-flamegraph --minwidth 0.3 --countname samples \
        --title "iotpipe bridge ($mode mode), $count QoS 1 messages" \
        <"$out/bridge-$mode.folded" >"$out/bridge-$mode.svg"
    echo "== $mode: $out/bridge-$mode.svg; most samples (self time):"
    python3 - "$out/bridge-$mode.folded" <<'PY'
import collections, sys
total, own = 0, collections.Counter()
for line in open(sys.argv[1]):
    stack, n = line.rsplit(" ", 1)
    total += int(n)
    own[stack.split(";")[-1][:80]] += int(n)
for name, n in own.most_common(15):
    print(f"  {100 * n / total:5.1f}%  {name}")
PY
done
