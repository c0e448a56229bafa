#!/usr/bin/env python3
"""Checks of deploy/: renders every Kustomize overlay and the Helm chart, and
checks what comes out. Run through scripts/check-deploy.sh, which installs the
tools; deploy/README.md ("What is validated, and how") describes each check.

Exit status: 0 when every check passed (skipped ones say SKIPPED), 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "iotpipe"

# Kustomize directories rendered (relative to deploy/kustomize), and what the
# render must carry: "monitoring" (a ServiceMonitor for its workloads),
# "reloader" (Reloader annotations on its workloads).
KUSTOMIZE = {
    "base": set(),
    "single-node": set(),
    "overlays/dev": {"monitoring"},
    "overlays/prod": {"monitoring"},
    "overlays/prod-keda": {"monitoring"},
    "kafka": set(),
    "../argocd/prod": set(),
    "../argocd/dev": set(),
}
# Kustomize renders of an overlay with opt-in components (written to a
# temporary kustomization): name -> (base, components, expectations).
KUSTOMIZE_COMPOSED = {
    "overlays/prod+reloader": ("overlays/prod", ["components/reloader"], {"monitoring", "reloader"}),
}
# Helm values files rendered (None: the chart's defaults), and the same flags.
HELM = {
    None: set(),
    "ci/all-on-values.yaml": {"monitoring", "reloader"},
    "ci/run-values.yaml": set(),
    "ci/msk-values.yaml": set(),
    "ci/platform-values.yaml": {"monitoring"},
}
# More Helm renders, each for one check: name -> (values, namespace).
HELM_SCENARIOS = {
    # Another namespace: its MQTT client ids must differ from the default render's.
    "helm:namespace iotpipe-staging": ({}, "iotpipe-staging"),
    # Rules of a run-only release: IotpipeRunDown and no bridge/sink down alerts, another runbook base
    # (scripts/observability_gen.py; check_prometheus_rules).
    "helm:run only, prometheusRule": (
        {**yaml.safe_load((CHART / "ci" / "run-values.yaml").read_text()),
         "prometheusRule": {"enabled": True, "runbookBaseUrl": "https://docs.example/iotpipe/observability.md"}},
        "iotpipe-dev"),
    # The Strimzi objects follow kafka.topic and kafka.retention.
    "helm:topic telemetry.*, retention 7d": (
        {"strimzi": {"enabled": True}, "kafka": {"topic": "telemetry.{tenant_id}.{project_id}", "retention": "7d"},
         "sink": {"topics": ["^telemetry\\..+"]}}, "iotpipe"),
    "helm:fixed topic": ({"strimzi": {"enabled": True}, "kafka": {"topic": "iot-all"}, "sink": {"topics": ["iot-all"]}}, "iotpipe"),
    # A topic per (tenant, project) pair, 1 partition each: prefix ACLs, no
    # KafkaTopic for the template, the sink's maximum not tied to partitions.
    "helm:topic per pair": (
        {"strimzi": {"enabled": True}, "kafka": {"topic": "iot.{tenant_id}.{project_id}", "partitions": 1}}, "iotpipe"),
    # Moving from per-pair topics to the shared one: the sink may still read iot.*.
    "helm:shared topic, sink reads iot.* too": (
        {"strimzi": {"enabled": True, "sinkReadPrefixes": ["iot."]},
         "kafka": {"partitions": 6, "topicConfig": {"retention.ms": 604800000}}}, "iotpipe"),
    # terminationGracePeriodSeconds and the startup probe follow the values.
    "helm:run only, grace 70s": (
        {**yaml.safe_load((CHART / "ci" / "run-values.yaml").read_text()), "run": {
            **yaml.safe_load((CHART / "ci" / "run-values.yaml").read_text())["run"], "gracePeriod": "70s"}},
        "iotpipe-dev"),
    "helm:grace 90s/2m, journal 4GiB": (
        {"bridge": {"gracePeriod": "90s"}, "sink": {"gracePeriod": "2m"},
         "journal": {"enabled": True, "maxSize": "4GiB", "size": "5Gi"}}, "iotpipe"),
}
# Values that must not render, each with a phrase of the reason the chart gives.
HELM_MUST_FAIL = [
    ({"mqtt": {"sharedGroup": ""}, "bridge": {"replicas": 2}}, "every replica receives every message"),
    ({"sink": {"keda": {"enabled": True, "maxReplicas": 13, "serverAddress": "http://prometheus:9090"},
               "autoscaling": {"enabled": False}}, "serviceMonitor": {"enabled": True}}, "kafka.partitions"),
    ({"sink": {"autoscaling": {"maxReplicas": 13}}}, "kafka.partitions"),
    ({"kafka": {"partitions": 4}, "sink": {"autoscaling": {"maxReplicas": 6}}}, "kafka.partitions"),
    ({"sink": {"keda": {"enabled": True}}}, "serverAddress"),
    ({"sink": {"keda": {"enabled": True, "serverAddress": "http://prometheus:9090"}}}, "serviceMonitor or podMonitor"),
    ({"kafka": {"tls": {"enabled": True}, "properties": {"security.protocol": "ssl"}}}, "security.protocol"),
    ({"kafka": {"sasl": {"enabled": True}, "properties": {"sasl.mechanisms": "PLAIN"}}}, "sasl.mechanisms"),
    ({"bridge": {"extraConfig": "[bridge]\ngrace_period = \"5s\"\n"}}, "not valid TOML"),
    ({"terminationGracePeriodSeconds": 20}, "drain budget"),
    ({"bridge": {"gracePeriod": "60s"}, "terminationGracePeriodSeconds": 60}, "drain budget"),
    ({"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}, "twice"),
    ({"strimzi": {"enabled": True}, "kafka": {"topic": "{tenant_id}.{project_id}"}}, "literal prefix"),
    ({"strimzi": {"enabled": True, "minInsyncReplicas": 4}}, "minInsyncReplicas"),
    ({"strimzi": {"enabled": True, "topicReplicas": 1, "minInsyncReplicas": 1}}, "min.insync.replicas"),
    ({"kafka": {"replicationFactor": 1}}, "min.insync.replicas"),
]
# values.schema.json must refuse these (what one value alone gets wrong) ...
SCHEMA_MUST_REFUSE = [
    {"store": {"url": "postgres://iotpipe:hunter2@db:5432/iotpipe"}},
    {"kafka": {"properties": {"sasl.password": "x"}}},
    {"sink": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "lots"}}}},
    {"bridge": {"gracePeriod": "25 seconds"}},
    {"mqtt": {"sharedGroup": ""}, "bridge": {"replicas": 3}},
    {"sink": {"keda": {"enabled": True, "serverAddress": ""}}},
]
# ... and accept these.
SCHEMA_MUST_ACCEPT = [
    {"sink": {"resources": {"requests": {"cpu": "1", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}}},
    {"run": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}}},
    {"kafka": {"tls": {"enabled": True, "existingSecret": ""}}},
]
# Kubernetes versions the core objects are validated against: the chart's
# kubeVersion floor and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ["1.27.0", "latest"]

# Peak RSS measured per command with the default settings (MiB; BENCHMARKS.md:
# bridge in journal mode "Bridge" 32.3, sink "2026-12-02" 46.9, run "Single
# node and demo" 56.5; docs/deploy-sizing.md). A memory limit must leave 20%
# above it (the PrometheusRule warns at 90%).
MEASURED_PEAK_MIB = {"bridge": 32.3, "sink": 46.9, "run": 56.5}
MEMORY_HEADROOM = 1.2
# Drain: iotpipe's default grace period, and what a pod needs beyond it (the
# tasks get up to 1 s more, docs/bridge.md; the rest is slack).
DEFAULT_GRACE_S = 25
DRAIN_MARGIN_S = 5
# Startup budget: the part without a journal, and the journal recovery rate:
# 378 MiB/s measured for a full 1 GiB journal (scripts/bench-journal-recovery.sh,
# the slowest run, page cache dropped; docs/deploy-sizing.md), with a safety
# factor of 2. The Helm value startupProbe.journalRecoveryMiBPerSecond and the
# Kustomize failureThresholds use the same figure.
STARTUP_BASE_S = 60
JOURNAL_RECOVERY_MIB_S = 189
DEFAULT_JOURNAL_MIB = 1024
DEFAULT_SEGMENT_MIB = 64
# Labels a Prometheus operator object must carry to be selected by
# kube-prometheus-stack's Prometheus.
MONITORING_SELECTOR_LABELS = ("release",)
# A production Application's targetRevision: a release tag or a commit, never a branch.
PINNED_REVISION = re.compile(r"^(v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?|[0-9a-f]{40})$")
# Strimzi 1.x serves only this API version.
STRIMZI_API = "kafka.strimzi.io/v1"
# iotpipe's [kafka] defaults (src/config/example.toml): one shared topic.
DEFAULT_TOPIC = "iot.telemetry"
DEFAULT_PARTITIONS = 12

APP_UID = 65532
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE_KEY|API_KEY)", re.I)
MQTT_COMMANDS = {"bridge", "run"}

# Custom resources validated with the @kubernetes-models npm packages (the
# CRD schemas of those projects): (apiVersion, kind) -> (package, module path).
NPM_MODELS = {
    ("argoproj.io/v1alpha1", "Application"): ("@kubernetes-models/argo-cd", "argoproj.io/v1alpha1"),
    ("argoproj.io/v1alpha1", "AppProject"): ("@kubernetes-models/argo-cd", "argoproj.io/v1alpha1"),
    ("keda.sh/v1alpha1", "ScaledObject"): ("@kubernetes-models/keda", "keda.sh/v1alpha1"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("@kubernetes-models/prometheus-operator", "monitoring.coreos.com/v1"),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("@kubernetes-models/prometheus-operator", "monitoring.coreos.com/v1"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("@kubernetes-models/prometheus-operator", "monitoring.coreos.com/v1"),
    ("external-secrets.io/v1", "ExternalSecret"): ("@kubernetes-models/external-secrets", "external-secrets.io/v1"),
}


def skipped(what: str) -> None:
    print(f"SKIPPED: {what}", file=sys.stderr, flush=True)


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    skips: list[str] = field(default_factory=list)
    quiet: bool = False

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
        if not self.quiet:
            print(f"FAIL  {msg}", flush=True)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def skip(self, msg: str) -> None:
        self.skips.append(msg)
        skipped(msg)


@dataclass
class Render:
    name: str  # e.g. kustomize:overlays/prod, helm:ci/all-on-values.yaml
    docs: list[dict]
    expect: set[str] = field(default_factory=set)
    values: dict | None = None  # Helm: the values given

    @property
    def expect_monitoring(self) -> bool:
        return "monitoring" in self.expect


# --------------------------------------------------------------------------- rendering


def render_kustomize(kubectl: str, path: Path, report: Report) -> list[dict] | None:
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        report.fail(f"kustomize {path} does not render: {proc.stderr.strip()}")
        return None
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_kustomize_composed(kubectl: str, base: str, components: list[str], report: Report) -> list[dict] | None:
    """An overlay with opt-in components, through a temporary kustomization."""
    with tempfile.TemporaryDirectory(prefix="iotpipe-kustomize-") as tmp:
        # Kustomize wants relative paths to components: link the tree in.
        os.symlink(DEPLOY / "kustomize", Path(tmp) / "k")
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"k/{base}"],
            "components": [f"k/{c}" for c in components],
        }))
        return render_kustomize(kubectl, Path(tmp), report)


def helm_docs(out: dict[str, str]) -> list[dict]:
    docs = []
    for tpl, text in sorted(out.items()):
        if tpl.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def render_helm(values: dict, label: str, report: Report, namespace: str = "iotpipe", lint: bool = True) -> list[dict] | None:
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    try:
        chart.validate_schema(values)
        report.count("helm values valid against values.schema.json")
    except helm_python.HelmError as e:
        report.fail(f"helm values {label} do not match values.schema.json: {e}")
    try:
        out = chart.render(values, name="iotpipe", namespace=namespace)
    except helm_python.HelmError as e:
        report.fail(f"helm chart does not render with {label}: {e}")
        return None
    if lint:
        result = helm_python.lint(str(CHART), values, strict=True)
        report.count("helm lint runs")
        for m in result.get("messages", []):
            if m.get("severity", 0) >= 2:
                report.fail(f"helm lint ({label}): {m.get('path')}: {m.get('error')}")
        for e in result.get("errors", []):
            report.fail(f"helm lint ({label}): {e}")
    return helm_docs(out)


def helm_must_fail(report: Report) -> None:
    """Values that produce objects which would not work must not render."""
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    with tempfile.TemporaryDirectory(prefix="iotpipe-chart-") as tmp:
        shutil.copytree(CHART, Path(tmp) / "iotpipe")
        (Path(tmp) / "iotpipe" / "values.schema.json").unlink()
        no_schema = helm_python.Chart.load(str(Path(tmp) / "iotpipe"))
    for values, reason in HELM_MUST_FAIL:
        try:
            chart.render(values, name="iotpipe", namespace="iotpipe")
        except helm_python.HelmError as e:
            msg = str(e)
            if "specifications of the schema" in msg:
                # Refused by values.schema.json, whose messages cannot say why:
                # the templates must refuse it too, with the reason (as with
                # --skip-schema-validation): render a copy without the schema.
                report.count("unsafe values refused by values.schema.json")
                try:
                    no_schema.render(values, name="iotpipe", namespace="iotpipe")
                    msg = "(rendered without values.schema.json)"
                except helm_python.HelmError as e2:
                    msg = str(e2)
            if reason.lower() not in msg.lower():
                report.fail(f"helm refuses {json.dumps(values)}, but without saying why ({reason!r} not in: {msg[:300]})")
            else:
                report.count("unsafe values refused by the chart, with the reason")
            continue
        report.fail(f"helm renders {json.dumps(values)}, which must be refused ({reason})")
    for values in SCHEMA_MUST_REFUSE:
        try:
            chart.validate_schema(values)
            report.fail(f"values.schema.json accepts {json.dumps(values)}")
        except helm_python.HelmError:
            report.count("bad values refused by values.schema.json")
    for values in SCHEMA_MUST_ACCEPT:
        try:
            chart.validate_schema(values)
            report.count("values accepted by values.schema.json")
        except helm_python.HelmError as e:
            report.fail(f"values.schema.json refuses {json.dumps(values)}: {e}")


def argocd_helm_values(app: dict) -> dict:
    """The values an ArgoCD Application gives the chart: its value files and parameters."""
    helm = ((app.get("spec") or {}).get("source") or {}).get("helm") or {}
    values: dict = {}
    for vf in helm.get("valueFiles") or []:
        if vf != "values.yaml":
            deep_merge(values, yaml.safe_load((CHART / vf).read_text()) or {})
    deep_merge(values, helm.get("valuesObject") or {})
    for p in helm.get("parameters") or []:
        node = values
        keys = p["name"].split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        v = p.get("value")
        node[keys[-1]] = {"true": True, "false": False}.get(v, v)
    return values


def deep_merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


# --------------------------------------------------------------------------- schemas

# Strimzi: no npm or PyPI package ships its CRDs, so KafkaTopic and KafkaUser
# are checked against what Strimzi 1.x's kafka.strimzi.io/v1 CRDs require
# (written from the CRDs of Strimzi 1.2: `spec` required; KafkaUser ACLs need
# `resource` and `operations`, the v1beta2 `operation` is gone; unknown fields
# refused as with kubectl's strict field validation). IOTPIPE_STRIMZI_CRDS
# adds the real CRD schemas (strimzi_crd_schemas). The other kinds here are
# required-field checks kept for when the npm models cannot be installed.
STR = {"type": "string", "minLength": 1}
INT = {"type": "integer"}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)(ms|s|m|h|d|w|y))+)$"}
STRIMZI_METADATA = {
    "type": "object",
    "required": ["labels"],
    "properties": {"labels": {"type": "object", "required": ["strimzi.io/cluster"]}},
}
ACL_OPERATIONS = ["Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction", "AlterConfigs",
                  "DescribeConfigs", "IdempotentWrite", "All"]
CRD_SCHEMAS: dict[tuple[str, str], dict] = {
    (STRIMZI_API, "KafkaTopic"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": STRIMZI_METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "topicName": STR,
                    "partitions": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                    "config": {"type": "object"},
                },
            },
        },
    },
    (STRIMZI_API, "KafkaUser"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": STRIMZI_METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "authentication": {
                        "type": "object",
                        "required": ["type"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"enum": ["tls", "tls-external", "scram-sha-512"]},
                            "password": {"type": "object", "required": ["valueFrom"]},
                            "validityDays": {"type": "integer", "minimum": 1},
                            "renewalDays": {"type": "integer", "minimum": 1},
                        },
                    },
                    "authorization": {
                        "type": "object",
                        "required": ["type", "acls"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"enum": ["simple"]},
                            "acls": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["resource", "operations"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "type": {"enum": ["allow", "deny"]},
                                        "resource": {
                                            "type": "object",
                                            "required": ["type"],
                                            "additionalProperties": False,
                                            "properties": {
                                                "type": {"enum": ["topic", "group", "cluster", "transactionalId"]},
                                                "name": STR,
                                                "patternType": {"enum": ["literal", "prefix"]},
                                            },
                                            "if": {"properties": {"type": {"not": {"const": "cluster"}}}},
                                            "then": {"required": ["name"]},
                                        },
                                        "operations": {"type": "array", "minItems": 1, "items": {"enum": ACL_OPERATIONS}},
                                        "host": {"type": "string"},
                                    },
                                },
                            },
                        },
                    },
                    "quotas": {"type": "object"},
                    "template": {"type": "object"},
                },
            },
        },
    },
    ("argoproj.io/v1alpha1", "Application"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["destination", "project"],
                "anyOf": [{"required": ["source"]}, {"required": ["sources"]}],
                "properties": {
                    "project": STR,
                    "source": {
                        "type": "object",
                        "required": ["repoURL"],
                        "anyOf": [{"required": ["path"]}, {"required": ["chart"]}],
                        "properties": {"repoURL": STR, "path": STR, "targetRevision": STR},
                    },
                    "destination": {
                        "type": "object",
                        "anyOf": [{"required": ["server"]}, {"required": ["name"]}],
                        "properties": {"server": STR, "name": STR, "namespace": STR},
                    },
                },
            }
        },
    },
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "properties": {
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                            "properties": {"port": STR, "path": STR, "interval": DURATION, "scrapeTimeout": DURATION},
                        },
                    },
                },
            }
        },
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                        "properties": {"for": DURATION, "expr": STR},
                                    },
                                },
                            },
                        },
                    }
                },
            }
        },
    },
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {"type": "object", "required": ["name"], "properties": {"name": STR}},
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "triggers": {"type": "array", "minItems": 1,
                                 "items": {"type": "object", "required": ["type", "metadata"]}},
                },
            }
        },
    },
}


def obj_name(d: dict) -> str:
    return f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"


def strictify(schema):
    """An openAPIV3Schema as kubectl's strict field validation applies it:
    unknown fields refused where the schema lists the properties."""
    if isinstance(schema, dict):
        out = {k: strictify(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strictify(v) for v in schema]
    return schema


def strimzi_crd_schemas(report: Report) -> dict[tuple[str, str], dict]:
    """The real Strimzi CRD schemas, from IOTPIPE_STRIMZI_CRDS (a directory of CRD files)."""
    src = os.environ.get("IOTPIPE_STRIMZI_CRDS", "").strip()
    if not src:
        report.skip(
            "Strimzi CRD schema validation (no npm or PyPI package ships the kafka.strimzi.io CRDs, and nothing "
            "else can be fetched here; KafkaTopic/KafkaUser are checked against the fields Strimzi 1.x's v1 API "
            "requires, written into scripts/check_deploy.py. To enable it, set IOTPIPE_STRIMZI_CRDS to a directory "
            "with the CRD files of a Strimzi 1.x release: install/cluster-operator/04*-Crd-*.yaml of strimzi-<version>.zip)")
        return {}
    schemas = {}
    for f in sorted(Path(src).glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if not d or d.get("kind") != "CustomResourceDefinition":
                continue
            spec = d.get("spec") or {}
            if spec.get("group") != "kafka.strimzi.io":
                continue
            for v in spec.get("versions") or []:
                s = ((v.get("schema") or {}).get("openAPIV3Schema"))
                if v.get("served") and s:
                    schemas[(f"kafka.strimzi.io/{v['name']}", spec["names"]["kind"])] = strictify(s)
    if not any(k[1] in ("KafkaTopic", "KafkaUser") for k in schemas):
        report.fail(f"IOTPIPE_STRIMZI_CRDS={src}: no KafkaTopic/KafkaUser CRD found there")
    else:
        print(f"ok    Strimzi CRD schemas from {src}: {', '.join(sorted(f'{k[1]} {k[0]}' for k in schemas))}")
    return schemas


@dataclass
class Schemas:
    """What the schema step validates with."""
    strimzi: dict = field(default_factory=dict)
    npm: str | None = None  # directory with node_modules/@kubernetes-models
    node: str = "node"
    npm_items: list = field(default_factory=list)  # (id, where, doc) queued for one node run


def validate_schemas(r: Render, report: Report, schemas: Schemas, tag: str = "r") -> None:
    import jsonschema
    import kubernetes_validate

    versions = [kubernetes_validate.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    for i, d in enumerate(r.docs):
        key = (d.get("apiVersion"), d.get("kind"))
        name = f"{r.name}: {obj_name(d)}"
        if not (d.get("metadata") or {}).get("name"):
            report.fail(f"{name}: metadata.name is missing")
        if str(key[0]).startswith("kafka.strimzi.io/") and key[0] != STRIMZI_API:
            report.fail(f"{name}: apiVersion {key[0]}: Strimzi 1.x serves only {STRIMZI_API}")
            continue
        known = False
        if key in CRD_SCHEMAS:
            known = True
            for e in sorted(jsonschema.Draft7Validator(CRD_SCHEMAS[key]).iter_errors(d), key=str):
                path = "/".join(str(p) for p in e.absolute_path)
                report.fail(f"{name}: {'Strimzi v1 field check' if 'strimzi' in key[0] else 'required-fields check'}: {path}: {e.message}")
            report.count("custom resources checked against required fields")
        if key in schemas.strimzi:
            known = True
            for e in sorted(jsonschema.Draft7Validator(schemas.strimzi[key]).iter_errors(d), key=str):
                path = "/".join(str(p) for p in e.absolute_path)
                report.fail(f"{name}: Strimzi CRD schema: {path}: {e.message}")
            report.count("Strimzi objects validated against the Strimzi CRD schemas")
        if key in NPM_MODELS:
            known = True
            if schemas.npm:
                schemas.npm_items.append((f"{tag}:{r.name}:{i}", name, d))
        if known:
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                report.fail(f"{name}: no Kubernetes schema for {key[0]} {key[1]} (an unknown custom resource?)")
                break
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                report.fail(f"{name}: Kubernetes {v} schema: {path}: {e.message}")
        else:
            report.count("objects validated against Kubernetes schemas")


NODE_VALIDATOR = r"""
// Written by scripts/check_deploy.py: validates custom resources with the
// @kubernetes-models packages (the CRD schemas of their projects).
let input = "";
for await (const chunk of process.stdin) input += chunk;
const out = [];
for (const item of JSON.parse(input)) {
  try {
    const mod = await import(`${item.pkg}/${item.module}`);
    const Model = mod[item.kind];
    if (!Model) throw new Error(`${item.pkg}/${item.module} has no model ${item.kind}`);
    new Model(item.doc).validate();
    out.push({ id: item.id, errors: [] });
  } catch (e) {
    const errs = (e.errors || []).map((x) => `${x.instancePath || "/"}: ${x.message}`);
    out.push({ id: item.id, errors: errs.length ? errs : [String(e.message || e)] });
  }
}
process.stdout.write(JSON.stringify(out));
"""


def run_npm_models(schemas: Schemas, report: Report) -> dict[str, list[str]]:
    """Validate the queued custom resources in one node process; id -> errors."""
    if not schemas.npm or not schemas.npm_items:
        return {}
    script = Path(schemas.npm) / "iotpipe-validate.mjs"
    script.write_text(NODE_VALIDATOR)
    items = []
    for id_, _, d in schemas.npm_items:
        pkg, module = NPM_MODELS[(d.get("apiVersion"), d.get("kind"))]
        items.append({"id": id_, "pkg": pkg, "module": module, "kind": d["kind"], "doc": d})
    proc = subprocess.run([schemas.node, str(script)], input=json.dumps(items), capture_output=True, text=True,
                          cwd=schemas.npm)
    if proc.returncode != 0:
        report.fail(f"the @kubernetes-models validator did not run: {proc.stderr.strip()[-1500:]}")
        return {}
    return {r["id"]: r["errors"] for r in json.loads(proc.stdout)}


def report_npm_models(schemas: Schemas, results: dict[str, list[str]], report: Report) -> None:
    for id_, where, d in schemas.npm_items:
        if not id_.startswith("r:"):
            continue
        if id_ not in results:
            continue
        for e in results[id_]:
            report.fail(f"{where}: {d.get('apiVersion')} {d.get('kind')} CRD schema (@kubernetes-models): {e}")
        report.count("custom resources validated with the @kubernetes-models CRD schemas")


# --------------------------------------------------------------------------- helpers


def parse_quantity(q) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    s = str(q)
    for u, f in units.items():
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s)


def duration_ms(s) -> int:
    """Milliseconds of a humantime duration as iotpipe's configs write them."""
    units = {"ms": 1, "s": 1000, "sec": 1000, "m": 60000, "min": 60000, "h": 3600000, "d": 86400000,
             "w": 604800000, "y": 31557600000}
    text = str(s).replace(" ", "")
    parts = re.findall(r"([0-9]+)(ms|sec|min|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{s!r} is not a duration")
    return sum(int(n) * units[u] for n, u in parts)


