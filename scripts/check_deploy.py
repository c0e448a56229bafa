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

# Kustomize directories rendered, and whether the render must carry the
# Prometheus operator objects (ServiceMonitor) for its workloads.
KUSTOMIZE = {
    "base": False,
    "single-node": False,
    "overlays/dev": True,
    "overlays/prod": True,
    "overlays/prod-keda": True,
    "kafka": False,
    "../argocd": False,
}
# Helm values files rendered (None: the chart's defaults), and the same flag.
HELM = {
    None: False,
    "ci/all-on-values.yaml": True,
    "ci/run-values.yaml": False,
}
# Kubernetes versions the core objects are validated against: the chart's
# kubeVersion floor and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ["1.27.0", "latest"]

MEMORY_LIMIT_MAX = 64 * 1024 * 1024
APP_UID = 65532
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|PRIVATE_KEY|API_KEY)", re.I)


def skipped(what: str) -> None:
    print(f"SKIPPED: {what}", file=sys.stderr, flush=True)


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    skips: list[str] = field(default_factory=list)

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
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
    expect_monitoring: bool


# --------------------------------------------------------------------------- rendering


def render_kustomize(kubectl: str, rel: str, report: Report) -> list[dict] | None:
    path = DEPLOY / "kustomize" / rel
    proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        report.fail(f"kustomize {path.relative_to(ROOT)} does not render: {proc.stderr.strip()}")
        return None
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def render_helm(values_file: str | None, report: Report) -> list[dict] | None:
    import helm_python

    values = yaml.safe_load((CHART / values_file).read_text()) if values_file else {}
    label = values_file or "default values"
    chart = helm_python.Chart.load(str(CHART))
    try:
        chart.validate_schema(values)
        report.count("helm values files valid against values.schema.json")
    except helm_python.HelmError as e:
        report.fail(f"helm values {label} do not match values.schema.json: {e}")
    try:
        out = chart.render(values, name="iotpipe", namespace="iotpipe")
    except helm_python.HelmError as e:
        report.fail(f"helm chart does not render with {label}: {e}")
        return None
    docs = []
    for tpl, text in sorted(out.items()):
        if tpl.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    lint = helm_python.lint(str(CHART), values, strict=True)
    report.count("helm lint runs")
    for m in lint.get("messages", []):
        if m.get("severity", 0) >= 2:
            report.fail(f"helm lint ({label}): {m.get('path')}: {m.get('error')}")
    for e in lint.get("errors", []):
        report.fail(f"helm lint ({label}): {e}")
    return docs


# --------------------------------------------------------------------------- schemas

# Custom resources: no offline schema package exists for them, so each kind is
# checked against the fields its CRD requires and the enums that matter here
# (written from the CRDs of the versions named in deploy/README.md).
STR = {"type": "string", "minLength": 1}
INT = {"type": "integer"}
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)(ms|s|m|h|d|w|y))+)$"}
STRIMZI_LABELS = {
    "type": "object",
    "required": ["labels"],
    "properties": {"labels": {"type": "object", "required": ["strimzi.io/cluster"]}},
}
CRD_SCHEMAS: dict[tuple[str, str], dict] = {
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": STRIMZI_LABELS,
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
    ("kafka.strimzi.io/v1beta2", "KafkaUser"): {
        "type": "object",
        "required": ["metadata", "spec"],
        "properties": {
            "metadata": STRIMZI_LABELS,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "authentication": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"enum": ["tls", "tls-external", "scram-sha-512"]}},
                    },
                    "authorization": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"enum": ["simple"]},
                            "acls": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["resource"],
                                    "anyOf": [{"required": ["operations"]}, {"required": ["operation"]}],
                                    "properties": {
                                        "resource": {
                                            "type": "object",
                                            "required": ["type"],
                                            "properties": {
                                                "type": {"enum": ["topic", "group", "cluster", "transactionalId"]},
                                                "name": STR,
                                                "patternType": {"enum": ["literal", "prefix"]},
                                            },
                                            "if": {"properties": {"type": {"not": {"const": "cluster"}}}},
                                            "then": {"required": ["name"]},
                                        },
                                        "operations": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": {
                                                "enum": [
                                                    "Read", "Write", "Create", "Delete", "Alter", "Describe",
                                                    "ClusterAction", "AlterConfigs", "DescribeConfigs",
                                                    "IdempotentWrite", "All",
                                                ]
                                            },
                                        },
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
                    "syncPolicy": {
                        "type": "object",
                        "properties": {
                            "automated": {
                                "type": "object",
                                "properties": {"prune": {"type": "boolean"}, "selfHeal": {"type": "boolean"}},
                            },
                            "syncOptions": {"type": "array", "items": {"type": "string"}},
                        },
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
                    "selector": {"type": "object"},
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
                                "name": STR,
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
                    "pollingInterval": INT,
                    "cooldownPeriod": INT,
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["type", "metadata"],
                            "properties": {"type": STR, "metadata": {"type": "object"}},
                        },
                    },
                },
            }
        },
    },
}


