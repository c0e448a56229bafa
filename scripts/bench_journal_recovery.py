#!/usr/bin/env python3
"""Journal recovery: how long a full journal takes to open after a crash.

A bridge in journal mode (journal.max_size = --size, 64 MiB segments) runs
against a private Mosquitto and Tansu. Tansu is stalled (SIGSTOP), so
nothing is delivered; ~200-byte QoS 1 messages are published until the
journal holds --size less 4 MiB (the bridge acks them after the fsync);
then the bridge is killed with SIGKILL. That journal is kept,
and for each of --runs runs a copy of it is opened by a new bridge: the
time from the process start until /readyz stops saying "recovering journal"
is the recovery time the startup probe has to allow for. The bridge's own
figure (the "Journal recovered." log line: took_ms, bytes) is printed
next to it.

--cache cold drops the page cache before each run (root only: what a
restart on another node, or after a node reboot, sees); warm keeps it (a
restart in place, right after the crash); both (the default as root) does
one of each per run. Usage:
    scripts/bench-journal-recovery.sh [--size 1GiB] [--runs 3] [--cache both|cold|warm]
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (Iotpipe, bridge_sections, metric, metrics, services_env, simulate,  # noqa: E402
                      start_brokers, stop_all, wait_port, wait_ready)

MIB = 1024 * 1024


def size_bytes(text):
    m = re.fullmatch(r"(\d+)\s*(KiB|MiB|GiB)", text)
    if not m:
        sys.exit(f"--size {text!r}: give it as e.g. 1GiB or 512MiB")
    return int(m.group(1)) * {"KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB}[m.group(2)]


def start_bridge(work, name, broker, brokers, journal, size):
    """The bridge on `journal` (info-level JSON log in <work>/<name>.log); the process and its HTTP port."""
    sections = bridge_sections(broker, brokers, client_id="iotpipe-recovery-bench",
                               journal={"path": journal, "max_size": size, "segment_size": "64MiB"})
    bridge = Iotpipe("bridge", work, name, {**sections, "log": {"level": "info", "format": "json"}}, [])
    return bridge.proc, bridge.port


def readyz(port):
    """(status, body) of /readyz; (0, "") while nothing listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def fill(work, broker, brokers, tansu, size_text, target):
    """Journal `target` bytes with Kafka stalled, then SIGKILL the bridge; the journal's directory."""
    journal = os.path.join(work, "filled")
    bridge, hport = start_bridge(work, "fill", broker, brokers, journal, size_text)
    try:
        wait_port(hport)
        wait_ready(hport)
        os.kill(tansu.pid, signal.SIGSTOP)  # nothing is delivered: the journal fills
        t0 = time.time()
        published = 0
        chunk = 200_000
        while True:
            simulate(broker, chunk, extra=("--start-seq", str(published)))
            published += chunk
            text = metrics(hport)
            depth = metric(text, "iotpipe_journal_depth")
            # Every message journaled (acked after its fsync), or the journal full.
            while depth < published and metric(text, "iotpipe_journal_full") == 0:
                time.sleep(0.1)
                text = metrics(hport)
                depth = metric(text, "iotpipe_journal_depth")
            if depth < published:
                print(f"  journal full at {depth:,.0f} messages", file=sys.stderr)
                published = int(depth)
                break
            used = metric(text, "iotpipe_journal_bytes")
            per_record = used / max(depth, 1)
            left = int((target - used) / per_record)
            print(f"  journaled {published:,} messages, {used / MIB:,.1f} MiB ({per_record:.0f} bytes each)",
                  file=sys.stderr)
            if left <= 0:
                break
            chunk = min(left, 1_000_000)
        took = time.time() - t0
        os.kill(bridge.pid, signal.SIGKILL)
        bridge.wait()
        return journal, published, used, took
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()


