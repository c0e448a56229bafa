"""A private Prometheus for the fault matrix (scripts/fault_matrix.py).

It loads a *scaled copy* of the shipped alert rules
(deploy/prometheus/iotpipe.rules.yaml is never edited), scrapes every iotpipe
process of a scenario every second, evaluates the rules every second, and an
AlertWatch polls /api/v1/alerts to record when each alert went pending and
firing.

Time scale (`--alert-time-scale`, env IOTPIPE_ALERT_TIME_SCALE): the shipped
rules wait minutes (`for: 2m`, `rate(...[5m])`); a fault of a scenario lasts
20-60 s. The copy multiplies by the scale every `for:` / `keep_firing_for:`,
every range `[5m]` and subquery `[1h:5m]`, and every `offset`, so that the
rules keep their proportions (a 5m rate under a 2m `for:` stays 2.5 times the
`for:`). Thresholds that are durations are scaled the same way: a gauge of
seconds compared with a number (`iotpipe_delivery_stalled_seconds > 60`,
`time() - process_start_time_seconds > 1800`; not histogram buckets) and the
horizon of predict_linear. Ranges are kept at least 4 s (4 scrapes: rate()
needs two samples). Groups evaluate every second. Everything else (selectors,
latency bucket bounds such as the SLO's `le="10"`, ratios, counts) is the
shipped text. What iotpipe itself does on a clock (Kafka probes every 5 s,
hourly retention) is not scaled: with scale 0.05 a rule about hourly
retention becomes one about 3 minutes.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from datetime import datetime

from benchlib import free_port

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
DUR = r"(?:\d+(?:ms|s|m|h|d|w|y))+"
MIN_RANGE_S = 4.0
NAMESPACE = "faultmatrix"


def parse_duration(text):
    """Seconds of a Prometheus duration such as 5m, 1h30m, 500ms."""
    if not re.fullmatch(DUR, text):
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(float(n) * UNITS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text))


def fmt_duration(seconds):
    ms = max(1, int(round(seconds * 1000)))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scale_rules(text, scale, min_range=MIN_RANGE_S):
    """The rule file's text with its time windows multiplied by `scale`.
    Returns (text, changes) where changes lists (what, before, after)."""
    changes = []

    def scaled(d, floor=0.0):
        return fmt_duration(max(parse_duration(d) * scale, floor))

    def for_line(m):
        new = scaled(m.group(2))
        changes.append((m.group(1).strip().rstrip(":"), m.group(2), new))
        return f"{m.group(1)}{new}{m.group(3)}"

    def interval_line(m):
        changes.append(("interval", m.group(2), "1s"))
        return f"{m.group(1)}1s{m.group(3)}"

    def rng(m):
        a, colon, b = m.group(1), m.group(2), m.group(3)
        new = "[" + scaled(a, min_range) + ("" if not colon else ":" + (scaled(b) if b else "")) + "]"
        changes.append(("range", m.group(0), new))
        return new

    def offset(m):
        neg = m.group(1).startswith("-")
        new = ("-" if neg else "") + scaled(m.group(1).lstrip("-"))
        changes.append(("offset", m.group(1), new))
        return f"offset {new}"

    def threshold(m):
        num = float(m.group(7)) * scale
        new = f"{num:.3f}".rstrip("0").rstrip(".")
        changes.append(("threshold", m.group(0).strip(), f"{m.group(1)} {m.group(5)} {new}"))
        return "".join(m.group(i) or "" for i in range(1, 7)) + new

    def horizon(m):
        changes.append(("predict_linear horizon", m.group(2), f"({m.group(2)}) * {scale:g}"))
        return f"predict_linear({m.group(1)}, ({m.group(2)}) * {scale:g})"

    lines = []
    for line in text.split("\n"):
        if not re.match(r"\s*(#|(description|summary|runbook_url|message):)", line):
            # an age in seconds compared to a number: `*_seconds > N`, `time() - *_seconds > N`
            line = re.sub(r"\b([A-Za-z_:][A-Za-z0-9_:]*_seconds)(?![A-Za-z0-9_:])(\{[^}]*\})?((?:\s*\))*)(\s*)"
                          r"(>=|>|<=|<)(\s*)(\d+(?:\.\d+)?)\b", threshold, line)
            line = re.sub(r"predict_linear\(([^,()]+\]),\s*([^()]+?)\s*\)", horizon, line)
        lines.append(line)
    text = "\n".join(lines)

    out = re.sub(rf"^(\s*(?:for|keep_firing_for):\s*)['\"]?({DUR})['\"]?(\s*(?:#.*)?)$", for_line, text, flags=re.M)
    out = re.sub(rf"^(\s*(?:-\s+)?interval:\s*)['\"]?({DUR})['\"]?(\s*(?:#.*)?)$", interval_line, out, flags=re.M)
    out = re.sub(rf"\[\s*({DUR})\s*(:\s*({DUR})?\s*)?\]", rng, out)
    out = re.sub(rf"\boffset\s+(-?{DUR})", offset, out)
    return out, changes


def alert_names(text):
    return re.findall(r"^\s*-\s*alert:\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)", text, re.M)


def find_prometheus():
    """(path to the prometheus binary, None) or (None, why not)."""
    env = os.environ.get("IOTPIPE_PROMETHEUS_BIN")
    if env and not os.access(env, os.X_OK):
        return None, f"IOTPIPE_PROMETHEUS_BIN={env} is not executable"
    p = env or shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None)
    if not p:
        return None, "no prometheus binary (apt-get install -y prometheus, or set IOTPIPE_PROMETHEUS_BIN)"
    return p, None


def parse_time(s):
    """Unix time of an RFC 3339 timestamp with up to nanoseconds (Prometheus's activeAt)."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", s)
    if not m:
        return None
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3))).timestamp()
    return base + (float("0." + m.group(2)) if m.group(2) else 0.0)


