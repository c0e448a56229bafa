#!/usr/bin/env python3
"""Every performance comparison in one run, and one table of ratios against
the targets.

Runs the comparison scripts one after the other, each with --json into the
output directory, and reads the figures from those files (nothing here is
typed in):

  forwarder  scripts/bench_forwarder.py: the bridge against
             examples/minimal_forwarder.rs (msg/s, CPU µs/msg)
  allocator  scripts/bench_binaries.py --together: the static (musl)
             image binary against the glibc build, both bridges on the same
             load at the same time (CPU µs/msg), and the image binary's
             peak RSS (the binary the pods run)
  journal    msg/s: scripts/bench_bridge.py in direct and journal mode,
             taking turns round by round, each alone at its top rate; CPU
             µs/msg: scripts/bench_binaries.py --together, a direct and a
             journal-mode bridge on the same load at the same time; with
             the image's static binary (--musl-bin) when there is one, as
             the pods run it
  sink       scripts/bench_sink.py: sink rows/s against two concurrent raw
             COPY streams of the same rows into the same table
  e2e        scripts/bench_e2e.py in direct and journal mode: publish ->
             row committed in PostgreSQL, p50 and p99 at 2,000 msg/s

CPU ratios between two builds, and between journal and direct mode, come
from bridges run side by side because this machine's host takes CPU time
away at times: one round's ratio of the same two builds ranged 0.83-1.25x
in turns, 0.95-1.00x side by side (BENCHMARKS.md, "the builds side by
side").

--pin CPUS runs the bridge comparisons (forwarder, allocator, journal) with
the measured process (the bridge, or the minimal forwarder) on those CPUs
and the load (the script, Mosquitto, Tansu, the publisher) on the others
(IOTPIPE_BENCH_PIN, scripts/benchlib.py). Unpinned (the default) the bridge
is the bottleneck and runs near its top rate; pinned on a 2-core machine
the load has one core to itself and sets a lower rate, at which the
per-message costs are higher (BENCHMARKS.md, "pinned and unpinned").

Prints the table and writes it to <out-dir>/summary.md. Exits 1 if a
comparison failed to run (its row says so); a target not met is a figure,
not a failure. Usage (normally through scripts/bench.sh, which builds the
binaries first):
    python3 scripts/bench_all.py [--quick] [--only NAME[,NAME...]] [--pin CPUS|none] [--musl-bin PATH]
                                 [--out-dir DIR]
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import BIN, REPO, load_cpus, mosquitto_bin, mosquitto_version, parse_cpus, services_env  # noqa: E402

COMPARISONS = ("forwarder", "allocator", "journal", "sink", "e2e")

# Message counts and rounds: the published run, and --quick (proves the run works; figures are rough).
# 500,000 messages keep each bridge measurement at 4-8 s at the 60,000-115,000 msg/s measured on the 2-core
# test machines (200,000 took about 2 s, and a run-to-run spread of ±20% in CPU per message); five rounds,
# the modes taking turns, or the bridges side by side.
SIZES = {
    False: {"rounds": 5, "count": 500_000, "sink_count": 200_000, "e2e_seconds": 30},
    True: {"rounds": 1, "count": 20_000, "sink_count": 20_000, "e2e_seconds": 10},
}
E2E_RATE = 2_000
MAX_IN_FLIGHT = 1_000

# The targets, one place: (comparison label, bound, "<=" or ">=").
TARGETS = {
    "bridge_cpu": ("bridge CPU/msg ÷ minimal forwarder", 0.8, "<="),
    "bridge_rate": ("bridge msg/s ÷ minimal forwarder", 1.0, ">="),
    "bridge_rss": (f"bridge peak RSS at {MAX_IN_FLIGHT:,} in flight", 16.0, "<="),
    "musl_cpu": ("musl image binary CPU/msg ÷ glibc", 1.05, "<="),
    "journal_rate": ("journal mode msg/s ÷ direct", 0.95, ">="),
    "journal_cpu": ("journal mode CPU/msg ÷ direct", 1.2, "<="),
    "sink_rate": ("sink rows/s ÷ two raw COPY streams", 0.9, ">="),
    "e2e_p50": ("publish→visible p50 at {rate} msg/s, {mode}", 250.0, "<="),
    "e2e_p99": ("publish→visible p99 at {rate} msg/s, {mode}", 1000.0, "<="),
}


def run_script(out_dir, name, script, args, env=None):
    """Run scripts/<script> with --json; its figures. Its own output goes to this run's output.
    `env`: variables added to this process's environment for the script."""
    result = os.path.join(out_dir, f"{name}.json")
    if os.path.exists(result):
        os.remove(result)
    cmd = [sys.executable, os.path.join(HERE, script), *args, "--json", result]
    print(f"\n== {name}: {' '.join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd[1:])}",
          flush=True)
    done = subprocess.run(cmd, env={**os.environ, **(env or {})})
    if done.returncode != 0 or not os.path.exists(result):
        raise RuntimeError(f"{script} exited {done.returncode}")
    with open(result) as f:
        return json.load(f)