def obj_name(d: dict) -> str:
    return f"{d.get('kind')}/{(d.get('metadata') or {}).get('name')}"


def validate_schemas(r: Render, report: Report) -> None:
    import jsonschema
    import kubernetes_validate

    versions = [kubernetes_validate.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    for d in r.docs:
        key = (d.get("apiVersion"), d.get("kind"))
        name = f"{r.name}: {obj_name(d)}"
        if not (d.get("metadata") or {}).get("name"):
            report.fail(f"{name}: metadata.name is missing")
        if key in CRD_SCHEMAS:
            errors = sorted(jsonschema.Draft7Validator(CRD_SCHEMAS[key]).iter_errors(d), key=str)
            for e in errors:
                path = "/".join(str(p) for p in e.absolute_path)
                report.fail(f"{name}: required-fields check: {path}: {e.message}")
            report.count("custom resources checked against required fields")
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


# --------------------------------------------------------------------------- workload policy


def parse_quantity(q) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3}
    s = str(q)
    for u, f in units.items():
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s)


def pod_spec_of(d: dict) -> tuple[dict, dict] | None:
    """(pod metadata, pod spec) of a workload."""
    kind = d.get("kind")
    spec = d.get("spec") or {}
    if kind == "Pod":
        return d.get("metadata") or {}, spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    tpl = spec.get("template") or {}
    return tpl.get("metadata") or {}, tpl.get("spec") or {}


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


