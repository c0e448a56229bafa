#!/usr/bin/env bash
# Every performance comparison in one run: builds what the selected
# comparisons need, once (the glibc release binary; the minimal forwarder for
# `forwarder`; the static musl binary of the image, through scripts/dist.sh,
# for `allocator` and `journal`), then runs scripts/bench_all.py, which runs each
# comparison's script and prints one table of ratios against the targets,
# also written to target/bench/summary.md (BENCHMARKS.md, "All comparisons").
#
#   scripts/bench.sh [--quick] [--only NAME[,NAME...]] [--pin CPUS|none] [--musl-bin PATH] [--out-dir DIR]
#
#   --quick      20,000 messages per measurement, one round, 10 s latency
#                windows: proves the run works, the figures are rough
#   --only       forwarder, allocator, journal, sink, e2e (repeatable)
#   --pin        the CPUs of the measured process (bridge or minimal forwarder)
#                in the forwarder, allocator and journal comparisons; the
#                load runs on the others. Default: none (unpinned)
#   --musl-bin   a static binary to use instead of building dist/amd64/iotpipe
set -euo pipefail
cd "$(dirname "$0")/.."

all=(forwarder allocator journal sink e2e)
selected=()
musl_given=
args=("$@")
while (($#)); do
    case $1 in
    --only) [[ $# -ge 2 ]] || { echo "bench.sh: --only needs a value" >&2; exit 2; }
        IFS=, read -r -a names <<<"$2"; selected+=("${names[@]}"); shift 2 ;;
    --only=*) IFS=, read -r -a names <<<"${1#--only=}"; selected+=("${names[@]}"); shift ;;
    --musl-bin|--musl-bin=*) musl_given=1; [[ $1 == *=* ]] && shift || shift 2 ;;
    --out-dir|--pin) shift 2 ;;
    *) shift ;;
    esac
done
((${#selected[@]})) || selected=("${all[@]}")
wants() { local n; for n in "${selected[@]}"; do [[ $n == "$1" ]] && return 0; done; return 1; }

cargo build --release --locked --quiet --bin iotpipe
if wants forwarder; then cargo build --release --locked --quiet --example minimal_forwarder; fi
if { wants allocator || wants journal; } && [[ -z $musl_given ]]; then bash scripts/dist.sh; fi
exec python3 scripts/bench_all.py "${args[@]}"