def size_mib(s) -> int:
    m = re.fullmatch(r"\s*([0-9]+)\s*([A-Za-z]*)\s*", str(s))
    if not m:
        raise ValueError(f"{s!r} is not a size")
    mult = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 10**6, "mb": 10**6, "mib": 2**20,
            "g": 10**9, "gb": 10**9, "gib": 2**30}[m.group(2).lower()]
    return math.ceil(int(m.group(1)) * mult / 2**20)


def pod_spec_of(d: dict) -> tuple[dict, dict]:
    """(pod metadata, pod spec) of a workload."""
    kind = d.get("kind")
    spec = d.get("spec") or {}
    if kind == "Pod":
        return d.get("metadata") or {}, spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    tpl = spec.get("template") or {}
    return tpl.get("metadata") or {}, tpl.get("spec") or {}


def is_hook(w: dict) -> bool:
    return "helm.sh/hook" in ((w.get("metadata") or {}).get("annotations") or {})


def selector_matches(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return False
    ml = selector.get("matchLabels") or {}
    if any(labels.get(k) != v for k, v in ml.items()):
        return False
    for e in selector.get("matchExpressions") or []:
        val, op, vals = labels.get(e["key"]), e["operator"], e.get("values") or []
        if (op == "In" and val not in vals) or (op == "NotIn" and val in vals):
            return False
        if (op == "Exists" and e["key"] not in labels) or (op == "DoesNotExist" and e["key"] in labels):
            return False
    return True


def command_of(c: dict) -> str | None:
    """The iotpipe command a container runs (`check --command X` counts as X)."""
    args = c.get("args") or []
    if not args:
        return None
    if args[0] == "check" and "--command" in args:
        return args[args.index("--command") + 1]
    return args[0]


def expand_env(c: dict, pod_name: str, namespace: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it: downward API
    values filled in, $(VAR) expanded from the variables defined before."""
    env: dict[str, str] = {}
    for e in c.get("env") or []:
        if "value" in e:
            raw = str(e["value"])
            env[e["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), raw)
        else:
            ref = (e.get("valueFrom") or {}).get("fieldRef") or {}
            env[e["name"]] = {"metadata.name": pod_name, "metadata.namespace": namespace}.get(
                ref.get("fieldPath"), "placeholder")
    return env


def mounted_config(docs: list[dict], w: dict, c: dict) -> tuple[dict | None, str, str | None]:
    """(ConfigMap, key, TOML text) of the config a container's --config names."""
    args = c.get("args") or []
    if "--config" not in args:
        return None, "", None
    cfg_path = args[args.index("--config") + 1]
    cms = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    vols = {v["name"]: v for v in pod_spec_of(w)[1].get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        v = vols.get(m["name"], {})
        if "configMap" in v and cfg_path.startswith(m["mountPath"].rstrip("/") + "/"):
            key = cfg_path[len(m["mountPath"].rstrip("/")) + 1:]
            cm = cms.get(v["configMap"]["name"])
            return cm, key, ((cm or {}).get("data") or {}).get(key)
    return None, cfg_path, None


def env_overrides(cfg: dict, env: dict[str, str]) -> dict:
    """cfg with the IOTPIPE_SECTION__KEY overrides applied (as src/config/load.rs does)."""
    cfg = copy.deepcopy(cfg)
    for k, v in env.items():
        if not k.startswith("IOTPIPE_") or "__" not in k:
            continue
        parts = [p.lower() for p in k[len("IOTPIPE_"):].split("__")]
        if len(parts) == 3 and parts[:2] == ["kafka", "properties"]:
            parts[2] = parts[2].replace("_", ".")
        node = cfg
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return cfg


def workload_config(docs: list[dict], w: dict, c: dict, pod_name: str | None = None) -> dict | None:
    """The effective config of an iotpipe container (file + environment), or None."""
    _, _, text = mounted_config(docs, w, c)
    if text is None:
        return None
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None
    ns = (w.get("metadata") or {}).get("namespace") or "default"
    return env_overrides(cfg, expand_env(c, pod_name or f"{w['metadata']['name']}-0", ns))


def mqtt_client_id(docs: list[dict], w: dict, c: dict, pod_name: str, namespace: str, configured: bool = False):
    """The client id iotpipe would use in that pod (src/mqtt/config.rs
    effective_client_id); with configured=True, (id, whether it was set rather
    than derived from the host name)."""
    _, _, text = mounted_config(docs, w, c)
    try:
        cfg = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError:
        return (None, False) if configured else None
    cfg = env_overrides(cfg, expand_env(c, pod_name, namespace))
    cid = (cfg.get("mqtt") or {}).get("client_id")
    out = (str(cid), True) if cid else ("iotpipe-" + re.sub(r"[^A-Za-z0-9-]", "-", pod_name), False)
    return out if configured else out[0]


def grace_section(cmd: str) -> str:
    """The section whose grace_period a command drains with: its own."""
    return cmd if cmd in ("sink", "run") else "bridge"


def grace_seconds(cfg: dict, cmd: str) -> int:
    g = (cfg.get(grace_section(cmd)) or {}).get("grace_period")
    return math.ceil(duration_ms(g) / 1000) if g else DEFAULT_GRACE_S


def journal_mib(cfg: dict, cmd: str) -> int | None:
    """Size of the journal a command recovers at start-up, None without one."""
    j = cfg.get("journal")
    if cmd == "bridge" and not (j or {}).get("path"):
        return None
    if cmd not in ("bridge", "run"):
        return None
    return size_mib((j or {}).get("max_size", f"{DEFAULT_JOURNAL_MIB}MiB"))


def journal_path_and_segment_mib(cfg: dict) -> tuple[str, int]:
    """The journal's directory and segment size (MiB) in a config, with the defaults."""
    j = cfg.get("journal") or {}
    return j.get("path", "data/journal"), size_mib(j.get("segment_size", f"{DEFAULT_SEGMENT_MIB}MiB"))


def volume_size_mib(docs: list[dict], w: dict, volumes: dict, mounts: list[dict], path: str) -> int | None:
    """Size of the volume a container holds `path` on: its volumeClaimTemplate, the PVC in the render,
    or an emptyDir's sizeLimit; None when it cannot be told (a relative path, no such volume)."""
    under = [m for m in mounts if path == m.get("mountPath", "").rstrip("/")
             or path.startswith(m.get("mountPath", "").rstrip("/") + "/")]
    if not path.startswith("/") or not under:
        return None
    name = max(under, key=lambda m: len(m["mountPath"]))["name"]
    storage = None
    for t in (w.get("spec") or {}).get("volumeClaimTemplates") or []:
        if (t.get("metadata") or {}).get("name") == name:
            storage = (((t.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
    v = volumes.get(name) or {}
    if "persistentVolumeClaim" in v:
        claim = (v["persistentVolumeClaim"] or {}).get("claimName")
        for d in docs:
            if d.get("kind") == "PersistentVolumeClaim" and (d.get("metadata") or {}).get("name") == claim:
                storage = (((d.get("spec") or {}).get("resources") or {}).get("requests") or {}).get("storage")
    if "emptyDir" in v:
        storage = (v["emptyDir"] or {}).get("sizeLimit")
    return math.floor(parse_quantity(storage) / 2**20) if storage else None


def url_port(url: str, default: int) -> int:
    m = re.match(r"^[a-z0-9+]+://(?:[^@/]*@)?(\[[^\]]*\]|[^:/?]*)(?::([0-9]+))?", url)
    return int(m.group(2)) if m and m.group(2) else default


def needed_ports(cfg: dict, cmd: str) -> dict[int, str]:
    """TCP ports a command connects to, from its config: port -> what."""
    ports: dict[int, str] = {}
    if cmd in MQTT_COMMANDS:
        url = (cfg.get("mqtt") or {}).get("url", "mqtt://127.0.0.1:1883")
        ports[url_port(url, 8883 if url.startswith(("mqtts:", "ssl:")) else 1883)] = "mqtt.url"
    if cmd in ("bridge", "sink"):
        for b in str((cfg.get("kafka") or {}).get("brokers", "")).split(","):
            m = re.search(r":([0-9]+)$", b.strip())
            ports[int(m.group(1)) if m else 9092] = "kafka.brokers"
    if cmd in ("sink", "run"):
        url = (cfg.get("store") or {}).get("url", "sqlite://" if cmd == "run" else "postgres://localhost")
        if not url.startswith("sqlite:"):
            ports[url_port(url, 8086 if url.startswith("influx") else 5432)] = "store.url"
    return ports


def allowed_egress(docs: list[dict], labels: dict, namespace: str | None) -> set | None:
    """TCP ports the NetworkPolicies selecting a pod allow out; None: no egress policy (all)."""
    ports: set = set()
    restricted = False
    for n in docs:
        if n.get("kind") != "NetworkPolicy":
            continue
        spec = n.get("spec") or {}
        if "Egress" not in (spec.get("policyTypes") or []) or not selector_matches(spec.get("podSelector"), labels):
            continue
        restricted = True
        for rule in spec.get("egress") or []:
            if not rule.get("ports"):
                return None
            for p in rule["ports"]:
                if p.get("protocol", "TCP") == "TCP":
                    ports.add(p.get("port"))
    return ports if restricted else None


def literal_secrets(cfg: dict):
    for sect in ("mqtt", "http", "store"):
        for k in ("password", "token"):
            if k in (cfg.get(sect) or {}):
                yield sect, k
    url = (cfg.get("store") or {}).get("url", "")
    if re.match(r"^[a-z]+://[^/@]*:[^/@]*@", url):
        yield "store", "url (password in the URL)"
    for sect, sub in (("kafka", "properties"), ("sink", "properties")):
        for k in ((cfg.get(sect) or {}).get(sub) or {}):
            if re.search(r"(password|secret|jaas)", k) and not k.endswith("_file"):
                yield f"{sect}.{sub}", k


def mounted_secrets(pod: dict, c: dict) -> set[str]:
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    names = set()
    for m in c.get("volumeMounts") or []:
        s = vols.get(m["name"], {}).get("secret")
        if s:
            names.add(s["secretName"])
    return names


def topic_acl(template: str) -> tuple[str, str] | None:
    """(name, patternType) granting the topics of a kafka.topic template."""
    if "{" not in template:
        return template, "literal"
    prefix = template.split("{", 1)[0]
    return (prefix, "prefix") if prefix else None


def serving_renders(renders: list[Render], r: Render) -> list[Render]:
    """r when it has workloads; else r and the renders whose workloads the
    Strimzi objects of r serve (deploy/kustomize/kafka: the prod overlays)."""
    if any(d.get("kind") in ("StatefulSet", "Deployment") for d in r.docs):
        return [r]
    return [r] + [x for x in renders if x.name in ("kustomize:overlays/prod", "kustomize:overlays/prod-keda")]


def sink_config(renders: list[Render], r: Render) -> tuple[dict | None, str]:
    """The [sink] section of the sink the Strimzi objects of render r serve."""
    for cand in serving_renders(renders, r):
        for w in cand.docs:
            if w.get("kind") != "Deployment":
                continue
            for c in pod_spec_of(w)[1].get("containers") or []:
                if command_of(c) == "sink":
                    cfg = workload_config(cand.docs, w, c)
                    if cfg is not None:
                        return cfg.get("sink") or {}, cand.name
    return None, ""


def acl_covers(acl: tuple[str, str], want: tuple[str, str]) -> bool:
    """Whether topic ACL acl grants every topic that ACL want names."""
    name, pattern = acl
    if pattern == "literal":
        return want == (name, "literal")
    return want[0].startswith(name)


def subscription_may_match(topics: list[str], acl: tuple[str, str]) -> bool:
    """Whether a topic the ACL grants can be in the sink's subscription
    (names, or regexes starting with ^)."""
    name, pattern = acl
    probe = name if pattern == "literal" else name + "x"
    for t in topics:
        if t.startswith("^"):
            try:
                if re.match(t, probe):
                    return True
            except re.error:
                continue
        elif (pattern == "literal" and t == name) or (pattern == "prefix" and t.startswith(name)):
            return True
    return False


def bridge_kafka_config(renders: list[Render], r: Render) -> tuple[dict | None, str]:
    """The bridge's [kafka] section that the Strimzi objects of render r serve:
    the bridge in the same render, else the Kustomize prod overlay's."""
    for cand in serving_renders(renders, r):
        for w in cand.docs:
            if w.get("kind") != "StatefulSet":
                continue
            for c in pod_spec_of(w)[1].get("containers") or []:
                if command_of(c) == "bridge":
                    cfg = workload_config(cand.docs, w, c)
                    if cfg is not None:
                        return cfg.get("kafka") or {}, cand.name
    return None, ""


# --------------------------------------------------------------------------- workload policy


def check_workloads(r: Render, report: Report) -> None:
    """Policy of every workload in one render."""
    docs = r.docs
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    sas = {(d["metadata"]["name"]): d for d in by_kind.get("ServiceAccount", [])}

    def bad(obj: dict, msg: str) -> None:
        report.fail(f"{r.name}: {obj_name(obj)}: {msg}")

    for w in [d for d in docs if d.get("kind") in WORKLOAD_KINDS]:
        pmeta, pod = pod_spec_of(w)
        labels = pmeta.get("labels") or {}
        hook = is_hook(w)
        psc = pod.get("securityContext") or {}
        sa_name = pod.get("serviceAccountName") or "default"
        ns = (w.get("metadata") or {}).get("namespace")
        if sa_name == "default":
            bad(w, "runs as the default ServiceAccount")
        sa = sas.get(sa_name)
        # automountServiceAccountToken in the pod spec: checkov CKV_K8S_38; here the ServiceAccount's.
        if sa_name != "default" and sa is None:
            bad(w, f"ServiceAccount {sa_name} is not in the render")
        elif sa is not None and sa.get("automountServiceAccountToken") is not False:
            bad(w, f"ServiceAccount {sa_name}: automountServiceAccountToken is not false")
        if not pod.get("topologySpreadConstraints") and not hook:
            bad(w, "no topologySpreadConstraints")
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        for v in volumes.values():
            if "secret" in v and not (v["secret"] or {}).get("secretName"):
                bad(w, f"volume {v.get('name')} mounts a Secret without a name (an empty *.existingSecret?)")
        inits = pod.get("initContainers") or []
        for c in inits + (pod.get("containers") or []):
            cname = f"container {c.get('name')}"
            init = c in inits
            cmd = command_of(c)
            if not init and not hook:
                # That liveness and readiness probes exist: checkov CKV_K8S_8, CKV_K8S_9. Here: the
                # startup probe (no checkov check) and that the probes ask iotpipe's endpoints.
                if not c.get("startupProbe"):
                    bad(w, f"{cname}: no startupProbe")
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    p = c.get(probe)
                    if p and (p.get("httpGet") or {}).get("path") != path:
                        bad(w, f"{cname}: {probe} does not GET {path}")
            # That requests and the memory limit exist: checkov CKV_K8S_10, CKV_K8S_12, CKV_K8S_13.
            # Here: the limit against iotpipe's measured peak, and the request below it.
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            if "memory" in lim:
                try:
                    limit = parse_quantity(lim["memory"])
                    peak = MEASURED_PEAK_MIB.get(cmd or "") if not init else None
                    if peak and limit < peak * MEMORY_HEADROOM * 2**20:
                        bad(w, f"{cname}: memory limit {lim['memory']} leaves less than {round((MEMORY_HEADROOM - 1) * 100)}% "
                               f"above the measured peak of `iotpipe {cmd}` ({peak} MiB, docs/deploy-sizing.md)")
                    if "memory" in req and parse_quantity(req["memory"]) > limit:
                        bad(w, f"{cname}: memory request above its limit")
                except ValueError:
                    bad(w, f"{cname}: memory quantity {lim['memory']!r} cannot be read")
            # The generic security context is checkov's (CHECKOV_POLICY): runAsNonRoot,
            # readOnlyRootFilesystem, allowPrivilegeEscalation, privileged, capabilities, seccomp.
            # Here: the user the image is built for (Containerfile), which owns nothing else.
            csc = c.get("securityContext") or {}
            if csc.get("runAsUser", psc.get("runAsUser")) != APP_UID:
                bad(w, f"{cname}: runAsUser is not {APP_UID}")
            # A mount inside a configMap/secret volume's mount needs a mount
            # point in a read-only volume: the container fails to start.
            mounts = c.get("volumeMounts") or []
            for outer in mounts:
                ov = volumes.get(outer.get("name"), {})
                if not any(k in ov for k in ("configMap", "secret", "projected", "downwardAPI")):
                    continue
                prefix = outer["mountPath"].rstrip("/") + "/"
                for inner in mounts:
                    if inner is not outer and inner.get("mountPath", "").startswith(prefix):
                        bad(w, f"{cname}: {inner['mountPath']} is mounted inside the read-only volume at {outer['mountPath']}")
            tmp = [m for m in mounts if m.get("mountPath") == "/tmp"]
            if not tmp or "emptyDir" not in volumes.get(tmp[0].get("name"), {}):
                bad(w, f"{cname}: /tmp is not an emptyDir")
            for e in c.get("env") or []:
                if "value" in e and SECRET_NAME.search(e.get("name", "")) and not e["name"].endswith("_FILE"):
                    bad(w, f"{cname}: env {e['name']} has a literal value (secrets by reference only)")
            if init or cmd not in ("bridge", "sink", "run"):
                continue
            cfg = workload_config(docs, w, c)
            if cfg is None:
                continue  # reported by the config check
            # Drain: the kubelet kills the pod terminationGracePeriodSeconds after SIGTERM.
            if not hook and (c.get("args") or [None])[0] == cmd:
                sleep = ((((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")) or 0
                try:
                    need = grace_seconds(cfg, cmd) + DRAIN_MARGIN_S + int(sleep)
                except ValueError as e:
                    bad(w, f"{cname}: {e}")
                    need = 0
                tgps = pod.get("terminationGracePeriodSeconds", 30)
                if tgps < need:
                    bad(w, f"terminationGracePeriodSeconds {tgps} is below the drain budget of {need} s "
                           f"({grace_section(cmd)}.grace_period + {DRAIN_MARGIN_S} s"
                           f"{' + preStop sleep' if sleep else ''}): the pod is killed mid-drain")
                # Start-up: journal recovery must fit into the startup probe's budget.
                sp = c.get("startupProbe") or {}
                budget = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3)
                jm = journal_mib(cfg, cmd)
                need_start = STARTUP_BASE_S + (math.ceil(jm / JOURNAL_RECOVERY_MIB_S) if jm else 0)
                if sp and budget < need_start:
                    bad(w, f"{cname}: startup probe allows {budget} s, below {need_start} s "
                           f"({STARTUP_BASE_S} s{f' + recovery of a {jm} MiB journal at {JOURNAL_RECOVERY_MIB_S} MiB/s (half the measured rate)' if jm else ''}): "
                           "the kubelet would restart the pod while it recovers")
                # Disk: the journal's volume holds max_size and two preallocated segments.
                if jm:
                    jpath, seg = journal_path_and_segment_mib(cfg)
                    size = volume_size_mib(docs, w, volumes, mounts, jpath)
                    if size is not None and size < jm + 2 * seg:
                        bad(w, f"{cname}: the journal's volume ({size} MiB) is smaller than journal.max_size "
                               f"({jm} MiB) plus two preallocated segments of {seg} MiB (docs/journal.md)")
            # MQTT client ids: per pod (stable pod name) and per namespace.
            if cmd in MQTT_COMMANDS and not hook:
                base = w["metadata"]["name"]
                id0, configured = mqtt_client_id(docs, w, c, f"{base}-0", ns or "default", configured=True)
                id1 = mqtt_client_id(docs, w, c, f"{base}-1", ns or "default")
                other_ns = mqtt_client_id(docs, w, c, f"{base}-0", "elsewhere")
                if w["kind"] != "StatefulSet":
                    bad(w, f"{cname}: an MQTT client runs in a {w['kind']}, whose pod names change on every restart: "
                           "the client id (and with it the persistent session) would not be stable")
                if id0 is None or "$(" in id0:
                    bad(w, f"{cname}: MQTT client id {id0!r} is not fully resolved (a $(VAR) defined after its use?)")
                elif not configured:
                    bad(w, f"{cname}: no MQTT client id is set, so it is iotpipe-<hostname> ({id0!r}), the same in every "
                           "namespace and cluster: two installations on one broker would take over each other's "
                           "sessions (set IOTPIPE_MQTT__CLIENT_ID from the namespace and the pod name)")
                elif id0 == id1:
                    bad(w, f"{cname}: MQTT client id {id0!r} is the same for every pod: the replicas would take over each other's session")
                elif id0 == other_ns and (ns or "default") not in id0.removesuffix(f"{base}-0").removeprefix("iotpipe-"):
                    bad(w, f"{cname}: MQTT client id {id0!r} names neither the namespace {ns} nor reads it from the "
                           "downward API: another installation on the same broker would take over this one's sessions")
            # Network: the ports the config connects to must be allowed out.
            allowed = allowed_egress(docs, labels, ns)
            if allowed is not None:
                for port, what in needed_ports(cfg, cmd).items():
                    if port not in allowed:
                        bad(w, f"{cname}: egress to port {port} ({what}) is not allowed by its NetworkPolicy")
            # Rotation: a config change must roll the pods.
            cm, _, text = mounted_config(docs, w, c)
            ann = pmeta.get("annotations") or {}
            if cm is not None and not hook:
                hashed = re.search(r"-[a-z0-9]{10}$", cm["metadata"]["name"]) is not None
                checksum = ann.get("checksum/config")
                # Helm hashes the config as rendered; the YAML block adds a final newline.
                digests = {hashlib.sha256(t.encode()).hexdigest() for t in ((text or ""), (text or "").removesuffix("\n"))}
                if checksum is not None and checksum not in digests:
                    bad(w, f"{cname}: checksum/config does not match the mounted config")
                if checksum is None and not hashed:
                    bad(w, f"{cname}: ConfigMap {cm['metadata']['name']} has neither a content hash in its name nor a "
                           "checksum/config pod annotation: a config change would not restart the pods")
            if "reloader" in r.expect and not hook:
                wann = (w.get("metadata") or {}).get("annotations") or {}
                listed = set(filter(None, wann.get("secret.reloader.stakater.com/reload", "").split(",")))
                missing = mounted_secrets(pod, c) - listed
                if wann.get("reloader.stakater.com/auto") != "true" and missing:
                    bad(w, f"{cname}: Secrets {sorted(missing)} are mounted but not watched by Reloader "
                           "(rotation.reloader / components/reloader)")
        # Companion objects: PDB, Service with the metrics port, NetworkPolicy, ServiceMonitor.
        if w.get("kind") in ("Deployment", "StatefulSet"):
            if not any(selector_matches((p.get("spec") or {}).get("selector"), labels) for p in by_kind.get("PodDisruptionBudget", [])):
                bad(w, "no PodDisruptionBudget selects its pods")
            services = [
                s for s in by_kind.get("Service", [])
                if (s.get("spec") or {}).get("selector")
                and selector_matches({"matchLabels": s["spec"]["selector"]}, labels)
                and any(p.get("name") == "http" for p in s["spec"].get("ports") or [])
            ]
            if not services:
                bad(w, "no Service with port http selects its pods")
            if not any(selector_matches((n.get("spec") or {}).get("podSelector"), labels) for n in by_kind.get("NetworkPolicy", [])):
                bad(w, "no NetworkPolicy selects its pods")
            if r.expect_monitoring and not any(
                selector_matches((m.get("spec") or {}).get("selector"), (s.get("metadata") or {}).get("labels") or {})
                for m in by_kind.get("ServiceMonitor", [])
                for s in services
            ) and not any(selector_matches((m.get("spec") or {}).get("selector"), labels) for m in by_kind.get("PodMonitor", [])):
                bad(w, "no ServiceMonitor selects its Service and no PodMonitor its pods")
            if w.get("kind") == "StatefulSet":
                svc = (w.get("spec") or {}).get("serviceName")
                if svc not in {s["metadata"]["name"] for s in services}:
                    bad(w, f"serviceName {svc} is not a Service selecting its pods")
    # Node drains: a PDB must not block eviction of pods that are not ready.
    for p in by_kind.get("PodDisruptionBudget", []):
        if (p.get("spec") or {}).get("unhealthyPodEvictionPolicy") != "AlwaysAllow":
            bad(p, "unhealthyPodEvictionPolicy is not AlwaysAllow: during an outage (pods not ready) "
                   "the PDB would block every node drain")
    # Prometheus must select the monitoring objects.
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        for m in by_kind.get(kind, []):
            lbl = (m.get("metadata") or {}).get("labels") or {}
            for k in MONITORING_SELECTOR_LABELS:
                if not lbl.get(k):
                    bad(m, f"no {k} label: kube-prometheus-stack's Prometheus selects only objects labelled "
                           f"{k}=<its release> (Helm monitoring.labels)")
    # No literal secrets anywhere in the render.
    for s in by_kind.get("Secret", []):
        if s.get("data") or s.get("stringData"):
            report.fail(f"{r.name}: {obj_name(s)}: a Secret with literal data in the manifests")
    for cm in by_kind.get("ConfigMap", []):
        for key, text in (cm.get("data") or {}).items():
            if not key.endswith(".toml"):
                continue
            try:
                cfg = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                report.fail(f"{r.name}: {obj_name(cm)}: {key} is not TOML: {e}")
                continue
            for sect, k in literal_secrets(cfg):
                report.fail(f"{r.name}: {obj_name(cm)}: {key}: {sect}.{k} holds a literal secret; use a *_file key")
    report.count("workloads checked against the policy", sum(1 for d in docs if d.get("kind") in WORKLOAD_KINDS))


# --------------------------------------------------------------------------- object semantics


def partitions_in(docs: list[dict]) -> int | None:
    """kafka.partitions of the bridge's shared topic (a fixed kafka.topic),
    the partitions its consumer group shares; None for a topic per pair (the
    group shares pairs x partitions) or without a bridge config."""
    for d in docs:
        if d.get("kind") == "ConfigMap":
            for key, text in (d.get("data") or {}).items():
                if key.endswith(".toml"):
                    try:
                        cfg = tomllib.loads(text)
                    except tomllib.TOMLDecodeError:
                        continue
                    kafka = cfg.get("kafka") or {}
                    if "mqtt" in cfg and "kafka" in cfg and "sink" not in cfg:
                        if "{" in kafka.get("topic", DEFAULT_TOPIC):
                            return None
                        return int(kafka.get("partitions", DEFAULT_PARTITIONS))
    return None


def sink_max_replicas(docs: list[dict]) -> int | None:
    """The most sink replicas an HPA or ScaledObject of the render allows."""
    mx = [(d.get("spec") or {}).get("maxReplicas", (d.get("spec") or {}).get("maxReplicaCount"))
          for d in docs if d.get("kind") in ("HorizontalPodAutoscaler", "ScaledObject")]
    mx = [int(m) for m in mx if m is not None]
    return max(mx) if mx else None


def source_render_name(app: dict) -> str | None:
    """The render of what an Application deploys."""
    src = (app.get("spec") or {}).get("source") or {}
    path = src.get("path", "")
    if path.startswith("deploy/kustomize/"):
        return "kustomize:" + path.removeprefix("deploy/kustomize/")
    if path == "deploy/helm/iotpipe":
        return f"helm:argocd {app['metadata']['name']}"
    return None


API_GROUP = re.compile(r"^(?:(.+)/)?[^/]+$")


def check_semantics(r: Render, report: Report, renders: list[Render]) -> None:
    """What the issues ask of particular objects."""
    docs = r.docs

    def bad(obj: dict, msg: str) -> None:
        report.fail(f"{r.name}: {obj_name(obj)}: {msg}")

    kafka_cfg, cfg_from = bridge_kafka_config(renders, r)
    projects = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "AppProject"}
    by_name = {x.name: x for x in renders}
    app_projects = set()
    for d in docs:
        kind = d.get("kind")
        meta = d.get("metadata") or {}
        spec = d.get("spec") or {}
        if kind == "KafkaTopic":
            conf = spec.get("config") or {}
            opts = {o.strip() for o in (meta.get("annotations") or {}).get("argocd.argoproj.io/sync-options", "").split(",")}
            if not {"Prune=false", "Delete=false"} <= opts:
                bad(d, "no argocd.argoproj.io/sync-options Prune=false,Delete=false: an ArgoCD prune (or deleting the "
                       "Application) would delete the topic and its records")
            mir = conf.get("min.insync.replicas")
            if mir is None:
                bad(d, "no min.insync.replicas: with acks=all a single in-sync replica would acknowledge writes")
            elif spec.get("replicas") and int(mir) > int(spec["replicas"]):
                bad(d, f"min.insync.replicas {mir} above replicas {spec['replicas']}")
            if kafka_cfg is not None:
                # What the bridge gives the topics it creates: retention.ms from
                # kafka.retention, then kafka.topic_config, which wins.
                topic_config = kafka_cfg.get("topic_config") or {}
                try:
                    want = duration_ms(kafka_cfg.get("retention", "3d"))
                    what = f"kafka.retention ({kafka_cfg.get('retention', '3d')}, {cfg_from}) is {want} ms"
                except ValueError:
                    want, what = None, ""
                if "retention.ms" in topic_config:
                    want = topic_config["retention.ms"]
                    what = f"kafka.topic_config retention.ms ({cfg_from}) is {want}"
                if want is not None and str(conf.get("retention.ms")) != str(want):
                    bad(d, f"retention.ms is {conf.get('retention.ms')}, but the bridge's {what}")
                want_mir = topic_config.get("min.insync.replicas")
                if want_mir is not None and mir is not None and str(mir) != str(want_mir):
                    bad(d, f"min.insync.replicas is {mir}, but the bridge creates topics with {want_mir} "
                           f"(kafka.topic_config, {cfg_from})")
        if kind == "KafkaUser" and kafka_cfg is not None:
            want = topic_acl(kafka_cfg.get("topic", DEFAULT_TOPIC))
            dlq = kafka_cfg.get("dead_letter_topic", "iot-dead-letters")
            acls = (spec.get("authorization") or {}).get("acls") or []
            topic_acls = [((a.get("resource") or {}).get("name"), (a.get("resource") or {}).get("patternType", "literal"))
                          for a in acls if (a.get("resource") or {}).get("type") == "topic"]
            consumer = any((a.get("resource") or {}).get("type") == "group" for a in acls)
            if not consumer:
                # The bridge: exactly the topics of kafka.topic (the name, or the
                # template's literal prefix) and the dead-letter topic.
                if want and want not in topic_acls:
                    bad(d, f"no ACL for the bridge's topics {kafka_cfg.get('topic')!r} ({cfg_from}): expected "
                           f"{want[1]} {want[0]!r}, found {topic_acls}")
                for name, pattern in topic_acls:
                    if (name, pattern) != want and name != dlq:
                        bad(d, f"ACL on topic {pattern} {name!r} matches neither kafka.topic nor the dead-letter topic")
            else:
                # The sink: read what the bridge writes (the shared topic, or the
                # per-pair prefix), and nothing outside its subscription.
                sink_cfg, sink_from = sink_config(renders, r)
                if want and not any(acl_covers(a, want) for a in topic_acls):
                    bad(d, f"the sink may not read the bridge's topics {kafka_cfg.get('topic')!r} ({cfg_from}): "
                           f"no ACL covering {want[1]} {want[0]!r}, found {topic_acls}")
                if dlq not in {n for n, _ in topic_acls}:
                    bad(d, f"the sink may not read the dead-letter topic {dlq!r}")
                subscribed = (sink_cfg or {}).get("topics", ["^iot\\..+"])
                for acl in topic_acls:
                    if acl != want and acl[0] != dlq and not subscription_may_match(subscribed, acl):
                        bad(d, f"ACL on topic {acl[1]} {acl[0]!r} grants topics outside the sink's subscription "
                               f"{subscribed} ({sink_from}) and the bridge's kafka.topic")
        if kind == "Application":
            src = spec.get("source") or {}
            path = ROOT / src.get("path", "")
            if not path.is_dir():
                bad(d, f"source.path {src.get('path')} is not a directory of the repository")
            auto = (spec.get("syncPolicy") or {}).get("automated") or {}
            if auto.get("prune") is not True or auto.get("selfHeal") is not True:
                bad(d, "automated sync without prune and selfHeal")
            if "CreateNamespace=true" not in ((spec.get("syncPolicy") or {}).get("syncOptions") or []):
                bad(d, "no CreateNamespace=true")
            project = spec.get("project")
            app_projects.add(project)
            dest = spec.get("destination") or {}
            dev = str(dest.get("namespace", "")).endswith("-dev")
            if project == "default":
                bad(d, "project default: an Application of iotpipe needs its environment's AppProject "
                       "(restricted sources and destinations)")
            if not dev and not PINNED_REVISION.match(str(src.get("targetRevision", ""))):
                bad(d, f"targetRevision {src.get('targetRevision')!r}: production must follow a release tag or a "
                       "commit, never a branch (every merge would deploy)")
            proj = projects.get(project)
            if proj is None:
                if project != "default":
                    bad(d, f"AppProject {project} is not in the same app of apps")
                continue
            pspec = proj.get("spec") or {}
            if src.get("repoURL") not in (pspec.get("sourceRepos") or []):
                bad(d, f"repoURL {src.get('repoURL')} is not among AppProject {project}'s sourceRepos")
            if "*" in (pspec.get("sourceRepos") or []):
                bad(proj, "sourceRepos allows any repository")
            dests = pspec.get("destinations") or []
            if any(x.get("namespace") == "*" or x.get("server") == "*" for x in dests):
                bad(proj, "destinations allow any namespace or cluster")
            if not any(x.get("server") == dest.get("server") and x.get("namespace") == dest.get("namespace") for x in dests):
                bad(d, f"destination {dest} is not among AppProject {project}'s destinations")
            # What the Application deploys must be allowed by its project.
            src_render = by_name.get(source_render_name(d) or "")
            if src_render is None:
                bad(d, f"no render of its source {src.get('path')} to check against AppProject {project}")
                continue
            allowed_ns = {x.get("namespace") for x in dests}
            cluster_ok = {(x.get("group", ""), x.get("kind")) for x in pspec.get("clusterResourceWhitelist") or []}
            ns_ok = {(x.get("group", ""), x.get("kind")) for x in pspec.get("namespaceResourceWhitelist") or []}
            for o in src_render.docs:
                if is_hook(o):
                    continue
                group = API_GROUP.match(o.get("apiVersion", "")).group(1) or ""
                gk = (group, o.get("kind"))
                if o.get("kind") == "Namespace":
                    if gk not in cluster_ok:
                        bad(d, f"deploys {obj_name(o)}, a cluster-scoped kind AppProject {project} does not allow")
                    continue
                if gk not in ns_ok:
                    bad(d, f"deploys {obj_name(o)} ({group or 'core'}), a kind AppProject {project} does not allow")
                ons = (o.get("metadata") or {}).get("namespace") or dest.get("namespace")
                if ons not in allowed_ns:
                    bad(d, f"deploys {obj_name(o)} into namespace {ons}, outside AppProject {project}'s destinations")
            report.count("Applications checked against their AppProject")
        if kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            mx = spec.get("maxReplicas", spec.get("maxReplicaCount"))
            parts = partitions_in(docs)
            if mx is not None and parts is not None and mx > parts:
                bad(d, f"max replicas {mx} above the shared topic's {parts} partitions (kafka.partitions): "
                       "a consumer-group member beyond them reads nothing")
        if kind == "ScaledObject":
            for t in spec.get("triggers") or []:
                if t.get("type") == "prometheus" and not (t.get("metadata") or {}).get("serverAddress"):
                    bad(d, "prometheus trigger without serverAddress: KEDA has nothing to read the lag from")
    if len(app_projects) > 1:
        report.fail(f"{r.name}: one app of apps deploys Applications of several projects {sorted(app_projects)}: "
                    "one sync would touch several environments")
    kafka_objs = {(d.get("kind"), d["metadata"]["name"]) for d in docs if d.get("kind") in ("KafkaTopic", "KafkaUser")}
    if r.name.endswith(":kafka") and ("KafkaTopic", "iot-dead-letters") not in kafka_objs:
        report.fail(f"{r.name}: no KafkaTopic iot-dead-letters")
    check_shared_topic(r, report, renders, kafka_cfg, cfg_from)
    for w in [d for d in docs if d.get("kind") in WORKLOAD_KINDS]:
        for c in pod_spec_of(w)[1].get("containers") or []:
            cmd = (c.get("args") or [None])[0]
            if cmd == "bridge" and (w["kind"] != "StatefulSet" or "iotpipe" not in w["metadata"]["name"]):
                report.fail(f"{r.name}: {obj_name(w)}: the bridge must be a StatefulSet named iotpipe-*")
            if cmd == "sink" and (w["kind"] != "Deployment" or "iotpipe" not in w["metadata"]["name"]):
                report.fail(f"{r.name}: {obj_name(w)}: the sink must be a Deployment named iotpipe-*")
            if cmd == "bridge" and (w.get("spec") or {}).get("replicas", 1) > 1:
                cfg = workload_config(docs, w, c) or {}
                if not (cfg.get("mqtt") or {}).get("shared_group"):
                    report.fail(f"{r.name}: {obj_name(w)}: {w['spec']['replicas']} replicas without mqtt.shared_group: "
                                "every replica receives every message, so each would be written that many times")


def check_shared_topic(r: Render, report: Report, renders: list[Render], kafka_cfg: dict | None, cfg_from: str) -> None:
    """With a fixed kafka.topic (the shared topic), every render of Strimzi
    objects declares it: a KafkaTopic with the bridge's kafka.partitions, and
    at least as many partitions as the sink may have replicas."""
    docs = r.docs
    if kafka_cfg is None or not any(d.get("kind") in ("KafkaTopic", "KafkaUser") for d in docs):
        return
    topic = kafka_cfg.get("topic", DEFAULT_TOPIC)
    if "{" in topic:
        return
    kt = [d for d in docs if d.get("kind") == "KafkaTopic"
          and ((d.get("spec") or {}).get("topicName") or d["metadata"]["name"]) == topic]
    if not kt:
        report.fail(f"{r.name}: no KafkaTopic for the shared topic {topic!r} (the bridge's kafka.topic, {cfg_from}): "
                    "it would be created by the bridge, unmanaged, without min.insync.replicas unless the "
                    "bridge sets it")
        return
    report.count("shared-topic KafkaTopics checked against the bridge and the sink's replicas")
    parts = (kt[0].get("spec") or {}).get("partitions")
    want = int(kafka_cfg.get("partitions", DEFAULT_PARTITIONS))
    if parts is None or int(parts) != want:
        report.fail(f"{r.name}: {obj_name(kt[0])}: {parts} partitions, but the bridge's kafka.partitions "
                    f"({cfg_from}) is {want}")
    for cand in serving_renders(renders, r):
        mx = sink_max_replicas(cand.docs)
        if mx is not None and parts is not None and mx > int(parts):
            report.fail(f"{r.name}: {obj_name(kt[0])}: {parts} partitions, but the sink of {cand.name} scales "
                        f"to {mx} replicas: the ones beyond the partitions would read nothing")


def check_argocd_environments(renders: list[Render], report: Report) -> None:
    """Production Applications all follow the same pinned revision."""
    revs = {}
    for r in renders:
        for d in r.docs:
            if d.get("kind") == "Application":
                dest = ((d.get("spec") or {}).get("destination") or {}).get("namespace", "")
                if not str(dest).endswith("-dev"):
                    revs.setdefault(((d["spec"].get("source") or {}).get("targetRevision")), []).append(f"{r.name}: {d['metadata']['name']}")
    if len(revs) > 1:
        report.fail(f"production Applications follow different revisions: {revs}")


def check_client_ids(renders: list[Render], report: Report) -> None:
    """Two installations in different namespaces never share an MQTT client id."""
    seen: dict[str, tuple[str, str]] = {}
    for r in renders:
        for w in r.docs:
            if w.get("kind") not in WORKLOAD_KINDS or is_hook(w):
                continue
            ns = (w.get("metadata") or {}).get("namespace") or "default"
            for c in pod_spec_of(w)[1].get("containers") or []:
                if (c.get("args") or [None])[0] not in MQTT_COMMANDS:
                    continue
                for i in range(2):
                    cid = mqtt_client_id(r.docs, w, c, f"{w['metadata']['name']}-{i}", ns)
                    other = seen.get(cid)
                    if other and other[1] != ns:
                        report.fail(f"MQTT client id {cid!r} is used in namespace {ns} ({r.name}) and in {other[1]} "
                                    f"({other[0]}): both would take over each other's persistent session")
                    seen.setdefault(cid, (r.name, ns))
                    report.count("MQTT client ids compared across renders")


def check_platform(r: Render, report: Report) -> None:
    """Every value of ci/platform-values.yaml shows up in the render."""
    v = r.values or {}

    def bad(msg: str) -> None:
        report.fail(f"{r.name}: {msg}")

    sa = [d for d in r.docs if d.get("kind") == "ServiceAccount"]
    if not sa or sa[0]["metadata"]["name"] != v["serviceAccount"]["name"]:
        bad("serviceAccount.name is not the ServiceAccount's name")
    elif (sa[0]["metadata"].get("annotations") or {}) != v["serviceAccount"]["annotations"]:
        bad("serviceAccount.annotations are not on the ServiceAccount")
    workloads = [d for d in r.docs if d.get("kind") in ("StatefulSet", "Deployment")]
    if not workloads:
        bad("no workloads")
    for w in workloads:
        pmeta, pod = pod_spec_of(w)
        where = obj_name(w)
        checks = {
            "serviceAccount.name": pod.get("serviceAccountName") == v["serviceAccount"]["name"],
            "podLabels": v["podLabels"].items() <= (pmeta.get("labels") or {}).items(),
            "podAnnotations": v["podAnnotations"].items() <= (pmeta.get("annotations") or {}).items(),
            "priorityClassName": pod.get("priorityClassName") == v["priorityClassName"],
            "terminationGracePeriodSeconds": pod.get("terminationGracePeriodSeconds") == v["terminationGracePeriodSeconds"],
            "extraVolumes": all(x in (pod.get("volumes") or []) for x in v["extraVolumes"]),
            "initContainers": [c["name"] for c in pod.get("initContainers") or []] == [c["name"] for c in v["initContainers"]],
            "nodeSelector": pod.get("nodeSelector") == v["nodeSelector"],
            "tolerations": pod.get("tolerations") == v["tolerations"],
            "affinity": pod.get("affinity") == v["affinity"],
            "topologySpreadConstraints": [
                (c.get("topologyKey"), c.get("whenUnsatisfiable"), bool(c.get("labelSelector")))
                for c in pod.get("topologySpreadConstraints") or []
            ] == [(c["topologyKey"], c["whenUnsatisfiable"], True) for c in v["topologySpreadConstraints"]],
        }
        comp = (pmeta.get("labels") or {}).get("app.kubernetes.io/component")
        strategy = (w.get("spec") or {}).get("updateStrategy" if w["kind"] == "StatefulSet" else "strategy")
        checks[f"{comp}.updateStrategy"] = strategy == v[comp]["updateStrategy"]
        for c in pod.get("containers") or []:
            names = [e["name"] for e in c.get("env") or []]
            checks["extraVolumeMounts"] = all(x in (c.get("volumeMounts") or []) for x in v["extraVolumeMounts"])
            checks["envFrom"] = c.get("envFrom") == v["envFrom"]
            checks["extraEnv"] = all(e["name"] in names for e in v["extraEnv"])
            checks["lifecycle"] = c.get("lifecycle") == v["lifecycle"]
            if comp == "bridge":
                cid = mqtt_client_id(r.docs, w, c, f"{w['metadata']['name']}-0", w["metadata"].get("namespace"))
                checks["clusterName (in the MQTT client id)"] = v["clusterName"] in (cid or "")
        for what, ok in checks.items():
            if not ok:
                bad(f"{where}: {what} from the values is not rendered")
            report.count("platform values proven rendered")
    if not any(d.get("kind") == "ConfigMap" and d["metadata"]["name"] == v["extraObjects"][0]["metadata"]["name"] for d in r.docs):
        bad("extraObjects: the ConfigMap is not rendered")
    pm = [d for d in r.docs if d.get("kind") == "PodMonitor"]
    if not pm or not pm[0]["spec"]["podMetricsEndpoints"][0].get("relabelings") \
            or pm[0]["spec"]["podMetricsEndpoints"][0].get("metricRelabelings") != v["podMonitor"]["metricRelabelings"]:
        bad("podMonitor: no PodMonitor with the relabelings")


def check_helm_test(r: Render, report: Report) -> None:
    """`helm test` runs `iotpipe check` (online) of every command's config, in
    the workloads' image, with their ConfigMaps and Secrets."""
    tests = [d for d in r.docs if d.get("kind") == "Pod" and
             ((d.get("metadata") or {}).get("annotations") or {}).get("helm.sh/hook") == "test"]
    workloads = [d for d in r.docs if d.get("kind") in ("StatefulSet", "Deployment")]
    if not workloads:
        return
    if not tests:
        report.fail(f"{r.name}: no `helm test` Pod (helm.sh/hook: test) running `iotpipe check` against the release's services")
        return
    pod = pod_spec_of(tests[0])[1]
    checks = {command_of(c): c for c in pod.get("containers") or [] if (c.get("args") or [None])[0] == "check"}
    for w in workloads:
        wpod = pod_spec_of(w)[1]
        c = wpod["containers"][0]
        cmd = command_of(c)
        t = checks.get(cmd)
        if t is None:
            report.fail(f"{r.name}: the helm test Pod does not check the {cmd} config")
            continue
        if "--offline" in (t.get("args") or []):
            report.fail(f"{r.name}: the helm test of {cmd} runs with --offline: it would try no connection")
        if t.get("image") != c.get("image"):
            report.fail(f"{r.name}: the helm test of {cmd} runs image {t.get('image')}, the workload {c.get('image')}")
        wcm, _, wtext = mounted_config(r.docs, w, c)
        tcm, _, ttext = mounted_config(r.docs, tests[0], t)
        if wcm is None or tcm is None or wcm["metadata"]["name"] != tcm["metadata"]["name"]:
            report.fail(f"{r.name}: the helm test of {cmd} does not mount the {cmd}'s config")
        if mounted_secrets(wpod, c) != mounted_secrets(pod, t):
            report.fail(f"{r.name}: the helm test of {cmd} mounts Secrets {sorted(mounted_secrets(pod, t))}, "
                        f"the workload {sorted(mounted_secrets(wpod, c))}")
        report.count("helm test containers checked against their workloads")


def check_helm_rotation(report: Report) -> None:
    """A chart-created Secret definition (extraObjects) that changes rolls the pods mounting it."""
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    base = yaml.safe_load((CHART / "ci/all-on-values.yaml").read_text())

    def sink_annotations(values):
        docs = helm_docs(chart.render(values, name="iotpipe", namespace="iotpipe"))
        d = next(d for d in docs if d.get("kind") == "Deployment")
        return pod_spec_of(d)[0].get("annotations") or {}

    try:
        changed = copy.deepcopy(base)
        changed["extraObjects"][0]["spec"]["data"][0]["remoteRef"]["key"] = "iotpipe/store-rotated"
        a, b = sink_annotations(base), sink_annotations(changed)
    except (KeyError, IndexError, StopIteration, helm_python.HelmError) as e:
        report.fail(f"helm: cannot render ci/all-on-values.yaml with a changed ExternalSecret (extraObjects): {e}")
        return
    if "checksum/secrets" not in a:
        report.fail("helm: the sink mounts iotpipe-store, defined by an ExternalSecret in extraObjects, but has no checksum/secrets annotation")
    elif a["checksum/secrets"] == b["checksum/secrets"]:
        report.fail("helm: checksum/secrets does not change when the ExternalSecret defining a mounted Secret changes")
    else:
        report.count("rotation: chart-created Secret definitions roll the pods")


# --------------------------------------------------------------------------- iotpipe check


def config_uses(docs: list[dict]):
    """(ConfigMap, key, workload, container) for every mounted iotpipe config."""
    used = set()
    for w in [d for d in docs if d.get("kind") in WORKLOAD_KINDS]:
        for c in pod_spec_of(w)[1].get("containers") or []:
            if "--config" not in (c.get("args") or []):
                continue
            cm, key, text = mounted_config(docs, w, c)
            if text is None:
                yield None, key, w, c
                continue
            used.add((cm["metadata"]["name"], key))
            yield cm, key, w, c
    for cm in [d for d in docs if d.get("kind") == "ConfigMap"]:
        for key in (cm.get("data") or {}):
            if key.endswith(".toml") and (cm["metadata"]["name"], key) not in used:
                yield cm, key, None, None


def file_keys(cfg: dict):
    """(dotted key, path) of every key naming a file."""
    for sect, body in cfg.items():
        if not isinstance(body, dict):
            continue
        for k, v in body.items():
            if isinstance(v, dict):
                for pk, pv in v.items():
                    if isinstance(pv, str) and (pk.endswith("_file") or pk.endswith(".location")) and pv != "probe":
                        yield f"{sect}.{k}.{pk}", pv
            elif isinstance(v, str) and k.endswith("_file"):
                yield f"{sect}.{k}", v


def check_configs(renders: list[Render], iotpipe: str | None, report: Report) -> None:
    done: dict[str, str | None] = {}
    for r in renders:
        for cm, key, w, c in config_uses(r.docs):
            where = f"{r.name}: " + (f"{obj_name(w)}" if w else f"{obj_name(cm)} (not mounted)")
            if cm is None:
                report.fail(f"{where}: --config names {key}, which no mounted ConfigMap has")
                continue
            text = cm["data"][key]
            cmd = None
            env = {}
            mounts = []
            if c is not None:
                cmd = command_of(c)
                mounts = c.get("volumeMounts") or []
                ns = (w.get("metadata") or {}).get("namespace") or "default"
                env = {k: v for k, v in expand_env(c, f"{w['metadata']['name']}-0", ns).items() if k.startswith("IOTPIPE_")}
            try:
                cfg = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                report.fail(f"{where}: {obj_name(cm)} {key} is not TOML: {e}")
                continue
            # Files the config names must be on a mounted volume; data must be writable.
            if c is not None:
                for k, path in file_keys(cfg):
                    if not any(path.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts):
                        report.fail(f"{where}: {k} = {path} is on no volume mounted in the container")
                writable = [m["mountPath"].rstrip("/") + "/" for m in mounts if not m.get("readOnly")]
                journal = (cfg.get("journal") or {}).get("path") or env.get("IOTPIPE_JOURNAL__PATH")
                if cmd == "run" and not journal:
                    journal = "data/journal"
                url = (cfg.get("store") or {}).get("url", "")
                for what, path in (("journal.path", journal), ("store.url", url[len("sqlite://"):] if url.startswith("sqlite://") and cmd != "bridge" else None)):
                    if path and not any(path.startswith(p) for p in writable):
                        report.fail(f"{where}: {what} {path} is not on a writable volume (the root FS is read-only)")
            if iotpipe is None:
                continue
            digest = hashlib.sha256(json.dumps([text, cmd, sorted(env.items())]).encode()).hexdigest()
            if digest not in done:
                done[digest] = run_iotpipe_check(iotpipe, text, cfg, cmd, env)
                report.count("distinct configs checked with iotpipe check --offline")
            if done[digest]:
                report.fail(f"{where}: {obj_name(cm)} {key}: iotpipe check --offline --command {cmd}: {done[digest]}")
            report.count("mounted configs checked with iotpipe check --offline")


def run_iotpipe_check(iotpipe: str, text: str, cfg: dict, cmd: str | None, env: dict) -> str | None:
    env = dict(env)
    with tempfile.TemporaryDirectory(prefix="iotpipe-check-") as tmp:
        # Secret files are read while loading: stand-ins, at paths under tmp.
        for _, path in file_keys(cfg):
            stand_in = Path(tmp) / "files" / path.lstrip("/")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("placeholder\n")
            text = text.replace(json.dumps(path), json.dumps(str(stand_in)))
        for k, v in list(env.items()):
            if k.endswith("_FILE"):
                stand_in = Path(tmp) / "files" / v.lstrip("/")
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.write_text("placeholder\n")
                env[k] = str(stand_in)
        f = Path(tmp) / "iotpipe.toml"
        f.write_text(text)
        argv = [iotpipe, "check", "--offline", "--config", str(f)]
        if cmd:
            argv += ["--command", cmd]
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("IOTPIPE_")}
        proc = subprocess.run(argv, capture_output=True, text=True, env={**base_env, **env}, cwd=tmp)
        if proc.returncode != 0:
            return (proc.stderr.strip() or proc.stdout.strip()).replace(tmp, "")
    return None


# --------------------------------------------------------------------------- checkov


def checkov_argv(checkov: str, framework: str, target: list[str], checks: list[str] | None = None) -> list[str]:
    argv = [checkov, *target, "--framework", framework, "--output", "json", "--quiet", "--compact", "--skip-download"]
    if checks:
        argv += ["--check", ",".join(checks)]
    return argv


def checkov_results(argv: list[str], framework: str, report: Report) -> list[dict] | None:
    """Run checkov; its results (one per scanned framework), None when it did not run."""
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    if proc.returncode not in (0, 1):
        report.fail(f"checkov ({framework}) did not run: {proc.stderr.strip()[-2000:]}")
        return None
    try:
        out = json.loads(proc.stdout) if proc.stdout.strip() else []
    except json.JSONDecodeError:
        report.fail(f"checkov ({framework}) printed no JSON: {proc.stdout[-500:]} {proc.stderr[-1500:]}")
        return None
    return [res for res in (out if isinstance(out, list) else [out]) if isinstance(res, dict)]


def checkov_self_test(checkov: str, renders: list[Render], skip_ids: list[str], work: Path, report: Report) -> None:
    """The generic policy left to checkov must be enforced: every id of
    CHECKOV_POLICY is enabled, and each break of CHECKOV_BREAKS makes its id fail."""
    for cid, what in CHECKOV_POLICY.items():
        if cid in skip_ids:
            report.fail(f"checkov {cid} ({what}) is skipped in deploy/checkov-skips.yaml, and nothing else checks it")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    expected = {}
    for i, (target_name, what, breaker, cid) in enumerate(CHECKOV_BREAKS):
        b, _ = broken(renders, target_name, what, breaker, report)
        if b is None:
            continue
        name = f"break-{i:02d}.yaml"
        (work / name).write_text(yaml.safe_dump_all(b.docs, sort_keys=False))
        expected[name] = (cid, what, target_name)
    results = checkov_results(checkov_argv(checkov, "kubernetes", ["-d", str(work)], sorted(CHECKOV_POLICY)), "kubernetes", report)
    if results is None:
        return
    failed = {(Path(fc.get("file_path", "")).name, fc.get("check_id"))
              for res in results for fc in (res.get("results") or {}).get("failed_checks", [])}
    for name, (cid, what, target_name) in expected.items():
        if (name, cid) not in failed:
            report.fail(f"self-test: checkov {cid} did not notice: {what} ({target_name})")
        report.count("self-test breaks detected by checkov", 1 if (name, cid) in failed else 0)


def run_checkov(checkov: str, rendered_dirs: list[Path], report: Report, renders: list[Render]) -> None:
    skips_file = DEPLOY / "checkov-skips.yaml"
    skips = yaml.safe_load(skips_file.read_text()) if skips_file.exists() else {}
    skip_ids = []
    for entry in (skips or {}).get("skip", []):
        if not entry.get("id") or not str(entry.get("reason", "")).strip():
            report.fail(f"{skips_file.relative_to(ROOT)}: every skipped check needs an id and a reason: {entry}")
        else:
            skip_ids.append(entry["id"])
    targets = [("kubernetes", ["-d", str(d)]) for d in rendered_dirs]
    containerfile = ROOT / "Containerfile"
    if containerfile.exists():
        # checkov reads Dockerfile-named files only: scan a copy under that name.
        copy_dir = rendered_dirs[0].parent / "containerfile"
        copy_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(containerfile, copy_dir / "Dockerfile")
        targets.append(("dockerfile", ["-f", str(copy_dir / "Dockerfile")]))
    else:
        report.skip("checkov scan of Containerfile (there is none at the repository root yet; it is scanned once it exists)")
    matched = set()
    for framework, target in targets:
        results = checkov_results(checkov_argv(checkov, framework, target), framework, report)
        for res in results or []:
            summary = res.get("summary") or {}
            report.count(f"checkov {framework} checks passed", summary.get("passed", 0))
            for fc in (res.get("results") or {}).get("failed_checks", []):
                if fc.get("check_id") in skip_ids:
                    matched.add(fc.get("check_id"))
                    report.count(f"checkov {framework} findings skipped with a reason (deploy/checkov-skips.yaml)")
                    continue
                sev = fc.get("severity") or "no severity"
                report.fail(
                    f"checkov {fc.get('check_id')} ({sev}) {fc.get('check_name')}: {fc.get('resource')} in "
                    f"{'Containerfile' if framework == 'dockerfile' else Path(fc.get('file_path', '')).name} (fix it, or skip it with a reason in deploy/checkov-skips.yaml)"
                )
    scanned = {framework for framework, _ in targets}
    for sid in skip_ids:
        if sid.startswith("CKV_DOCKER_") and "dockerfile" not in scanned:
            continue
        if sid not in matched:
            print(f"note  checkov skip {sid} matched no finding (stale entry in deploy/checkov-skips.yaml?)")
    checkov_self_test(checkov, renders, skip_ids, rendered_dirs[0].parent / "checkov-breaks", report)




# --------------------------------------------------------------------------- self-test


def check_render(r: Render, report: Report, renders: list[Render]) -> None:
    check_workloads(r, report)
    check_semantics(r, report, renders)
    check_prometheus_rules(r, report)


def check_prometheus_rules(r: Render, report: Report) -> None:
    """A PrometheusRule carries the rules of scripts/observability_gen.py: the Kustomize one exactly, the Helm
    one with component down alerts for the components the render has, in its namespace (docs/observability.md)."""
    import observability_gen as gen

    for pr in [d for d in r.docs if d.get("kind") == "PrometheusRule"]:
        meta = pr.get("metadata") or {}
        groups = (pr.get("spec") or {}).get("groups")
        if r.name.startswith("helm:"):
            comps = tuple(c for c in gen.COMMANDS if any(
                d.get("kind") in ("StatefulSet", "Deployment")
                and ((d.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/component") == c
                for d in r.docs))
            base = ((r.values or {}).get("prometheusRule") or {}).get("runbookBaseUrl", gen.RUNBOOK_BASE_URL)
            want = gen.rule_groups(base, down="absent", components=comps, namespace=meta.get("namespace"))
            downs = [a for a in gen.alert_names(groups or []) if a.endswith("Down") and a != "IotpipeInstanceDown"]
            if sorted(downs) != sorted(f"Iotpipe{c.capitalize()}Down" for c in comps):
                report.fail(f"{r.name}: PrometheusRule {meta.get('name')}: component down alerts {downs} "
                            f"for the components {list(comps)}")
        else:
            want = gen.rule_groups()
        if groups != want:
            report.fail(f"{r.name}: PrometheusRule {meta.get('name')} differs from the rules of "
                        "scripts/observability_gen.py (run it and commit the outputs)")
        else:
            report.count("PrometheusRules equal to the generator's rules")


def first(docs, kind, pred=lambda d: True):
    return next(d for d in docs if d.get("kind") == kind and pred(d))


def container(docs, kind):
    return pod_spec_of(first(docs, kind))[1]["containers"][0]


def drop_env(c, name):
    c["env"] = [e for e in c.get("env") or [] if e["name"] != name]


def edit_config(docs, kind, fn):
    """Change the TOML text of the config a workload mounts."""
    w = first(docs, kind)
    cm, key, text = mounted_config(docs, w, pod_spec_of(w)[1]["containers"][0])
    cm["data"][key] = fn(text)


def unhash_config(docs):
    w = first(docs, "StatefulSet")
    vol = next(v for v in pod_spec_of(w)[1]["volumes"] if "configMap" in v)
    cm = first(docs, "ConfigMap", lambda d: d["metadata"]["name"] == vol["configMap"]["name"])
    cm["metadata"]["name"] = vol["configMap"]["name"] = "iotpipe-bridge-config"


def drop_kafka_egress(docs):
    np_ = first(docs, "NetworkPolicy")
    np_["spec"]["egress"] = [r for r in np_["spec"]["egress"] if not any(p.get("port") == 9093 for p in r.get("ports") or [])]


def acl_topic(docs, name):
    """Rename the bridge's (first KafkaUser's) ACL on its kafka.topic."""
    u = first(docs, "KafkaUser")
    a = next(a for a in u["spec"]["authorization"]["acls"]
             if a["resource"]["type"] == "topic" and a["resource"]["name"] != "iot-dead-letters")
    a["resource"]["name"] = name


def user(docs, name):
    return first(docs, "KafkaUser", lambda d: d["metadata"]["name"] == name)


def shared_topic(docs):
    return first(docs, "KafkaTopic", lambda d: d["spec"].get("topicName") == "iot.telemetry")


def drop_sink_topic_acl(docs):
    u = user(docs, "iotpipe-sink")
    acls = u["spec"]["authorization"]["acls"]
    acls.remove(next(a for a in acls if a["resource"].get("name") == "iot.telemetry"))


# (render broken, what, how): each must be noticed by the policy/semantic checks.
BREAKS = [
    ("kustomize:overlays/prod", "startup probe removed", lambda d: container(d, "Deployment").pop("startupProbe")),
    ("kustomize:overlays/prod", "readiness probe asks /healthz",
     lambda d: container(d, "StatefulSet")["readinessProbe"]["httpGet"].update(path="/healthz")),
    ("kustomize:overlays/prod", "runAsUser 1000 (the image's user is 65532)",
     lambda d: container(d, "StatefulSet")["securityContext"].update(runAsUser=1000)),
    ("kustomize:overlays/prod", "memory limit 32Mi (below the sink's measured peak)",
     lambda d: container(d, "Deployment")["resources"]["limits"].update(memory="32Mi")),
    ("kustomize:overlays/prod", "literal password in env", lambda d: container(d, "Deployment").setdefault("env", []).append({"name": "PG_PASSWORD", "value": "x"})),
    ("kustomize:overlays/prod", "mount inside the config volume", lambda d: container(d, "Deployment")["volumeMounts"].append({"name": "tmp", "mountPath": "/etc/iotpipe/ca"})),
    ("kustomize:overlays/prod", "PodDisruptionBudget removed", lambda d: d.remove(first(d, "PodDisruptionBudget"))),
    ("kustomize:overlays/prod", "PodDisruptionBudget without unhealthyPodEvictionPolicy",
     lambda d: first(d, "PodDisruptionBudget")["spec"].pop("unhealthyPodEvictionPolicy")),
    ("kustomize:overlays/prod", "terminationGracePeriodSeconds below the sink's drain budget",
     lambda d: pod_spec_of(first(d, "Deployment"))[1].update(terminationGracePeriodSeconds=20)),
    ("kustomize:overlays/prod", "grace_period 60s with terminationGracePeriodSeconds 30",
     lambda d: edit_config(d, "StatefulSet", lambda t: t.replace('grace_period = "25s"', 'grace_period = "60s"'))),
    ("kustomize:overlays/prod", "startup probe of 60 s with a 1536 MiB journal",
     lambda d: container(d, "StatefulSet")["startupProbe"].update(failureThreshold=30)),
    ("kustomize:overlays/prod", "journal volume of 1536Mi for a 1536 MiB journal (no room for preallocated segments)",
     lambda d: first(d, "StatefulSet")["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"].update(
         storage="1536Mi")),
    ("kustomize:overlays/prod", "MQTT client id left to the host name",
     lambda d: drop_env(container(d, "StatefulSet"), "IOTPIPE_MQTT__CLIENT_ID")),
    ("kustomize:overlays/prod", "MQTT client id without the namespace",
     lambda d: next(e for e in container(d, "StatefulSet")["env"] if e["name"] == "IOTPIPE_MQTT__CLIENT_ID").update(value="iotpipe-$(POD_NAME)")),
    ("kustomize:overlays/prod", "ServiceMonitor without the release label",
     lambda d: first(d, "ServiceMonitor")["metadata"]["labels"].pop("release")),
    ("kustomize:overlays/prod", "PrometheusRule without the release label",
     lambda d: first(d, "PrometheusRule")["metadata"]["labels"].pop("release")),
    ("kustomize:overlays/prod", "PrometheusRule alert edited by hand",
     lambda d: first(d, "PrometheusRule")["spec"]["groups"][1]["rules"][0].update(expr="iotpipe_mqtt_connected < 1")),
    ("helm:run only, prometheusRule", "Helm PrometheusRule with a bridge down alert in a run-only release",
     lambda d: first(d, "PrometheusRule")["spec"]["groups"][0]["rules"].insert(0, {
         "alert": "IotpipeBridgeDown", "expr": 'absent(iotpipe_build_info{command="bridge"})'})),
    ("kustomize:overlays/prod", "NetworkPolicy without the Kafka port 9093", drop_kafka_egress),
    ("kustomize:overlays/prod", "3 bridges without mqtt.shared_group",
     lambda d: edit_config(d, "StatefulSet", lambda t: t.replace('shared_group = "iotpipe"', ''))),
    ("kustomize:overlays/prod", "config ConfigMap without a content hash", unhash_config),
    ("kustomize:overlays/prod+reloader", "Reloader annotation removed",
     lambda d: first(d, "StatefulSet")["metadata"].pop("annotations")),
    ("kustomize:kafka", "KafkaTopic without Prune=false,Delete=false",
     lambda d: first(d, "KafkaTopic")["metadata"]["annotations"].pop("argocd.argoproj.io/sync-options")),
    ("kustomize:kafka", "KafkaTopic retention 7 days (the bridge says 3d)",
     lambda d: first(d, "KafkaTopic")["spec"]["config"].update({"retention.ms": 604800000})),
    ("kustomize:kafka", "KafkaTopic without min.insync.replicas",
     lambda d: first(d, "KafkaTopic")["spec"]["config"].pop("min.insync.replicas")),
    ("kustomize:kafka", "ACL on topic telemetry (the bridge writes iot.telemetry)", lambda d: acl_topic(d, "telemetry")),
    ("kustomize:kafka", "no KafkaTopic for the shared topic iot.telemetry", lambda d: d.remove(shared_topic(d))),
    ("kustomize:kafka", "shared topic with 6 partitions (the bridge says 12, the sink scales to 12)",
     lambda d: shared_topic(d)["spec"].update(partitions=6)),
    ("kustomize:kafka", "shared topic with min.insync.replicas 1 (the bridge creates topics with 2)",
     lambda d: shared_topic(d)["spec"]["config"].update({"min.insync.replicas": 1})),
    ("kustomize:kafka", "sink without a read ACL on the shared topic", drop_sink_topic_acl),
    ("kustomize:kafka", "sink ACL on topics outside its subscription (prefix telemetry.)",
     lambda d: user(d, "iotpipe-sink")["spec"]["authorization"]["acls"].append(
         {"resource": {"type": "topic", "name": "telemetry.", "patternType": "prefix"}, "operations": ["Read"], "host": "*"})),
    ("kustomize:overlays/prod-keda", "ScaledObject scaling the sink to 24 (12 partitions)",
     lambda d: first(d, "ScaledObject")["spec"].update(maxReplicaCount=24)),
    ("helm:ci/all-on-values.yaml", "KafkaTopic of the shared topic removed", lambda d: d.remove(shared_topic(d))),
    ("kustomize:argocd/prod", "production Application on the main branch",
     lambda d: first(d, "Application")["spec"]["source"].update(targetRevision="main")),
    ("kustomize:argocd/prod", "production Application in project default",
     lambda d: first(d, "Application")["spec"].update(project="default")),
    ("kustomize:argocd/prod", "AppProject without KafkaTopic",
     lambda d: first(d, "AppProject")["spec"].update(namespaceResourceWhitelist=[
         x for x in first(d, "AppProject")["spec"]["namespaceResourceWhitelist"] if x["kind"] != "KafkaTopic"])),
    ("kustomize:argocd/prod", "AppProject without the kafka namespace",
     lambda d: first(d, "AppProject")["spec"].update(destinations=[
         x for x in first(d, "AppProject")["spec"]["destinations"] if x["namespace"] != "kafka"])),
    ("kustomize:argocd/prod", "AppProject open to any repository",
     lambda d: first(d, "AppProject")["spec"]["sourceRepos"].append("*")),
]
# Generic workload policy that checkov enforces and scripts/check_deploy.py
# does not: (check id, what it requires). Every id must be enabled (not in
# deploy/checkov-skips.yaml); CHECKOV_BREAKS proves each one fails.
CHECKOV_POLICY = {
    "CKV_K8S_8": "a liveness probe",
    "CKV_K8S_9": "a readiness probe",
    "CKV_K8S_10": "a CPU request",
    "CKV_K8S_12": "a memory request",
    "CKV_K8S_13": "a memory limit",
    "CKV_K8S_16": "not privileged",
    "CKV_K8S_20": "allowPrivilegeEscalation false",
    "CKV_K8S_22": "readOnlyRootFilesystem true",
    "CKV_K8S_23": "runAsNonRoot (not root)",
    "CKV_K8S_25": "no added capabilities",
    "CKV_K8S_31": "seccompProfile RuntimeDefault",
    "CKV_K8S_37": "capabilities.drop ALL",
    "CKV_K8S_38": "automountServiceAccountToken false",
}


def drop_seccomp(docs):
    pod = pod_spec_of(first(docs, "StatefulSet"))[1]
    (pod.get("securityContext") or {}).pop("seccompProfile", None)
    for c in pod["containers"]:
        (c.get("securityContext") or {}).pop("seccompProfile", None)


# (render broken, what, how, the checkov id that must fail on it).
CHECKOV_BREAKS = [
    ("kustomize:overlays/prod", "liveness probe removed", lambda d: container(d, "Deployment").pop("livenessProbe"), "CKV_K8S_8"),
    ("kustomize:overlays/prod", "readiness probe removed", lambda d: container(d, "StatefulSet").pop("readinessProbe"), "CKV_K8S_9"),
    ("kustomize:overlays/prod", "CPU request removed", lambda d: container(d, "Deployment")["resources"]["requests"].pop("cpu"), "CKV_K8S_10"),
    ("kustomize:overlays/prod", "memory request removed",
     lambda d: container(d, "Deployment")["resources"]["requests"].pop("memory"), "CKV_K8S_12"),
    ("kustomize:overlays/prod", "memory limit removed", lambda d: container(d, "StatefulSet")["resources"].pop("limits"), "CKV_K8S_13"),
    ("kustomize:overlays/prod", "privileged", lambda d: container(d, "Deployment")["securityContext"].update(privileged=True), "CKV_K8S_16"),
    ("kustomize:overlays/prod", "privilege escalation allowed",
     lambda d: container(d, "StatefulSet")["securityContext"].update(allowPrivilegeEscalation=True), "CKV_K8S_20"),
    ("kustomize:overlays/prod", "readOnlyRootFilesystem removed",
     lambda d: container(d, "Deployment")["securityContext"].pop("readOnlyRootFilesystem"), "CKV_K8S_22"),
    ("kustomize:overlays/prod", "runAsNonRoot false and runAsUser 0",
     lambda d: container(d, "StatefulSet")["securityContext"].update(runAsNonRoot=False, runAsUser=0), "CKV_K8S_23"),
    ("kustomize:overlays/prod", "capability NET_ADMIN added",
     lambda d: container(d, "Deployment")["securityContext"].setdefault("capabilities", {}).update(add=["NET_ADMIN"]), "CKV_K8S_25"),
    ("kustomize:overlays/prod", "seccompProfile removed", drop_seccomp, "CKV_K8S_31"),
    ("kustomize:overlays/prod", "capabilities not dropped",
     lambda d: container(d, "Deployment")["securityContext"].pop("capabilities"), "CKV_K8S_37"),
    ("kustomize:overlays/prod", "automountServiceAccountToken removed",
     lambda d: pod_spec_of(first(d, "StatefulSet"))[1].pop("automountServiceAccountToken"), "CKV_K8S_38"),
]
# Breaks the schema checks must notice (Kubernetes schemas, Strimzi v1, the npm CRD models).
SCHEMA_BREAKS = [
    ("kustomize:overlays/prod", "unknown field in a Deployment", lambda d: first(d, "Deployment")["spec"].update(replicaz=2)),
    ("kustomize:overlays/prod", "ServiceMonitor without endpoints", lambda d: first(d, "ServiceMonitor")["spec"].pop("endpoints")),
    ("kustomize:kafka", "KafkaTopic kafka.strimzi.io/v1beta2", lambda d: first(d, "KafkaTopic").update(apiVersion="kafka.strimzi.io/v1beta2")),
    ("kustomize:kafka", "KafkaUser ACL with operation (v1beta2) instead of operations",
     lambda d: first(d, "KafkaUser")["spec"]["authorization"]["acls"][0].update(operation="Write")),
    ("kustomize:kafka", "KafkaUser without authorization.acls",
     lambda d: first(d, "KafkaUser")["spec"]["authorization"].pop("acls")),
]
NPM_BREAKS = [
    ("kustomize:argocd/prod", "AppProject destination namespace not a string",
     lambda d: first(d, "AppProject")["spec"]["destinations"][0].update(namespace=5)),
    ("kustomize:argocd/prod", "Application syncPolicy.automated.prune not a boolean",
     lambda d: first(d, "Application")["spec"]["syncPolicy"]["automated"].update(prune="yes")),
    ("kustomize:overlays/prod", "ServiceMonitor relabeling action bogus",
     lambda d: first(d, "ServiceMonitor")["spec"]["endpoints"][0].update(relabelings=[{"action": "bogus"}])),
    ("kustomize:overlays/prod-keda", "ScaledObject without scaleTargetRef",
     lambda d: first(d, "ScaledObject")["spec"].pop("scaleTargetRef")),
    ("helm:ci/all-on-values.yaml", "ExternalSecret creationPolicy Whatever",
     lambda d: first(d, "ExternalSecret")["spec"]["target"].update(creationPolicy="Whatever")),
]


def broken(renders, target_name, what, breaker, report):
    target = next((r for r in renders if r.name == target_name), None)
    if target is None:
        report.fail(f"self-test: no render {target_name} to break ({what})")
        return None, None
    docs = copy.deepcopy(target.docs)
    try:
        breaker(docs)
    except (KeyError, StopIteration, TypeError, IndexError) as e:
        report.fail(f"self-test: cannot break {target_name} ({what}): {e!r}")
        return None, None
    b = Render(f"{target.name} (broken: {what})", docs, target.expect, target.values)
    return b, [b if x is target else x for x in renders]


def self_test(renders: list[Render], report: Report, schemas: Schemas) -> None:
    """The checks must fail on broken manifests: break copies of the renders
    in the ways they guard against and expect a failure each."""
    for target_name, what, breaker in BREAKS:
        b, rs = broken(renders, target_name, what, breaker, report)
        if b is None:
            continue
        probe = Report(quiet=True)
        check_render(b, probe, rs)
        if not probe.failures:
            report.fail(f"self-test: the policy/semantic checks did not notice: {what} ({target_name})")
        report.count("self-test breaks detected by the policy and semantic checks", 1 if probe.failures else 0)
    for target_name, what, breaker in SCHEMA_BREAKS:
        b, _ = broken(renders, target_name, what, breaker, report)
        if b is None:
            continue
        probe = Report(quiet=True)
        validate_schemas(b, probe, Schemas(strimzi=schemas.strimzi))
        if not probe.failures:
            report.fail(f"self-test: the schema checks did not notice: {what} ({target_name})")
        report.count("self-test breaks detected by the schema checks", 1 if probe.failures else 0)
    if schemas.npm:
        for target_name, what, breaker in NPM_BREAKS:
            b, _ = broken(renders, target_name, what, breaker, report)
            if b is None:
                continue
            before = len(schemas.npm_items)
            validate_schemas(b, Report(quiet=True), Schemas(npm=schemas.npm, npm_items=schemas.npm_items), tag=f"b:{what}")
            if len(schemas.npm_items) == before:
                report.fail(f"self-test: nothing of {target_name} went to the @kubernetes-models check ({what})")
    for r in renders:
        if r.name in {t for t, _, _ in BREAKS}:
            probe = Report(quiet=True)
            check_render(r, probe, renders)
            if probe.failures:
                report.fail(f"self-test: {r.name}, which it breaks, has problems already (listed above)")


def self_test_npm(schemas: Schemas, results: dict[str, list[str]], report: Report) -> None:
    for what in {id_.split(":", 2)[1] for id_, _, _ in schemas.npm_items if id_.startswith("b:")}:
        errors = [e for id_, es in results.items() if id_.startswith(f"b:{what}:") for e in es]
        if not errors:
            report.fail(f"self-test: the @kubernetes-models CRD schemas did not notice: {what}")
        report.count("self-test breaks detected by the @kubernetes-models CRD schemas", 1 if errors else 0)


# --------------------------------------------------------------------------- main


def argocd_loose_files() -> list[tuple[str, list[dict]]]:
    """Application files of deploy/argocd/<env>/ that its kustomization does not
    list (alternatives), each with that directory's AppProject."""
    out = []
    for d in sorted((DEPLOY / "argocd").iterdir()) if (DEPLOY / "argocd").is_dir() else []:
        k = d / "kustomization.yaml"
        if not k.exists():
            continue
        listed = set((yaml.safe_load(k.read_text()) or {}).get("resources") or [])
        project = [x for x in yaml.safe_load_all((d / "project.yaml").read_text()) if x] if (d / "project.yaml").exists() else []
        for f in sorted(d.glob("*.yaml")):
            if f.name not in listed and f.name != "kustomization.yaml":
                out.append((f"argocd:{d.name}/{f.name}", project + [x for x in yaml.safe_load_all(f.read_text()) if x]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--iotpipe", help="iotpipe binary for `iotpipe check --offline` (omitted: SKIPPED)")
    ap.add_argument("--checkov", help="checkov executable (omitted: SKIPPED)")
    ap.add_argument("--npm-models", help="directory whose node_modules has the @kubernetes-models packages (omitted: SKIPPED)")
    ap.add_argument("--node", default="node")
    ap.add_argument("--out", default=None, help="where the rendered manifests are written")
    args = ap.parse_args()
    if args.iotpipe:
        args.iotpipe = str(Path(args.iotpipe).resolve())
    report = Report()
    t0 = time.monotonic()

    def step(title):
        print(f"==> {title} ({time.monotonic() - t0:.0f}s)", flush=True)

    renders: list[Render] = []  # scanned by checkov too
    scenarios: list[Render] = []  # renders for one check each

    def add(into, name, docs, expect=frozenset(), values=None):
        if docs is not None:
            into.append(Render(name, docs, set(expect), values))
            report.count("renders")
            print(f"ok    {name}: {len(docs)} objects")

    step("render Kustomize")
    for rel, expect in KUSTOMIZE.items():
        add(renders, "kustomize:" + rel.removeprefix("../"), render_kustomize(args.kubectl, DEPLOY / "kustomize" / rel, report), expect)
    for name, (base, components, expect) in KUSTOMIZE_COMPOSED.items():
        add(scenarios, "kustomize:" + name, render_kustomize_composed(args.kubectl, base, components, report), expect)
    for name, docs in argocd_loose_files():
        add(scenarios, name, docs)
    step("render and lint Helm")
    try:
        import helm_python  # noqa: F401

        have_helm = True
    except ImportError:
        have_helm = False
        report.skip("Helm render and lint (helm-python-sdk not installed; run scripts/check-deploy.sh, which installs it)")
    if have_helm:
        for vf, expect in HELM.items():
            if vf and not (CHART / vf).exists():
                report.fail(f"helm values file {vf} is missing")
                continue
            values = yaml.safe_load((CHART / vf).read_text()) if vf else {}
            add(renders, "helm:" + (vf or "default"), render_helm(values, vf or "default values", report), expect, values)
        for name, (values, ns) in HELM_SCENARIOS.items():
            add(scenarios, name, render_helm(values, name, report, namespace=ns, lint=False), set(), values)
        for r in list(renders):
            for app in [d for d in r.docs if d.get("kind") == "Application"]:
                if ((app["spec"].get("source") or {}).get("path")) == "deploy/helm/iotpipe":
                    values = argocd_helm_values(app)
                    add(scenarios, f"helm:argocd {app['metadata']['name']}",
                        render_helm(values, f"Application {app['metadata']['name']}", report, lint=False), set(), values)
        for name, docs in [(s.name, s) for s in scenarios if s.name.startswith("argocd:")]:
            for app in [d for d in docs.docs if d.get("kind") == "Application"]:
                if ((app["spec"].get("source") or {}).get("path")) == "deploy/helm/iotpipe" and \
                        not any(s.name == f"helm:argocd {app['metadata']['name']}" for s in scenarios):
                    values = argocd_helm_values(app)
                    add(scenarios, f"helm:argocd {app['metadata']['name']}",
                        render_helm(values, f"Application {app['metadata']['name']}", report, lint=False), set(), values)
        helm_must_fail(report)
        check_helm_rotation(report)

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="iotpipe-deploy-"))
    rendered = out / "rendered"
    shutil.rmtree(rendered, ignore_errors=True)
    shutil.rmtree(out / "scenarios", ignore_errors=True)
    rendered.mkdir(parents=True)
    (out / "scenarios").mkdir(parents=True)
    for dir_, rs in ((rendered, renders), (out / "scenarios", scenarios)):
        for r in rs:
            (dir_ / (re.sub(r"[^A-Za-z0-9.-]+", "_", r.name) + ".yaml")).write_text(yaml.safe_dump_all(r.docs, sort_keys=False))
    everything = renders + scenarios

    step("validate against schemas")
    schemas = Schemas()
    try:
        import jsonschema  # noqa: F401
        import kubernetes_validate  # noqa: F401

        schemas.strimzi = strimzi_crd_schemas(report)
        if args.npm_models and (Path(args.npm_models) / "node_modules" / "@kubernetes-models").is_dir():
            schemas.npm, schemas.node = args.npm_models, args.node
        else:
            report.skip("CRD schema validation of Application, AppProject, ScaledObject, ServiceMonitor, PodMonitor, "
                        "PrometheusRule, ExternalSecret with the @kubernetes-models npm packages (node/npm or the "
                        "packages are missing; scripts/check-deploy.sh installs them); required-field checks only")
        for r in everything:
            validate_schemas(r, report, schemas)
    except ImportError:
        report.skip("schema validation (kubernetes-validate not installed; run scripts/check-deploy.sh)")
    step("workload policy and object semantics")
    for r in everything:
        check_render(r, report, everything)
    check_client_ids(everything, report)
    check_argocd_environments(everything, report)
    for r in everything:
        if r.name == "helm:ci/platform-values.yaml":
            check_platform(r, report)
        if r.name.startswith("helm:") and (r.values or {}).get("tests", {}).get("enabled", True):
            check_helm_test(r, report)
    if not (ROOT / "docs" / "deploy-sizing.md").exists():
        report.fail("docs/deploy-sizing.md (memory sizing by payload size and batch) is missing")
    self_test(everything, report, schemas)
    if schemas.npm:
        step("CRD schemas (@kubernetes-models)")
        results = run_npm_models(schemas, report)
        report_npm_models(schemas, results, report)
        self_test_npm(schemas, results, report)
    step("iotpipe check --offline of every mounted config")
    if args.iotpipe is None:
        report.skip("iotpipe check --offline (no iotpipe binary: set IOTPIPE_BIN or install cargo)")
    check_configs(everything, args.iotpipe, report)
    step("checkov")
    if args.checkov:
        run_checkov(args.checkov, [rendered, out / "scenarios"], report, everything)
    else:
        report.skip("checkov scan (no checkov: it could not be installed, see the pip output above, or --checkov was not given; run scripts/check-deploy.sh)")

    print(f"==> summary ({time.monotonic() - t0:.0f}s), rendered manifests in {rendered} (and {out / 'scenarios'})")
    for k, v in report.counts.items():
        print(f"      {v:4d}  {k}")
    for s in report.skips:
        print(f"      SKIPPED: {s}")
    if report.failures:
        print(f"FAILED: {len(report.failures)} problem(s) in deploy/; each is listed above with FAIL", file=sys.stderr)
        return 1
    print("ok    every deploy check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