def check_workloads(r: Render, report: Report, quiet: bool = False) -> list[str]:
    """Policy of every workload in one render; returns the problems found."""
    problems: list[str] = []
    docs = r.docs
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    sas = {(d["metadata"]["name"]): d for d in by_kind.get("ServiceAccount", [])}

    def bad(workload: dict, msg: str) -> None:
        problems.append(f"{r.name}: {obj_name(workload)}: {msg}")

    for w in [d for d in docs if d.get("kind") in WORKLOAD_KINDS]:
        pmeta, pod = pod_spec_of(w)
        labels = pmeta.get("labels") or {}
        psc = pod.get("securityContext") or {}
        sa_name = pod.get("serviceAccountName") or "default"
        if sa_name == "default":
            bad(w, "runs as the default ServiceAccount")
        sa = sas.get(sa_name)
        if pod.get("automountServiceAccountToken") is not False and not (
            sa and sa.get("automountServiceAccountToken") is False
        ):
            bad(w, "automountServiceAccountToken is not false (pod spec or ServiceAccount)")
        if sa_name != "default" and sa is None:
            bad(w, f"ServiceAccount {sa_name} is not in the render")
        elif sa is not None and sa.get("automountServiceAccountToken") is not False:
            bad(w, f"ServiceAccount {sa_name}: automountServiceAccountToken is not false")
        if not pod.get("topologySpreadConstraints"):
            bad(w, "no topologySpreadConstraints")
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        for c in (pod.get("initContainers") or []) + (pod.get("containers") or []):
            cname = f"container {c.get('name')}"
            init = c in (pod.get("initContainers") or [])
            if not init:
                for probe, path in (("startupProbe", None), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    p = c.get(probe)
                    if not p:
                        bad(w, f"{cname}: no {probe}")
                    elif path and (p.get("httpGet") or {}).get("path") != path:
                        bad(w, f"{cname}: {probe} does not GET {path}")
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            for k in ("cpu", "memory"):
                if k not in req:
                    bad(w, f"{cname}: no resources.requests.{k}")
            if "memory" not in lim:
                bad(w, f"{cname}: no resources.limits.memory")
            else:
                try:
                    if parse_quantity(lim["memory"]) > MEMORY_LIMIT_MAX:
                        bad(w, f"{cname}: memory limit {lim['memory']} is above the 64Mi budget")
                    if "memory" in req and parse_quantity(req["memory"]) > parse_quantity(lim["memory"]):
                        bad(w, f"{cname}: memory request above its limit")
                except ValueError:
                    bad(w, f"{cname}: memory quantity {lim['memory']!r} cannot be read")
            csc = c.get("securityContext") or {}

            def eff(key):
                return csc.get(key, psc.get(key))

            if eff("runAsNonRoot") is not True:
                bad(w, f"{cname}: runAsNonRoot is not true")
            if eff("runAsUser") != APP_UID:
                bad(w, f"{cname}: runAsUser is not {APP_UID}")
            if csc.get("readOnlyRootFilesystem") is not True:
                bad(w, f"{cname}: readOnlyRootFilesystem is not true")
            if csc.get("allowPrivilegeEscalation") is not False:
                bad(w, f"{cname}: allowPrivilegeEscalation is not false")
            if csc.get("privileged") is True:
                bad(w, f"{cname}: privileged")
            drop = ((csc.get("capabilities") or {}).get("drop")) or []
            if "ALL" not in drop:
                bad(w, f"{cname}: capabilities.drop does not contain ALL")
            if (csc.get("capabilities") or {}).get("add"):
                bad(w, f"{cname}: adds capabilities")
            if ((eff("seccompProfile") or {}).get("type")) != "RuntimeDefault":
                bad(w, f"{cname}: seccompProfile is not RuntimeDefault")
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
            ):
                bad(w, "no ServiceMonitor selects its Service")
            if w.get("kind") == "StatefulSet":
                svc = (w.get("spec") or {}).get("serviceName")
                if svc not in {s["metadata"]["name"] for s in services}:
                    bad(w, f"serviceName {svc} is not a Service selecting its pods")
    # No literal secrets anywhere in the render.
    for s in by_kind.get("Secret", []):
        if s.get("data") or s.get("stringData"):
            problems.append(f"{r.name}: {obj_name(s)}: a Secret with literal data in the manifests")
    for cm in by_kind.get("ConfigMap", []):
        for key, text in (cm.get("data") or {}).items():
            if not key.endswith(".toml"):
                continue
            try:
                cfg = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                problems.append(f"{r.name}: {obj_name(cm)}: {key} is not TOML: {e}")
                continue
            for sect, k in literal_secrets(cfg):
                problems.append(f"{r.name}: {obj_name(cm)}: {key}: {sect}.{k} holds a literal secret; use a *_file key")
    if not quiet:
        for p in problems:
            report.fail(p)
    report.count("workloads checked against the policy", sum(1 for d in docs if d.get("kind") in WORKLOAD_KINDS))
    return problems


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