def recovered_line(log_path):
    with open(log_path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("fields", {}).get("message") == "Journal recovered.":
                return rec["fields"]
    return None


def measure(work, pristine, broker, brokers, size_text, n, cache):
    journal = os.path.join(work, f"run{n}-{cache}")
    shutil.rmtree(journal, ignore_errors=True)
    shutil.copytree(pristine, journal)
    subprocess.run(["sync"], check=True)
    if cache == "cold":
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    log_path = os.path.join(work, f"run{n}-{cache}.log")
    t0 = time.monotonic()
    bridge, hport = start_bridge(work, f"run{n}-{cache}", broker, brokers, journal, size_text)
    first_answer = None
    recovering_seen = 0
    try:
        while True:
            status, body = readyz(hport)
            now = time.monotonic() - t0
            if status and first_answer is None:
                first_answer = now
            if status and "recovering journal" in body:
                recovering_seen += 1
            elif status:
                done = now
                break
            if bridge.poll() is not None:
                sys.exit(f"the bridge exited ({bridge.returncode}) during recovery; log in {log_path}")
            if now > 1800:
                sys.exit(f"still recovering after 30 min; log in {log_path}")
            time.sleep(0.01)
    finally:
        bridge.kill()
        bridge.wait()
    line = recovered_line(log_path) or {}
    shutil.rmtree(journal, ignore_errors=True)
    return {
        "cache": cache,
        "first_answer_s": first_answer,
        "recovering_seen": recovering_seen,
        "ready_s": done,
        "took_s": line.get("took_ms", float("nan")) / 1000,
        "bytes": line.get("bytes", 0),
        "undelivered": line.get("undelivered", 0),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1GiB", help="journal.max_size, filled to within one segment")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache", choices=("both", "cold", "warm"), default="both" if os.geteuid() == 0 else "warm")
    args = ap.parse_args()
    if args.cache != "warm" and os.geteuid() != 0:
        sys.exit("--cache cold needs root (it writes /proc/sys/vm/drop_caches)")
    target = size_bytes(args.size) - 4 * MIB
    env = services_env()
    work = tempfile.mkdtemp(prefix="iotpipe-recovery-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    procs = []
    try:
        broker, brokers = start_brokers(work, env, procs, max_queued=10_000_000)
        tansu = procs[-1]
        print(f"filling a {args.size} journal ...", file=sys.stderr)
        pristine, published, used, took = fill(work, broker, brokers, tansu, args.size, target)
        print(f"journal: {published:,} messages of ~200 bytes, {used / MIB:,.0f} MiB on disk, "
              f"filled in {took:.0f} s, bridge killed with SIGKILL")
        caches = ("cold", "warm") if args.cache == "both" else (args.cache,)
        results = []
        for n in range(1, args.runs + 1):
            for cache in caches:
                r = measure(work, pristine, broker, brokers, args.size, n, cache)
                results.append(r)
                mib = r["bytes"] / MIB
                print(f"run {n} ({cache} cache): HTTP answered after {r['first_answer_s']:.2f} s; "
                      f"/readyz said \"recovering journal\" {r['recovering_seen']} times, until {r['ready_s']:.2f} s "
                      f"after the start: {mib / r['ready_s']:.0f} MiB/s; bridge's own figure: {mib:,.0f} MiB, "
                      f"{r['undelivered']:,} records in {r['took_s']:.2f} s = {mib / r['took_s']:.0f} MiB/s",
                      flush=True)
        print()
        print("| cache | runs: start → /readyz without \"recovering journal\" | MiB/s (slowest) |")
        print("|---|---|---|")
        for cache in caches:
            rs = [r for r in results if r["cache"] == cache]
            slowest = max(r["ready_s"] for r in rs)
            mib = rs[0]["bytes"] / MIB
            runs = " / ".join(f"{r['ready_s']:.2f} s" for r in rs)
            print(f"| {cache} | {runs} | {mib / slowest:.0f} |")
    finally:
        for p in procs:
            try:
                os.kill(p.pid, signal.SIGCONT)
            except OSError:
                pass
        stop_all(procs)
        if os.environ.get("KEEP"):
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
