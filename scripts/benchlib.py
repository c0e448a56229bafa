"""Helpers shared by the benchmark scripts: ports, private services,
process CPU and memory, Prometheus metrics."""
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# IOTPIPE_BIN runs another build (e.g. an older commit's) under the same load.
BIN = os.environ.get("IOTPIPE_BIN") or os.path.join(REPO, "target", "release", "iotpipe")
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


def services_env(*up):
    subprocess.run(["bash", os.path.join(REPO, "scripts", "services.sh"), "install", "mosquitto", "tansu", *up],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["bash", os.path.join(REPO, "scripts", "services.sh"), "up", "tansu", *up], check=True,
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
    return status_kib(pid, "VmHWM")


def status_kib(pid, field):
    """A /proc/<pid>/status field in KiB (VmRSS, VmHWM, RssAnon ...); 0 if absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
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


def start_mosquitto(work, env, procs, max_queued=1_000_000):
    port = free_port()
    conf = os.path.join(work, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                f"max_queued_messages {max_queued}\nmax_inflight_messages 1000\nmessage_size_limit 0\n")
        if os.geteuid() == 0:
            f.write("user root\n")
    procs.append(subprocess.Popen([env.get("IOTPIPE_TEST_MOSQUITTO_BIN", "mosquitto"), "-c", conf],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_port(port)
    return f"mqtt://127.0.0.1:{port}"


def start_tansu(env, procs):
    port = free_port()
    args = env["IOTPIPE_TEST_TANSU_ARGS"].replace("{PORT}", str(port)).split()
    procs.append(subprocess.Popen([env["IOTPIPE_TEST_TANSU_BIN"], *args],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_port(port)
    return f"127.0.0.1:{port}"


def wait_ready(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
            return
        except Exception:
            time.sleep(0.2)
    sys.exit(f"service on port {port} not ready within {timeout}s")


def wait_metric(port, name, target, timeout=600, step=0.01):
    end = time.time() + timeout
    while time.time() < end:
        if metric(metrics(port), name) >= target:
            return
        time.sleep(step)
    sys.exit(f"{name} did not reach {target} within {timeout}s")


def simulate(broker, count, rate=0, extra=(), payload_size=200):
    out = subprocess.run([BIN, "simulate", "--broker", broker, "--count", str(count), "--rate", str(rate),
                          "--qos", "1", "--payload-size", str(payload_size), "--timeout", "600s", *extra],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


def stop_all(procs):
    for p in reversed(procs):
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