def check_semantics(r: Render, report: Report) -> None:
    """What the issue asks of particular objects."""
    docs = r.docs
    for d in docs:
        kind, name = d.get("kind"), (d.get("metadata") or {}).get("name", "")
        if kind == "KafkaTopic":
            ret = str(((d.get("spec") or {}).get("config") or {}).get("retention.ms"))
            if ret != "259200000":
                report.fail(f"{r.name}: {obj_name(d)}: retention.ms is {ret}, not 259200000 (3 days)")
        if kind == "Application":
            spec = d["spec"]
            src = spec.get("source") or {}
            path = ROOT / src.get("path", "")
            if not path.is_dir():
                report.fail(f"{r.name}: {obj_name(d)}: source.path {src.get('path')} is not a directory of the repository")
            auto = (spec.get("syncPolicy") or {}).get("automated") or {}
            if auto.get("prune") is not True or auto.get("selfHeal") is not True:
                report.fail(f"{r.name}: {obj_name(d)}: automated sync without prune and selfHeal")
            if "CreateNamespace=true" not in ((spec.get("syncPolicy") or {}).get("syncOptions") or []):
                report.fail(f"{r.name}: {obj_name(d)}: no CreateNamespace=true")
        if kind in ("HorizontalPodAutoscaler", "ScaledObject"):
            spec = d.get("spec") or {}
            mx = spec.get("maxReplicas", spec.get("maxReplicaCount"))
            parts = partitions_in(docs)
            if mx is not None and parts is not None and mx > parts:
                report.fail(f"{r.name}: {obj_name(d)}: max replicas {mx} above the topics' {parts} partitions")
    kafka_objs = {(d.get("kind"), d["metadata"]["name"]) for d in docs if d.get("kind") in ("KafkaTopic", "KafkaUser")}
    if r.name.endswith(":kafka") and ("KafkaTopic", "iot-dead-letters") not in kafka_objs:
        report.fail(f"{r.name}: no KafkaTopic iot-dead-letters")
    workloads = [d for d in docs if d.get("kind") in WORKLOAD_KINDS]
    for w in workloads:
        args = (pod_spec_of(w)[1].get("containers") or [{}])[0].get("args") or []
        cmd = args[0] if args else None
        if cmd == "bridge" and (w["kind"] != "StatefulSet" or "iotpipe" not in w["metadata"]["name"]):
            report.fail(f"{r.name}: {obj_name(w)}: the bridge must be a StatefulSet named iotpipe-*")
        if cmd == "sink" and (w["kind"] != "Deployment" or "iotpipe" not in w["metadata"]["name"]):
            report.fail(f"{r.name}: {obj_name(w)}: the sink must be a Deployment named iotpipe-*")


def partitions_in(docs: list[dict]) -> int | None:
    for d in docs:
        if d.get("kind") == "ConfigMap":
            for key, text in (d.get("data") or {}).items():
                if key.endswith(".toml"):
                    try:
                        kafka = tomllib.loads(text).get("kafka") or {}
                    except tomllib.TOMLDecodeError:
                        continue
                    if "partitions" in kafka and "sink" not in tomllib.loads(text):
                        return int(kafka["partitions"])
    return None


# --------------------------------------------------------------------------- iotpipe check


def config_uses(docs: list[dict]):
    """(ConfigMap, key, workload, container) for every mounted iotpipe config."""
    cms = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "ConfigMap"}
    used = set()
    for w in [d for d in docs if d.get("kind") in WORKLOAD_KINDS]:
        _, pod = pod_spec_of(w)
        vols = {v["name"]: v for v in pod.get("volumes") or []}
        for c in pod.get("containers") or []:
            args = c.get("args") or []
            if "--config" not in args:
                continue
            cfg_path = args[args.index("--config") + 1]
            for m in c.get("volumeMounts") or []:
                v = vols.get(m["name"], {})
                if "configMap" in v and cfg_path.startswith(m["mountPath"].rstrip("/") + "/"):
                    cm = cms.get(v["configMap"]["name"])
                    key = cfg_path[len(m["mountPath"].rstrip("/")) + 1 :]
                    if cm is None or key not in (cm.get("data") or {}):
                        yield None, key, w, c
                        continue
                    used.add((cm["metadata"]["name"], key))
                    yield cm, key, w, c
    for name, cm in cms.items():
        for key in (cm.get("data") or {}):
            if key.endswith(".toml") and (name, key) not in used:
                yield cm, key, None, None


def file_keys(cfg: dict):
    """(dotted key, path) of every key naming a file."""
    for sect, body in cfg.items():
        if not isinstance(body, dict):
            continue
        for k, v in body.items():
            if isinstance(v, dict):
                for pk, pv in v.items():
                    if isinstance(pv, str) and (pk.endswith("_file") or pk.endswith(".location")):
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
                cmd = (c.get("args") or [None])[0]
                mounts = c.get("volumeMounts") or []
                for e in c.get("env") or []:
                    if e["name"].startswith("IOTPIPE_"):
                        env[e["name"]] = e.get("value", "placeholder")
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


