#!/usr/bin/env python3
"""Bridge benchmark: end-to-end QoS 1 throughput (PUBACK after Kafka ack)
against the broker baseline, bridge CPU per message, peak RSS, and
receive->Kafka-ack latency at a fixed rate. With --journal the bridge runs in
journal mode (MQTT -> fsync'd journal -> Kafka), to compare with direct mode.

Everything runs on this machine: Mosquitto, Tansu, the load generator and
the bridge share the CPU, so ratios and per-message costs matter more than
absolute rates. Usage: scripts/bench-bridge.sh [--count N] [--rate R] [--journal]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BIN, cpu_seconds, histogram, metric, metrics, peak_rss_kib, quantile, services_env,  # noqa: E402
                      simulate, start_mosquitto, start_tansu, stop_all, wait_port, wait_ready, free_port)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--latency-count", type=int, default=50_000)
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--journal", action="store_true", help="run the bridge in journal mode (a [journal] section)")
    ap.add_argument("--perf", metavar="FILE", help="record a perf profile of the bridge during the throughput run")
    args = ap.parse_args()
    env = services_env()
    work = tempfile.mkdtemp(prefix="iotpipe-bench-")
    procs = []
    try:
        broker = start_mosquitto(work, env, procs)
        brokers = start_tansu(env, procs)

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
        hport = free_port()
        cfg = os.path.join(work, "bridge.toml")
        with open(cfg, "w") as f:
            f.write(f"""[mqtt]
url = "{broker}"
client_id = "iotpipe-bench"
[route]
device_id = "/deviceId"
event_time = "/ts"
[kafka]
brokers = "{brokers}"
[http]
listen = "127.0.0.1:{hport}"
[log]
level = "warn"
""")
            if args.journal:
                f.write(f'[journal]\npath = "{os.path.join(work, "journal")}"\nmax_size = "1GiB"\n')
        bridge = subprocess.Popen([BIN, "bridge", "--config", cfg], stderr=open(os.path.join(work, "bridge.log"), "w"))
        procs.append(bridge)
        wait_port(hport)
        wait_ready(hport)
        # Warm-up creates the topics.
        simulate(broker, 2_000)
        while metric(metrics(hport), "iotpipe_messages_delivered_total") < 2_000:
            time.sleep(0.05)
        delivered0 = metric(metrics(hport), "iotpipe_messages_delivered_total")
        perf = None
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-p", str(bridge.pid),
                                     "-o", args.perf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        cpu0 = cpu_seconds(bridge.pid)
        t0 = time.time()
        simulate(broker, args.count)
        while metric(metrics(hport), "iotpipe_messages_delivered_total") < delivered0 + args.count:
            time.sleep(0.01)
        e2e_wall = time.time() - t0
        if perf:
            perf.send_signal(2)
            perf.wait()
        cpu = cpu_seconds(bridge.pid) - cpu0
        e2e_rate = args.count / e2e_wall

        # 3. Latency at a fixed rate.
        before = histogram(metrics(hport), "iotpipe_delivery_latency_seconds")
        delivered1 = metric(metrics(hport), "iotpipe_messages_delivered_total")
        simulate(broker, args.latency_count, rate=args.rate)
        while metric(metrics(hport), "iotpipe_messages_delivered_total") < delivered1 + args.latency_count:
            time.sleep(0.05)
        after = histogram(metrics(hport), "iotpipe_delivery_latency_seconds")
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
            print(f"| journal fsyncs during the run | {metric(metrics(hport), 'iotpipe_journal_fsyncs_total'):,.0f} |")
        print(f"| latency receive->Kafka ack at {args.rate:,} msg/s | p50 {p50:.2f} ms, p99 {p99:.2f} ms |")
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
