#!/usr/bin/env bash
# Fuzz iotpipe (docs/fuzzing.md).
#
#   scripts/fuzz.sh [--seconds N] [--sanitizer none|address] [--cmin] [TARGET...]
#
# Installs cargo-fuzz when it is missing, builds the targets of fuzz/ on the
# nightly toolchain (release, debug assertions on), runs each TARGET (all of
# them by default) for N seconds (default 60) on one core at low priority,
# and prints per target: executions, executions per second, coverage
# (edges) and features, corpus size, crashes.
#
# New inputs go to fuzz/target/work-corpus/<target> (not committed). With
# --cmin, the committed corpus fuzz/corpus/<target> is replaced by the
# minimized union of itself and that work corpus. Crashing inputs land in
# fuzz/artifacts/<target>/: fix the bug, then copy the input to
# fuzz/regressions/<target>/<name> (tests/fuzz_corpus.rs replays it on stable:
# cargo nextest run --features fuzzing --test fuzz_corpus)
# and add a named #[test].
#
# Exits 2, saying so on one line, when there is no nightly toolchain; 1 when
# a target found a crash.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS_ALL=(topic_pattern template payload journal_reader kafka_decode config)
seconds=60
sanitizer=none
cmin=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --sanitizer) sanitizer="$2"; shift 2 ;;
        --cmin) cmin=1; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $1" >&2; exit 64 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${TARGETS_ALL[@]}")

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "FUZZ: NO NIGHTLY TOOLCHAIN - cargo-fuzz needs one (rustup toolchain install nightly); nothing was fuzzed." >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "Installing cargo-fuzz ..."
    nice cargo install cargo-fuzz --locked
fi

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
build=(cargo +nightly fuzz build --sanitizer "$sanitizer" --debug-assertions)
run=(cargo +nightly fuzz run --sanitizer "$sanitizer" --debug-assertions)
echo "Building ${targets[*]} (nightly, sanitizer $sanitizer) ..."
for t in "${targets[@]}"; do nice "${build[@]}" "$t"; done

logs=fuzz/target/logs
mkdir -p "$logs"
failed=0
printf '%-15s %8s %12s %9s %7s %7s %7s %8s\n' target seconds execs exec/s cov ft corpus crashes
for t in "${targets[@]}"; do
    work="fuzz/target/work-corpus/$t"
    mkdir -p "$work" "fuzz/corpus/$t" "fuzz/artifacts/$t"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    log="$logs/$t.log"
    status=0
    nice "${run[@]}" "$t" "$work" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || status=$?
    after=$(find "fuzz/artifacts/$t" -type f | wc -l)
    crashes=$((after - before))
    [ "$status" -eq 0 ] || [ "$crashes" -gt 0 ] || crashes="exit $status"
    [ "$status" -eq 0 ] || failed=1
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    printf '%-15s %8s %12s %9s %7s %7s %7s %8s\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes"
    if [ "$cmin" -eq 1 ] && [ "$status" -eq 0 ]; then
        cp -n "$work"/* "fuzz/corpus/$t/" 2>/dev/null || true
        nice cargo +nightly fuzz cmin --sanitizer "$sanitizer" --debug-assertions "$t" "fuzz/corpus/$t" \
            >"$logs/$t.cmin.log" 2>&1 || failed=1
        echo "    corpus after cmin: $(find "fuzz/corpus/$t" -type f | wc -l) files, $(du -sh "fuzz/corpus/$t" | cut -f1)"
    fi
done
echo "Logs: $logs/<target>.log; crashing inputs: fuzz/artifacts/<target>/"
exit "$failed"
