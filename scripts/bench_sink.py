#!/usr/bin/env python3
"""Sink benchmark: rows/s from Kafka into PostgreSQL with realistic ~200-byte
JSON payloads, the sink's peak RSS, and, in the same run, two baselines:

- two raw COPY streams: the rows the sink stored, dumped in PostgreSQL's
  binary COPY format and split in two halves, written by two concurrent
  `psql` sessions into the same table of a fresh copy of the sink's database
  (same schema, partitions and indexes, emptied). Each session writes
  batches of the sink's size (--batch-rows, default 2,000), one transaction
  each, the way the sink's store did until 2026-12-04: binary COPY into a
  temporary staging table, then INSERT .. SELECT .. ON CONFLICT DO NOTHING
  into `telemetry` (deduplication included). Timed from the start of both sessions to the
  end of the later one;
- the store's naive one-INSERT-per-row baseline (examples/bench_store.rs).

Kafka is filled first through the bridge, so the records carry the bridge's
headers. With --timescale the same records are also stored into the
TimescaleDB cluster, for the two side by side. --json FILE also writes the
figures (scripts/bench.sh).
Usage: scripts/bench-sink.sh [--count N] [--timescale] [--no-naive] [--json FILE]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (REPO, Iotpipe, add_json_option, bridge_sections, cpu_seconds, metric,  # noqa: E402
                      peak_rss_kib, services_env, simulate, sink_sections, start_brokers, stop_all, write_json)

COLUMNS = "time, received_at, event_time, tenant_id, project_id, device_id, mqtt_topic, id, payload, raw"
STREAMS = 2
SINK_BATCH_ROWS = 2_000  # sink.batch_max_rows when not set (src/pipeline_config.rs)


def psql(url, *args, **kw):
    """`psql` on `url`, stopping at the first error; its stdout."""
    out = subprocess.run(["psql", url, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *args], capture_output=True,
                         text=True, **kw)
    if out.returncode != 0:
        sys.exit(f"bench_sink: psql failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip()


def run_sink(args, work, procs, brokers, server):
    """One sink, a fresh database and consumer group, until every record is stored; its figures."""
    db = f"bench_sink_{time.time_ns()}"
    sink_opts = {"batch_max_rows": args.batch_rows}
    props = dict(p.split("=", 1) for p in args.property)
    sink = Iotpipe("sink", work, db, sink_sections(brokers, f"{server}/{db}", f"bench-{db}", sink=sink_opts,
                                                    properties=props), procs).ready()
    cpu0 = cpu_seconds(sink.pid)
    t0 = time.time()
    # The clock starts when the sink is ready; group join is part of the cost.
    sink.wait_metric("iotpipe_sink_rows_written_total", 1, step=0.005)
    t_first = time.time()
    first = sink.metric("iotpipe_sink_rows_written_total")
    sink.wait_metric("iotpipe_sink_rows_written_total", args.count, step=0.05)
    wall = time.time() - t_first
    m = sink.metrics()
    # The rate counts the rows written after the first batch, over the time from that batch on.
    out = {"db": db, "rate": (args.count - first) / wall if args.count > first else float("nan"), "wall": wall,
           "join": t_first - t0, "cpu": cpu_seconds(sink.pid) - cpu0, "rss": peak_rss_kib(sink.pid) / 1024,
           "batches": metric(m, "iotpipe_sink_batches_total"), "busy": metric(m, "iotpipe_sink_batch_seconds_sum")}
    sink.stop()
    return out


def raw_copy(work, server, db, count, batch_rows):
    """The sink's rows written again by STREAMS concurrent raw COPY sessions, in batches of
    `batch_rows`, one transaction each; their figures."""
    src = f"{server}/{db}"
    stored = int(psql(src, "-c", "SELECT count(*) FROM telemetry"))
    batches = -(-stored // (STREAMS * batch_rows))  # per stream
    # Row n goes to stream n % STREAMS, batch n // (STREAMS * batch_rows); dumped in one session.
    dump = ["CREATE TEMP TABLE numbered AS SELECT *, row_number() OVER () - 1 AS n FROM telemetry;\n",
            "CREATE INDEX ON numbered (n);\n"]
    scripts = []
    for k in range(STREAMS):
        load = []
        for j in range(batches):
            path = os.path.join(work, f"rows-{k}-{j}.bin")
            lo, hi = j * STREAMS * batch_rows, (j + 1) * STREAMS * batch_rows
            dump.append(f"\\copy (SELECT {COLUMNS} FROM numbered WHERE n >= {lo} AND n < {hi} "
                        f"AND n % {STREAMS} = {k}) TO '{path}' (FORMAT binary)\n")
            load.append("BEGIN;\n"
                        "CREATE TEMP TABLE staging (LIKE telemetry INCLUDING DEFAULTS) ON COMMIT DROP;\n"
                        f"\\copy staging ({COLUMNS}) FROM '{path}' (FORMAT binary)\n"
                        f"INSERT INTO telemetry ({COLUMNS}) SELECT {COLUMNS} FROM staging ON CONFLICT DO NOTHING;\n"
                        "COMMIT;\n")
        scripts.append(os.path.join(work, f"copy-{k}.sql"))
        with open(scripts[-1], "w") as f:
            f.writelines(load)
    dump_script = os.path.join(work, "dump.sql")
    with open(dump_script, "w") as f:
        f.writelines(dump)
    psql(src, "-f", dump_script)
    raw_db = f"{db}_raw"
    # Same schema, day partitions and indexes as the sink's table, emptied.
    psql(f"{server}/postgres", "-c", f"CREATE DATABASE {raw_db} TEMPLATE {db}")
    dst = f"{server}/{raw_db}"
    psql(dst, "-c", "TRUNCATE telemetry")
    psql(dst, "-c", "VACUUM ANALYZE telemetry")
    t0 = time.time()
    running = [subprocess.Popen(["psql", dst, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", s],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for s in scripts]
    for p in running:
        err = p.communicate()[1]
        if p.returncode != 0:
            sys.exit(f"bench_sink: raw COPY session failed ({p.returncode}): {err.strip()}")
    wall = time.time() - t0
    written = int(psql(dst, "-c", "SELECT count(*) FROM telemetry"))
    if written != stored or stored < count:
        sys.exit(f"bench_sink: raw COPY wrote {written:,} rows, the sink stored {stored:,} of {count:,}")
    psql(f"{server}/postgres", "-c", f"DROP DATABASE {raw_db}")
    return {"db": raw_db, "rows": written, "wall": wall, "rate": written / wall, "batch_rows": batch_rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--naive-rows", type=int, default=20_000)
    ap.add_argument("--no-naive", action="store_true", help="leave out the naive one-INSERT-per-row baseline")
    ap.add_argument("--property", action="append", default=[], metavar="KEY=VALUE",
                    help="extra librdkafka consumer property for the sink (repeatable)")
    ap.add_argument("--payload-size", type=int, default=200, help="bytes per payload (padded JSON)")
    ap.add_argument("--batch-rows", type=int, help="sink.batch_max_rows (default: the sink's default)")
    ap.add_argument("--timescale", action="store_true",
                    help="also run the sink into the TimescaleDB cluster (same records, a group of its own)")
    add_json_option(ap)
    args = ap.parse_args()
    if shutil.which("psql") is None:
        sys.exit("bench_sink: psql not found (the raw COPY baseline needs PostgreSQL's client)")
    env = services_env("postgres", *(["timescaledb"] if args.timescale else []))
    pg = env["IOTPIPE_TEST_POSTGRES_URL"].rsplit("/", 1)[0]
    work = tempfile.mkdtemp(prefix="iotpipe-bench-sink-", dir="/var/tmp")
    procs = []
    try:
        broker, brokers = start_brokers(work, env, procs)
        bridge = Iotpipe("bridge", work, "bridge", bridge_sections(broker, brokers, client_id="bench-fill"),
                         procs).ready()
        simulate(broker, args.count, payload_size=args.payload_size)
        bridge.wait_metric("iotpipe_messages_delivered_total", args.count)
        bridge.stop()

        stores = [("PostgreSQL", pg)]
        if args.timescale:
            if "IOTPIPE_TEST_TIMESCALE_URL" not in env:
                sys.exit("--timescale: no TimescaleDB server (scripts/services.sh up timescaledb; docs/storage.md)")
            stores.append(("TimescaleDB", env["IOTPIPE_TEST_TIMESCALE_URL"].rsplit("/", 1)[0]))
        runs = [(label, run_sink(args, work, procs, brokers, server)) for label, server in stores]
        raw = raw_copy(work, pg, runs[0][1]["db"], args.count, args.batch_rows or SINK_BATCH_ROWS)
        naive = None
        if not args.no_naive:
            naive = subprocess.run([os.path.join(REPO, "target", "release", "examples", "bench_store"),
                                    "--copy-rows", "20000", "--naive-rows", str(args.naive_rows),
                                    "--influx-rows", "1000"], capture_output=True, text=True)
        print("| measure | value |")
        print("|---|---|")
        print(f"| records | {args.count:,} from Kafka (bridge headers, ~{args.payload_size}-byte JSON) |")
        for label, r in runs:
            print(f"| sink Kafka -> {label} | {r['rate']:,.0f} rows/s ({r['wall']:.2f} s from the first batch; "
                  f"{r['join']:.2f} s to join the group and write the first batch) |")
            print(f"| sink CPU ({label}) | {r['cpu']:.2f} s = {r['cpu'] / args.count * 1e6:.1f} us/row "
                  "(the database's own CPU not included) |")
            print(f"| sink peak RSS (VmHWM, {label}) | {r['rss']:.1f} MiB |")
            print(f"| batches ({label}) | {r['batches']:.0f}, {r['busy'] / max(r['batches'], 1) * 1e3:.1f} ms each on "
                  f"average; the store was busy {r['busy'] / r['wall'] * 100:.0f}% of the time |")
        ratio = runs[0][1]["rate"] / raw["rate"]
        print(f"| {STREAMS} raw COPY streams -> PostgreSQL (staging + ON CONFLICT DO NOTHING, "
              f"{raw['batch_rows']:,} rows per transaction) | {raw['rate']:,.0f} rows/s "
              f"({raw['rows']:,} rows in {raw['wall']:.2f} s) |")
        print(f"| sink / raw COPY streams | {ratio:.2f}× |")
        if naive is not None:
            print("\nStore benchmark in the same run (naive baseline):\n")
            print(naive.stdout.strip() or naive.stderr.strip())
        write_json(args.json, {"count": args.count, "sink": {label: r for label, r in runs}, "raw_copy": raw,
                               "streams": STREAMS, "ratio_sink_to_raw_copy": ratio})
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
