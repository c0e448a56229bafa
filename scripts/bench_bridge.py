#!/usr/bin/env python3
"""Bridge benchmark: end-to-end QoS 1 throughput (PUBACK after Kafka ack)
against the broker baseline, bridge CPU per message, peak RSS, and
receive->Kafka-ack latency at a fixed rate. With --journal the bridge runs in
journal mode (MQTT -> fsync'd journal -> Kafka), to compare with direct mode.

Everything runs on this machine: Mosquitto, Tansu, the load generator and
the bridge share the CPU, so ratios and per-message costs matter more than
absolute rates. --json FILE also writes the figures (scripts/bench.sh,
scripts/bench_binaries.py). Usage: scripts/bench-bridge.sh [--count N] [--rate R] [--journal] [--json FILE]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BIN, Iotpipe, add_json_option, bridge_sections, cpu_seconds, histogram,  # noqa: E402
                      peak_rss_kib, quantile, services_env, simulate, start_brokers, stop_all, write_json)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--latency-count", type=int, default=50_000)
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--journal", action="store_true", help="run the bridge in journal mode (a [journal] section)")
    ap.add_argument("--journal-set", action="append", default=[], metavar="KEY=VALUE",
                    help="with --journal, a [journal] key in TOML syntax (repeatable), e.g. 'preallocate = false'")
    ap.add_argument("--perf", metavar="FILE", help="record a perf profile of the bridge during the throughput run")
    add_json_option(ap)
    args = ap.parse_args()
    env = services_env()
    work = tempfile.mkdtemp(prefix="iotpipe-bench-")
    procs = []
    try:
        broker, brokers = start_brokers(work, env, procs)

        # 1. Broker baseline: the same load into a do-nothing QoS 1 subscriber.
        sub = subprocess.Popen([BIN, "simulate", "--broker", broker, "--subscribe", "mtic/msg/client/realtime/#",
                                "--qos", "1", "--count", str(args.count), "--timeout", "600s"],
                               stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        t0 = time.time()
        simulate(broker, args.count)
        sub_out = sub.communicate(timeout=600)[0].strip()
        base_wall = time.time() - t0
        base_rate = args.count / base_wall

        # 2. The bridge, PUBACK after Kafka delivery.
        journal = ({"path": os.path.join(work, "journal"), "max_size": "1GiB",
                    **tomllib.loads("\n".join(args.journal_set))} if args.journal else None)
        bridge = Iotpipe("bridge", work, "bridge", bridge_sections(broker, brokers, journal=journal), procs,
                         measured=True).ready()
        # Warm-up creates the topics.
        simulate(broker, 2_000)
        bridge.wait_metric("iotpipe_messages_delivered_total", 2_000, step=0.05)
        delivered0 = bridge.delivered()
        perf = None
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "--call-graph", "dwarf,16384",
                                     "-p", str(bridge.pid),
                                     "-o", args.perf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        cpu0 = cpu_seconds(bridge.pid)
        t0 = time.time()
        simulate(broker, args.count)
        bridge.wait_metric("iotpipe_messages_delivered_total", delivered0 + args.count)
        e2e_wall = time.time() - t0
        if perf:
            perf.send_signal(2)
            perf.wait()
        cpu = cpu_seconds(bridge.pid) - cpu0
        e2e_rate = args.count / e2e_wall

        # 3. Latency at a fixed rate (not with --latency-count 0).
        p50 = p99 = None
        if args.latency_count > 0:
            before = histogram(bridge.metrics(), "iotpipe_delivery_latency_seconds")
            delivered1 = bridge.delivered()
            simulate(broker, args.latency_count, rate=args.rate)
            bridge.wait_metric("iotpipe_messages_delivered_total", delivered1 + args.latency_count, step=0.05)
            after = histogram(bridge.metrics(), "iotpipe_delivery_latency_seconds")
            p50, p99 = quantile(before, after, 0.50) * 1e3, quantile(before, after, 0.99) * 1e3
        rss = peak_rss_kib(bridge.pid) / 1024

        print("| measure | value |")
        print("|---|---|")
        print(f"| messages | {args.count:,} QoS 1, ~200-byte JSON, 3 tenants x 2 projects x 20 devices |")
        print(f"| broker baseline (do-nothing QoS 1 subscriber) | {base_rate:,.0f} msg/s ({sub_out}) |")
        mode = "journal mode, PUBACK after journal fsync" if args.journal else "PUBACK after Kafka ack"
        print(f"| bridge end-to-end, {mode} | {e2e_rate:,.0f} msg/s |")
        print(f"| bridge / baseline | {e2e_rate / base_rate:.2f} |")
        print(f"| bridge CPU (user+sys, librdkafka threads included) | {cpu:.2f} s = {cpu / args.count * 1e6:.1f} us/msg |")
        print(f"| bridge peak RSS (VmHWM) | {rss:.1f} MiB |")
        if args.journal:
            print(f"| journal fsyncs during the run | {bridge.metric('iotpipe_journal_fsyncs_total'):,.0f} |")
            handed, read = bridge.metric('iotpipe_journal_handed_over_total'), bridge.metric('iotpipe_journal_read_total')
            print(f"| journal records passed on from memory / read back from disk (whole run) | {handed:,.0f} / {read:,.0f} |")
        if p50 is None:
            print("| latency receive->Kafka ack | not measured (--latency-count 0) |")
        else:
            print(f"| latency receive->Kafka ack at {args.rate:,} msg/s | p50 {p50:.2f} ms, p99 {p99:.2f} ms |")
        write_json(args.json, {"binary": BIN, "mode": "journal" if args.journal else "direct", "count": args.count,
                               "baseline_msg_s": base_rate, "msg_s": e2e_rate, "cpu_us": cpu / args.count * 1e6,
                               "rss_mib": rss, "latency_rate": args.rate, "latency_p50_ms": p50,
                               "latency_p99_ms": p99})
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