def row(key, value, shown, detail="", **fmt):
    """A table row: the measured value against its target."""
    label, bound, op = TARGETS[key]
    met = value <= bound if op == "<=" else value >= bound
    if value != value:  # NaN: nothing measured
        met = None
    target = f"{op.replace('<=', '≤').replace('>=', '≥')} {fmt_bound(key, bound)}"
    return {"comparison": label.format(**fmt), "measured": shown + (f" ({detail})" if detail else ""),
            "target": target, "met": met}


def fmt_bound(key, bound):
    if key == "bridge_rss":
        return f"{bound:g} MiB"
    if key.startswith("e2e"):
        return f"{bound / 1000:g} s" if bound >= 1000 else f"{bound:g} ms"
    text = f"{bound:.2f}"
    return (text[:-1] if text.endswith("0") else text) + "×"


def forwarder(ctx):
    r = run_script(ctx.out_dir, "forwarder", "bench_forwarder.py",
                   ["--rounds", str(ctx.size["rounds"]), "--count", str(ctx.size["count"]),
                    "--max-in-flight", str(MAX_IN_FLIGHT)], env=ctx.pin_env)
    b, f, ratio = r["bridge"], r["forwarder"], r["ratio"]
    return [
        row("bridge_cpu", ratio["cpu_us"], f"{ratio['cpu_us']:.2f}×",
            f"{b['cpu_us']:.1f} ÷ {f['cpu_us']:.1f} µs/msg"),
        row("bridge_rate", ratio["msg_s"], f"{ratio['msg_s']:.2f}×", f"{b['msg_s']:,.0f} ÷ {f['msg_s']:,.0f} msg/s"),
    ]


def allocator(ctx):
    if not ctx.musl_bin or not os.access(ctx.musl_bin, os.X_OK):
        raise RuntimeError(f"no static musl binary at {ctx.musl_bin} (scripts/bench.sh builds it with scripts/dist.sh)")
    r = run_script(ctx.out_dir, "allocator", "bench_binaries.py",
                   [f"glibc={BIN}", f"musl={ctx.musl_bin}", "--together", "--rounds", str(ctx.size["rounds"]),
                    "--count", str(ctx.size["count"])], env=ctx.pin_env)
    m, g = r["median"]["musl"], r["median"]["glibc"]
    cpu = r["ratio"]["musl"]["cpu_us"]
    return [
        row("musl_cpu", cpu, f"{cpu:.2f}×", f"{m['cpu_us']:.2f} ÷ {g['cpu_us']:.2f} µs/msg; {side_by_side(r, 'musl')}"),
        row("bridge_rss", m["rss_mib"], f"{m['rss_mib']:.1f} MiB",
            f"the image's binary, median; glibc build {g['rss_mib']:.1f} MiB; {broker_window()}"),
    ]


def side_by_side(r, name):
    """How a bench_binaries.py --together ratio was measured, and its spread."""
    rounds = r["cpu_ratio_per_round"][name]
    return (f"side by side at {r['median'][name]['msg_s']:,.0f} msg/s each, median of {len(rounds)} rounds, "
            f"one round {min(rounds):.2f}–{max(rounds):.2f}×")


