#!/usr/bin/env python3
"""Journal-mode soak: memory stays bounded however large the backlog.

The bridge runs in journal mode against a private Mosquitto and Tansu. Tansu
is stalled (SIGSTOP, so it forgets nothing), --count QoS 1 messages are
published (the bridge acks them after the journal fsync, so they pile up on
disk), the stall lasts --stall seconds in all (librdkafka's delivery timeout
passes inside it, so failed deliveries are retried), then Tansu resumes and
the backlog is replayed. RSS is sampled every 100 ms throughout.

Prints peak RSS during the stall and during the replay (VmHWM and the
largest VmRSS sample), the window gauges, and whether every message reached
Kafka (iotpipe_messages_delivered_total). Usage:
    scripts/bench-journal-soak.sh [--count 1000000] [--stall 120]
"""
import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (Iotpipe, bridge_sections, metric, metrics, services_env, simulate,  # noqa: E402
                      start_brokers, status_kib, stop_all)


class Sampler(threading.Thread):
    """Largest VmRSS seen (KiB) and the largest window gauges, per phase."""

    def __init__(self, pid, port):
        super().__init__(daemon=True)
        self.pid, self.port, self.phase, self.stop = pid, port, "start", False
        self.rss, self.window = {}, {}

    def run(self):
        while not self.stop:
            try:
                rss = status_kib(self.pid, "VmRSS")
                text = metrics(self.port)
            except Exception:
                break
            self.rss[self.phase] = max(self.rss.get(self.phase, 0), rss)
            w = metric(text, "iotpipe_journal_forward_records")
            self.window[self.phase] = max(self.window.get(self.phase, 0), w)
            time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--stall", type=int, default=120, help="seconds Kafka stays stopped, publishing included")
    ap.add_argument("--delivery-timeout", default="30s", help="kafka.delivery_timeout of the bridge")
    args = ap.parse_args()
    env = services_env()
    work = tempfile.mkdtemp(prefix="iotpipe-soak-")
    procs = []
    try:
        broker, brokers = start_brokers(work, env, procs)
        tansu = procs[-1]
        bridge = Iotpipe("bridge", work, "bridge", bridge_sections(
            broker, brokers, client_id="iotpipe-soak", kafka={"delivery_timeout": args.delivery_timeout},
            journal={"path": os.path.join(work, "journal"), "max_size": "4GiB"}), procs).ready()
        hport = bridge.port
        simulate(broker, 2_000)  # creates the topics
        bridge.wait_metric("iotpipe_messages_delivered_total", 2_000, step=0.05)
        sampler = Sampler(bridge.pid, hport)
        sampler.start()
        base = status_kib(bridge.pid, "VmRSS")

        sampler.phase = "stall"
        os.kill(tansu.pid, signal.SIGSTOP)
        t0 = time.time()
        simulate(broker, args.count)
        published = time.time() - t0
        while metric(metrics(hport), "iotpipe_journal_depth") < args.count:
            time.sleep(0.2)
        journaled = time.time() - t0
        time.sleep(max(0.0, args.stall - (time.time() - t0)))
        stall_hwm = status_kib(bridge.pid, "VmHWM")

        sampler.phase = "replay"
        os.kill(tansu.pid, signal.SIGCONT)
        t1 = time.time()
        target = 2_000 + args.count
        deadline = t1 + 1800
        while metric(metrics(hport), "iotpipe_messages_delivered_total") < target and time.time() < deadline:
            time.sleep(0.2)
        replay = time.time() - t1
        text = metrics(hport)
        delivered = metric(text, "iotpipe_messages_delivered_total") - 2_000
        sampler.stop = True
        sampler.join(2)
        hwm = status_kib(bridge.pid, "VmHWM")

        print("| measure | value |")
        print("|---|---|")
        print(f"| backlog | {args.count:,} QoS 1 messages (~200-byte JSON), published in {published:.1f} s, "
              f"all journaled after {journaled:.1f} s |")
        print(f"| Kafka stalled (SIGSTOP) | {args.stall} s, delivery timeout {args.delivery_timeout} |")
        print(f"| RSS before the stall | {base / 1024:.1f} MiB |")
        print(f"| peak RSS during the stall | {sampler.rss.get('stall', 0) / 1024:.1f} MiB (VmHWM {stall_hwm / 1024:.1f} MiB) |")
        print(f"| peak RSS during the replay | {sampler.rss.get('replay', 0) / 1024:.1f} MiB |")
        print(f"| peak RSS overall (VmHWM) | {hwm / 1024:.1f} MiB |")
        print(f"| records between journal and Kafka (max of iotpipe_journal_forward_records) | "
              f"stall {sampler.window.get('stall', 0):,.0f}, replay {sampler.window.get('replay', 0):,.0f} |")
        print(f"| replay | {delivered:,.0f} of {args.count:,} delivered in {replay:.1f} s "
              f"({delivered / max(replay, 1e-9):,.0f} msg/s) |")
        print(f"| Kafka retries | {metric(text, 'iotpipe_kafka_retries_total'):,.0f} |")
        if delivered < args.count:
            print(f"NOT ALL DELIVERED: {args.count - delivered:,.0f} missing; log in {work}/bridge.log", file=sys.stderr)
            sys.exit(1)
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
