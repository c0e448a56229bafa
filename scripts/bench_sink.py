#!/usr/bin/env python3
"""Sink benchmark: rows/s from Kafka into PostgreSQL with realistic ~200-byte
JSON payloads, the sink's peak RSS, and (same run) the store's naive
one-INSERT-per-row baseline. Kafka is filled first through the bridge, so the
records carry the bridge's headers. With --timescale the same records are
also stored into the TimescaleDB cluster, for the two side by side.
Usage: scripts/bench-sink.sh [--count N] [--timescale]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BIN, REPO, cpu_seconds, free_port, metric, metrics, peak_rss_kib, services_env,  # noqa: E402
                      simulate, start_mosquitto, start_tansu, stop_all, wait_metric, wait_port, wait_ready)


def run_sink(args, work, procs, brokers, server):
    """One sink, a fresh database and consumer group, until every record is stored; its figures."""
    db = f"bench_sink_{time.time_ns()}"
    sport = free_port()
    scfg = os.path.join(work, f"{db}.toml")
    props = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}
    props.update(p.split("=", 1) for p in args.property)
    props_toml = ", ".join(f'"{k}" = "{v}"' for k, v in props.items())
    batch = f"batch_max_rows = {args.batch_rows}\n" if args.batch_rows else ""
    with open(scfg, "w") as f:
        f.write(f'[kafka]\nbrokers = "{brokers}"\n[sink]\ngroup_id = "bench-{db}"\n{batch}'
                f'properties = {{ {props_toml} }}\n'
                f'[store]\nurl = "{server}/{db}"\n[http]\nlisten = "127.0.0.1:{sport}"\n[log]\nlevel = "warn"\n')
    sink = subprocess.Popen([BIN, "sink", "--config", scfg])
    procs.append(sink)
    wait_port(sport)
    wait_ready(sport)
    cpu0 = cpu_seconds(sink.pid)
    t0 = time.time()
    # The clock starts when the sink is ready; group join is part of the cost.
    wait_metric(sport, "iotpipe_sink_rows_written_total", 1, step=0.005)
    t_first = time.time()
    wait_metric(sport, "iotpipe_sink_rows_written_total", args.count, step=0.05)
    wall = time.time() - t_first
    m = metrics(sport)
    out = {"rate": args.count / wall, "wall": wall, "join": t_first - t0, "cpu": cpu_seconds(sink.pid) - cpu0,
           "rss": peak_rss_kib(sink.pid) / 1024, "batches": metric(m, "iotpipe_sink_batches_total"),
           "busy": metric(m, "iotpipe_sink_batch_seconds_sum")}
    sink.terminate()
    sink.wait(timeout=30)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--naive-rows", type=int, default=20_000)
    ap.add_argument("--property", action="append", default=[], metavar="KEY=VALUE",
                    help="extra librdkafka consumer property for the sink (repeatable)")
    ap.add_argument("--payload-size", type=int, default=200, help="bytes per payload (padded JSON)")
    ap.add_argument("--batch-rows", type=int, help="sink.batch_max_rows (default: the sink's default)")
    ap.add_argument("--timescale", action="store_true",
                    help="also run the sink into the TimescaleDB cluster (same records, a group of its own)")
    args = ap.parse_args()
    env = services_env("postgres", *(["timescaledb"] if args.timescale else []))
    pg = env["IOTPIPE_TEST_POSTGRES_URL"].rsplit("/", 1)[0]
    work = tempfile.mkdtemp(prefix="iotpipe-bench-sink-")
    procs = []
    try:
        broker = start_mosquitto(work, env, procs)
        brokers = start_tansu(env, procs)
        hport = free_port()
        cfg = os.path.join(work, "bridge.toml")
        with open(cfg, "w") as f:
            f.write(f'[mqtt]\nurl = "{broker}"\nclient_id = "bench-fill"\n[route]\ndevice_id = "/deviceId"\n'
                    f'event_time = "/ts"\n[kafka]\nbrokers = "{brokers}"\n[http]\nlisten = "127.0.0.1:{hport}"\n'
                    '[log]\nlevel = "warn"\n')
        bridge = subprocess.Popen([BIN, "bridge", "--config", cfg])
        wait_port(hport)
        wait_ready(hport)
        simulate(broker, args.count, payload_size=args.payload_size)
        wait_metric(hport, "iotpipe_messages_delivered_total", args.count)
        bridge.terminate()
        bridge.wait(timeout=30)

        stores = [("PostgreSQL", pg)]
        if args.timescale:
            if "IOTPIPE_TEST_TIMESCALE_URL" not in env:
                sys.exit("--timescale: no TimescaleDB server (scripts/services.sh up timescaledb; docs/storage.md)")
            stores.append(("TimescaleDB", env["IOTPIPE_TEST_TIMESCALE_URL"].rsplit("/", 1)[0]))
        runs = [(label, run_sink(args, work, procs, brokers, server)) for label, server in stores]
        naive = subprocess.run([os.path.join(REPO, "target", "release", "examples", "bench_store"), "--copy-rows",
                                "20000", "--naive-rows", str(args.naive_rows), "--influx-rows", "1000"],
                               capture_output=True, text=True)
        print("| measure | value |")
        print("|---|---|")
        print(f"| records | {args.count:,} from Kafka (bridge headers, ~{args.payload_size}-byte JSON) |")
        for label, r in runs:
            print(f"| sink Kafka -> {label} | {r['rate']:,.0f} rows/s ({r['wall']:.2f} s from first row; "
                  f"{r['join']:.2f} s to join the group and write the first batch) |")
            print(f"| sink CPU ({label}) | {r['cpu']:.2f} s = {r['cpu'] / args.count * 1e6:.1f} us/row "
                  "(the database's own CPU not included) |")
            print(f"| sink peak RSS (VmHWM, {label}) | {r['rss']:.1f} MiB |")
            print(f"| batches ({label}) | {r['batches']:.0f}, {r['busy'] / max(r['batches'], 1) * 1e3:.1f} ms each on "
                  f"average; the store was busy {r['busy'] / r['wall'] * 100:.0f}% of the time |")
        print("\nStore benchmark in the same run (naive baseline):\n")
        print(naive.stdout.strip() or naive.stderr.strip())
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
