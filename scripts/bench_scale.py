#!/usr/bin/env python3
"""Scaling benchmark: how the bridge, the sink and `iotpipe run` behave as the
number of (tenant, project) pairs grows, in both Kafka topologies.

For each topology and each number of pairs, on a fresh Mosquitto and a fresh
Tansu (nothing left over from the previous case):

1. bridge: COUNT QoS 1 messages spread evenly over the pairs are published as
   fast as the broker takes them (the broker holds the backlog the bridge has
   not acked yet); figures until Kafka acked the last one.
2. sink: a sink in a new consumer group and a new PostgreSQL database reads
   that whole backlog from Kafka; figures until the last row is committed.
3. run (once per number of pairs, it has no Kafka): `iotpipe run` into SQLite
   with a journal; figures until the last message is stored. Then the
   dashboard API's tenant list is timed (first page and the full walk).

Figures: messages (rows) per second, CPU (user+sys) per message, peak RSS
(VmHWM) of the process; and, for the topology, the partitions on the cluster.

Topologies: "shared" is the default `kafka.topic = "iot.telemetry"` (one topic
keyed by tenant/project/device, `kafka.partitions` partitions); "per-pair" is
`kafka.topic = "iot.{tenant_id}.{project_id}"` (a topic per pair).

Usage: scripts/bench-scale.sh [--pairs 10,100,1000,10000] [--topologies shared,per-pair]
       [--count N] [--components bridge,sink,run] [--kafka KEY=VALUE] [--mqtt KEY=VALUE]
       [--out DIR] [--short] [--kafka-stand-in tansu|null|memory]
--kafka-stand-in null runs the bridge against scripts/null_kafka.py, a broker
that acknowledges every produce request and keeps nothing: the bridge's own
rate and cost at any number of topics, without Tansu's per-partition work
(bridge only; its CPU is reported as the stand-in's). `memory` is the same
broker with --keep: it keeps the batches in memory and serves them to the
sink too.
--short is the CI form: 1,000 pairs, and exit 1 when a case is incomplete or
a peak is over its bound (--max-bridge-mib 24, --max-sink-mib 48,
--max-run-mib 48); the default (shared) topology and 30,000 messages unless
--topologies / --count are given. CI runs it twice: the shared topology with
`run`, and a topic per pair through the bridge and the sink (on their
default, native, Kafka clients; `--kafka 'consumer="librdkafka"'` measures
librdkafka's consumer, whose memory grows with the number of topics,
docs/topology.md).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BIN, FAST_GROUP, Iotpipe, cpu_seconds, metric, metrics, peak_rss_kib,  # noqa: E402
                      services_env, sink_sections, source_sections, start_brokers, start_mosquitto,
                      start_null_kafka, stop_all, wait_port, wait_ready)

TOPIC = {"shared": "iot.telemetry", "per-pair": "iot.{tenant_id}.{project_id}"}


def split_pairs(pairs):
    """(tenants, projects) with tenants * projects == pairs, 10 projects per tenant where it divides."""
    projects = 10 if pairs % 10 == 0 and pairs >= 100 else 1
    return pairs // projects, projects


def publish(bin_, broker, count, pairs, timeout):
    tenants, projects = split_pairs(pairs)
    subprocess.run([bin_, "simulate", "--broker", broker, "--count", str(count), "--qos", "1",
                    "--tenants", str(tenants), "--projects", str(projects), "--devices", "2",
                    "--payload-size", "200", "--timeout", f"{timeout}s"],
                   check=True, stdout=subprocess.DEVNULL)


def wait_count(port, name, target, timeout, proc):
    """Wait until the metric reaches target; False on timeout or when the process died."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            return False
        try:
            if metric(metrics(port), name) >= target:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


class Sampler:
    """Peak RSS of a process, read from VmHWM when it is still alive."""

    def __init__(self, proc):
        self.proc = proc

    def peak_mib(self):
        try:
            return peak_rss_kib(self.proc.pid) / 1024
        except OSError:
            return float("nan")