class Prometheus:
    """One Prometheus server per scenario: its own port, data dir, config and
    scaled rules, in `<scenario dir>/prometheus/`."""

    def __init__(self, work, binary, rules_path, scale, keep=False):
        self.dir = os.path.join(work, "prometheus")
        os.makedirs(self.dir, exist_ok=True)
        self.binary, self.keep = binary, keep
        with open(rules_path) as f:
            shipped = f.read()
        scaled_text, self.changes = scale_rules(shipped, scale)
        self.rules = os.path.join(self.dir, "iotpipe.rules.scaled.yaml")
        with open(self.rules, "w") as f:
            f.write(f"# SCALED COPY of {rules_path} (time scale {scale}), written by scripts/promharness.py;\n"
                    "# the fault matrix's test rules, not a deployable file.\n" + scaled_text)
        self.alert_names = alert_names(shipped)
        promtool = shutil.which("promtool")
        if promtool:
            r = subprocess.run([promtool, "check", "rules", self.rules], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"promtool check rules failed on the scaled copy {self.rules}: "
                                   f"{(r.stdout + r.stderr).strip()[-600:]}")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data = os.path.join(self.dir, "data")
        self.targets = {}  # component -> {role name: "127.0.0.1:port"}
        self.components = ("bridge", "sink", "run")
        for c in self.components:
            self._write_targets(c)
        self.config = os.path.join(self.dir, "prometheus.yml")
        jobs = []
        for c in self.components:
            jobs.append(f"""  - job_name: iotpipe-{c}
    scrape_interval: 1s
    scrape_timeout: 1s
    file_sd_configs:
      - files: ["{self._targets_file(c)}"]
        refresh_interval: 1s
""")
        with open(self.config, "w") as f:
            f.write(f"""# written by scripts/promharness.py for one fault-matrix scenario
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {self.rules}
scrape_configs:
""" + "".join(jobs))
        self.proc = None

    def _targets_file(self, component):
        return os.path.join(self.dir, f"targets-{component}.json")

    def _write_targets(self, component):
        groups = [{"targets": [addr], "labels": {"iotpipe_component": component, "namespace": NAMESPACE,
                                                 "pod": name}}
                  for name, addr in sorted(self.targets.get(component, {}).items())]
        path = self._targets_file(component)
        with open(path + ".tmp", "w") as f:
            json.dump(groups, f)
        os.replace(path + ".tmp", path)

    def set_target(self, component, name, port):
        """Scrape the process `name` (a scenario's role) at its /metrics port."""
        if component not in self.components:
            return
        addr = f"127.0.0.1:{port}"
        if self.targets.setdefault(component, {}).get(name) != addr:
            self.targets[component][name] = addr
            self._write_targets(component)

    def start(self):
        log = open(os.path.join(self.dir, "prometheus.log"), "w")
        # Loopback only, no remote write, no Alertmanager: nothing leaves the machine.
        self.proc = subprocess.Popen([self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
                                      "--storage.tsdb.retention.time=2h", f"--web.listen-address=127.0.0.1:{self.port}",
                                      "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        end = time.time() + 30
        while time.time() < end:
            try:
                urllib.request.urlopen(f"{self.base}/-/ready", timeout=2).close()
                return self
            except Exception:  # noqa: BLE001
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        raise RuntimeError(f"Prometheus did not become ready (see {self.dir}/prometheus.log)")

    def api(self, path, **params):
        url = f"{self.base}/api/v1/{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path}: {body}")
        return body["data"]

    def alerts(self):
        return self.api("alerts")["alerts"]

    def up(self):
        """{pod: up value} of every iotpipe target scraped so far."""
        return {r["metric"].get("pod", r["metric"].get("instance")): float(r["value"][1])
                for r in self.api("query", query='up{namespace="%s"}' % NAMESPACE)["result"]}

    def wait_armed(self, timeout=30):
        """Wait until every registered target is scraped and up, then until no
        alert is active (those of the start-up: e.g. `absent(up)` before the
        first scrape), at most `timeout` s. Returns the alerts still active."""
        want = {n for c in self.targets.values() for n in c}
        end = time.time() + timeout
        while time.time() < end:
            try:
                up = self.up()
            except (OSError, RuntimeError):
                up = {}
            if want and all(up.get(n) == 1 for n in want):
                break
            time.sleep(0.25)
        else:
            raise RuntimeError(f"Prometheus did not see every target up within {timeout}s: {self.up()}")
        time.sleep(2.5)  # two evaluations with every target up
        while time.time() < end:
            active = self.alerts()
            if not active:
                return []
            time.sleep(0.5)
        return self.alerts()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.keep:
            shutil.rmtree(self.data, ignore_errors=True)


def label_key(labels):
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in ("alertname", "severity"))


