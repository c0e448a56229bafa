#!/usr/bin/env python3
"""Compare iotpipe binaries on the bridge benchmark, side by side in one run.

Runs scripts/bench_bridge.py once per binary per round, the binaries taking
turns, in reverse order every other round (A B, B A, A B, ...) so that drift
of the machine (other work, steal, the broker's growing log) falls on all of
them alike and none always runs first, and prints per binary the median over
the rounds of: end-to-end msg/s, CPU µs per message, peak RSS; each median's
ratio to the first binary's; and the range of the CPU ratio within a round,
which shows how far one round is from the next. Used to choose the static build's allocator
(BENCHMARKS.md, "Allocator") and to check the shipped binary against the
glibc build.

With --together, each round runs every binary at the same time instead, on
one Mosquitto and one Tansu: each bridge subscribes in its own MQTT session,
so each gets every message of the same load, and the CPU per message of
each is measured over the same seconds. The machine's drift then falls on
all of them within a round, not only across rounds: on the 2-core test
machine, whose host took up to half the CPU at times, one round's CPU ratio
of the same two builds ranged 0.83-1.25x in turns, and 0.95-1.00x together
(BENCHMARKS.md, "the builds side by side"). The bridges share the CPU with
each other too, so their rates are lower than alone; the ratio is what the
mode is for.

Each binary runs from a copy made at the start, so that all of them start
from a file written the same way: the resident code of a process depends on
how its executable's pages came into the page cache, and the image's binary
peaked about 3 MiB higher run from the file the linker had just written
than from a copy of it, or from the same file read back from disk
(BENCHMARKS.md, "bridge peak RSS, the relocation table").

Usage (normally through scripts/bench-allocator.sh, which builds the binaries):
    python3 scripts/bench_binaries.py NAME=PATH [NAME=PATH ...] [--rounds 3]
        [--count 100000] [--journal] [--together [--journal-for NAME [--journal-set NAME:KEY=VALUE]]]
        [--json FILE]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import (Iotpipe, add_json_option, bridge_sections, cpu_seconds, peak_rss_kib, services_env,  # noqa: E402
                      simulate, start_brokers, stop_all, write_json)

KEYS = ("msg_s", "cpu_us", "rss_mib")


def run_once(path, count, journal):
    """One scripts/bench_bridge.py run with IOTPIPE_BIN=path; its figures (read from its --json file)."""
    with tempfile.TemporaryDirectory(prefix="iotpipe-bench-bin-") as tmp:
        result = os.path.join(tmp, "bridge.json")
        cmd = [sys.executable, os.path.join(HERE, "bench_bridge.py"), "--count", str(count), "--latency-count", "2000",
               "--json", result]
        if journal:
            cmd.append("--journal")
        out = subprocess.run(cmd, env={**os.environ, "IOTPIPE_BIN": path}, capture_output=True, text=True,
                             timeout=900)
        if out.returncode != 0 or not os.path.exists(result):
            sys.stderr.write(out.stdout[-2000:] + out.stderr[-2000:])
            raise SystemExit(f"bench_binaries: bench_bridge.py failed for {path} (exit {out.returncode})")
        with open(result) as f:
            figures = json.load(f)
    return {k: figures[k] for k in KEYS}


def run_together(bins, count, journaled, journal_keys=None):
    """One round of --together: every binary's bridge on the same brokers and the same load, at the same
    time, those named in `journaled` in journal mode (with the [journal] keys `journal_keys` gives
    for that name); {name: figures}."""
    env = services_env()
    work = tempfile.mkdtemp(prefix="iotpipe-bench-together-")
    procs = []
    try:
        broker, brokers = start_brokers(work, env, procs)
        bridges = {}
        for i, (name, path) in enumerate(bins):
            j = ({"path": os.path.join(work, f"journal-{i}"), "max_size": "1GiB", **(journal_keys or {}).get(name, {})}
                 if name in journaled else None)
            bridges[name] = Iotpipe("bridge", work, f"bridge-{i}",
                                    bridge_sections(broker, brokers, client_id=f"iotpipe-bench-{i}", journal=j),
                                    procs, binary=path, measured=True).ready()
        # Warm-up creates the topics.
        simulate(broker, 2_000)
        for b in bridges.values():
            b.wait_metric("iotpipe_messages_delivered_total", 2_000, step=0.05)
        before = {name: (b.delivered(), cpu_seconds(b.pid)) for name, b in bridges.items()}
        t0 = time.time()
        simulate(broker, count)
        figures = {}
        waiting = dict(bridges)
        while waiting:
            for name, b in list(waiting.items()):
                if b.delivered() >= before[name][0] + count:
                    cpu = cpu_seconds(b.pid) - before[name][1]
                    figures[name] = {"msg_s": count / (time.time() - t0), "cpu_us": cpu / count * 1e6}
                    del waiting[name]
            if time.time() - t0 > 900:
                raise SystemExit(f"bench_binaries: {', '.join(waiting)} did not deliver {count:,} within 900 s")
            time.sleep(0.01)
        for name, b in bridges.items():
            figures[name]["rss_mib"] = peak_rss_kib(b.pid) / 1024
        return figures
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binaries", nargs="+", metavar="NAME=PATH")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=100_000, help="messages per throughput run")
    ap.add_argument("--journal", action="store_true", help="bridge in journal mode")
    ap.add_argument("--together", action="store_true",
                    help="run the binaries at the same time on the same load in each round, not in turns")
    ap.add_argument("--journal-for", action="append", default=[], metavar="NAME",
                    help="with --together, run this one in journal mode (repeatable; the same path may be given "
                         "under two names, to compare the modes)")
    ap.add_argument("--journal-set", action="append", default=[], metavar="NAME:KEY=VALUE",
                    help="with --journal-for NAME, a [journal] key for that one in TOML syntax (repeatable), "
                         "e.g. 'j0:commit_delay = \"0s\"', to compare settings side by side")
    add_json_option(ap)
    args = ap.parse_args()
    if args.journal_for and not args.together:
        ap.error("--journal-for needs --together")
    journal_keys = {}
    for spec in args.journal_set:
        name, sep, key = spec.partition(":")
        if not sep or name not in args.journal_for:
            ap.error(f"--journal-set {spec}: expected NAME:KEY=VALUE for a NAME given to --journal-for")
        try:
            journal_keys.setdefault(name, {}).update(tomllib.loads(key))
        except tomllib.TOMLDecodeError as e:
            ap.error(f"--journal-set {spec}: {e}")
    bins = []
    for spec in args.binaries:
        name, sep, path = spec.partition("=")
        if not sep or not os.access(path, os.X_OK):
            ap.error(f"{spec}: expected NAME=PATH to an executable")
        bins.append((name, path))
    unknown = set(args.journal_for) - {name for name, _ in bins}
    if unknown:
        ap.error(f"--journal-for {', '.join(sorted(unknown))}: no binary of that name")
    results = {name: [] for name, _ in bins}
    copies = tempfile.TemporaryDirectory(prefix="iotpipe-bench-bins-")
    runnable = []
    for i, (name, path) in enumerate(bins):
        copy = os.path.join(copies.name, f"{i}-{os.path.basename(path)}")
        shutil.copy2(path, copy)
        runnable.append((name, copy))
    for r in range(args.rounds):
        if args.together:
            together = run_together(runnable, args.count,
                                    {n for n, _ in bins} if args.journal else set(args.journal_for), journal_keys)
        for name, path in (runnable if r % 2 == 0 else runnable[::-1]):
            f = together[name] if args.together else run_once(path, args.count, args.journal)
            results[name].append(f)
            print(f"round {r + 1}/{args.rounds} {name}: {f['msg_s']:,.0f} msg/s, {f['cpu_us']:.2f} µs/msg, "
                  f"{f['rss_mib']:.1f} MiB", flush=True)
    med = {name: {k: statistics.median(x[k] for x in runs) for k in KEYS} for name, runs in results.items()}
    base = med[bins[0][0]]
    mode = ("journal mode" if args.journal else
            f"journal mode for {', '.join(args.journal_for)}" if args.journal_for else "direct mode")
    how = "all at once" if args.together else "in turns"
    print(f"\nbridge, {mode}, {args.count:,} QoS 1 messages, binaries {how}, median of {args.rounds} rounds "
          f"(ratio to {bins[0][0]}):\n")
    # Each round's CPU per message against the first binary's in the same round.
    paired = {name: [x["cpu_us"] / b["cpu_us"] for x, b in zip(results[name], results[bins[0][0]])]
              for name, _ in bins}
    print("| binary | msg/s | CPU µs/msg | CPU ratio, one round | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, _ in bins:
        m = med[name]
        print(f"| {name} | {m['msg_s']:,.0f} ({m['msg_s'] / base['msg_s']:.2f}×) | "
              f"{m['cpu_us']:.1f} ({m['cpu_us'] / base['cpu_us']:.2f}×) | "
              f"{min(paired[name]):.2f}–{max(paired[name]):.2f}× | "
              f"{m['rss_mib']:.1f} ({m['rss_mib'] / base['rss_mib']:.2f}×) |")
    write_json(args.json, {"mode": "journal" if args.journal else "direct", "journal_for": args.journal_for,
                           "together": args.together, "journal_set": journal_keys,
                           "count": args.count, "rounds": args.rounds,
                           "base": bins[0][0], "binaries": dict(bins), "median": med, "rounds_each": results,
                           "ratio": {name: {k: med[name][k] / base[k] for k in KEYS} for name, _ in bins},
                           "cpu_ratio_per_round": paired})


if __name__ == "__main__":
    main()
