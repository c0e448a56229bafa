#!/usr/bin/env python3
"""End-to-end latency: publish -> row committed in PostgreSQL, through
Mosquitto, `iotpipe bridge` (direct or journal mode), Tansu and `iotpipe sink`,
at a fixed publish rate, with a per-stage breakdown.

Every figure comes from the processes' own histograms, as the difference
between a scrape taken after a warm-up and one at the end (so the group join
and the first topic creation are left out):

  publish -> commit     iotpipe_sink_event_to_store_seconds (the simulator's
                        payload carries its publish time in "ts", routed as
                        the event time)
  receipt -> Kafka ack  the bridge's iotpipe_delivery_latency_seconds
  receipt -> commit     the sink's iotpipe_sink_end_to_end_seconds
  Kafka ack -> commit   estimated as (receipt -> commit) - (receipt -> Kafka
                        ack) per quantile (not exact: quantiles of a
                        difference are not differences of quantiles)
  publish -> receipt    estimated the same way from the first and third

Everything shares this machine's CPUs; the rate is far below saturation, so
the figures are waits (linger, batch windows, fetch waits, commits), not CPU.

--json FILE also writes the quantiles (scripts/bench.sh).

Usage: scripts/bench-e2e.sh [--rate 2000] [--seconds 30] [--journal]
       [--batch-wait 100ms] [--linger 5ms] [--sink-property k=v ...] [--json FILE]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BIN, Iotpipe, add_json_option, bridge_sections, histogram, metric, quantile,  # noqa: E402
                      services_env, sink_sections, start_brokers, stop_all, write_json)

QS = (0.5, 0.95, 0.99)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=2000, help="messages per second published (QoS 1)")
    ap.add_argument("--seconds", type=int, default=30, help="seconds measured, after a 5 s warm-up")
    ap.add_argument("--journal", action="store_true", help="bridge in journal mode")
    ap.add_argument("--batch-wait", help="sink.batch_max_wait (default: the sink's default)")
    ap.add_argument("--linger", help="kafka.linger of the bridge (default: the bridge's default)")
    ap.add_argument("--sink-property", action="append", default=[], metavar="K=V",
                    help="extra librdkafka consumer property for the sink (repeatable)")
    add_json_option(ap)
    args = ap.parse_args()
    env = services_env("postgres")
    pg = env["IOTPIPE_TEST_POSTGRES_URL"].rsplit("/", 1)[0]
    work = tempfile.mkdtemp(prefix="iotpipe-bench-e2e-", dir="/var/tmp")
    procs = []
    try:
        broker, brokers = start_brokers(work, env, procs)
        journal = {"path": f"{work}/journal"} if args.journal else None
        bridge = Iotpipe("bridge", work, "bridge", bridge_sections(
            broker, brokers, client_id="bench-e2e", kafka={"linger": args.linger}, journal=journal), procs)
        db = f"bench_e2e_{time.time_ns()}"
        props = dict(p.split("=", 1) for p in args.sink_property)
        sink = Iotpipe("sink", work, "sink", sink_sections(
            brokers, f"{pg}/{db}", f"bench-{db}", sink={"batch_max_wait": args.batch_wait}, properties=props), procs)
        bridge.ready()
        sink.ready()

        total = args.rate * (args.seconds + 40)
        procs.append(subprocess.Popen(
            [BIN, "simulate", "--broker", broker, "--count", str(total), "--rate", str(args.rate), "--qos", "1",
             "--timeout", "600s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        # Warm-up: the sink joins its group and creates its partitions while
        # the first records wait; the window opens once it has caught up
        # (stored within a second's worth of what the bridge delivered).
        warm = time.time()
        while True:
            time.sleep(1)
            delivered = bridge.delivered()
            stored = sink.metric("iotpipe_sink_rows_written_total")
            if delivered > 0 and stored >= delivered - args.rate and time.time() - warm >= 5:
                break
            if time.time() - warm > 60:
                sys.exit(f"bench_e2e: the sink did not catch up within 60 s ({stored:,.0f} of {delivered:,.0f})")
        before = {"b": bridge.metrics(), "s": sink.metrics()}
        time.sleep(args.seconds)
        after = {"b": bridge.metrics(), "s": sink.metrics()}

        def q(side, name):
            return [quantile(histogram(before[side], name), histogram(after[side], name), x) for x in QS]

        pub_commit = q("s", "iotpipe_sink_event_to_store_seconds")
        recv_ack = q("b", "iotpipe_delivery_latency_seconds")
        recv_commit = q("s", "iotpipe_sink_end_to_end_seconds")
        rows = lambda: [  # noqa: E731
            ("publish -> row committed in PostgreSQL", pub_commit),
            ("bridge: MQTT receipt -> Kafka ack" + (" (journal -> Kafka)" if args.journal else ""), recv_ack),
            ("MQTT receipt -> commit", recv_commit),
            ("Kafka ack -> commit (estimate)", [c - a for c, a in zip(recv_commit, recv_ack)]),
            ("publish -> MQTT receipt (estimate)", [p - c for p, c in zip(pub_commit, recv_commit)]),
        ]
        mode = "journal" if args.journal else "direct"
        print(f"\n{args.rate:,} msg/s QoS 1 for {args.seconds} s measured, bridge in {mode} mode, "
              f"sink batch_max_wait {args.batch_wait or 'default'}, linger {args.linger or 'default'}, "
              f"sink properties {args.sink_property or 'default'}\n")
        print("| stage | p50 | p95 | p99 |")
        print("|---|---|---|---|")
        for label, v in rows():
            print(f"| {label} | " + " | ".join(f"{x * 1000:.0f} ms" for x in v) + " |")

        def delta(side, name):
            return metric(after[side], name) - metric(before[side], name)

        batches = delta("s", "iotpipe_sink_batches_total")
        rows_written = delta("s", "iotpipe_sink_rows_written_total")
        busy = delta("s", "iotpipe_sink_batch_seconds_sum")
        print(f"\nsink in the window: {rows_written:,.0f} rows in {batches:,.0f} batches "
              f"({rows_written / max(batches, 1):,.0f} rows, {busy / max(batches, 1) * 1000:.0f} ms each on average); "
              f"bridge delivered {delta('b', 'iotpipe_messages_delivered_total'):,.0f}")
        write_json(args.json, {"mode": mode, "rate": args.rate, "seconds": args.seconds, "quantiles": list(QS),
                               "stages_s": {label: v for label, v in rows()}, "publish_to_commit_s": pub_commit,
                               "rows_in_window": rows_written})
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
