#!/usr/bin/env python3
"""The bridge against a minimal forwarder (the bridge's performance baseline).

Runs `iotpipe bridge` (direct mode, PUBACK after the Kafka ack) and
examples/minimal_forwarder.rs (rumqttc + rdkafka, in-order manual acks, no
routing) under the same load, taking turns round by round (round 1: bridge
then forwarder, round 2: forwarder then bridge, ...) so that drift of the
machine falls on both alike. One Tansu for the whole run; a fresh Mosquitto
(same config) for every measurement, so that no session of an earlier run
queues messages. Each measurement: 2,000 warm-up messages (the bridge creates
the topic), then --count QoS 1 messages from `iotpipe simulate`; msg/s is
publish start -> last message acknowledged after its Kafka delivery, CPU is
user+sys of the process (librdkafka's threads included) over the measured
messages, peak RSS is VmHWM at the end.

Prints each measurement, the medians, the ratios bridge / forwarder and the
targets; --json FILE writes the medians and ratios for scripts/bench.sh.
Usage (normally through scripts/bench-forwarder.sh):
    python3 scripts/bench_forwarder.py [--rounds 3] [--count 200000] [--max-in-flight 1000] [--json FILE]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BIN, REPO, Iotpipe, add_json_option, bridge_sections, cpu_seconds,  # noqa: E402
                      measured_preexec, peak_rss_kib, services_env, simulate, start_mosquitto, start_tansu,
                      stop_all, write_json)

FORWARDER = os.environ.get("FORWARDER_BIN") or os.path.join(REPO, "target", "release", "examples", "minimal_forwarder")
WARMUP = 2_000


def measure(pid, broker, count, delivered):
    """Publish `count` messages; `delivered()` is the process's acked count."""
    start = delivered()
    cpu0 = cpu_seconds(pid)
    t0 = time.time()
    simulate(broker, count)
    end = time.time() + 600
    while delivered() < start + count:
        if time.time() > end:
            sys.exit("bench_forwarder: messages not delivered within 600 s")
        time.sleep(0.01)
    wall = time.time() - t0
    cpu = cpu_seconds(pid) - cpu0
    return {"msg_s": count / wall, "cpu_us": cpu / count * 1e6, "rss_mib": peak_rss_kib(pid) / 1024}


def run_bridge(work, broker, brokers, args, procs):
    bridge = Iotpipe("bridge", work, "bridge",
                     bridge_sections(broker, brokers, mqtt={"max_in_flight": args.max_in_flight},
                                     kafka={**({"producer": args.producer} if args.producer else {}),
                                            **dict(kv.split("=", 1) for kv in args.kafka_set)}), procs,
                     measured=True).ready()
    simulate(broker, WARMUP)
    bridge.wait_metric("iotpipe_messages_delivered_total", WARMUP)
    return measure(bridge.pid, broker, args.count, bridge.delivered)