def run_checkov(checkov: str, rendered_dir: Path, report: Report) -> None:
    skips_file = DEPLOY / "checkov-skips.yaml"
    skips = yaml.safe_load(skips_file.read_text()) if skips_file.exists() else {}
    skip_ids = []
    for entry in (skips or {}).get("skip", []):
        if not entry.get("id") or not str(entry.get("reason", "")).strip():
            report.fail(f"{skips_file.relative_to(ROOT)}: every skipped check needs an id and a reason: {entry}")
        else:
            skip_ids.append(entry["id"])
    targets = [("kubernetes", ["-d", str(rendered_dir)])]
    containerfile = ROOT / "Containerfile"
    if containerfile.exists():
        # checkov reads Dockerfile-named files only: scan a copy under that name.
        copy_dir = rendered_dir.parent / "containerfile"
        copy_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(containerfile, copy_dir / "Dockerfile")
        targets.append(("dockerfile", ["-f", str(copy_dir / "Dockerfile")]))
    else:
        report.skip("checkov scan of Containerfile (there is none at the repository root yet; it is scanned once it exists)")
    matched = set()
    for framework, target in targets:
        argv = [checkov, *target, "--framework", framework, "--output", "json", "--quiet", "--compact",
                "--skip-download"]
        proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
        if proc.returncode not in (0, 1):
            report.fail(f"checkov ({framework}) did not run: {proc.stderr.strip()[-2000:]}")
            continue
        try:
            out = json.loads(proc.stdout) if proc.stdout.strip() else []
        except json.JSONDecodeError:
            report.fail(f"checkov ({framework}) printed no JSON: {proc.stdout[-500:]} {proc.stderr[-1500:]}")
            continue
        results = out if isinstance(out, list) else [out]
        for res in results:
            if not isinstance(res, dict):
                continue
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


# --------------------------------------------------------------------------- self-test


