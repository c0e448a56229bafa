#!/usr/bin/env python3
"""Checks deploy/grafana and deploy/prometheus against the real thing.

Run through scripts/check-observability.sh (it installs promtool/prometheus
and PyYAML). Stages:

  static     dashboards are valid Grafana JSON (schemaVersion, unique panel
             ids, datasource uids that the provisioning defines or a
             datasource variable, variables that exist), generated files are
             up to date, every shipped rule set (rule file, both
             PrometheusRules, the Helm template) carries the generator's
             alerts, no rule names a job, every alert has a plain `for:`, an
             absolute runbook_url whose anchor is a heading of
             docs/observability.md, and a firing and a quiet unit test;
             the Alertmanager inhibition rules pass `amtool check-config`,
             name only defined alerts, and a private Alertmanager inhibits
             what they say (when the Debian package is installed)
  promtool   promtool check rules, promtool test rules (every *_test.yaml),
             promtool check config of the example prometheus.yml
  live       bridge (journal), sink -> PostgreSQL, sink -> InfluxDB,
             sink -> TimescaleDB (when IOTPIPE_TEST_TIMESCALE_URL is set) and
             run (SQLite) against private Mosquitto/Tansu and the test
             PostgreSQL/InfluxDB, a load from `iotpipe simulate` plus
             dead letters, a real Prometheus scraping all of them with the
             rules loaded; then every PromQL expression (dashboards, variables,
             rules) through the HTTP API, every iotpipe_* name against the
             scraped /metrics, every SQL query (Grafana macros and variables
             expanded) against PostgreSQL/TimescaleDB, every InfluxQL query
             against InfluxDB.

Exit status 1 with one FAIL line per problem. --static runs the first two
stages only. Each stage then breaks copies of the artifacts on purpose
(renamed metric, renamed column, unit test removed, unknown datasource uid,
...) and fails unless each break is caught (--no-self-test skips that).
"""
import argparse
import copy
import csv
import datetime as dt
import glob
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import BIN, REPO, free_port, metrics, wait_port, wait_ready  # noqa: E402
import observability_gen  # noqa: E402

import yaml  # noqa: E402  (installed by check-observability.sh)

GRAFANA = os.path.join(REPO, "deploy", "grafana")
PROM_DIR = os.path.join(REPO, "deploy", "prometheus")
RULES = os.path.join(PROM_DIR, "iotpipe.rules.yaml")
DOC = os.path.join(REPO, "docs", "observability.md")
PG_BINDIR = os.environ.get("IOTPIPE_PG_BINDIR", "/usr/lib/postgresql/15/bin")

# Grafana's own variables and macros (not dashboard variables).
BUILTIN_VARS = {"__interval", "__interval_ms", "__rate_interval", "__range", "__range_s", "__range_ms",
                "__from", "__to", "__dashboard", "__org", "__user", "timeFilter", "__timeFilter"}
GRAFANA_PANELS = {"timeseries", "table", "stat", "gauge", "bargauge", "barchart", "piechart", "state-timeline",
                  "status-history", "heatmap", "histogram", "text", "logs", "row"}
# Metrics that exist only under a condition the check cannot create here; the
# name must still be defined in src/telemetry (so a rename is caught), and a
# query over them alone may be empty.
CONDITIONAL = {"iotpipe_memory_limit_bytes": "exported only when the process has a cgroup v2 memory limit"}
# Exported only by a sink (or run) whose store is TimescaleDB: checked against
# the TimescaleDB sink when there is one, conditional otherwise.
TIMESCALE_ONLY = ("iotpipe_sink_timescale_jobs", "iotpipe_sink_timescale_jobs_failed",
                  "iotpipe_sink_timescale_job_failures_total", "iotpipe_sink_timescale_job_polls_total",
                  "iotpipe_sink_timescale_job_poll_failures_total")
# Rule expressions that are false in a healthy run: evaluated without error,
# may be empty, and their selectors must return series (see inner_selectors).
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                   "offset", "inf", "nan", "atan2"}

FAILS = []
COUNTS = {}
EXPECTING = []  # non-empty during a self-test break: failures are expected


def fail(msg):
    FAILS.append(msg)
    if EXPECTING:
        print(f"  self-test, caught as expected: {msg.splitlines()[0]}", flush=True)
    else:
        print(f"FAIL: {msg}", flush=True)


def count(kind, n=1):
    COUNTS[kind] = COUNTS.get(kind, 0) + n


def say(msg):
    print(msg, flush=True)


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------

def load_dashboards():
    out = {}
    for path in sorted(glob.glob(os.path.join(GRAFANA, "dashboards", "*.json"))):
        name = os.path.basename(path)
        try:
            with open(path) as f:
                out[name] = json.load(f)
        except ValueError as e:
            fail(f"{name}: not JSON: {e}")
    return out


def load_datasources():
    ds = {}
    for path in sorted(glob.glob(os.path.join(GRAFANA, "provisioning", "datasources", "*.yaml"))):
        with open(path) as f:
            doc = yaml.safe_load(f)
        for d in doc.get("datasources", []):
            if d.get("uid") in ds:
                fail(f"datasource uid {d.get('uid')} defined twice")
            ds[d.get("uid")] = d
    return ds


def load_rules(path=RULES):
    with open(path) as f:
        return yaml.safe_load(f)


def all_panels(dash):
    for p in dash.get("panels", []):
        yield p
        yield from p.get("panels", [])  # collapsed rows


def alerts(rules):
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


# --------------------------------------------------------------------------
# Static checks
# --------------------------------------------------------------------------

VAR_RE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)|\[\[(\w+)\]\]")


def referenced_vars(text):
    names = set()
    for m in VAR_RE.finditer(text):
        name = m.group(1) or m.group(3) or m.group(4)
        end = m.end()
        if m.group(3) and end < len(text) and text[end] == "(":
            continue  # a macro: $__timeFilter(...)
        names.add(name)
    return names


def target_query(t):
    return t.get("rawSql") or t.get("query") or t.get("expr") or ""


def ds_variables(dash):
    return {v["name"]: v for v in dash.get("templating", {}).get("list", []) if v.get("type") == "datasource"}


def resolve_ds(dash, ref):
    """A panel's datasource reference with a ${datasource} variable replaced by the variable's current uid."""
    if isinstance(ref, dict):
        m = re.fullmatch(r"\$\{?(\w+)\}?", str(ref.get("uid", "")))
        if m and m.group(1) in ds_variables(dash):
            cur = ds_variables(dash)[m.group(1)].get("current", {}).get("value")
            return {**ref, "uid": cur}
    return ref


