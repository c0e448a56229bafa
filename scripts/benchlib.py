"""Helpers shared by the benchmark scripts: ports, private services
(Mosquitto, Tansu), iotpipe processes with their generated configs, process
CPU and memory, Prometheus metrics, the machine-readable result file."""
import json
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


def parse_cpus(spec):
    """A CPU list as taskset and /sys write it ("1", "0,2", "2-3"); the set of CPU numbers.
    ValueError when it is not one."""
    cpus = set()
    for part in filter(None, spec.replace(" ", "").split(",")):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or int(hi or lo) < int(lo):
            raise ValueError(f"{spec!r} is not a CPU list such as 1, 0,2 or 2-3")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def measured_cpus():
    """IOTPIPE_BENCH_PIN as a set of CPUs (empty when unset); exits on a malformed list."""
    spec = os.environ.get("IOTPIPE_BENCH_PIN", "")
    try:
        return parse_cpus(spec)
    except ValueError as e:
        sys.exit(f"IOTPIPE_BENCH_PIN: {e}")


# The CPUs this script may use, the measured ones that exist included: a script that another
# pinned script started (bench_binaries.py runs bench_bridge.py) has only the load's CPUs. The
# shared services that services_env starts outlive the benchmark and get all of them.
ALL_CPUS = os.sched_getaffinity(0) | (measured_cpus() & set(range(os.cpu_count() or 1)))


def load_cpus(cpus, allowed):
    """The CPUs of `allowed` left for the load when the measured process runs on `cpus`.
    ValueError unless `cpus` is some of `allowed` and leaves at least one."""
    rest = allowed - cpus
    if not cpus or not cpus <= allowed or not rest:
        raise ValueError(f"must name some of the CPUs {','.join(map(str, sorted(allowed)))} "
                         "and leave at least one for the load")
    return rest


def unpinned_preexec():
    os.sched_setaffinity(0, ALL_CPUS)


def pin_measured():
    """IOTPIPE_BENCH_PIN=CPUS (scripts/bench_all.py sets it for the bridge comparisons): the measured
    process (the bridge, or the minimal forwarder) runs on those CPUs, and this script with everything
    it starts (Mosquitto, Tansu, the publisher) on the others, so that the measured process's CPU per
    message is not moved by where the scheduler puts it among the load. The set of measured CPUs,
    empty when unset."""
    cpus = measured_cpus()
    if not cpus:
        return cpus
    try:
        rest = load_cpus(cpus, ALL_CPUS)
    except ValueError as e:
        sys.exit(f"IOTPIPE_BENCH_PIN={os.environ['IOTPIPE_BENCH_PIN']}: {e}")
    os.sched_setaffinity(0, rest)
    return cpus


PINNED = pin_measured()


def measured_preexec():
    """For subprocess.Popen(preexec_fn=...) of the measured process: its CPUs under IOTPIPE_BENCH_PIN,
    set before it starts (so every thread it creates inherits them); None when not pinned."""
    if not PINNED:
        return None
    return lambda: os.sched_setaffinity(0, PINNED)


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
                   check=True, stdout=subprocess.DEVNULL, preexec_fn=unpinned_preexec)
    subprocess.run(["bash", os.path.join(REPO, "scripts", "services.sh"), "up", "tansu", *up], check=True,
                   stdout=subprocess.DEVNULL, preexec_fn=unpinned_preexec)
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


def mosquitto_bin(env):
    """The Mosquitto the benchmarks and the fault matrix start: the test
    services' one, or BENCH_MOSQUITTO_BIN for another build (docs/bridge.md:
    Debian's 2.0.11 does not keep the MQTT window)."""
    return os.environ.get("BENCH_MOSQUITTO_BIN") or env.get("IOTPIPE_TEST_MOSQUITTO_BIN", "mosquitto")


def mosquitto_version(binary):
    """(major, minor, patch) from `mosquitto -h` ("mosquitto version 2.0.11")."""
    out = subprocess.run([binary, "-h"], capture_output=True, text=True).stdout.split()
    if "version" not in out[:-1]:
        raise RuntimeError(f"{binary} -h printed no version")
    parts = (out[out.index("version") + 1].split(".") + ["0", "0"])[:3]
    return tuple(int(p) if p.isdigit() else 0 for p in parts)