def run_forwarder(work, broker, brokers, args, procs):
    fwd = subprocess.Popen([FORWARDER, "--mqtt", broker, "--kafka", brokers, "--max-in-flight",
                            str(args.max_in_flight), "--progress"],
                           stdout=subprocess.PIPE, stderr=open(os.path.join(work, "forwarder.log"), "w"), text=True,
                           preexec_fn=measured_preexec())
    procs.append(fwd)
    acked = [0]

    def read():
        for line in fwd.stdout:
            if line.startswith("acked "):
                acked[0] = int(line.split()[1])
    threading.Thread(target=read, daemon=True).start()

    def delivered():
        if fwd.poll() is not None:
            sys.exit(f"bench_forwarder: the forwarder exited ({fwd.returncode}); see its log")
        return acked[0]
    time.sleep(0.5)  # connected and subscribed before the warm-up is published
    simulate(broker, WARMUP)
    while delivered() < WARMUP:
        time.sleep(0.05)
    return measure(fwd.pid, broker, args.count, delivered)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--count", type=int, default=200_000, help="messages per measurement")
    ap.add_argument("--max-in-flight", type=int, default=1000, help="MQTT receive maximum of both")
    ap.add_argument("--producer", choices=["librdkafka", "native"], help="the bridge's kafka.producer (default: its default)")
    ap.add_argument("--kafka-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a [kafka] key of the bridge, e.g. linger=5ms (repeatable; the forwarder keeps its own)")
    add_json_option(ap)
    args = ap.parse_args()
    for path in (BIN, FORWARDER):
        if not os.access(path, os.X_OK):
            sys.exit(f"bench_forwarder: {path} missing (scripts/bench-forwarder.sh builds it)")
    env = services_env()
    work = tempfile.mkdtemp(prefix="iotpipe-bench-fwd-")
    tansu = []
    results = {"bridge": [], "forwarder": []}
    runners = {"bridge": run_bridge, "forwarder": run_forwarder}
    try:
        brokers = start_tansu(env, tansu)
        for r in range(args.rounds):
            order = ["bridge", "forwarder"] if r % 2 == 0 else ["forwarder", "bridge"]
            for name in order:
                run_dir = os.path.join(work, f"{r}-{name}")
                os.makedirs(run_dir)
                procs = []
                try:
                    broker = start_mosquitto(run_dir, env, procs)
                    f = runners[name](run_dir, broker, brokers, args, procs)
                finally:
                    stop_all(procs)
                results[name].append(f)
                print(f"round {r + 1}/{args.rounds} {name}: {f['msg_s']:,.0f} msg/s, {f['cpu_us']:.1f} µs/msg, "
                      f"{f['rss_mib']:.1f} MiB", flush=True)
    finally:
        stop_all(tansu)
        shutil.rmtree(work, ignore_errors=True)

    med = {n: {k: statistics.median(x[k] for x in runs) for k in runs[0]} for n, runs in results.items()}
    b, f = med["bridge"], med["forwarder"]
    print(f"\n{args.count:,} QoS 1 messages per measurement, {args.max_in_flight} in flight, "
          f"median of {args.rounds} rounds:\n")
    print("| process | msg/s (each round) | CPU µs/msg (each round) | peak RSS (each round) |")
    print("|---|---|---|---|")
    for name in ("forwarder", "bridge"):
        m, runs = med[name], results[name]
        each = {k: ", ".join(fmt.format(x[k]) for x in runs) for k, fmt in
                (("msg_s", "{:,.0f}"), ("cpu_us", "{:.1f}"), ("rss_mib", "{:.1f}"))}
        print(f"| {name} | {m['msg_s']:,.0f} ({each['msg_s']}) | {m['cpu_us']:.1f} ({each['cpu_us']}) | "
              f"{m['rss_mib']:.1f} MiB ({each['rss_mib']}) |")
    rate, cpu, rss = b["msg_s"] / f["msg_s"], b["cpu_us"] / f["cpu_us"], b["rss_mib"] / f["rss_mib"]
    print(f"| bridge / forwarder | {rate:.2f}× | {cpu:.2f}× | {rss:.2f}× |")
    write_json(args.json, {"count": args.count, "rounds": args.rounds, "max_in_flight": args.max_in_flight,
                           "bridge": b, "forwarder": f, "rounds_each": results,
                           "ratio": {"msg_s": rate, "cpu_us": cpu, "rss_mib": rss}})
    print("\ntargets for the bridge (medians):")
    print(f"- CPU per message <= 0.8x the forwarder's: {cpu:.2f}x, {'met' if cpu <= 0.8 else 'NOT met'}")
    print(f"- rate >= 1.0x the forwarder's: {rate:.2f}x, {'met' if rate >= 1.0 else 'NOT met'}")
    print(f"- peak RSS <= 16 MiB at {args.max_in_flight} in flight: {b['rss_mib']:.1f} MiB, "
          f"{'met' if b['rss_mib'] <= 16 else 'NOT met'}")


if __name__ == "__main__":
    main()