def check_dashboard(name, dash, datasources):
    if not isinstance(dash.get("schemaVersion"), int):
        fail(f"{name}: schemaVersion missing")
    for key in ("uid", "title", "panels", "templating"):
        if key not in dash:
            fail(f"{name}: '{key}' missing")
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ids = [p.get("id") for p in all_panels(dash)]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup or None in ids:
        fail(f"{name}: panel ids not unique or missing: {sorted(x for x in dup if x is not None)}")

    for vname, v in ds_variables(dash).items():
        cur = (v.get("current") or {}).get("value")
        if cur not in datasources or datasources[cur]["type"] != v.get("query"):
            fail(f"{name}: datasource variable {vname}: current {cur!r} is not a provisioned {v.get('query')} uid")

    def ds_ok(where, ref):
        ref = resolve_ds(dash, ref)
        if not isinstance(ref, dict) or ref.get("uid") not in datasources:
            fail(f"{name}: {where}: datasource {ref!r} is not a provisioned uid ({', '.join(sorted(datasources))})")
            return
        want = datasources[ref["uid"]]["type"]
        if ref.get("type") and ref["type"] != want:
            fail(f"{name}: {where}: datasource type {ref['type']} but {ref['uid']} is {want}")

    boxes = [(p.get("title"), p["gridPos"]) for p in dash.get("panels", []) if "gridPos" in p]
    for i, (ta, a) in enumerate(boxes):
        if a["x"] < 0 or a["w"] <= 0 or a["x"] + a["w"] > 24:
            fail(f"{name}: panel {ta}: gridPos outside the 24 columns: {a}")
        for tb, b in boxes[i + 1:]:
            if (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"]
                    and b["y"] < a["y"] + a["h"]):
                fail(f"{name}: panels {ta} and {tb} overlap")
    for vname, v in variables.items():
        if v.get("type") == "datasource":
            continue
        ds_ok(f"variable {vname}", v.get("datasource"))
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        for ref in referenced_vars(q) - BUILTIN_VARS:
            if ref not in variables:
                fail(f"{name}: variable {vname} refers to ${ref}, which is not a variable")
            elif list(variables).index(ref) > list(variables).index(vname):
                fail(f"{name}: variable {vname} refers to ${ref}, defined after it")
    for p in all_panels(dash):
        if p.get("type") == "row":
            continue
        if p.get("type") not in GRAFANA_PANELS:
            fail(f"{name}: panel {p.get('title')}: type {p.get('type')!r} is not a Grafana core panel")
        if "gridPos" not in p:
            fail(f"{name}: panel {p.get('title')}: no gridPos")
        ds_ok(f"panel {p.get('title')}", p.get("datasource"))
        if not p.get("targets"):
            fail(f"{name}: panel {p.get('title')}: no targets")
        refids = [t.get("refId") for t in p.get("targets", [])]
        if len(set(refids)) != len(refids):
            fail(f"{name}: panel {p.get('title')}: duplicate refIds")
        for t in p.get("targets", []):
            ds_ok(f"panel {p.get('title')} {t.get('refId')}", t.get("datasource", p.get("datasource")))
            q = target_query(t)
            if not q.strip():
                fail(f"{name}: panel {p.get('title')} {t.get('refId')}: empty query")
            for ref in referenced_vars(q) - BUILTIN_VARS:
                if ref not in variables:
                    fail(f"{name}: panel {p.get('title')} {t.get('refId')}: ${ref} is not a variable")


def md_anchors(path):
    anchors = set()
    with open(path) as f:
        for line in f:
            m = re.match(r"#+\s+(.*)", line)
            if m:
                a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
                anchors.add(a)
    return anchors


def check_rule_tests(rules, test_files):
    fired, quiet = set(), set()
    for path in test_files:
        with open(path) as f:
            doc = yaml.safe_load(f)
        for t in doc.get("tests", []):
            for a in t.get("alert_rule_test", []):
                (fired if a.get("exp_alerts") else quiet).add(a.get("alertname"))
    names = [a["alert"] for a in alerts(rules)]
    for n in names:
        if n not in fired:
            fail(f"alert {n} has no unit test in which it fires (deploy/prometheus/*_test.yaml)")
        if n not in quiet:
            fail(f"alert {n} has no unit test in which it stays quiet (deploy/prometheus/*_test.yaml)")
    for n in (fired | quiet) - set(names):
        fail(f"unit tests name alert {n}, which no rule defines")
    return names