def start_mosquitto(work, env, procs, max_queued=1_000_000):
    port = free_port()
    conf = os.path.join(work, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                f"max_queued_messages {max_queued}\nmax_inflight_messages 1000\nmessage_size_limit 0\n")
        if os.geteuid() == 0:
            f.write("user root\n")
    procs.append(subprocess.Popen([mosquitto_bin(env), "-c", conf],
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
    """Poll `name` on the process behind `port` until it reaches `target`; exit the script after `timeout`."""
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


def start_null_kafka(partitions, procs, keep, extra=()):
    """scripts/null_kafka.py on a free port (--keep: serving what it keeps,
    with fetch sessions as Kafka keeps them): the bootstrap servers."""
    port = free_port()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "null_kafka.py")
    procs.append(subprocess.Popen([sys.executable, script, "--port", str(port), "--partitions", str(partitions),
                                   *(["--keep"] if keep else []), *extra]))
    wait_port(port)
    return f"127.0.0.1:{port}"


def start_brokers(work, env, procs, max_queued=1_000_000):
    """A private Mosquitto and Tansu for one measurement: (MQTT URL, Kafka bootstrap servers)."""
    return start_mosquitto(work, env, procs, max_queued), start_tansu(env, procs)


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))


def render_toml(sections):
    """{section: {key: value}} as a TOML file; None values are left out (the command's default)."""
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in values.items() if v is not None)
    return "\n".join(out) + "\n"


# Short consumer-group timeouts: a sink joins its group in seconds, not in librdkafka's default 45 s.
FAST_GROUP = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "500"}


def source_sections(broker, client_id="iotpipe-bench", mqtt=None):
    """[mqtt] and [route] of the bridge and of `run`: routes the simulator's payloads (device id and event
    time from the JSON)."""
    return {"mqtt": {"url": broker, "client_id": client_id, **(mqtt or {})},
            "route": {"device_id": "/deviceId", "event_time": "/ts"}}


def bridge_sections(broker, brokers, client_id="iotpipe-bench", mqtt=None, kafka=None, journal=None):
    """The benchmarks' bridge config, extra keys per section on top; a [journal] section if given."""
    return {**source_sections(broker, client_id, mqtt), "kafka": {"brokers": brokers, **(kafka or {})},
            **({"journal": journal} if journal else {})}


def sink_sections(brokers, store_url, group_id, sink=None, properties=None, kafka=None):
    """The benchmarks' sink config: a consumer group of its own with short group timeouts."""
    return {"kafka": {"brokers": brokers, **(kafka or {})},
            "sink": {"group_id": group_id, **(sink or {}), "properties": {**FAST_GROUP, **(properties or {})}},
            "store": {"url": store_url}}


class Iotpipe:
    """One `iotpipe <command>` process: its config file (an [http] listener on a free port and
    [log] level warn added unless given), its stderr in <work>/<name>.log, its metrics. `measured`:
    the process whose CPU the benchmark measures, pinned under IOTPIPE_BENCH_PIN (pin_measured)."""

    def __init__(self, command, work, name, sections, procs, binary=None, measured=False):
        self.command = command
        self.port = free_port()
        sections = {**sections, "http": {"listen": f"127.0.0.1:{self.port}"}}
        sections.setdefault("log", {"level": "warn"})
        self.config = os.path.join(work, f"{name}.toml")
        with open(self.config, "w") as f:
            f.write(render_toml(sections))
        self.log = os.path.join(work, f"{name}.log")
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([binary or BIN, command, "--config", self.config], stderr=log,
                                         preexec_fn=measured_preexec() if measured else None)
        self.pid = self.proc.pid
        procs.append(self.proc)

    def ready(self, timeout=30):
        """Wait for /readyz; on failure exit the script with the process's state and the end of its log."""
        try:
            wait_port(self.port, timeout)
            wait_ready(self.port, timeout)
        except SystemExit as e:
            with open(self.log, errors="replace") as f:
                tail = f.read()[-2000:]
            sys.exit(f"{e.code}: iotpipe {self.command} (exit status {self.proc.poll()}), {self.log}:\n{tail}")
        return self

    def metrics(self):
        return metrics(self.port)

    def metric(self, name):
        return metric(metrics(self.port), name)

    def wait_metric(self, name, target, timeout=600, step=0.01):
        wait_metric(self.port, name, target, timeout, step)

    def delivered(self):
        """Messages acknowledged after their Kafka delivery (bridge)."""
        return self.metric("iotpipe_messages_delivered_total")

    def stop(self, timeout=30):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def add_json_option(parser):
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE (scripts/bench.sh)")


def write_json(path, data):
    """The figures of a run for scripts/bench_all.py; nothing when no --json was given."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