EXTRA_KAFKA = []
EXTRA_MQTT = []


def mqtt_extra():
    """The --mqtt lines as [mqtt] keys, for the bridge and `run`."""
    return tomllib.loads("\n".join(EXTRA_MQTT))


def kafka_cfg(brokers, topology, partitions):
    """[kafka] of bridge and sink: the topology's topic and partitions, the --kafka lines on top."""
    extra = tomllib.loads("\n".join(EXTRA_KAFKA))
    return {"brokers": brokers, "topic": TOPIC[topology], "partitions": partitions, **extra,
            "properties": FAST_GROUP}


def start(args, work, command, name, sections, procs):
    """`iotpipe <command>` on `sections` (args.bin); the process and its HTTP port."""
    proc = Iotpipe(command, work, name, sections, procs, binary=args.bin)
    return proc.proc, proc.port


def publish_and_measure(args, proc, port, broker, pairs, component, topology, partitions, kafka=None):
    """Publish the case's messages and wait until `proc` delivered (bridge: Kafka acknowledged; run: stored)
    them all; its figures."""
    done = "iotpipe_messages_stored_total" if component == "run" else "iotpipe_messages_delivered_total"
    wait_port(port)
    wait_ready(port, timeout=60)
    base = 0
    if args.warm:
        # One message per device first: every topic exists and is known, so
        # what is measured is the steady state, not topic creation.
        base = pairs * 2
        publish(args.bin, broker, base, pairs, args.timeout)
        if not wait_count(port, done, base, args.timeout, proc):
            sys.exit(f"bench-scale: warm-up of {base} messages not delivered within {args.timeout} s")
    cpu0 = cpu_seconds(proc.pid)
    kafka_cpu0 = cpu_seconds(kafka.pid) if kafka else 0
    t0 = time.time()
    publish(args.bin, broker, args.count, pairs, args.timeout)
    ok = wait_count(port, done, base + args.count, args.timeout, proc)
    wall = time.time() - t0
    # The Kafka stand-in's own CPU over the same messages: where the rate
    # is its limit, not the bridge's, this says so.
    kafka_cpu_us = (cpu_seconds(kafka.pid) - kafka_cpu0) / max(args.count, 1) * 1e6 if kafka else None
    alive = proc.poll() is None
    delivered = metric(metrics(port) if alive else "", done) - base
    return {"component": component, "topology": topology, "pairs": pairs, "count": args.count, "complete": ok,
            "delivered": delivered, "wall_s": wall, "rate": delivered / wall, "kafka_cpu_us": kafka_cpu_us,
            "cpu_us": (cpu_seconds(proc.pid) - cpu0) / max(args.count, 1) * 1e6 if alive else None,
            "partitions": partitions}


def run_bridge(args, work, env, topology, pairs, procs):
    if args.kafka_stand_in in ("null", "memory"):
        broker = start_mosquitto(work, env, procs)
        brokers = start_null_kafka(args.partitions[topology], procs, args.kafka_stand_in == "memory")
    else:
        broker, brokers = start_brokers(work, env, procs)
    tansu = procs[-1]
    sections = {**source_sections(broker, "bench-scale", mqtt_extra()),
                "kafka": kafka_cfg(brokers, topology, args.partitions[topology])}
    bridge, port = start(args, work, "bridge", f"bridge-{topology}-{pairs}", sections, procs)
    partitions = args.partitions[topology] * (pairs if topology == "per-pair" else 1)
    out = publish_and_measure(args, bridge, port, broker, pairs, "bridge", topology, partitions, kafka=tansu)
    out["rss_mib"] = Sampler(bridge).peak_mib()
    bridge.terminate()
    bridge.wait(timeout=60)
    return out, brokers, tansu


