#!/usr/bin/env python3
"""Compare iotpipe binaries on the bridge benchmark, side by side in one run.

Runs scripts/bench_bridge.py once per binary per round, the binaries taking
turns (A B C A B C ...) so that drift of the machine (other work, thermal)
falls on all of them alike, and prints per binary the median over the rounds
of: end-to-end msg/s, CPU µs per message, peak RSS; and each median's ratio
to the first binary's. Used to choose the static build's allocator
(BENCHMARKS.md, "Allocator") and to check the shipped binary against the
glibc build.

Usage (normally through scripts/bench-allocator.sh, which builds the binaries):
    python3 scripts/bench_binaries.py NAME=PATH [NAME=PATH ...] [--rounds 3]
        [--count 100000] [--journal]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

PATTERNS = {
    "msg_s": re.compile(r"^\| bridge end-to-end, PUBACK after Kafka ack \| ([\d,]+) msg/s"),
    "cpu_us": re.compile(r"^\| bridge CPU .*= ([\d.]+) us/msg"),
    "rss_mib": re.compile(r"^\| bridge peak RSS \(VmHWM\) \| ([\d.]+) MiB"),
}


def run_once(path, count, journal):
    cmd = [sys.executable, os.path.join(HERE, "bench_bridge.py"), "--count", str(count), "--latency-count", "2000"]
    if journal:
        cmd.append("--journal")
    out = subprocess.run(cmd, env={**os.environ, "IOTPIPE_BIN": path}, capture_output=True, text=True, timeout=900)
    found = {}
    for line in out.stdout.splitlines():
        for key, pat in PATTERNS.items():
            m = pat.match(line)
            if m:
                found[key] = float(m.group(1).replace(",", ""))
    if len(found) != len(PATTERNS):
        sys.stderr.write(out.stdout[-2000:] + out.stderr[-2000:])
        raise SystemExit(f"bench_binaries: no figures from bench_bridge.py for {path} (exit {out.returncode})")
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binaries", nargs="+", metavar="NAME=PATH")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=100_000, help="messages per throughput run")
    ap.add_argument("--journal", action="store_true", help="bridge in journal mode")
    args = ap.parse_args()
    bins = []
    for spec in args.binaries:
        name, sep, path = spec.partition("=")
        if not sep or not os.access(path, os.X_OK):
            ap.error(f"{spec}: expected NAME=PATH to an executable")
        bins.append((name, path))
    results = {name: [] for name, _ in bins}
    for r in range(args.rounds):
        for name, path in bins:
            f = run_once(path, args.count, args.journal)
            results[name].append(f)
            print(f"round {r + 1}/{args.rounds} {name}: {f['msg_s']:,.0f} msg/s, {f['cpu_us']} µs/msg, "
                  f"{f['rss_mib']} MiB", flush=True)
    med = {name: {k: statistics.median(x[k] for x in runs) for k in PATTERNS} for name, runs in results.items()}
    base = med[bins[0][0]]
    mode = "journal mode" if args.journal else "direct mode"
    print(f"\nbridge, {mode}, {args.count:,} QoS 1 messages, median of {args.rounds} rounds (ratio to {bins[0][0]}):\n")
    print("| binary | msg/s | CPU µs/msg | peak RSS MiB |")
    print("|---|---|---|---|")
    for name, _ in bins:
        m = med[name]
        print(f"| {name} | {m['msg_s']:,.0f} ({m['msg_s'] / base['msg_s']:.2f}×) | "
              f"{m['cpu_us']:.1f} ({m['cpu_us'] / base['cpu_us']:.2f}×) | "
              f"{m['rss_mib']:.1f} ({m['rss_mib'] / base['rss_mib']:.2f}×) |")


if __name__ == "__main__":
    main()