class AlertWatch:
    """Polls /api/v1/alerts every `step` s (the rules evaluate every 1 s, so no
    pending state is missed) and keeps every activation: alert name, labels,
    activeAt (the evaluation that made it pending), first poll that saw it
    firing, last poll that saw it."""

    def __init__(self, prom, step=0.5):
        self.prom, self.step = prom, step
        self.acts = {}  # (name, labels, activeAt) -> activation
        self.errors = 0
        self.max_load = 0.0  # highest 1-minute load average seen while watching
        self.armed_at = None
        self.active_at_arm = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def arm(self, timeout=30):
        self.active_at_arm = self.prom.wait_armed(timeout)
        self.armed_at = time.time()
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.step)

    def poll(self):
        try:
            with open("/proc/loadavg") as f:
                self.max_load = max(self.max_load, float(f.read().split()[0]))
        except (OSError, ValueError):
            pass
        try:
            alerts = self.prom.alerts()
        except (OSError, RuntimeError, ValueError):
            self.errors += 1
            return
        now = time.time()
        for a in alerts:
            labels = a.get("labels", {})
            name = labels.get("alertname", "?")
            t_active = parse_time(a.get("activeAt", "")) or now
            key = (name, label_key(labels), a.get("activeAt"))
            act = self.acts.get(key)
            if act is None:
                act = self.acts[key] = {"alert": name, "labels": label_key(labels), "active_at": t_active,
                                        "seen": now, "firing_at": None, "last_seen": now}
            act["last_seen"] = now
            if a.get("state") == "firing" and act["firing_at"] is None:
                act["firing_at"] = now

    def stop(self):
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(timeout=10)
            self.poll()

    def scrape_health(self):
        """Per pod: the longest scrape and the failed scrapes since the watch was armed
        (a busy machine shows here first: a target that answers late is down)."""
        if self.armed_at is None:
            return {}
        rng = fmt_duration(max(time.time() - self.armed_at, 1.0))
        out = {}
        try:
            for q, key in ((f'max_over_time(scrape_duration_seconds{{namespace="{NAMESPACE}"}}[{rng}])', "max_scrape_s"),
                           (f'count_over_time(up{{namespace="{NAMESPACE}"}}[{rng}]) - sum_over_time(up{{namespace="{NAMESPACE}"}}[{rng}])',
                            "failed_scrapes")):
                for r in self.prom.api("query", query=q)["result"]:
                    pod = r["metric"].get("pod", r["metric"].get("instance"))
                    out.setdefault(pod, {})[key] = round(float(r["value"][1]), 3)
        except (OSError, RuntimeError, ValueError):
            pass
        return out

    def activations(self, since=None):
        since = self.armed_at if since is None else since
        return sorted((a for a in self.acts.values() if a["last_seen"] >= since), key=lambda a: a["active_at"])