def broker_window():
    '''Which Mosquitto the measurement ran against, and whether it keeps the
    MQTT window (before 2.0.13 it sends past the receive maximum, so the
    bridge then holds more than `mqtt.max_in_flight` messages; docs/bridge.md).'''
    version = mosquitto_version(mosquitto_bin(services_env()))
    shown = ".".join(map(str, version))
    if version < (2, 0, 13):
        return f"Mosquitto {shown}, which sends past the window: more than {MAX_IN_FLIGHT:,} in flight"
    return f"Mosquitto {shown}, which keeps the window"


def journal(ctx):
    """Journal mode against direct mode, with the binary the pods run (the image's, as the peak RSS
    row): the glibc build's malloc makes journal mode's allocations dearer than jemalloc does
    (BENCHMARKS.md). Without that binary, the glibc build, and the rows say so."""
    image = ctx.musl_bin and os.access(ctx.musl_bin, os.X_OK)
    binary = ctx.musl_bin if image else BIN
    shown = "the image's binary" if image else f"{os.path.relpath(BIN, REPO)}: no image binary at {ctx.musl_bin}"
    runs = {"direct": [], "journal": []}
    for r in range(ctx.size["rounds"]):
        for mode in (("direct", "journal") if r % 2 == 0 else ("journal", "direct")):
            args = ["--count", str(ctx.size["count"]), "--latency-count", "2000"]
            runs[mode].append(run_script(ctx.out_dir, f"journal-{mode}-{r + 1}", "bench_bridge.py",
                                         args + (["--journal"] if mode == "journal" else []),
                                         env={**ctx.pin_env, "IOTPIPE_BIN": binary}))
    med = {mode: {k: statistics.median(x[k] for x in rs) for k in ("msg_s", "cpu_us")} for mode, rs in runs.items()}
    j, d = med["journal"], med["direct"]
    rate, turns = j["msg_s"] / d["msg_s"], j["cpu_us"] / d["cpu_us"]
    r = run_script(ctx.out_dir, "journal-together", "bench_binaries.py",
                   [f"direct={binary}", f"journal={binary}", "--together", "--journal-for", "journal",
                    "--rounds", str(ctx.size["rounds"]), "--count", str(ctx.size["count"])], env=ctx.pin_env)
    cpu = r["ratio"]["journal"]["cpu_us"]
    jt, dt = r["median"]["journal"], r["median"]["direct"]
    return [
        row("journal_rate", rate, f"{rate:.2f}×", f"{j['msg_s']:,.0f} ÷ {d['msg_s']:,.0f} msg/s, each alone, in "
            f"turns; {shown}"),
        row("journal_cpu", cpu, f"{cpu:.2f}×", f"{jt['cpu_us']:.2f} ÷ {dt['cpu_us']:.2f} µs/msg; "
            f"{side_by_side(r, 'journal')}; in turns {turns:.2f}× ({j['cpu_us']:.2f} ÷ {d['cpu_us']:.2f}); {shown}"),
    ]


def sink(ctx):
    r = run_script(ctx.out_dir, "sink", "bench_sink.py", ["--count", str(ctx.size["sink_count"]), "--no-naive"])
    s, raw = r["sink"]["PostgreSQL"], r["raw_copy"]
    ratio = r["ratio_sink_to_raw_copy"]
    return [row("sink_rate", ratio, f"{ratio:.2f}×", f"{s['rate']:,.0f} ÷ {raw['rate']:,.0f} rows/s")]


def e2e(ctx):
    rows = []
    for mode in ("direct", "journal"):
        r = run_script(ctx.out_dir, f"e2e-{mode}", "bench_e2e.py",
                       ["--rate", str(E2E_RATE), "--seconds", str(ctx.size["e2e_seconds"])]
                       + (["--journal"] if mode == "journal" else []))
        q = dict(zip(r["quantiles"], r["publish_to_commit_s"]))
        p50, p99 = q[0.5] * 1e3, q[0.99] * 1e3
        detail = f"{r['rows_in_window']:,.0f} rows in {r['seconds']} s"
        rows.append(row("e2e_p50", p50, f"{p50:.0f} ms", detail, rate=f"{E2E_RATE:,}", mode=mode))
        rows.append(row("e2e_p99", p99, f"{p99:.0f} ms", detail, rate=f"{E2E_RATE:,}", mode=mode))
    return rows


RUNNERS = {"forwarder": forwarder, "allocator": allocator, "journal": journal, "sink": sink, "e2e": e2e}


