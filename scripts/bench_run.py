#!/usr/bin/env python3
"""Single-node benchmark: `iotpipe run` end to end (MQTT -> journal -> SQLite)
in msg/s, its CPU and peak RSS, and `iotpipe demo` start-to-first-data time.
Usage: scripts/bench-run.sh [--count N]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BIN, Iotpipe, cpu_seconds, free_port, metric, metrics, peak_rss_kib,  # noqa: E402
                      services_env, simulate, source_sections, start_mosquitto, stop_all, wait_metric)


def demo_first_data(work):
    http, mqtt = free_port(), free_port()
    t0 = time.time()
    demo = subprocess.Popen([BIN, "demo", "--listen", f"127.0.0.1:{http}", "--mqtt-listen", f"127.0.0.1:{mqtt}",
                             "--data-dir", os.path.join(work, "demo")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while time.time() - t0 < 30:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/api/tenants", timeout=1) as r:
                    if json.loads(r.read()):
                        return time.time() - t0
            except Exception:
                pass
            time.sleep(0.02)
        return float("nan")
    finally:
        demo.terminate()
        demo.wait(timeout=15)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100_000)
    args = ap.parse_args()
    env = services_env()
    work = tempfile.mkdtemp(prefix="iotpipe-bench-run-", dir="/var/tmp")
    procs = []
    try:
        broker = start_mosquitto(work, env, procs)
        run = Iotpipe("run", work, "run", {**source_sections(broker, "bench-run"),
                                           "store": {"url": f"sqlite://{work}/iotpipe.db"},
                                           "journal": {"path": f"{work}/journal"}}, procs).ready()
        hport = run.port
        simulate(broker, 2_000)
        wait_metric(hport, "iotpipe_messages_stored_total", 2_000)
        base = metric(metrics(hport), "iotpipe_messages_stored_total")
        cpu0 = cpu_seconds(run.pid)
        t0 = time.time()
        simulate(broker, args.count)
        wait_metric(hport, "iotpipe_messages_stored_total", base + args.count, step=0.02)
        wall = time.time() - t0
        cpu = cpu_seconds(run.pid) - cpu0
        rss = peak_rss_kib(run.pid) / 1024
        stop_all(procs)
        procs.clear()
        first = demo_first_data(work)
        print("| measure | value |")
        print("|---|---|")
        print(f"| iotpipe run, MQTT -> journal (fsync) -> SQLite | {args.count / wall:,.0f} msg/s over {args.count:,} "
              "QoS 1 messages |")
        print(f"| run CPU | {cpu:.2f} s = {cpu / args.count * 1e6:.1f} us/msg |")
        print(f"| run peak RSS (VmHWM) | {rss:.1f} MiB |")
        print(f"| iotpipe demo: start to first data through /api/tenants | {first:.2f} s (binary already built) |")
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