def self_test(renders: list[Render], report: Report) -> None:
    """The policy check must fail on broken workloads: break copies of a
    rendered overlay in the ways it guards against and expect a failure each."""
    target = next((r for r in renders if r.name == "kustomize:overlays/prod"), None)
    if target is None:
        report.fail("self-test: no prod render to break")
        return

    def first_container(docs, kind):
        w = next(d for d in docs if d.get("kind") == kind)
        return w, pod_spec_of(w)[1]["containers"][0]

    breaks = {
        "readiness probe removed": lambda docs: first_container(docs, "StatefulSet")[1].pop("readinessProbe", None),
        "startup probe removed": lambda docs: first_container(docs, "Deployment")[1].pop("startupProbe", None),
        "memory limit 128Mi": lambda docs: first_container(docs, "Deployment")[1]["resources"]["limits"].update(memory="128Mi"),
        "memory limit removed": lambda docs: first_container(docs, "StatefulSet")[1]["resources"].pop("limits", None),
        "runAsNonRoot false": lambda docs: first_container(docs, "StatefulSet")[1]["securityContext"].update(runAsNonRoot=False),
        "readOnlyRootFilesystem removed": lambda docs: first_container(docs, "Deployment")[1]["securityContext"].pop("readOnlyRootFilesystem", None),
        "capabilities not dropped": lambda docs: first_container(docs, "Deployment")[1]["securityContext"].pop("capabilities", None),
        "privilege escalation allowed": lambda docs: first_container(docs, "StatefulSet")[1]["securityContext"].update(allowPrivilegeEscalation=True),
        "literal password in env": lambda docs: first_container(docs, "Deployment")[1].setdefault("env", []).append({"name": "PG_PASSWORD", "value": "x"}),
        "mount inside the config volume": lambda docs: first_container(docs, "Deployment")[1]["volumeMounts"].append({"name": "tmp", "mountPath": "/etc/iotpipe/ca"}),
        "PodDisruptionBudget removed": lambda docs: docs.remove(next(d for d in docs if d.get("kind") == "PodDisruptionBudget")),
    }
    for what, breaker in breaks.items():
        docs = copy.deepcopy(target.docs)
        try:
            breaker(docs)
        except (KeyError, StopIteration, TypeError) as e:
            report.fail(f"self-test: cannot break the prod render ({what}): {e!r}")
            continue
        found = check_workloads(Render(target.name + " (broken)", docs, target.expect_monitoring), Report(), quiet=True)
        if not found:
            report.fail(f"self-test: the policy check did not notice: {what}")
        report.count("self-test breaks detected by the policy check", 1 if found else 0)
    # The schema checks must refuse an unknown field and a broken custom resource.
    try:
        import kubernetes_validate  # noqa: F401

        schema_breaks = {
            "unknown field in a Deployment": lambda docs: next(d for d in docs if d.get("kind") == "Deployment")["spec"].update(replicaz=2),
            "ServiceMonitor without endpoints": lambda docs: next(d for d in docs if d.get("kind") == "ServiceMonitor")["spec"].pop("endpoints"),
        }
        for what, breaker in schema_breaks.items():
            docs = copy.deepcopy(target.docs)
            breaker(docs)
            probe = Report()
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                validate_schemas(Render(target.name + " (broken)", docs, False), probe)
            if not probe.failures:
                report.fail(f"self-test: the schema check did not notice: {what}")
            report.count("self-test breaks detected by the schema checks", 1 if probe.failures else 0)
    except ImportError:
        pass
    if check_workloads(target, Report(), quiet=True):
        report.fail("self-test: the prod render it breaks has policy problems already (listed above)")


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kubectl", default="kubectl")
    ap.add_argument("--iotpipe", help="iotpipe binary for `iotpipe check --offline` (omitted: SKIPPED)")
    ap.add_argument("--checkov", help="checkov executable (omitted: SKIPPED)")
    ap.add_argument("--out", default=None, help="where the rendered manifests are written")
    args = ap.parse_args()
    if args.iotpipe:
        args.iotpipe = str(Path(args.iotpipe).resolve())
    report = Report()
    t0 = time.monotonic()

    def step(title):
        print(f"==> {title} ({time.monotonic() - t0:.0f}s)", flush=True)

    renders: list[Render] = []
    step("render Kustomize")
    for rel, mon in KUSTOMIZE.items():
        docs = render_kustomize(args.kubectl, rel, report)
        if docs is not None:
            name = "kustomize:" + rel.removeprefix("../")
            renders.append(Render(name, docs, mon))
            report.count("renders")
            print(f"ok    {name}: {len(docs)} objects")
    step("render and lint Helm")
    try:
        import helm_python  # noqa: F401

        have_helm = True
    except ImportError:
        have_helm = False
        report.skip("Helm render and lint (helm-python-sdk not installed; run scripts/check-deploy.sh, which installs it)")
    if have_helm:
        for vf, mon in HELM.items():
            docs = render_helm(vf, report)
            if docs is not None:
                name = "helm:" + (vf or "default")
                renders.append(Render(name, docs, mon))
                report.count("renders")
                print(f"ok    {name}: {len(docs)} objects")
        # The schema must refuse what the policy refuses.
        import helm_python

        chart = helm_python.Chart.load(str(CHART))
        for bad_values in (
            {"bridge": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "128Mi"}}}},
            {"store": {"url": "postgres://iotpipe:hunter2@db:5432/iotpipe"}},
            {"kafka": {"properties": {"sasl.password": "x"}}},
        ):
            try:
                chart.validate_schema(bad_values)
                report.fail(f"values.schema.json accepts {bad_values}")
            except helm_python.HelmError:
                report.count("bad values refused by values.schema.json")

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="iotpipe-deploy-"))
    rendered = out / "rendered"
    shutil.rmtree(rendered, ignore_errors=True)
    rendered.mkdir(parents=True)
    for r in renders:
        (rendered / (re.sub(r"[^A-Za-z0-9.-]+", "_", r.name) + ".yaml")).write_text(yaml.safe_dump_all(r.docs, sort_keys=False))

    step("validate against schemas")
    try:
        import jsonschema  # noqa: F401
        import kubernetes_validate  # noqa: F401

        for r in renders:
            validate_schemas(r, report)
    except ImportError:
        report.skip("schema validation (kubernetes-validate not installed; run scripts/check-deploy.sh)")
    step("workload policy and object semantics")
    for r in renders:
        check_workloads(r, report)
        check_semantics(r, report)
    self_test(renders, report)
    step("iotpipe check --offline of every mounted config")
    if args.iotpipe is None:
        report.skip("iotpipe check --offline (no iotpipe binary: set IOTPIPE_BIN or install cargo)")
    check_configs(renders, args.iotpipe, report)
    step("checkov")
    if args.checkov:
        run_checkov(args.checkov, rendered, report)
    else:
        report.skip("checkov scan (no checkov: it could not be installed, see the pip output above, or --checkov was not given; run scripts/check-deploy.sh)")

    print(f"==> summary ({time.monotonic() - t0:.0f}s), rendered manifests in {rendered}")
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
