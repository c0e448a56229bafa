#!/usr/bin/env python3
"""Fairness under a flood: the quiet tenants' publish -> stored latency while
one tenant floods, in both Kafka topologies.

Per topology, on a fresh Mosquitto, Tansu (or with --kafka-stand-in memory
scripts/null_kafka.py, which keeps fetch sessions as Kafka does and Tansu
does not) and PostgreSQL database, with one bridge and one sink:

1. no flood: QUIET_PAIRS pairs publish QUIET_RATE msg/s in all for DURATION.
2. flood x20: the same quiet load, and one more tenant ("flood") publishing
   20 times a quiet pair's share at the same time.
3. saturating flood: the same quiet load, and the flood tenant publishing as
   fast as the broker takes it (far beyond the pipeline's rate).

Latency is per message: the row's commit time in PostgreSQL (a column the
benchmark adds to its own database, `stored_at DEFAULT clock_timestamp()`)
minus the publish time the simulator writes into the payload (`ts`, the
event time). Every published message of every tenant must be stored: the
flood is delayed, never dropped.

Usage: scripts/bench-fairness.sh [--topologies shared,per-pair] [--quiet-pairs N]
       [--quiet-rate R] [--duration S] [--flood-factor F] [--no-saturate]
       [--kafka-stand-in tansu|memory]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BIN, FAST_GROUP, Iotpipe, bridge_sections, services_env, sink_sections,  # noqa: E402
                      start_brokers, start_mosquitto, start_null_kafka, stop_all)

TOPIC = {"shared": "iot.telemetry", "per-pair": "iot.{tenant_id}.{project_id}"}
PARTITIONS = {"shared": 12, "per-pair": 1}


def psql(url, sql):
    out = subprocess.run(["psql", "-X", "-A", "-t", "-q", url, "-c", sql], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def publish(broker, count, rate, run_id, tenants, projects, devices, prefix="mtic/msg/client/realtime"):
    return subprocess.Popen([BIN, "simulate", "--broker", broker, "--count", str(count), "--rate", str(rate),
                             "--qos", "1", "--tenants", str(tenants), "--projects", str(projects),
                             "--devices", str(devices), "--payload-size", "200", "--run-id", run_id,
                             "--topic-prefix", prefix, "--timeout", "900s"], stdout=subprocess.DEVNULL)


def latency(url, run_id):
    row = psql(url, "SELECT count(*), "
                    "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - event_time)), "
                    "percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - event_time)), "
                    "max(extract(epoch FROM stored_at - event_time)) "
                    f"FROM telemetry WHERE payload->>'run' = '{run_id}'")
    n, p50, p99, mx = row.split("|")
    return int(n), float(p50 or "nan") * 1e3, float(p99 or "nan") * 1e3, float(mx or "nan") * 1e3


def wait_rows(url, run_id, n, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if int(psql(url, f"SELECT count(*) FROM telemetry WHERE payload->>'run' = '{run_id}'")) >= n:
            return True
        time.sleep(0.5)
    return False


def phase(args, broker, url, name, flood_rate):
    """One phase; returns (quiet figures, flood figures or None)."""
    tenants = max(1, args.quiet_pairs // 10)
    projects = args.quiet_pairs // tenants
    quiet_n = args.quiet_rate * args.duration
    quiet = publish(broker, quiet_n, args.quiet_rate, f"{name}-quiet", tenants, projects, 2)
    flood = None
    flood_n = 0
    if flood_rate is not None:
        # As many messages as the rate gives over the duration; the saturating
        # flood sends the quiet load's total three times over, as fast as it can.
        flood_n = flood_rate * args.duration if flood_rate else 3 * quiet_n
        flood = publish(broker, flood_n, flood_rate, f"{name}-flood", 1, 1, 20,
                        prefix="mtic/msg/client/realtime/flood")
    quiet.wait()
    if flood:
        flood.wait()
    ok = wait_rows(url, f"{name}-quiet", quiet_n, args.timeout)
    q = latency(url, f"{name}-quiet") + (ok, quiet_n)
    f = None
    if flood:
        fok = wait_rows(url, f"{name}-flood", flood_n, args.timeout)
        f = latency(url, f"{name}-flood") + (fok, flood_n)
    return q, f


def run_topology(args, env, topology):
    pg = env["IOTPIPE_TEST_POSTGRES_URL"].rsplit("/", 1)[0]
    work = tempfile.mkdtemp(prefix="iotpipe-bench-fair-")
    procs = []
    db = f"bench_fair_{topology.replace('-', '_')}_{time.time_ns()}"
    try:
        if args.kafka_stand_in == "memory":
            broker = start_mosquitto(work, env, procs)
            brokers = start_null_kafka(PARTITIONS[topology], procs, keep=True)
        else:
            broker, brokers = start_brokers(work, env, procs)
        kafka = {"topic": TOPIC[topology], "partitions": PARTITIONS[topology], "properties": FAST_GROUP}
        bridge = Iotpipe("bridge", work, "bridge",
                         bridge_sections(broker, brokers, client_id="bench-fair", kafka=kafka), procs)
        sink = Iotpipe("sink", work, "sink", sink_sections(brokers, f"{pg}/{db}", db, kafka=kafka), procs)
        bridge.ready(timeout=60)
        sink.ready(timeout=60)
        url = f"{pg}/{db}"
        psql(url, "ALTER TABLE telemetry ADD COLUMN stored_at timestamptz DEFAULT clock_timestamp()")
        # Warm-up: every quiet pair's topic exists and the sink has its partitions.
        tenants = max(1, args.quiet_pairs // 10)
        publish(broker, args.quiet_pairs * 4, 0, "warmup", tenants, args.quiet_pairs // tenants, 2).wait()
        publish(broker, 40, 0, "warmup-flood", 1, 1, 20, prefix="mtic/msg/client/realtime/flood").wait()
        wait_rows(url, "warmup", args.quiet_pairs * 4, args.timeout)
        wait_rows(url, "warmup-flood", 40, args.timeout)
        time.sleep(12)  # the sink's regex subscription picks up every topic (metadata refresh 10 s)
        share = args.quiet_rate / args.quiet_pairs
        out = {"none": phase(args, broker, url, "base", None)}
        out["x%d" % args.flood_factor] = phase(args, broker, url, "flood", int(share * args.flood_factor))
        if args.saturate:
            out["saturating"] = phase(args, broker, url, "sat", 0)
        return out
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topologies", default="shared,per-pair")
    ap.add_argument("--quiet-pairs", type=int, default=100)
    ap.add_argument("--quiet-rate", type=int, default=1_000, help="msg/s of all quiet pairs together")
    ap.add_argument("--duration", type=int, default=30, help="seconds of load per phase")
    ap.add_argument("--flood-factor", type=int, default=20, help="the flood tenant's rate in quiet-pair shares")
    ap.add_argument("--no-saturate", dest="saturate", action="store_false")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--kafka-stand-in", choices=["tansu", "memory"], default="tansu",
                    help="the broker: Tansu, or scripts/null_kafka.py keeping the records and fetch sessions")
    args = ap.parse_args()
    env = services_env("postgres")
    rows = []
    for topology in args.topologies.split(","):
        res = run_topology(args, env, topology)
        for flood_name, (q, f) in res.items():
            rows.append((topology, flood_name, q, f))
            print(f"bench-fairness: {topology} flood={flood_name} quiet p50={q[1]:.0f}ms p99={q[2]:.0f}ms "
                  f"stored={q[0]}/{q[5]}" + (f" flood p99={f[2]:.0f}ms stored={f[0]}/{f[5]}" if f else ""),
                  flush=True)
    print()
    print("| topology | flood | quiet p50 | quiet p99 | quiet p99 / no-flood p99 | quiet stored | "
          "flood p50 | flood p99 | flood stored |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {t: q[2] for t, name, q, _ in rows if name == "none"}
    for t, name, q, f in rows:
        fl = (f"{f[1]:,.0f} ms | {f[2]:,.0f} ms | {f[0]:,} of {f[5]:,}" if f else "– | – | –")
        print(f"| {t} | {name} | {q[1]:,.0f} ms | {q[2]:,.0f} ms | {q[2] / base[t]:.2f} | {q[0]:,} of {q[5]:,} | {fl} |")
    lost = [r for r in rows if r[2][0] < r[2][5] or (r[3] and r[3][0] < r[3][5])]
    if lost:
        sys.exit("bench-fairness: messages missing (see 'stored' columns)")


if __name__ == "__main__":
    main()
