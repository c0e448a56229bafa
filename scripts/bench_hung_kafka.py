#!/usr/bin/env python3
"""CPU of the bridge and the sink while Kafka hangs: a broker that accepts
connections but answers nothing (the stand-in SIGSTOPped), for longer than a
request's timeout (30 s), with messages arriving meanwhile. A client that
waits well costs almost nothing then; one that polls in a loop costs a core.

Both native Kafka clients are measured: the bridge's producer (`kafka.producer
= "native"`) and the sink's consumer (`kafka.consumer = "native"`).

Usage: python3 scripts/bench_hung_kafka.py [--stall 45] [--count 2000]
IOTPIPE_BIN selects the binary (default: target/release/iotpipe).
Prints CPU seconds used during the stall per process, and checks that every
message was stored once after Kafka came back.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BIN, Iotpipe, bridge_sections, cpu_seconds, services_env, simulate, sink_sections,  # noqa: E402
                      start_brokers, stop_all)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stall", type=int, default=45, help="seconds Kafka hangs (default 45, past the 30 s timeout)")
    ap.add_argument("--count", type=int, default=2000, help="messages before and again during the stall")
    args = ap.parse_args()
    env = services_env("postgres")
    work = tempfile.mkdtemp(prefix="iotpipe-bench-hung-")
    procs = []
    try:
        broker, brokers = start_brokers(work, env, procs)
        tansu = procs[-1]
        db = f"bench_hung_{os.getpid()}"
        pg = env["IOTPIPE_TEST_POSTGRES_URL"].rsplit("/", 1)[0]
        bridge = Iotpipe("bridge", work, "bridge",
                         bridge_sections(broker, brokers, kafka={"producer": "native"}), procs).ready()
        sink = Iotpipe("sink", work, "sink",
                       sink_sections(brokers, f"{pg}/{db}", "bench-hung", kafka={"consumer": "native"}),
                       procs).ready()
        simulate(broker, args.count)
        bridge.wait_metric("iotpipe_messages_delivered_total", args.count, timeout=120)
        sink.wait_metric("iotpipe_sink_rows_written_total", args.count, timeout=120)

        before = {p.command: cpu_seconds(p.pid) for p in (bridge, sink)}
        tansu.send_signal(signal.SIGSTOP)
        started = time.time()
        publisher = subprocess.Popen([BIN, "simulate", "--broker", broker, "--count", str(args.count),
                                      "--rate", "200", "--qos", "1", "--timeout", "600s"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(max(0.0, args.stall - (time.time() - started)))
        during = {p.command: cpu_seconds(p.pid) - before[p.command] for p in (bridge, sink)}
        stalled = time.time() - started
        tansu.send_signal(signal.SIGCONT)
        publisher.wait(timeout=600)
        bridge.wait_metric("iotpipe_messages_delivered_total", 2 * args.count, timeout=300)
        sink.wait_metric("iotpipe_sink_rows_written_total", 2 * args.count, timeout=300)
        rows = int(sink.metric("iotpipe_sink_rows_written_total"))
        print(f"Kafka hung for {stalled:.0f} s with {args.count} messages arriving ({BIN}):")
        print("| process | CPU s during the stall | share of one core |")
        print("|---|---|---|")
        for name, cpu in during.items():
            print(f"| {name} | {cpu:.2f} | {100 * cpu / stalled:.1f}% |")
        print(f"after Kafka came back: {rows} rows for {2 * args.count} messages")
        if rows != 2 * args.count:
            sys.exit("bench-hung-kafka: not every message was stored once")
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