class Context:
    def __init__(self, args):
        self.out_dir = args.out_dir
        self.size = SIZES[args.quick]
        self.musl_bin = args.musl_bin
        self.pin = args.pin
        # Set, or cleared, for the bridge comparisons: an IOTPIPE_BENCH_PIN of the caller's does not leak in.
        self.pin_env = {"IOTPIPE_BENCH_PIN": args.pin}


def pin_arg(spec):
    """--pin: a CPU list, or none (an empty string: unpinned)."""
    if spec.strip().lower() in ("", "none"):
        return ""
    try:
        load_cpus(parse_cpus(spec), os.sched_getaffinity(0))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{spec!r}: {e} (or none)")
    return spec


def pin_note(pin):
    if not pin:
        return "unpinned"
    rest = ",".join(map(str, sorted(os.sched_getaffinity(0) - parse_cpus(pin))))
    return f"bridge comparisons pinned (the measured process on CPU {pin}, the load on {rest})"


def git(*args):
    out = subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def machine():
    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return f"{os.cpu_count()} cores, {mem_kib / 1024 / 1024:.0f} GiB, {platform.machine()}"


def pinned_any(selected):
    return any(n in selected for n in ("forwarder", "allocator", "journal"))


def table(rows):
    lines = ["| comparison | measured | target | met |", "|---|---|---|---|"]
    for r in rows:
        met = {True: "yes", False: "no", None: "—"}[r["met"]]
        lines.append(f"| {r['comparison']} | {r['measured']} | {r['target']} | {met} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="small counts, one round (proves the run works; the figures are rough)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME[,NAME]",
                    help=f"run only these comparisons ({', '.join(COMPARISONS)}); repeatable")
    ap.add_argument("--pin", type=pin_arg, default="", metavar="CPUS|none",
                    help="for the forwarder, allocator and journal comparisons, run the measured process on these "
                         "CPUs and the load on the others (default: none, unpinned)")
    ap.add_argument("--musl-bin", default=os.path.join(REPO, "dist", "amd64", "iotpipe"),
                    help="the static musl binary of the image (default: dist/amd64/iotpipe, from scripts/dist.sh)")
    ap.add_argument("--out-dir", default=os.path.join(REPO, "target", "bench"),
                    help="where the JSON figures and summary.md go (default: target/bench)")
    args = ap.parse_args()
    only = [n for spec in args.only for n in spec.split(",") if n]
    for name in only:
        if name not in COMPARISONS:
            ap.error(f"--only {name}: not one of {', '.join(COMPARISONS)}")
    selected = [n for n in COMPARISONS if not only or n in only]
    if not os.access(BIN, os.X_OK):
        sys.exit(f"bench_all: {BIN} missing (scripts/bench.sh builds it)")
    os.makedirs(args.out_dir, exist_ok=True)
    ctx = Context(args)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.time()
    rows, failed = [], []
    for name in selected:
        try:
            rows.extend(RUNNERS[name](ctx))
        except (RuntimeError, KeyError, ValueError, OSError) as e:
            failed.append(name)
            rows.append({"comparison": f"{name}: not measured", "measured": f"failed: {e}", "target": "",
                         "met": None})
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    head = (f"{'Quick run' if args.quick else 'Run'} of scripts/bench.sh{' --quick' if args.quick else ''}"
            f"{' --only ' + ','.join(only) if only else ''}: {started:%Y-%m-%d %H:%M} UTC, commit "
            f"{git('rev-parse', '--short', 'HEAD')}{dirty}, {os.path.relpath(BIN, REPO)}, {machine()}, "
            f"{pin_note(args.pin) if pinned_any(selected) else 'no bridge comparison'}, load average "
            f"{os.getloadavg()[0]:.1f} at the end, {(time.time() - t0) / 60:.1f} min")
    text = f"{head}\n\n{table(rows)}\n"
    print("\n" + text, end="")
    summary = os.path.join(args.out_dir, "summary.md")
    with open(summary, "w") as f:
        f.write(text)
    print(f"\n(written to {summary})")
    if failed:
        sys.exit(f"bench_all: not measured: {', '.join(failed)}")


if __name__ == "__main__":
    main()