def run_sink(args, work, env, topology, pairs, brokers, procs, kafka):
    pg = env["IOTPIPE_TEST_POSTGRES_URL"].rsplit("/", 1)[0]
    db = f"bench_scale_{topology.replace('-', '_')}_{pairs}_{time.time_ns()}"
    sections = sink_sections(brokers, f"{pg}/{db}", db, kafka=kafka_cfg(brokers, topology, args.partitions[topology]))
    name = f"sink-{topology}-{pairs}"
    partitions = args.partitions[topology] * (pairs if topology == "per-pair" else 1)
    sink, port = start(args, work, "sink", name, sections, procs)
    wait_port(port)
    # Timed from the first stored row: joining the group is not throughput.
    wait_count(port, "iotpipe_sink_rows_written_total", 1, args.timeout, sink)
    if sink.poll() is not None:
        # A sink that ended is a result (incomplete), with the reason from its log.
        with open(os.path.join(work, f"{name}.log"), errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
        print(f"bench-scale: sink {topology} pairs={pairs:,} ended with status {sink.poll()}:\n{tail}", file=sys.stderr)
        return {"component": "sink", "topology": topology, "pairs": pairs, "count": args.count, "complete": False,
                "delivered": 0, "wall_s": 0, "rate": None, "cpu_us": None, "rss_mib": Sampler(sink).peak_mib(),
                "partitions": partitions}
    cpu0 = cpu_seconds(sink.pid)
    kafka_cpu0 = cpu_seconds(kafka.pid)
    t0 = time.time()
    ok = wait_count(port, "iotpipe_sink_rows_written_total", args.count, args.timeout, sink)
    wall = time.time() - t0
    # The stand-in's CPU while it answers the sink's fetches.
    kafka_cpu_us = (cpu_seconds(kafka.pid) - kafka_cpu0) / max(args.count, 1) * 1e6
    alive = sink.poll() is None
    rows = metric(metrics(port) if alive else "", "iotpipe_sink_rows_written_total")
    out = {"component": "sink", "topology": topology, "pairs": pairs, "count": args.count, "complete": ok,
           "delivered": rows, "wall_s": wall, "rate": rows / wall, "kafka_cpu_us": kafka_cpu_us,
           "cpu_us": (cpu_seconds(sink.pid) - cpu0) / max(args.count, 1) * 1e6 if alive else None,
           "rss_mib": Sampler(sink).peak_mib(),
           "partitions": partitions}
    sink.terminate()
    sink.wait(timeout=60)
    return out


def api_walk(port):
    """Seconds for the first page of /api/tenants, and for walking every page
    (following the `Link: <...>; rel="next"` headers); tenants seen."""
    t0 = time.time()
    first = None
    seen = 0
    target = "/api/tenants?limit=500"
    while target:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{target}", timeout=30) as r:
            items = json.loads(r.read())
            link = r.headers.get("Link") or ""
        if first is None:
            first = time.time() - t0
        seen += len(items)
        target = link[1:link.index(">")] if link.startswith("<") and 'rel="next"' in link else None
    return first, time.time() - t0, seen


def run_single(args, work, env, pairs, procs):
    broker = start_mosquitto(work, env, procs)
    sections = {**source_sections(broker, "bench-scale-run", mqtt_extra()),
                "store": {"url": f"sqlite://{work}/run-{pairs}.db"}, "journal": {"path": f"{work}/journal-{pairs}"}}
    run, port = start(args, work, "run", f"run-{pairs}", sections, procs)
    out = publish_and_measure(args, run, port, broker, pairs, "run", "-", 0)
    if out["complete"]:
        try:
            out["api_first_page_s"], out["api_walk_s"], out["api_tenants"] = api_walk(port)
        except (OSError, ValueError) as e:
            out["api_error"] = str(e)
    out["rss_mib"] = Sampler(run).peak_mib()
    run.terminate()
    run.wait(timeout=60)
    return out


def fmt(v, spec):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def table(results):
    lines = ["| component | topology | pairs | partitions | msg/s | CPU µs/msg | peak RSS MiB | complete |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['component']} | {r['topology']} | {r['pairs']:,} | {r['partitions']:,} | "
                     f"{fmt(r['rate'], ',.0f')} | {fmt(r['cpu_us'], '.1f')} | {fmt(r['rss_mib'], '.1f')} | "
                     f"{'yes' if r['complete'] else 'no (%d of %d)' % (r['delivered'], r['count'])} |")
    api = [r for r in results if "api_walk_s" in r]
    if api:
        lines.append("")
        lines.append("| run: pairs | tenants listed | first page of /api/tenants | every page |")
        lines.append("|---|---|---|---|")
        for r in api:
            lines.append(f"| {r['pairs']:,} | {r['api_tenants']:,} | {r['api_first_page_s'] * 1e3:.1f} ms | "
                         f"{r['api_walk_s'] * 1e3:.1f} ms |")
    return "\n".join(lines)


def svg_plot(results, path):
    """Peak RSS against pairs (log scale), one line per component and topology."""
    series = {}
    for r in results:
        if r["rss_mib"] is None or math.isnan(r["rss_mib"]):
            continue
        series.setdefault(f"{r['component']} {r['topology']}".replace(" -", ""), []).append(
            (r["pairs"], r["rss_mib"]))
    if not series:
        return
    w, h, ml, mr, mt, mb = 720, 420, 60, 170, 30, 50
    xs = [p for s in series.values() for p, _ in s]
    ymax = max(64, max(v for s in series.values() for _, v in s)) * 1.1
    lx0, lx1 = math.log10(min(xs)), math.log10(max(xs)) if max(xs) > min(xs) else math.log10(min(xs)) + 1

    def x(p):
        return ml + (math.log10(p) - lx0) / (lx1 - lx0) * (w - ml - mr)

    def y(v):
        return h - mb - v / ymax * (h - mt - mb)

    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           'font-size="12">', f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{ml}" y="18" font-size="14">Peak RSS (MiB) by tenant/project pairs</text>']
    for v in range(0, int(ymax) + 1, 16):
        out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{ml - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
    for limit, label in ((64, "pod limit 64 MiB"), (48, "sink bound"), (24, "bridge bound")):
        out.append(f'<line x1="{ml}" x2="{w - mr}" y1="{y(limit):.1f}" y2="{y(limit):.1f}" stroke="#999" '
                   'stroke-dasharray="4 3"/>')
        out.append(f'<text x="{w - mr - 4}" y="{y(limit) - 3:.1f}" text-anchor="end" fill="#666">{label}</text>')
    for p in sorted(set(xs)):
        out.append(f'<text x="{x(p):.1f}" y="{h - mb + 16}" text-anchor="middle">{p:,}</text>')
    out.append(f'<text x="{(ml + w - mr) / 2}" y="{h - 12}" text-anchor="middle">pairs (log scale)</text>')
    for i, (name, pts) in enumerate(sorted(series.items())):
        c = colors[i % len(colors)]
        pts.sort()
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                   + " ".join(f"{x(p):.1f},{y(v):.1f}" for p, v in pts) + '"/>')
        for p, v in pts:
            out.append(f'<circle cx="{x(p):.1f}" cy="{y(v):.1f}" r="3" fill="{c}"/>')
        out.append(f'<rect x="{w - mr + 12}" y="{mt + 18 * i}" width="12" height="12" fill="{c}"/>')
        out.append(f'<text x="{w - mr + 30}" y="{mt + 18 * i + 10}">{name}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="10,100,1000,10000", help="comma-separated numbers of tenant/project pairs")
    ap.add_argument("--topologies", default=None, help="shared,per-pair (the default; --short: shared)")
    ap.add_argument("--components", default="bridge,sink,run")
    ap.add_argument("--count", type=int, default=None, help="messages per case (default 100,000; --short: 30,000)")
    ap.add_argument("--shared-partitions", type=int, default=12, help="partitions of the shared topic")
    ap.add_argument("--per-pair-partitions", type=int, default=1, help="partitions of each per-pair topic")
    ap.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE",
                    help='extra [kafka] line for bridge and sink, e.g. compression="none" (repeatable)')
    ap.add_argument("--mqtt", action="append", default=[], metavar="KEY=VALUE",
                    help="extra [mqtt] line for the bridge and run, e.g. max_in_flight=4000 (repeatable)")
    ap.add_argument("--warm", action="store_true",
                    help="first one message per device (bridge, run): topics exist before the measured messages")
    ap.add_argument("--timeout", type=int, default=900, help="seconds a case may take before it is cut short")
    ap.add_argument("--out", help="directory for results.json, the table and the SVG plot")
    ap.add_argument("--short", action="store_true",
                    help="the CI form: 1,000 pairs, bounds checked; the shared topology and 30,000 messages "
                         "unless --topologies / --count say otherwise")
    ap.add_argument("--kafka-stand-in", choices=["tansu", "null", "memory"], default="tansu",
                    help="the broker behind the bridge and the sink: Tansu (default), or scripts/null_kafka.py, "
                         "which keeps nothing (null: bridge only) or keeps the batches in memory (memory)")
    ap.add_argument("--max-bridge-mib", type=float, default=24)
    ap.add_argument("--max-sink-mib", type=float, default=48)
    ap.add_argument("--max-run-mib", type=float, default=48)
    args = ap.parse_args()
    if args.short:
        args.pairs = "1000"
        args.count = args.count or 30_000
        args.topologies = args.topologies or "shared"
    args.count = args.count or 100_000
    args.topologies = args.topologies or "shared,per-pair"
    args.bin = BIN
    EXTRA_KAFKA.extend(args.kafka)
    EXTRA_MQTT.extend(args.mqtt)
    args.partitions = {"shared": args.shared_partitions, "per-pair": args.per_pair_partitions}
    pairs_list = [int(p) for p in args.pairs.split(",")]
    topologies = [t for t in args.topologies.split(",") if t]
    components = set(args.components.split(","))
    if args.kafka_stand_in == "null" and components != {"bridge"}:
        sys.exit("--kafka-stand-in null measures the bridge only: add --components bridge")
    for t in topologies:
        if t not in TOPIC:
            sys.exit(f"unknown topology {t!r}: shared or per-pair")
    env = services_env("postgres")
    work = tempfile.mkdtemp(prefix="iotpipe-bench-scale-")
    results = []

    def record(r):
        results.append(r)
        print(f"bench-scale: {r['component']:6} {r['topology']:8} pairs={r['pairs']:>6,} "
              f"rate={fmt(r['rate'], ',.0f')}/s cpu={fmt(r['cpu_us'], '.1f')}us "
              f"rss={fmt(r['rss_mib'], '.1f')}MiB complete={r['complete']}"
              + (f" kafka-cpu={fmt(r['kafka_cpu_us'], '.1f')}us" if r.get("kafka_cpu_us") is not None else ""),
              flush=True)

    try:
        for pairs in pairs_list:
            for topology in topologies:
                procs = []
                try:
                    if components & {"bridge", "sink"}:
                        b, brokers, tansu = run_bridge(args, work, env, topology, pairs, procs)
                        if "bridge" in components:
                            record(b)
                        if "sink" in components and b["complete"]:
                            record(run_sink(args, work, env, topology, pairs, brokers, procs, tansu))
                finally:
                    stop_all(procs)
            if "run" in components:
                procs = []
                try:
                    record(run_single(args, work, env, pairs, procs))
                finally:
                    stop_all(procs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(table(results) + "\n")
        svg_plot(results, os.path.join(args.out, "scale-rss.svg"))
    bounds = {"bridge": args.max_bridge_mib, "sink": args.max_sink_mib, "run": args.max_run_mib}
    failed = [r for r in results if not r["complete"] or not (r["rss_mib"] <= bounds[r["component"]])]
    if args.short and failed:
        for r in failed:
            print(f"bench-scale: FAIL {r['component']} {r['topology']} at {r['pairs']} pairs: "
                  f"peak {fmt(r['rss_mib'], '.1f')} MiB (bound {bounds[r['component']]} MiB), "
                  f"complete={r['complete']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
