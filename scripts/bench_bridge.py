#!/usr/bin/env python3
"""Bridge benchmark: end-to-end QoS 1 throughput (PUBACK after Kafka ack)
against the broker baseline, bridge CPU per message, peak RSS, and
receive->Kafka-ack latency at a fixed rate.

Everything runs on this machine: Mosquitto, Tansu, the load generator and
the bridge share the CPU, so ratios and per-message costs matter more than
absolute rates. Usage: scripts/bench-bridge.sh [--count N] [--rate R]
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(REPO, "target", "release", "iotpipe")
CLK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {port} did not open")


def services_env():
    subprocess.run(["bash", os.path.join(REPO, "scripts", "services.sh"), "install", "mosquitto", "tansu"], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(["bash", os.path.join(REPO, "scripts", "services.sh"), "up", "tansu"], check=True,
                   stdout=subprocess.DEVNULL)
    env = {}
    with open(os.path.join(os.environ.get("IOTPIPE_SERVICES_DIR", os.path.join(REPO, ".services")), "env")) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                env[k] = v
    return env


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text, name):
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def histogram(text, name):
    return [(float("inf") if le == "+Inf" else float(le), float(v))
            for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)]


def quantile(before, after, q):
    """Quantile from the difference of two cumulative histograms, interpolated within a bucket."""
    diff = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = diff[-1][1]
    if total == 0:
        return float("nan")
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in diff:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le


def simulate(broker, count, rate=0, extra=()):
    out = subprocess.run([BIN, "simulate", "--broker", broker, "--count", str(count), "--rate", str(rate),
                          "--qos", "1", "--payload-size", "200", "--timeout", "600s", *extra],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--latency-count", type=int, default=50_000)
    ap.add_argument("--rate", type=int, default=5_000)
    ap.add_argument("--perf", metavar="FILE", help="record a perf profile of the bridge during the throughput run")
    args = ap.parse_args()
    env = services_env()
    work = tempfile.mkdtemp(prefix="iotpipe-bench-")
    procs = []
    try:
        mport = free_port()
        conf = os.path.join(work, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write(f"listener {mport} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    "max_queued_messages 1000000\nmax_inflight_messages 1000\nmessage_size_limit 0\n")
            if os.geteuid() == 0:
                f.write("user root\n")
        procs.append(subprocess.Popen([env.get("IOTPIPE_TEST_MOSQUITTO_BIN", "mosquitto"), "-c", conf],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(mport)
        kport = free_port()
        targs = env["IOTPIPE_TEST_TANSU_ARGS"].replace("{PORT}", str(kport)).split()
        procs.append(subprocess.Popen([env["IOTPIPE_TEST_TANSU_BIN"], *targs],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(kport)
        broker = f"mqtt://127.0.0.1:{mport}"

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
brokers = "127.0.0.1:{kport}"
[http]
listen = "127.0.0.1:{hport}"
[log]
level = "warn"
""")
        bridge = subprocess.Popen([BIN, "bridge", "--config", cfg], stderr=open(os.path.join(work, "bridge.log"), "w"))
        procs.append(bridge)
        wait_port(hport)
        end = time.time() + 30
        while time.time() < end:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{hport}/readyz", timeout=2)
                break
            except Exception:
                time.sleep(0.2)
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
        print(f"| bridge end-to-end, PUBACK after Kafka ack | {e2e_rate:,.0f} msg/s |")
        print(f"| bridge / baseline | {e2e_rate / base_rate:.2f} |")
        print(f"| bridge CPU (user+sys, librdkafka threads included) | {cpu:.2f} s = {cpu / args.count * 1e6:.1f} us/msg |")
        print(f"| bridge peak RSS (VmHWM) | {rss:.1f} MiB |")
        print(f"| latency receive->Kafka ack at {args.rate:,} msg/s | p50 {p50:.2f} ms, p99 {p99:.2f} ms |")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