def static_checks(dashboards, datasources, rules, test_files):
    for name, dash in dashboards.items():
        check_dashboard(name, dash, datasources)
    count("dashboards", len(dashboards))
    count("panels", sum(1 for d in dashboards.values() for p in all_panels(d) if p.get("type") != "row"))
    # Provisioning and the sidecar ConfigMap.
    with open(os.path.join(GRAFANA, "provisioning", "dashboards", "iotpipe.yaml")) as f:
        prov = yaml.safe_load(f)
    if not any(p.get("type") == "file" and p.get("options", {}).get("path") for p in prov.get("providers", [])):
        fail("provisioning/dashboards/iotpipe.yaml: no file provider with a path")
    with open(os.path.join(GRAFANA, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    if str(kust.get("generatorOptions", {}).get("labels", {}).get("grafana_dashboard")) != "1":
        fail("deploy/grafana/kustomization.yaml: generated ConfigMap lacks the label grafana_dashboard: \"1\"")
    files = {os.path.basename(f) for g in kust.get("configMapGenerator", []) for f in g.get("files", [])}
    if files != set(dashboards):
        fail(f"deploy/grafana/kustomization.yaml lists {sorted(files)}, dashboards are {sorted(dashboards)}")
    size = sum(os.path.getsize(os.path.join(GRAFANA, "dashboards", n)) for n in dashboards)
    if size > 900_000:
        fail(f"dashboards total {size} bytes: too close to the 1 MiB ConfigMap limit")
    check_kustomize(dashboards)
    # Generated files.
    for path, text in observability_gen.outputs().items():
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            fail(f"{os.path.relpath(path, REPO)} is stale: run python3 scripts/observability_gen.py")
    check_rule_sets(rules)
    static_rule_annots(rules)
    names = check_rule_tests(rules, test_files)
    count("alerts", len(names))
    count("alert unit test cases", sum(len(t.get("alert_rule_test", [])) for p in test_files
                                       for t in yaml.safe_load(open(p)).get("tests", [])))
    with open(os.path.join(REPO, "README.md")) as f:
        if "docs/observability.md" not in f.read():
            fail("README.md does not link docs/observability.md")


def static_rule_annots(rules):
    """Runbooks (absolute, anchors that exist), plain `for:` durations, summary, description, severity."""
    anchors = md_anchors(DOC) if os.path.exists(DOC) else set()
    for a in alerts(rules):
        url = a.get("annotations", {}).get("runbook_url", "")
        m = re.fullmatch(r"https://\S+/docs/observability\.md#([\w-]+)", url)
        if not m:
            fail(f"alert {a['alert']}: runbook_url {url!r} is not an absolute https URL into docs/observability.md")
        elif m.group(1) not in anchors:
            fail(f"alert {a['alert']}: docs/observability.md has no heading for #{m.group(1)}")
        elif m.group(1) != a["alert"].lower():
            fail(f"alert {a['alert']}: runbook anchor #{m.group(1)} is not the alert's name")
        if not re.fullmatch(r"\d+[smhd]", str(a.get("for", ""))):
            fail(f"alert {a['alert']}: no plain `for:` duration (tests scale them): {a.get('for')!r}")
        for key in ("summary", "description"):
            if not a.get("annotations", {}).get(key):
                fail(f"alert {a['alert']}: annotation {key} missing")
        if a.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            fail(f"alert {a['alert']}: severity label missing")


def check_rule_sets(rules):
    """Every shipped rule set carries the generator's rules: the rule file, the two PrometheusRules with
    distinct names, the Helm template (rendered by scripts/check_deploy.py, which compares it too);
    no rule names a job; the Alertmanager inhibition rules name defined alerts."""
    want = observability_gen.rule_groups()
    if rules.get("groups") != want:
        fail("deploy/prometheus/iotpipe.rules.yaml differs from observability_gen.rule_groups()")
    names = {}
    for path in (observability_gen.PROMETHEUSRULE, observability_gen.KUSTOMIZE_RULE):
        rel = os.path.relpath(path, REPO)
        with open(path) as f:
            pr = yaml.safe_load(f)
        if pr.get("kind") != "PrometheusRule" or pr.get("spec") != {"groups": want}:
            fail(f"{rel} does not carry the same rules as iotpipe.rules.yaml")
        names.setdefault(pr["metadata"]["name"], []).append(rel)
    helm = open(observability_gen.HELM_RULE).read()
    m = re.search(r"^  name: (.*)$", helm, re.M)
    names.setdefault(m.group(1) if m else "?", []).append("the Helm template")
    for n, where in names.items():
        if len(where) > 1 or n == "iotpipe":
            fail(f"PrometheusRule name {n} is not distinct ({', '.join(where)}): applying both would overwrite one")
    all_alerts = set(observability_gen.alert_names(want))
    helm_alerts = set(re.findall(r"- alert: (\w+)", helm))
    if helm_alerts != all_alerts:
        fail(f"the Helm template's alerts differ: {sorted(helm_alerts ^ all_alerts)}")
    for g in rules.get("groups", []):
        for r in g["rules"]:
            if re.search(r"\bjob\s*=~?", r["expr"]):
                fail(f"rule {r.get('alert') or r.get('record')} matches on a job name: {r['expr']}")
    am = yaml.safe_load(open(observability_gen.ALERTMANAGER))
    for ir in am.get("inhibit_rules", []):
        for mt in ir.get("source_matchers", []) + ir.get("target_matchers", []):
            mm = re.fullmatch(r'alertname=~?"([^"]*)"', mt)
            for n in (mm.group(1).split("|") if mm else []):
                if n not in all_alerts:
                    fail(f"deploy/alertmanager/alertmanager.yml inhibits with {n}, which no rule defines")
        if set(ir.get("equal", [])) != {"namespace", "cluster"}:
            fail(f"an inhibit rule is not scoped to namespace and cluster: {ir}")
    count("rule sets compared", 4)


def check_kustomize(dashboards):
    """Renders deploy/grafana with `kubectl kustomize`: one ConfigMap, the sidecar label, every dashboard."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        say("SKIPPED: rendering deploy/grafana/kustomization.yaml (no kubectl); "
            "apt-get install kubernetes-client to enable")
        return
    r = subprocess.run([kubectl, "kustomize", os.path.join(GRAFANA)], capture_output=True, text=True)
    if r.returncode:
        fail(f"kubectl kustomize deploy/grafana: {r.stderr.strip()}")
        return
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    cms = [d for d in docs if d.get("kind") == "ConfigMap"]
    if len(cms) != 1 or len(docs) != 1:
        fail(f"kubectl kustomize deploy/grafana: expected one ConfigMap, got {[d.get('kind') for d in docs]}")
        return
    cm = cms[0]
    if str(cm["metadata"].get("labels", {}).get("grafana_dashboard")) != "1":
        fail("the rendered dashboards ConfigMap lacks the label grafana_dashboard: \"1\"")
    data = cm.get("data", {})
    if set(data) != set(dashboards):
        fail(f"the rendered ConfigMap holds {sorted(data)}, dashboards are {sorted(dashboards)}")
    for name, text in data.items():
        if name in dashboards and json.loads(text) != dashboards[name]:
            fail(f"the rendered ConfigMap's {name} differs from deploy/grafana/dashboards/{name}")
    count("kustomize renders")


def promtool_checks(test_files):
    r = subprocess.run(["promtool", "check", "rules", RULES], capture_output=True, text=True)
    if r.returncode:
        fail(f"promtool check rules:\n{r.stdout}{r.stderr}")
    r = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=PROM_DIR, capture_output=True, text=True)
    if r.returncode:
        fail(f"promtool check config deploy/prometheus/prometheus.yml:\n{r.stdout}{r.stderr}")
    with open(os.path.join(PROM_DIR, "prometheus.yml")) as f:
        jobs = {j["job_name"] for j in yaml.safe_load(f)["scrape_configs"]}
    for job in re.findall(r'job="([^"]+)"', open(RULES).read()):
        if job not in jobs:
            fail(f"iotpipe.rules.yaml matches job {job}, which deploy/prometheus/prometheus.yml does not scrape")
    for path in test_files:
        r = subprocess.run(["promtool", "test", "rules", os.path.basename(path)], cwd=os.path.dirname(path),
                           capture_output=True, text=True)
        if r.returncode:
            fail(f"promtool test rules {os.path.relpath(path, REPO)}:\n{r.stdout}{r.stderr}")


def alertmanager_checks(config=None):
    """amtool check-config, then a private Alertmanager fed one Kafka outage in namespace a (and a stall in
    namespace b): everything but KafkaUnreachable in a must be inhibited, nothing in b."""
    config = config or observability_gen.ALERTMANAGER
    amtool = shutil.which("amtool")
    server = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if not amtool or not server:
        say("SKIPPED: Alertmanager checks (no amtool / alertmanager; apt-get install prometheus-alertmanager)")
        return
    r = subprocess.run([amtool, "check-config", config], capture_output=True, text=True)
    if r.returncode:
        fail(f"amtool check-config {os.path.relpath(config, REPO)}:\n{r.stdout}{r.stderr}")
        return
    count("amtool check-config")
    work = tempfile.mkdtemp(prefix="iotpipe-check-am-")
    port = free_port()
    log = open(os.path.join(work, "alertmanager.log"), "w")
    p = subprocess.Popen([server, f"--config.file={config}", f"--storage.path={work}",
                          f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}/api/v2"
        wait_port(port, timeout=30)
        now = dt.datetime.now(dt.timezone.utc)
        end = (now + dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        fired = [("IotpipeKafkaUnreachable", "a", "critical"), ("IotpipeDeliveryStalled", "a", "critical"),
                 ("IotpipeJournalFull", "a", "critical"), ("IotpipeConsumerLagGrowing", "a", "warning"),
                 ("IotpipeTenantSilent", "a", "warning"), ("IotpipeFreshnessBudgetBurn", "a", "critical"),
                 ("IotpipeDeliveryStalled", "b", "critical")]
        body = json.dumps([{"labels": {"alertname": n, "namespace": ns, "severity": sev, "instance": "x"},
                            "endsAt": end} for n, ns, sev in fired]).encode()
        req = urllib.request.Request(f"{base}/alerts", data=body, headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10)
        want = {(n, ns): not (ns == "a" and n != "IotpipeKafkaUnreachable") for n, ns, _ in fired}
        got = {}
        deadline = time.time() + 15
        while time.time() < deadline:
            with urllib.request.urlopen(f"{base}/alerts", timeout=10) as resp:
                alerts_ = json.loads(resp.read())
            got = {(a["labels"]["alertname"], a["labels"]["namespace"]): not a["status"]["inhibitedBy"]
                   for a in alerts_}
            if got == want:
                break
            time.sleep(0.5)
        for k, active in want.items():
            if got.get(k) != active:
                fail(f"Alertmanager ({os.path.basename(config)}): {k[0]} in namespace {k[1]} should be "
                     f"{'active' if active else 'inhibited'} during a Kafka outage in namespace a, is "
                     f"{ {True: 'active', False: 'inhibited', None: 'missing'}[got.get(k)] }")
        count("Alertmanager inhibition scenarios")
    finally:
        p.terminate()
        p.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------
# Grafana's interval and variable expansion
# --------------------------------------------------------------------------

ROUND = [(15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000), (3500, 2000),
         (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000), (90000, 60000),
         (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000), (1500000, 1200000),
         (2700000, 1800000), (5400000, 3600000), (9000000, 7200000), (16200000, 10800000),
         (32400000, 21600000), (86400000, 43200000), (604800000, 86400000)]


def parse_duration_ms(s):
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d|w)", s.strip())
    if not m:
        raise ValueError(f"bad interval {s!r}")
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000,
                              "w": 604800000}[m.group(2)]


def fmt_duration(ms):
    for unit, n in (("w", 604800000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000)):
        if ms >= n and ms % n == 0:
            return f"{ms // n}{unit}"
    return f"{ms}ms"


def grafana_interval_ms(range_ms, max_points, min_ms):
    """kbn.calculateInterval: range / max data points, rounded, at least the min interval."""
    raw = range_ms / max_points
    rounded = next((r for limit, r in ROUND if raw < limit), 604800000)
    return max(rounded, min_ms)


class Ctx:
    """One evaluation: time range, interval, variable values."""

    def __init__(self, t_from, t_to, interval_ms, values):
        self.t_from, self.t_to, self.interval_ms, self.values = t_from, t_to, interval_ms, values

    def builtins(self):
        rng = int((self.t_to - self.t_from).total_seconds() * 1000)
        return {"__interval": fmt_duration(self.interval_ms), "__interval_ms": str(self.interval_ms),
                "__range": fmt_duration(rng - rng % 1000 or 1000), "__range_s": str(rng // 1000),
                "__range_ms": str(rng), "__from": str(int(self.t_from.timestamp() * 1000)),
                "__to": str(int(self.t_to.timestamp() * 1000))}


def sql_quote(v):
    return "'" + str(v).replace("'", "''") + "'"


def interpolate(text, ctx, kind, variables):
    """Replaces $var, ${var}, ${var:fmt}, [[var]] the way Grafana does for `kind` (sql, influx, prom)."""
    builtins = ctx.builtins()

    def repl(m):
        name = m.group(1) or m.group(3) or m.group(4)
        fmt = m.group(2)
        if m.group(3) and m.end() < len(text) and text[m.end()] == "(":
            return m.group(0)  # a macro
        if name in builtins:
            return builtins[name]
        if name not in ctx.values:
            return m.group(0)
        vals = ctx.values[name]
        var = variables.get(name, {})
        is_all = ctx.values.get("__all__" + name, False)
        if is_all and var.get("allValue"):
            return var["allValue"]
        if fmt in ("sqlstring", "singlequote"):
            return ",".join(sql_quote(v) for v in vals)
        if fmt == "csv":
            return ",".join(vals)
        if fmt == "raw":
            return ",".join(vals)
        if fmt == "regex":
            return "(" + "|".join(re.escape(v) for v in vals) + ")"
        if fmt == "pipe":
            return "|".join(vals)
        multi = var.get("multi") or var.get("includeAll")
        if kind == "sql":
            return ",".join(sql_quote(v) for v in vals) if multi else vals[0]
        if kind == "influx":
            if multi:
                return "(" + "|".join(re.escape(v) for v in vals) + ")" if len(vals) != 1 else re.escape(vals[0])
            return vals[0]
        # prometheus: regex-escaped, joined with |
        if multi:
            esc = [re.sub(r"([\\^$.*+?()\[\]{}|])", r"\\\1", v) for v in vals]
            return "(" + "|".join(esc) + ")" if len(esc) > 1 else esc[0]
        return vals[0]

    return VAR_RE.sub(repl, text)


def split_args(s, start):
    """Arguments of a macro call whose '(' is at s[start]; returns (args, index after ')')."""
    depth, args, cur, i = 0, [], "", start
    while i < len(s):
        c = s[i]
        if c == "(":
            depth += 1
            if depth > 1:
                cur += c
        elif c == ")":
            depth -= 1
            if depth == 0:
                args.append(cur.strip())
                return [a for a in args if a != ""], i + 1
            cur += c
        elif c == "," and depth == 1:
            args.append(cur.strip())
            cur = ""
        else:
            cur += c
        i += 1
    raise ValueError(f"unbalanced macro call at {s[start - 20:start + 20]!r}")


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def expand_sql_macros(sql, ctx, timescaledb):
    """Grafana's PostgreSQL macros (grafana docs: PostgreSQL data source, macros)."""
    out, i = "", 0
    pat = re.compile(r"\$__(timeFilter|timeFrom|timeTo|timeGroupAlias|timeGroup|unixEpochFilter|unixEpochFrom|"
                     r"unixEpochTo|unixEpochGroupAlias|unixEpochGroup|timeEpoch|time)\(")
    while True:
        m = pat.search(sql, i)
        if not m:
            return out + sql[i:]
        out += sql[i:m.start()]
        name = m.group(1)
        args, i = split_args(sql, m.end() - 1)
        f, t = ctx.t_from, ctx.t_to
        if name == "timeFilter":
            out += f"{args[0]} BETWEEN '{iso(f)}' AND '{iso(t)}'"
        elif name == "timeFrom":
            out += f"'{iso(f)}'"
        elif name == "timeTo":
            out += f"'{iso(t)}'"
        elif name == "time":
            out += f'{args[0]} AS "time"'
        elif name == "timeEpoch":
            out += f'extract(epoch from {args[0]}) AS "time"'
        elif name in ("timeGroup", "timeGroupAlias"):
            secs = parse_duration_ms(args[1].strip("'")) / 1000
            if timescaledb:
                expr = f"time_bucket('{secs:.3f}s',{args[0]})"
            else:
                expr = f"floor(extract(epoch from {args[0]})/{secs:g})*{secs:g}"
            out += expr + (' AS "time"' if name == "timeGroupAlias" else "")
        elif name == "unixEpochFilter":
            out += f"{args[0]} >= {int(f.timestamp())} AND {args[0]} <= {int(t.timestamp())}"
        elif name == "unixEpochFrom":
            out += str(int(f.timestamp()))
        elif name == "unixEpochTo":
            out += str(int(t.timestamp()))
        elif name in ("unixEpochGroup", "unixEpochGroupAlias"):
            secs = parse_duration_ms(args[1].strip("'")) // 1000
            out += f"floor(({args[0]})/{secs})*{secs}" + (' AS "time"' if name == "unixEpochGroupAlias" else "")


def expand_influx_macros(q, ctx):
    f, t = int(ctx.t_from.timestamp() * 1000), int(ctx.t_to.timestamp() * 1000)
    return q.replace("$timeFilter", f"time >= {f}ms and time <= {t}ms").replace(
        "$__timeFilter", f"time >= {f}ms and time <= {t}ms")


# --------------------------------------------------------------------------
# Query runners
# --------------------------------------------------------------------------

def psql(url, sql):
    """Rows of one query (CSV through psql, so multi-line values are fine); raises on error."""
    r = subprocess.run([os.path.join(PG_BINDIR, "psql"), "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1", "-d", url],
                       input=sql, capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(r.stderr.strip() or r.stdout.strip())
    rows = list(csv.reader(io.StringIO(r.stdout)))
    return rows[1:] if rows else []


def influx_query(base, db, q):
    url = f"{base}/query?" + urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"})
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        raise RuntimeError(f"HTTP {e.code}: {body.strip()}") from None
    res = doc.get("results", [{}])[0]
    if "error" in res or "error" in doc:
        raise RuntimeError(res.get("error") or doc.get("error"))
    return res.get("series", [])


def prom_get(base, path, **params):
    url = f"{base}{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as e:
        doc = json.loads(e.read())
    if doc.get("status") != "success":
        raise RuntimeError(f"{doc.get('errorType')}: {doc.get('error')}")
    return doc["data"]


# --------------------------------------------------------------------------
# The live stack
# --------------------------------------------------------------------------

class Stack:
    def __init__(self, work, env, procs):
        self.work, self.env, self.procs = work, env, procs
        self.ports, self.stores = {}, {}

    def start(self, name, command, cfg_text):
        cfg = os.path.join(self.work, f"{name}.toml")
        with open(cfg, "w") as f:
            f.write(cfg_text)
        log = open(os.path.join(self.work, f"{name}.log"), "w")
        p = subprocess.Popen([BIN, command, "--config", cfg], stdout=log, stderr=subprocess.STDOUT,
                             cwd=self.work)
        self.procs.append(p)
        return p


def http_section(port, per_tenant=False):
    return (f'[http]\nlisten = "127.0.0.1:{port}"\nper_tenant_metrics = {str(per_tenant).lower()}\n'
            '[log]\nlevel = "warn"\n')


def sink_config(brokers, group, url, port, extra_store=""):
    return (f'[kafka]\nbrokers = "{brokers}"\n[sink]\ngroup_id = "{group}"\nbatch_max_wait = "200ms"\n'
            'properties = { "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }\n'
            f'[store]\nurl = "{url}"\nretention = "1d"\n{extra_store}' + http_section(port, per_tenant=True))


def publish_bad(broker, n_each=5):
    """Dead letters of three reasons: a topic outside the pattern, invalid JSON, an empty payload."""
    host, port = broker.removeprefix("mqtt://").rsplit(":", 1)
    pub = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
    for i in range(n_each):
        for topic, payload in (("mtic/msg/client/elsewhere/x", '{"temperature": 1}'),
                               ("mtic/msg/client/realtime/tenant-1/project-1", "{not json"),
                               ("mtic/msg/client/realtime/tenant-2/project-1", "")):
            args = [pub, "-h", host, "-p", port, "-q", "1", "-t", topic]
            args += ["-n"] if payload == "" else ["-m", payload]
            subprocess.run(args, check=True, timeout=30)


def live(args, dashboards, datasources, rules):
    t0 = time.time()
    env = benchlib.services_env("postgres", "influxdb", "timescaledb")
    pg_server = env["IOTPIPE_TEST_POSTGRES_URL"].rsplit("/", 1)[0]
    ts_server = env.get("IOTPIPE_TEST_TIMESCALE_URL", "").rsplit("/", 1)[0] or None
    influx = env["IOTPIPE_TEST_INFLUX_URL"]
    if not ts_server:
        say("SKIPPED: TimescaleDB dashboard queries (no TimescaleDB server: IOTPIPE_TEST_TIMESCALE_URL unset); "
            "install TimescaleDB 2.x for PostgreSQL 15 (docs/storage.md) and run scripts/services.sh up timescaledb")
        CONDITIONAL.update({n: "exported only by a sink on TimescaleDB (none here)" for n in TIMESCALE_ONLY})
    work = tempfile.mkdtemp(prefix="iotpipe-check-obs-", dir="/var/tmp")
    procs = []
    db = f"obs_check_{int(time.time())}_{os.getpid()}"
    st = Stack(work, env, procs)
    try:
        broker = benchlib.start_mosquitto(work, env, procs)
        brokers = benchlib.start_tansu(env, procs)
        topics = 'topics = ["mtic/msg/client/#"]\n'
        route = '[route]\ndevice_id = "/deviceId"\nevent_time = "/ts"\n'
        for name in ("bridge", "run", "sink_pg", "sink_influx", "sink_ts"):
            st.ports[name] = free_port()
        st.start("bridge", "bridge", f'[mqtt]\nurl = "{broker}"\nclient_id = "obs-bridge"\n{topics}{route}'
                 f'[kafka]\nbrokers = "{brokers}"\n[journal]\npath = "{work}/bridge-journal"\n'
                 + http_section(st.ports["bridge"], per_tenant=True))
        st.start("run", "run", f'[mqtt]\nurl = "{broker}"\nclient_id = "obs-run"\n{topics}{route}'
                 f'[store]\nurl = "sqlite://{work}/run.db"\n[journal]\npath = "{work}/run-journal"\n'
                 + http_section(st.ports["run"], per_tenant=True))
        for name in ("bridge", "run"):
            wait_port(st.ports[name])
            wait_ready(st.ports[name])
        prom = start_prometheus(work, st, procs, bool(ts_server))
        say(f"live: bridge, run and Prometheus up ({time.time() - t0:.1f} s)")
        benchlib.simulate(broker, 600, extra=["--devices", "4"])
        publish_bad(broker)
        for name, done in (("bridge", "iotpipe_messages_delivered_total"), ("run", "iotpipe_messages_stored_total")):
            benchlib.wait_metric(st.ports[name], done, 600, timeout=120, step=0.2)
        st.stores["postgres"] = f"{pg_server}/{db}"
        sinks = [("sink_pg", "postgres", st.stores["postgres"], ""),
                 ("sink_influx", "influxdb", f"influxdb://{influx.removeprefix('http://')}/{db}", "")]
        if ts_server:
            st.stores["timescaledb"] = f"{ts_server}/{db}"
            sinks.append(("sink_ts", "timescaledb", st.stores["timescaledb"], 'timescaledb = "on"\n'))
        for name, _, url, extra in sinks:
            st.start(name, "sink", sink_config(brokers, f"obs-{name}-{db}", url, st.ports[name], extra))
        for name, *_ in sinks:
            wait_port(st.ports[name])
            wait_ready(st.ports[name], timeout=60)
        say(f"live: {len(sinks)} sinks ready ({time.time() - t0:.1f} s); steady load while Prometheus scrapes")
        load = subprocess.Popen([BIN, "simulate", "--broker", broker, "--count", str(args.load_seconds * 100),
                                 "--rate", "100", "--devices", "4", "--qos", "1", "--start-seq", "600",
                                 "--timeout", "300s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(load)
        load.wait(timeout=args.load_seconds + 120)
        publish_bad(broker, 2)
        for name, *_ in sinks:
            benchlib.wait_metric(st.ports[name], "iotpipe_sink_rows_written_total", 600 + args.load_seconds * 100,
                                 timeout=120, step=0.2)
        time.sleep(5)  # a few more scrapes and rule evaluations after the last row
        say(f"live: load done ({time.time() - t0:.1f} s)")

        scraped = {}
        for name in ("bridge", "sink_pg", "run") + (("sink_ts",) if ts_server else ()):
            scraped[name] = metrics(st.ports[name])
        prom_checks(prom, dashboards, rules, scraped)
        say(f"live: PromQL checked ({time.time() - t0:.1f} s)")
        if ts_server:
            psql(st.stores["timescaledb"], "CALL refresh_continuous_aggregate('telemetry_numeric_rollup', NULL, NULL)")
        for name, dash in dashboards.items():
            store = next((s for s in ("postgres", "timescaledb", "influxdb") if dash["uid"].endswith("-" + s)), None)
            if store in ("postgres", "timescaledb"):
                if store in st.stores:
                    sql_dashboard_checks(name, dash, datasources, st.stores[store])
            elif store == "influxdb":
                influx_dashboard_checks(name, dash, datasources, influx, db)
        say(f"live: SQL and InfluxQL checked ({time.time() - t0:.1f} s)")
        if args.self_test:
            self_test_live(prom, dashboards, datasources, rules, scraped, st, influx, db)
    finally:
        benchlib.stop_all(procs)
        for store in st.stores.values():
            server, name = store.rsplit("/", 1)
            try:
                psql(f"{server}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as e:  # noqa: BLE001
                say(f"note: could not drop {name}: {e}")
        try:
            urllib.request.urlopen(f"{influx}/query", data=urllib.parse.urlencode(
                {"q": f'DROP DATABASE "{db}"'}).encode(), timeout=10)
        except Exception:  # noqa: BLE001
            pass
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def start_prometheus(work, st, procs, with_ts):
    port = free_port()
    rules = os.path.join(work, "iotpipe.rules.yaml")
    shutil.copy(RULES, rules)
    jobs = {"iotpipe-bridge": ["bridge"], "iotpipe-sink": ["sink_pg", "sink_influx"] + (["sink_ts"] if with_ts else []),
            "iotpipe-run": ["run"]}
    cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
           "rule_files": [rules],
           # namespace: as the Prometheus Operator adds it (the rules aggregate by it, the dashboard filters on it).
           "scrape_configs": [{"job_name": job, "static_configs": [
               {"targets": [f"127.0.0.1:{st.ports[n]}" for n in names], "labels": {"namespace": "obs-check"}}]}
               for job, names in jobs.items()]}
    path = os.path.join(work, "prometheus.yml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    log = open(os.path.join(work, "prometheus.log"), "w")
    procs.append(subprocess.Popen([shutil.which("prometheus") or "/usr/bin/prometheus", f"--config.file={path}",
                                   f"--storage.tsdb.path={work}/prometheus-data",
                                   f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d"],
                                  stdout=log, stderr=subprocess.STDOUT))
    wait_port(port, timeout=30)
    base = f"http://127.0.0.1:{port}/api/v1"
    end = time.time() + 30
    while time.time() < end:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2)
            break
        except Exception:  # noqa: BLE001
            time.sleep(0.2)
    return base


# --------------------------------------------------------------------------
# PromQL
# --------------------------------------------------------------------------

def metric_names(text):
    """Names used in a PromQL expression: identifiers not followed by '(' outside strings, braces,
    brackets and label lists."""
    names, i, n, label_list = set(), 0, len(text), False
    while i < n:
        c = text[i]
        if c == '"' or c == "'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            i = j + 1
        elif c == "{":
            i = text.index("}", i) + 1
        elif c == "[":
            i = text.index("]", i) + 1
        elif c == "(" and label_list:
            i = text.index(")", i) + 1
            label_list = False
        elif re.match(r"[A-Za-z_:]", c):
            m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", text[i:])
            word = m.group(0)
            i += len(word)
            rest = text[i:].lstrip()
            if word in ("by", "without", "on", "ignoring", "group_left", "group_right"):
                label_list = True
            elif word.lower() in PROMQL_KEYWORDS or rest.startswith("(") or re.match(r"(by|without)\b", rest):
                pass  # keyword, function, or an aggregation followed by its label list
            elif re.match(r"\d", word) is None:
                names.add(word)
        else:
            i += 1
    return names


def selectors(text):
    """Vector selectors (name{...}) of an expression, for the inner-selector check."""
    out = []
    for name in sorted(metric_names(text)):
        for m in re.finditer(rf"(?<![\w:]){re.escape(name)}(\{{[^}}]*\}})?", text):
            out.append(name + (m.group(1) or ""))
    return sorted(set(out))


def exposed_names(scraped):
    names, histograms = set(), set()
    for text in scraped.values():
        for line in text.splitlines():
            m = re.match(r"# TYPE (\S+) (\S+)", line)
            if m:
                names.add(m.group(1))
                if m.group(2) == "histogram":
                    histograms.add(m.group(1))
            elif line and not line.startswith("#"):
                names.add(re.match(r"[^{ ]+", line).group(0))
    for h in histograms:
        names |= {h + "_bucket", h + "_sum", h + "_count"}
    return names


def defined_in_source(name):
    for path in glob.glob(os.path.join(REPO, "src", "telemetry", "*.rs")):
        with open(path) as f:
            if f'"{name}"' in f.read():
                return True
    return False


def prom_exprs(dashboards):
    """(where, expression, variable?) for every Prometheus query of the dashboards."""
    out = []
    for name, dash in dashboards.items():
        if dash["uid"] != "iotpipe-pipeline":
            continue
        for v in dash["templating"]["list"]:
            if v.get("type") == "datasource":
                continue
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"{name} variable {v['name']}", q, True))
        for p in all_panels(dash):
            for t in p.get("targets", []):
                out.append((f"{name} '{p['title']}' {t['refId']}", t["expr"], False))
    return out


def prom_checks(base, dashboards, rules, scraped):
    exposed = exposed_names(scraped)
    pipeline = next(d for d in dashboards.values() if d["uid"] == "iotpipe-pipeline")
    variables = {v["name"]: v for v in pipeline["templating"]["list"]}
    now = dt.datetime.now(dt.timezone.utc)
    ctx = Ctx(now - dt.timedelta(minutes=2), now, 2000, {})
    # Variables: label_values(metric, label), in order; then "All" of each.
    for v in pipeline["templating"]["list"]:
        if v.get("type") == "datasource":
            continue
        q = interpolate(v["query"]["query"], ctx, "prom", variables)
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q.strip())
        count("PromQL queries (variables)")
        if not m:
            fail(f"pipeline variable {v['name']}: not label_values(selector, label): {q}")
            continue
        try:
            vals = prom_get(base, f"/label/{m.group(2)}/values", **{"match[]": m.group(1)})
        except RuntimeError as e:
            fail(f"pipeline variable {v['name']}: {q}: {e}")
            continue
        if not vals:
            fail(f"pipeline variable {v['name']}: {q} returned no values")
        ctx.values[v["name"]] = vals or ["none"]
        ctx.values["__all__" + v["name"]] = True
    ctx.values["__rate_interval"] = ["15s"]

    def used_names(expr):
        for n in metric_names(expr):
            if n.startswith("iotpipe_") or n.startswith("process_"):
                yield n

    def check_names(where, expr):
        for n in used_names(expr):
            if n in exposed:
                continue
            if n in CONDITIONAL and defined_in_source(n):
                continue
            fail(f"{where}: metric {n} is not exposed by the bridge, sink or run (/metrics)")

    for where, expr, is_var in prom_exprs(dashboards):
        check_names(where, expr)
        if is_var:
            continue
        q = interpolate(expr, ctx, "prom", variables).replace("$__rate_interval", "15s")
        count("PromQL queries (dashboards)")
        try:
            end = time.time()
            data = prom_get(base, "/query_range", query=q, start=end - 60, end=end, step=2)
        except RuntimeError as e:
            fail(f"{where}: {q}: {e}")
            continue
        if not data["result"] and not any(n in CONDITIONAL for n in used_names(expr)):
            fail(f"{where}: no series: {q}")
    for a in alerts(rules) + [r for g in rules["groups"] for r in g["rules"] if "record" in r]:
        where = f"rule {a.get('alert') or a.get('record')}"
        check_names(where, a["expr"])
        count("PromQL queries (rules)")
        try:
            prom_get(base, "/query", query=a["expr"])
        except RuntimeError as e:
            fail(f"{where}: {e}")
            continue
        # A healthy run leaves alert expressions empty: their selectors must have data instead.
        for sel in selectors(a["expr"]):
            name = sel.split("{")[0]
            if name in CONDITIONAL:
                continue
            count("PromQL queries (rule selectors)")
            try:
                if not prom_get(base, "/query", query=sel)["result"]:
                    fail(f"{where}: selector {sel} has no series in the live run")
            except RuntimeError as e:
                fail(f"{where}: selector {sel}: {e}")
    # The rules as loaded by Prometheus: evaluated without errors, nothing firing.
    data = prom_get(base, "/rules")
    loaded = [r for g in data["groups"] for r in g["rules"]]
    n_rules = sum(len(g["rules"]) for g in rules["groups"])
    if len(loaded) != n_rules:
        fail(f"Prometheus loaded {len(loaded)} rules, the rule file has {n_rules}")
    for r in loaded:
        if r.get("health") == "err" or r.get("lastError"):
            fail(f"rule {r['name']}: evaluation error in Prometheus: {r.get('lastError')}")
        if r.get("state") == "firing":
            fail(f"rule {r['name']} fires in a healthy run: {[a.get('labels') for a in r.get('alerts', [])]}")
    # Unit-test input series must use real names too (a stale test proves nothing).
    for path in glob.glob(os.path.join(PROM_DIR, "*_test.yaml")):
        for t in yaml.safe_load(open(path)).get("tests", []):
            for s in t.get("input_series", []):
                n = s["series"].split("{")[0]
                if n != "up" and n not in exposed and not (n in CONDITIONAL and defined_in_source(n)):
                    fail(f"{os.path.basename(path)} '{t['name']}': input series {n} is not exposed by iotpipe")


# --------------------------------------------------------------------------
# SQL and InfluxQL
# --------------------------------------------------------------------------

def ranges(now):
    """Short (raw) and long (rollup on TimescaleDB) ranges; all test data is in the last minutes."""
    return [("last 15m", now - dt.timedelta(minutes=15), now), ("last 24h", now - dt.timedelta(hours=24), now)]


def min_interval_ms(datasources, uid, panel=None):
    s = (panel or {}).get("interval") or datasources.get(uid, {}).get("jsonData", {}).get("timeInterval") or "1m"
    return parse_duration_ms(s.lstrip(">"))


def resolve_variables(name, dash, datasources, ctx, run_var):
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    for v in dash["templating"]["list"]:
        if v.get("type") == "datasource":
            continue
        uid = resolve_ds(dash, v["datasource"])["uid"]
        ctx.interval_ms = grafana_interval_ms((ctx.t_to - ctx.t_from).total_seconds() * 1000, 1000,
                                              min_interval_ms(datasources, uid))
        q = v["query"] if isinstance(v["query"], str) else v["query"].get("query", "")
        count(f"{datasources[uid]['type']} variable queries")
        try:
            vals = run_var(interpolate(q, ctx, kind_of(v["datasource"]["type"]), variables))
        except Exception as e:  # noqa: BLE001
            fail(f"{name}: variable {v['name']}: {e}")
            vals = []
        if v.get("regex"):
            rx = re.compile(v["regex"].strip("/"))
            vals = [x for x in vals if rx.search(x)]
        if not vals:
            fail(f"{name}: variable {v['name']} has no values")
        ctx.values[v["name"]] = vals or ["__none__"]
        ctx.values["__all__" + v["name"]] = True
    return variables


def kind_of(ds_type):
    return {"postgres": "sql", "grafana-postgresql-datasource": "sql", "influxdb": "influx"}.get(ds_type, "prom")


def sql_dashboard_checks(name, dash, datasources, url):
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=1)
    for label, f, t in ranges(now):
        ctx = Ctx(f, t, 1000, {})
        var_ds = datasources[next(resolve_ds(dash, v["datasource"])["uid"] for v in dash["templating"]["list"]
                                  if v.get("type") != "datasource")]

        def run_var(q):
            sql = expand_sql_macros(q, ctx, var_ds.get("jsonData", {}).get("timescaledb", False))
            return [r[0] for r in psql(url, sql)]

        variables = resolve_variables(name, dash, datasources, ctx, run_var)
        for p in all_panels(dash):
            for tg in p.get("targets", []):
                uid = resolve_ds(dash, tg["datasource"])["uid"]
                tsdb = datasources[uid].get("jsonData", {}).get("timescaledb", False)
                ctx.interval_ms = grafana_interval_ms((t - f).total_seconds() * 1000, p.get("maxDataPoints", 1000),
                                                      min_interval_ms(datasources, uid, p))
                sql = expand_sql_macros(interpolate(tg["rawSql"], ctx, "sql", variables), ctx, tsdb)
                if p["title"] == "Silent devices":
                    # Every device of the run is fresh: a threshold in the future makes each one "silent".
                    sql = sql.replace(f"interval '{observability_gen.SILENT_AFTER}'", "interval '-1 hour'")
                count("SQL queries (panels x ranges)")
                where = f"{name} '{p['title']}' {tg['refId']} ({label}, $__interval {fmt_duration(ctx.interval_ms)})"
                try:
                    rows = psql(url, sql)
                except RuntimeError as e:
                    fail(f"{where}: {e}\n--- query as run:\n{sql}")
                    continue
                if not rows:
                    fail(f"{where}: no rows\n--- query as run:\n{sql}")


def influx_dashboard_checks(name, dash, datasources, base, db):
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=1)
    for label, f, t in ranges(now):
        ctx = Ctx(f, t, 1000, {})

        def run_var(q):
            vals = []
            for s in influx_query(base, db, expand_influx_macros(q, ctx)):
                col = s["columns"].index("value") if "value" in s["columns"] else 0
                vals += [str(row[col]) for row in s.get("values", [])]
            return sorted(set(vals))

        variables = resolve_variables(name, dash, datasources, ctx, run_var)
        for p in all_panels(dash):
            for tg in p.get("targets", []):
                uid = resolve_ds(dash, tg["datasource"])["uid"]
                ctx.interval_ms = grafana_interval_ms((t - f).total_seconds() * 1000, p.get("maxDataPoints", 1000),
                                                      min_interval_ms(datasources, uid, p))
                q = expand_influx_macros(interpolate(tg["query"], ctx, "influx", variables), ctx)
                count("InfluxQL queries (panels x ranges)")
                where = f"{name} '{p['title']}' {tg['refId']} ({label})"
                try:
                    series = influx_query(base, db, q)
                except (RuntimeError, urllib.error.HTTPError) as e:
                    fail(f"{where}: {e}\n--- query as run:\n{q}")
                    continue
                if not series or not any(s.get("values") for s in series):
                    fail(f"{where}: no series\n--- query as run:\n{q}")


# --------------------------------------------------------------------------
# Self-test: every check must catch a break
# --------------------------------------------------------------------------

def expect_caught(what, fn):
    before = len(FAILS)
    saved, counts = list(FAILS), dict(COUNTS)
    say(f"self-test: breaking {what}")
    EXPECTING.append(what)
    try:
        fn()
    finally:
        EXPECTING.pop()
    caught = len(FAILS) > before
    FAILS[:] = saved
    COUNTS.clear()
    COUNTS.update(counts)
    say(f"self-test: {what}: {'caught' if caught else 'NOT CAUGHT'}")
    if not caught:
        fail(f"self-test: breaking {what} was not detected")
    count("self-test breaks caught" if caught else "self-test breaks missed")


def self_test_static(dashboards, datasources, rules, test_files):
    d = copy.deepcopy(dashboards)
    p = next(p for p in all_panels(d["iotpipe-telemetry-postgres.json"]) if p.get("targets"))
    p["targets"][0]["datasource"] = {"type": "postgres", "uid": "no-such-uid"}
    expect_caught("a datasource uid", lambda: check_dashboard("x", d["iotpipe-telemetry-postgres.json"], datasources))
    d = copy.deepcopy(dashboards)
    p = list(all_panels(d["iotpipe-pipeline.json"]))
    p[1]["id"] = p[0]["id"]
    expect_caught("a duplicate panel id", lambda: check_dashboard("x", d["iotpipe-pipeline.json"], datasources))
    d = copy.deepcopy(dashboards)
    p = next(p for p in all_panels(d["iotpipe-telemetry-influxdb.json"]) if p.get("targets"))
    p["targets"][0]["query"] += " AND $nosuchvar"
    expect_caught("an undefined variable", lambda: check_dashboard("x", d["iotpipe-telemetry-influxdb.json"],
                                                                   datasources))
    tmp = tempfile.mkdtemp()
    try:
        with open(test_files[0]) as f:
            doc = yaml.safe_load(f)
        for t in doc["tests"]:
            t["alert_rule_test"] = [a for a in t.get("alert_rule_test", [])
                                    if a["alertname"] != "IotpipeJournalFull"]
        path = os.path.join(tmp, "x_test.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        expect_caught("an alert without a unit test", lambda: check_rule_tests(rules, [path]))
        if shutil.which("amtool"):
            am = yaml.safe_load(open(observability_gen.ALERTMANAGER))
            for ir in am["inhibit_rules"]:
                ir["equal"] = ["cluster"]
            path = os.path.join(tmp, "alertmanager.yml")
            with open(path, "w") as f:
                yaml.safe_dump(am, f)
            expect_caught("inhibition across namespaces", lambda: alertmanager_checks(path))
        r = copy.deepcopy(rules)
        r["groups"][0]["rules"][0]["annotations"]["runbook_url"] = "docs/observability.md#iotpipebridgedown"
        r["groups"][1]["rules"][0]["expr"] = 'up{job="iotpipe-bridge"} == 0'
        expect_caught("a relative runbook URL and a job selector", lambda: check_rule_sets(r) or static_rule_annots(r))
    finally:
        shutil.rmtree(tmp)


def self_test_live(prom, dashboards, datasources, rules, scraped, st, influx, db):
    d = copy.deepcopy(dashboards)
    p = next(p for p in all_panels(d["iotpipe-pipeline.json"]) if "Sink rows" in p["title"])
    p["targets"][0]["expr"] = p["targets"][0]["expr"].replace("iotpipe_sink_rows_written_total",
                                                              "iotpipe_sink_rows_stored_total")
    expect_caught("a metric name in the pipeline dashboard", lambda: prom_checks(prom, d, rules, scraped))
    r = copy.deepcopy(rules)
    r["groups"][0]["rules"].append({"alert": "Broken", "expr": "rate(iotpipe_journal_depth[5m] > 1"})
    expect_caught("a PromQL syntax error in a rule", lambda: prom_checks(prom, dashboards, r, scraped))
    d = copy.deepcopy(dashboards)
    p = next(p for p in all_panels(d["iotpipe-telemetry-postgres.json"]) if p["title"] == "Latest raw messages")
    p["targets"][0]["rawSql"] = p["targets"][0]["rawSql"].replace("mqtt_topic", "topic")
    expect_caught("a column in a SQL query", lambda: sql_dashboard_checks(
        "x", d["iotpipe-telemetry-postgres.json"], datasources, st.stores["postgres"]))
    d = copy.deepcopy(dashboards)
    p = next(p for p in all_panels(d["iotpipe-telemetry-postgres.json"]) if p["title"] == "Dead letters by reason")
    p["targets"][0]["rawSql"] = p["targets"][0]["rawSql"].replace("GROUP BY 1, 2", "AND reason = 'nope' GROUP BY 1, 2")
    expect_caught("a SQL query that returns no rows", lambda: sql_dashboard_checks(
        "x", d["iotpipe-telemetry-postgres.json"], datasources, st.stores["postgres"]))
    if "timescaledb" in st.stores:
        # The 24h range must take the rollup branch and get rows from it, the 15m range the raw one.
        for what, old, new in (("the rollup branch (TimescaleDB, long range)", "$__interval_ms >= 60000",
                                "$__interval_ms >= 600000000"),
                               ("the raw branch (TimescaleDB, short range)", "$__interval_ms < 60000",
                                "$__interval_ms < 0")):
            d = copy.deepcopy(dashboards)
            p = next(p for p in all_panels(d["iotpipe-telemetry-timescaledb.json"]) if p["title"] == "Numeric fields")
            assert old in p["targets"][0]["rawSql"]
            p["targets"][0]["rawSql"] = p["targets"][0]["rawSql"].replace(old, new)
            expect_caught(what, lambda: sql_dashboard_checks(
                "x", d["iotpipe-telemetry-timescaledb.json"], datasources, st.stores["timescaledb"]))
        d = copy.deepcopy(dashboards)
        p = next(p for p in all_panels(d["iotpipe-telemetry-timescaledb.json"]) if p["title"] == "Numeric fields")
        p["targets"][0]["rawSql"] = p["targets"][0]["rawSql"].replace("sum(avg * samples)", "sum(average * samples)")
        expect_caught("a rollup column (TimescaleDB)", lambda: sql_dashboard_checks(
            "x", d["iotpipe-telemetry-timescaledb.json"], datasources, st.stores["timescaledb"]))
    d = copy.deepcopy(dashboards)
    p = next(p for p in all_panels(d["iotpipe-telemetry-influxdb.json"]) if p["title"] == "Dead letters by reason")
    p["targets"][0]["query"] = p["targets"][0]["query"].replace('"dead_letters"', '"dead_letter"')
    expect_caught("a measurement in an InfluxQL query", lambda: influx_dashboard_checks(
        "x", d["iotpipe-telemetry-influxdb.json"], datasources, influx, db))


# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--static", action="store_true", help="static checks and promtool only (no services)")
    ap.add_argument("--no-self-test", dest="self_test", action="store_false",
                    help="skip breaking copies of the artifacts on purpose (each break must be caught)")
    ap.add_argument("--load-seconds", type=int, default=15, help="seconds of steady load while scraping")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    args = ap.parse_args()
    t0 = time.time()
    dashboards = load_dashboards()
    datasources = load_datasources()
    rules = load_rules()
    test_files = sorted(glob.glob(os.path.join(PROM_DIR, "*_test.yaml")))
    if not test_files:
        fail("no *_test.yaml beside the rule file")
    static_checks(dashboards, datasources, rules, test_files)
    promtool_checks(test_files)
    alertmanager_checks()
    if args.self_test:
        self_test_static(dashboards, datasources, rules, test_files)
    say(f"static and promtool checks done ({time.time() - t0:.1f} s)")
    if not args.static:
        live(args, dashboards, datasources, rules)
    say("counts: " + ", ".join(f"{k} {v}" for k, v in COUNTS.items()))
    if FAILS:
        say(f"check-observability: {len(FAILS)} failure(s) in {time.time() - t0:.0f} s")
        sys.exit(1)
    say(f"check-observability: all checks passed in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
