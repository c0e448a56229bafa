#!/usr/bin/env python3
"""Generates the Grafana dashboards (deploy/grafana/dashboards/*.json) and every
shipped rule set from the one rule source below (RULES): the Prometheus rule
file deploy/prometheus/iotpipe.rules.yaml, the PrometheusRules
deploy/prometheus/prometheusrule.yaml and
deploy/kustomize/components/monitoring/prometheusrule.yaml, the Helm template
deploy/helm/iotpipe/templates/prometheusrule.yaml, and the Alertmanager
inhibition rules deploy/alertmanager/alertmanager.yml. The generated files are
committed; scripts/check-observability.sh fails when they differ from what
this prints.

Usage: python3 scripts/observability_gen.py           # write the files
       python3 scripts/observability_gen.py --check   # exit 1 when a file is stale
       python3 scripts/observability_gen.py --runbook-base-url https://docs.example/observability \
           --print rules|prometheusrule|kustomize      # one rule set to stdout, other runbook links
The dashboards' queries and the rules are the contract: docs/observability.md describes them.
"""
import argparse
import json
import os
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARDS = os.path.join(REPO, "deploy", "grafana", "dashboards")
RULES = os.path.join(REPO, "deploy", "prometheus", "iotpipe.rules.yaml")
PROMETHEUSRULE = os.path.join(REPO, "deploy", "prometheus", "prometheusrule.yaml")
KUSTOMIZE_RULE = os.path.join(REPO, "deploy", "kustomize", "components", "monitoring", "prometheusrule.yaml")
HELM_RULE = os.path.join(REPO, "deploy", "helm", "iotpipe", "templates", "prometheusrule.yaml")
ALERTMANAGER = os.path.join(REPO, "deploy", "alertmanager", "alertmanager.yml")

# Datasource uids: deploy/grafana/provisioning/datasources/iotpipe.yaml.
DS = {
    "postgres": {"type": "postgres", "uid": "iotpipe-postgres"},
    "timescaledb": {"type": "postgres", "uid": "iotpipe-timescaledb"},
    "influxdb": {"type": "influxdb", "uid": "iotpipe-influxdb"},
    "prometheus": {"type": "prometheus", "uid": "iotpipe-prometheus"},
}
SCHEMA_VERSION = 39
# Above this $__interval the TimescaleDB dashboard reads telemetry_numeric_rollup
# (store.rollup_bucket, default 1m); below it the raw view.
ROLLUP_MIN_INTERVAL_MS = 60_000
ROLLUP_MAX_DATA_POINTS = 300


class Board:
    def __init__(self, uid, title, ds, tags):
        # Panels and variables use the datasource variable; its default is the provisioned uid.
        self.uid, self.title, self.tags = uid, title, tags
        self.ds = {"type": ds["type"], "uid": "${datasource}"}
        self.panels = []
        self.variables = [{
            "name": "datasource", "label": "Datasource", "type": "datasource", "query": ds["type"],
            "current": {"selected": True, "text": ds["uid"], "value": ds["uid"]},
            "regex": "", "hide": 0, "includeAll": False, "multi": False, "options": [], "refresh": 1,
            "skipUrlSync": False,
            "description": f"The {ds['type']} datasource; provisioned as {ds['uid']} "
                           "(deploy/grafana/provisioning/datasources/iotpipe.yaml)."}]
        self.x = self.y = self.row_h = 0

    def place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def panel(self, kind, title, targets, w=12, h=8, description="", unit=None, options=None, extra=None,
              field_defaults=None):
        p = {
            "id": len(self.panels) + 1,
            "type": kind,
            "title": title,
            "description": description,
            "gridPos": self.place(w, h),
            "datasource": self.ds,
            "targets": [dict(refId=chr(ord("A") + i), datasource=self.ds, **t) for i, t in enumerate(targets)],
            "fieldConfig": {"defaults": dict(field_defaults or {}), "overrides": []},
            "options": options or {},
        }
        if unit:
            p["fieldConfig"]["defaults"]["unit"] = unit
        if kind == "timeseries":
            p["fieldConfig"]["defaults"].setdefault("custom", {"drawStyle": "line", "lineWidth": 1,
                                                                 "fillOpacity": 10, "showPoints": "never",
                                                                 "spanNulls": False})
            p["options"].setdefault("legend", {"displayMode": "table", "placement": "bottom",
                                               "showLegend": True, "calcs": ["lastNotNull", "max"]})
            p["options"].setdefault("tooltip", {"mode": "multi", "sort": "desc"})
        p.update(extra or {})
        self.panels.append(p)
        return p

    def variable(self, name, label, query, refresh=2, regex="", all_value=None, extra=None):
        v = {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": self.ds,
            "query": query,
            "definition": query if isinstance(query, str) else query.get("query", ""),
            "refresh": refresh,
            "regex": regex,
            "multi": True,
            "includeAll": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [],
            "sort": 1,
            "hide": 0,
            "skipUrlSync": False,
        }
        if all_value is not None:
            v["allValue"] = all_value
        v.update(extra or {})
        self.variables.append(v)

    def render(self, time_from="now-1h", refresh="30s", description=""):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": description,
            "tags": self.tags,
            "timezone": "browser",
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "time": {"from": time_from, "to": "now"},
            "refresh": refresh,
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "weekStart": "",
            "annotations": {"list": []},
            "links": [{"title": "iotpipe dashboards", "type": "dashboards", "tags": ["iotpipe"],
                       "asDropdown": True, "includeVars": False, "keepTime": True}],
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


# --------------------------------------------------------------------------
# IoT telemetry: PostgreSQL and TimescaleDB (SQL)
# --------------------------------------------------------------------------

SQL_DEVICE_FILTER = "tenant_id IN ($tenant) AND project_id IN ($project) AND device_id IN ($device)"


def sql_target(sql, fmt="time_series"):
    return {"editorMode": "code", "format": fmt, "rawQuery": True, "rawSql": sql}


def sql_numeric_raw(alias="value"):
    return ("SELECT $__timeGroupAlias(time, $__interval), device_id || ' ' || field AS metric, "
            f"avg(value) AS {alias}\n"
            "FROM telemetry_numeric\n"
            f"WHERE $__timeFilter(time) AND {SQL_DEVICE_FILTER} AND field IN ($field)\n"
            "GROUP BY 1, 2")


def skip_scan(column, condition):
    """The distinct values of `column` in the time range (and `condition`), in order."""
    step = f"SELECT {column} FROM telemetry WHERE {{after}}$__timeFilter(time){condition} ORDER BY {column} LIMIT 1"
    return (f"WITH RECURSIVE t(v) AS (({step.format(after='')}) UNION ALL "
            f"SELECT ({step.format(after=f'{column} > t.v AND ')}) FROM t WHERE t.v IS NOT NULL) "
            "SELECT v FROM t WHERE v IS NOT NULL")


# A device is silent when its newest row is older than this before the range's end.
SILENT_AFTER = "15 minutes"
# Dead letters have no tenant column: a selected tenant is a segment of the MQTT topic or the tenant_id header.
SQL_DL_TENANT = ("(string_to_array(coalesce(mqtt_topic, ''), '/') && ARRAY[$tenant]::text[] "
                 "OR headers->>'tenant_id' IN ($tenant))")
DL_TENANT_NOTE = ("Dead letters of the selected tenants: those whose MQTT topic has a selected tenant as a segment "
                  "(or whose tenant_id header names one). A topic outside route.topic_pattern may name no tenant: "
                  "the pipeline dashboard counts those.")


def skip_scan_devices():
    """Distinct (tenant, project, device) of the range in the selected tenants and projects, as a skip scan."""
    step = ("SELECT tenant_id, project_id, device_id FROM telemetry WHERE {after}$__timeFilter(time) "
            "AND tenant_id IN ($tenant) AND project_id IN ($project) AND device_id IN ($device) "
            "ORDER BY tenant_id, project_id, device_id LIMIT 1")
    after = "(tenant_id, project_id, device_id) > (t.a, t.b, t.c) AND "
    return ("WITH RECURSIVE t(a, b, c) AS ((" + step.format(after="") + ") UNION ALL "
            "SELECT n.* FROM t, LATERAL (" + step.format(after=after) + ") AS n) "
            "SELECT a AS tenant_id, b AS project_id, c AS device_id FROM t")


def telemetry_sql(store):
    ts = store == "timescaledb"
    name = "TimescaleDB" if ts else "PostgreSQL"
    b = Board(f"iotpipe-telemetry-{store}", f"IoT telemetry ({name})", DS[store], ["iotpipe", "telemetry", store])
    # Skip scans of the (tenant_id, project_id, device_id, time) index: one
    # probe per value listed, not a DISTINCT over every row of the range
    # (docs/topology.md; scripts/bench_grafana_vars.py measures both).
    scan = "Skip scan of the (tenant_id, project_id, device_id, time) index: one index probe per value, " \
           "so the list costs the number of tenants/projects/devices, not of rows (docs/topology.md)."
    b.variable("tenant", "Tenant", skip_scan("tenant_id", ""), extra={"description": scan})
    b.variable("project", "Project", skip_scan("project_id", " AND tenant_id IN ($tenant)"),
               extra={"description": scan})
    b.variable("device", "Device", skip_scan("device_id", " AND tenant_id IN ($tenant) AND project_id IN ($project)"),
               extra={"description": scan})
    # The fields of the last hour of the range: the view expands JSON, so it is kept short.
    b.variable("field", "Field", "SELECT DISTINCT field FROM telemetry_numeric "
               "WHERE time BETWEEN $__timeTo()::timestamptz - interval '1 hour' AND $__timeTo() "
               f"AND $__timeFilter(time) AND {SQL_DEVICE_FILTER} ORDER BY 1")

    if ts:
        numeric = (
            "-- Long ranges ($__interval >= the 1m rollup bucket) read the continuous aggregate,\n"
            "-- short ones the raw view; the other branch is a constant false and costs nothing.\n"
            "SELECT $__timeGroupAlias(bucket, $__interval), device_id || ' ' || field AS metric,\n"
            "       sum(avg * samples) / sum(samples) AS value\n"
            "FROM telemetry_numeric_rollup\n"
            f"WHERE $__interval_ms >= {ROLLUP_MIN_INTERVAL_MS} AND $__timeFilter(bucket) AND {SQL_DEVICE_FILTER} "
            "AND field IN ($field)\n"
            "GROUP BY 1, 2\n"
            "UNION ALL\n"
            "SELECT $__timeGroupAlias(time, $__interval), device_id || ' ' || field AS metric, avg(value) AS value\n"
            "FROM telemetry_numeric\n"
            f"WHERE $__interval_ms < {ROLLUP_MIN_INTERVAL_MS} AND $__timeFilter(time) AND {SQL_DEVICE_FILTER} "
            "AND field IN ($field)\n"
            "GROUP BY 1, 2\n"
            "ORDER BY 1")
        b.panel("timeseries", "Numeric fields", [sql_target(numeric)], w=24, h=10,
                description="Average per interval of every selected numeric payload field. Ranges longer than about "
                            "4 hours ($__interval of 1m or more) read the continuous aggregate "
                            "telemetry_numeric_rollup (materialized up to about two buckets ago), shorter ones the "
                            "raw view telemetry_numeric.",
                extra={"maxDataPoints": ROLLUP_MAX_DATA_POINTS})
        rollup_minmax = (
            "SELECT $__timeGroupAlias(bucket, $__interval), device_id || ' ' || field || ' min' AS metric, "
            "min(min) AS value\n"
            "FROM telemetry_numeric_rollup\n"
            f"WHERE $__timeFilter(bucket) AND {SQL_DEVICE_FILTER} AND field IN ($field)\n"
            "GROUP BY 1, 2\n"
            "UNION ALL\n"
            "SELECT $__timeGroupAlias(bucket, $__interval), device_id || ' ' || field || ' max' AS metric, "
            "max(max) AS value\n"
            "FROM telemetry_numeric_rollup\n"
            f"WHERE $__timeFilter(bucket) AND {SQL_DEVICE_FILTER} AND field IN ($field)\n"
            "GROUP BY 1, 2\n"
            "ORDER BY 1")
        b.panel("timeseries", "Numeric fields: min / max (rollup)", [sql_target(rollup_minmax)], w=24, h=8,
                description="Minimum and maximum per interval from telemetry_numeric_rollup (1-minute buckets by "
                            "default), cheap over days.",
                extra={"maxDataPoints": ROLLUP_MAX_DATA_POINTS, "interval": "1m"})
    else:
        b.panel("timeseries", "Numeric fields", [sql_target(sql_numeric_raw() + "\nORDER BY 1")], w=24, h=10,
                description="Average per interval of every selected numeric payload field (the telemetry_numeric "
                            "view: top-level numbers and numbers one object deep).")

    latest = (
        "SELECT l.time, d.tenant_id, d.project_id, d.device_id, f.field, f.value\n"
        "FROM (SELECT DISTINCT tenant_id, project_id, device_id FROM telemetry\n"
        f"      WHERE $__timeFilter(time) AND {SQL_DEVICE_FILTER}) AS d\n"
        "CROSS JOIN LATERAL (\n"
        "    SELECT t.time, t.payload FROM telemetry AS t\n"
        "    WHERE t.tenant_id = d.tenant_id AND t.project_id = d.project_id AND t.device_id = d.device_id\n"
        "      AND $__timeFilter(t.time)\n"
        "    ORDER BY t.time DESC LIMIT 1) AS l\n"
        "CROSS JOIN LATERAL iotpipe_numeric_fields(l.payload) AS f\n"
        "WHERE f.field IN ($field) AND f.value IS NOT NULL\n"
        "ORDER BY d.tenant_id, d.project_id, d.device_id, f.field")
    b.panel("table", "Latest value per device", [sql_target(latest, "table")], w=12, h=9,
            description="The newest row of each device in the range (telemetry_device_time_idx) and its numeric "
                        "fields.",
            options={"showHeader": True, "cellHeight": "sm"})
    rate = (
        "SELECT $__timeGroupAlias(time, $__interval), tenant_id || '/' || project_id AS metric,\n"
        "       count(*) * 1000.0 / $__interval_ms AS value\n"
        "FROM telemetry\n"
        "WHERE $__timeFilter(time) AND tenant_id IN ($tenant) AND project_id IN ($project)\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1")
    b.panel("timeseries", "Message rate per tenant / project", [sql_target(rate)], w=12, h=9, unit="reqps",
            description="Rows stored per second, by the time rule's time (event time when plausible).")
    raw = (
        "SELECT time, received_at, tenant_id, project_id, device_id, mqtt_topic, id::text AS id,\n"
        "       CASE WHEN payload IS NOT NULL THEN convert_from(raw, 'UTF8') ELSE encode(raw, 'escape') END AS message\n"
        "FROM telemetry\n"
        f"WHERE $__timeFilter(time) AND {SQL_DEVICE_FILTER}\n"
        "ORDER BY time DESC\n"
        "LIMIT 100")
    b.panel("table", "Latest raw messages", [sql_target(raw, "table")], w=24, h=9,
            description="The newest 100 rows of the selected devices, payload byte for byte (raw).",
            options={"showHeader": True, "cellHeight": "sm"})
    dl_rate = (
        "SELECT $__timeGroupAlias(received_at, $__interval), reason AS metric, count(*) AS value\n"
        "FROM dead_letters\n"
        f"WHERE $__timeFilter(received_at) AND {SQL_DL_TENANT}\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1")
    b.panel("timeseries", "Dead letters by reason", [sql_target(dl_rate)], w=8, h=9,
            description=DL_TENANT_NOTE,
            extra={"fieldConfig": {"defaults": {"custom": {"drawStyle": "bars", "fillOpacity": 60,
                                                           "stacking": {"mode": "normal", "group": "A"}}},
                                   "overrides": []}})
    dl_sum = ("SELECT reason, count(*) AS dead_letters\nFROM dead_letters\n"
              f"WHERE $__timeFilter(received_at) AND {SQL_DL_TENANT}\n"
              "GROUP BY reason\nORDER BY 2 DESC")
    b.panel("bargauge", "Dead letters in the range", [sql_target(dl_sum, "table")], w=4, h=9,
            options={"orientation": "horizontal", "displayMode": "basic",
                     "reduceOptions": {"values": True, "calcs": [], "fields": "/^dead_letters$/"}})
    dl_table = (
        "SELECT received_at AS time, reason, error, mqtt_topic, source, length(payload) AS bytes,\n"
        "       encode(substring(payload FROM 1 FOR 200), 'escape') AS payload\n"
        "FROM dead_letters\n"
        f"WHERE $__timeFilter(received_at) AND {SQL_DL_TENANT}\n"
        "ORDER BY received_at DESC\n"
        "LIMIT 100")
    b.panel("table", "Latest dead letters", [sql_target(dl_table, "table")], w=12, h=9,
            description=DL_TENANT_NOTE, options={"showHeader": True, "cellHeight": "sm"})
    silent = (
        "-- Devices that reported in the range and whose newest row (at any time) is older than\n"
        f"-- {SILENT_AFTER} before the range's end: one index probe per device.\n"
        "SELECT d.tenant_id, d.project_id, d.device_id, l.time AS last_seen,\n"
        "       round(extract(epoch FROM ($__timeTo()::timestamptz - l.time))) AS silent_seconds\n"
        f"FROM ({skip_scan_devices()}) AS d\n"
        "CROSS JOIN LATERAL (\n"
        "    SELECT t.time FROM telemetry AS t\n"
        "    WHERE t.tenant_id = d.tenant_id AND t.project_id = d.project_id AND t.device_id = d.device_id\n"
        "    ORDER BY t.time DESC LIMIT 1) AS l\n"
        f"WHERE l.time < $__timeTo()::timestamptz - interval '{SILENT_AFTER}'\n"
        "ORDER BY l.time")
    b.panel("table", "Silent devices", [sql_target(silent, "table")], w=12, h=9, unit=None,
            description=f"Devices of the selected tenants and projects that sent in the range but nothing in the "
                        f"last {SILENT_AFTER} (before the range's end), oldest first: the devices that stopped "
                        "reporting, which 'Latest value per device' no longer shows once they leave the range. "
                        "Widen the range to look further back.",
            options={"showHeader": True, "cellHeight": "sm"},
            field_defaults={"custom": {"align": "auto"}},
            extra={"fieldConfig": {"defaults": {}, "overrides": [
                {"matcher": {"id": "byName", "options": "silent_seconds"},
                 "properties": [{"id": "unit", "value": "s"}]}]}})
    if ts:
        jobs = (
            "SELECT j.job_id, j.application_name, j.proc_name, j.hypertable_name, j.schedule_interval,\n"
            "       s.last_run_status, s.job_status, s.last_run_started_at, s.last_successful_finish,\n"
            "       s.next_start, s.total_runs, s.total_successes, s.total_failures\n"
            "FROM timescaledb_information.jobs AS j\n"
            "LEFT JOIN timescaledb_information.job_stats AS s ON s.job_id = j.job_id\n"
            "WHERE j.job_id >= 1000\n"
            "ORDER BY (s.last_run_status = 'Failed') DESC NULLS LAST, j.job_id")
        b.panel("table", "TimescaleDB jobs (compression, retention, rollup)", [sql_target(jobs, "table")], w=12,
                h=9, description="The background jobs of the store's policies (timescaledb_information.jobs and "
                                 "job_stats): a last_run_status of Failed or total_failures rising means "
                                 "compression, retention or the rollup refresh fails; the PostgreSQL log and "
                                 "timescaledb_information.job_errors have the error. Failed jobs first. The "
                                 "sink exports the same state (iotpipe_sink_timescale_jobs_failed) and "
                                 "IotpipeTimescaleJobFailed alerts on it.",
                options={"showHeader": True, "cellHeight": "sm"},
                extra={"fieldConfig": {"defaults": {}, "overrides": [
                    {"matcher": {"id": "byName", "options": "last_run_status"},
                     "properties": [{"id": "custom.cellOptions", "value": {"type": "color-background"}},
                                    {"id": "mappings", "value": [{"type": "value", "options": {
                                        "Failed": {"color": "red"}, "Success": {"color": "green"}}}]}]}]}})
    return b.render(description=f"Telemetry stored by iotpipe sink / run in {name} (docs/observability.md).")


# --------------------------------------------------------------------------
# IoT telemetry: InfluxDB 1.x (InfluxQL)
# --------------------------------------------------------------------------

INFLUX_DEVICE_FILTER = '"tenant_id" =~ /^$tenant$/ AND "project_id" =~ /^$project$/ AND "device_id" =~ /^$device$/'
# iotpipe's own fields of a telemetry point; not payload fields.
INFLUX_OWN_FIELDS = ["id", "mqtt_topic", "event_time_ms", "raw", "raw_base64"]
INFLUX_DL_TENANT = '"mqtt_topic" =~ /\\/${tenant}(\\/|$)/'


def influx_target(query, fmt="time_series", alias=""):
    t = {"query": query, "rawQuery": True, "resultFormat": fmt}
    if alias:
        t["alias"] = alias
    return t


def telemetry_influx():
    b = Board("iotpipe-telemetry-influxdb", "IoT telemetry (InfluxDB)", DS["influxdb"],
              ["iotpipe", "telemetry", "influxdb"])
    b.variable("tenant", "Tenant", 'SHOW TAG VALUES FROM "telemetry" WITH KEY = "tenant_id"')
    b.variable("project", "Project",
               'SHOW TAG VALUES FROM "telemetry" WITH KEY = "project_id" WHERE "tenant_id" =~ /^$tenant$/')
    b.variable("device", "Device", 'SHOW TAG VALUES FROM "telemetry" WITH KEY = "device_id" '
               'WHERE "tenant_id" =~ /^$tenant$/ AND "project_id" =~ /^$project$/')
    b.variable("field", "Field", 'SHOW FIELD KEYS FROM "telemetry"',
               regex="/^(?!(" + "|".join(INFLUX_OWN_FIELDS) + ")$).+/")
    numeric = (f'SELECT mean(/^$field$/) FROM "telemetry" WHERE {INFLUX_DEVICE_FILTER} AND $timeFilter '
               'GROUP BY time($__interval), "device_id" fill(none)')
    b.panel("timeseries", "Numeric fields", [influx_target(numeric, alias="$tag_device_id $col")], w=24, h=10,
            description="Average per interval of every selected field (numeric fields only: mean() skips strings "
                        "and booleans).")
    latest = (f'SELECT last(/^$field$/) FROM "telemetry" WHERE {INFLUX_DEVICE_FILTER} AND $timeFilter '
              'GROUP BY "tenant_id", "project_id", "device_id"')
    b.panel("table", "Latest value per device", [influx_target(latest, "table")], w=12, h=9,
            options={"showHeader": True, "cellHeight": "sm"})
    rate = ('SELECT count("id") * 1000 / $__interval_ms FROM "telemetry" '
            'WHERE "tenant_id" =~ /^$tenant$/ AND "project_id" =~ /^$project$/ AND $timeFilter '
            'GROUP BY time($__interval), "tenant_id", "project_id" fill(0)')
    b.panel("timeseries", "Message rate per tenant / project",
            [influx_target(rate, alias="$tag_tenant_id/$tag_project_id")], w=12, h=9, unit="reqps",
            description="Points stored per second (every point has the field id).")
    raw = f'SELECT * FROM "telemetry" WHERE {INFLUX_DEVICE_FILTER} AND $timeFilter ORDER BY time DESC LIMIT 100'
    b.panel("table", "Latest raw messages", [influx_target(raw, "table")], w=24, h=9,
            description="The newest 100 points of the selected devices: tags, iotpipe's fields and the payload's "
                        "fields (a payload that is not JSON is the field raw or raw_base64).",
            options={"showHeader": True, "cellHeight": "sm"})
    dl_rate = (f'SELECT count("source") FROM "dead_letters" WHERE {INFLUX_DL_TENANT} AND $timeFilter '
               'GROUP BY time($__interval), "reason" fill(none)')
    b.panel("timeseries", "Dead letters by reason", [influx_target(dl_rate, alias="$tag_reason")], w=8, h=9,
            extra={"fieldConfig": {"defaults": {"custom": {"drawStyle": "bars", "fillOpacity": 60,
                                                           "stacking": {"mode": "normal", "group": "A"}}},
                                   "overrides": []}})
    dl_sum = (f'SELECT count("source") AS "dead_letters" FROM "dead_letters" WHERE {INFLUX_DL_TENANT} '
              'AND $timeFilter GROUP BY "reason"')
    b.panel("bargauge", "Dead letters in the range", [influx_target(dl_sum, alias="$tag_reason")], w=4, h=9,
            options={"orientation": "horizontal", "displayMode": "basic",
                     "reduceOptions": {"values": False, "calcs": ["sum"], "fields": ""}})
    dl_table = ('SELECT "reason", "error", "mqtt_topic", "source", "payload" FROM "dead_letters" '
                f'WHERE {INFLUX_DL_TENANT} AND $timeFilter ORDER BY time DESC LIMIT 100')
    b.panel("table", "Latest dead letters", [influx_target(dl_table, "table")], w=12, h=9,
            description=DL_TENANT_NOTE, options={"showHeader": True, "cellHeight": "sm"})
    last_seen = (f'SELECT last("id") AS "id" FROM "telemetry" WHERE {INFLUX_DEVICE_FILTER} AND $timeFilter '
                 'GROUP BY "tenant_id", "project_id", "device_id"')
    b.panel("table", "Last seen per device", [influx_target(last_seen, "table")], w=12, h=9,
            description="The time of each device's newest point in the range, oldest first: devices that stopped "
                        "reporting come first (InfluxQL cannot filter on an aggregate's time; the SQL dashboards "
                        "list only the silent ones).",
            options={"showHeader": True, "cellHeight": "sm", "sortBy": [{"displayName": "Time", "desc": False}]})
    return b.render(description="Telemetry stored by iotpipe sink / run in InfluxDB 1.x (docs/observability.md).")


# --------------------------------------------------------------------------
# iotpipe pipeline (Prometheus)
# --------------------------------------------------------------------------

S = 'namespace=~"$namespace", job=~"$job", instance=~"$instance"'


def prom(expr, legend=""):
    return {"expr": expr, "legendFormat": legend, "range": True, "editorMode": "code"}


def rate(metric, by="instance", window="$__rate_interval"):
    return f"sum by ({by}) (rate({metric}{{{S}}}[{window}]))"


def quantiles(metric, legend):
    return [prom(f"histogram_quantile({q}, sum by (le, instance) (rate({metric}_bucket{{{S}}}[$__rate_interval])))",
                 f"p{int(q * 100)} {legend}") for q in (0.5, 0.99)]


def pipeline():
    b = Board("iotpipe-pipeline", "iotpipe pipeline", DS["prometheus"], ["iotpipe", "pipeline"])
    # Every iotpipe process exports iotpipe_build_info: the variables list only iotpipe targets, whatever
    # the job names (a Prometheus without a namespace label: "All" is .*, which matches the empty value).
    b.variable("namespace", "Namespace", {"query": "label_values(iotpipe_build_info, namespace)",
                                          "refId": "namespace"}, all_value=".*")
    b.variable("job", "Job", {"query": 'label_values(iotpipe_build_info{namespace=~"$namespace"}, job)',
                              "refId": "job"}, all_value=".*")
    b.variable("instance", "Instance",
               {"query": 'label_values(iotpipe_build_info{namespace=~"$namespace", job=~"$job"}, instance)',
                "refId": "instance"}, all_value=".*")
    stat = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}, "colorMode": "background",
            "graphMode": "none", "textMode": "value_and_name"}
    up_map = {"mappings": [{"type": "value", "options": {"0": {"text": "down", "color": "red"},
                                                           "1": {"text": "up", "color": "green"}}}],
              "thresholds": {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                          {"color": "green", "value": 1}]}}
    b.panel("stat", "Instances", [prom(f"count by (command, version) (iotpipe_build_info{{{S}}})",
                                       "{{command}} {{version}}")], w=6, h=5, options=stat)
    b.panel("stat", "MQTT connected / subscribed",
            [prom(f"iotpipe_mqtt_connected{{{S}}}", "connected {{instance}}"),
             prom(f"iotpipe_mqtt_subscribed{{{S}}}", "subscribed {{instance}}")], w=6, h=5, options=stat,
            field_defaults=up_map)
    b.panel("stat", "Kafka / store reachable",
            [prom(f"iotpipe_kafka_reachable{{{S}}}", "Kafka {{instance}}"),
             prom(f"iotpipe_sink_kafka_reachable{{{S}}}", "Kafka {{instance}}"),
             prom(f"iotpipe_sink_store_reachable{{{S}}}", "store {{instance}}")], w=6, h=5, options=stat,
            field_defaults=up_map)
    b.panel("stat", "Journal full", [prom(f"iotpipe_journal_full{{{S}}}", "{{instance}}")], w=6, h=5, options=stat,
            field_defaults={"mappings": [{"type": "value", "options": {"0": {"text": "ok", "color": "green"},
                                                                         "1": {"text": "FULL", "color": "red"}}}]})

    b.panel("timeseries", "Messages received / delivered / stored",
            [prom(rate("iotpipe_messages_received_total"), "received {{instance}}"),
             prom(rate("iotpipe_messages_delivered_total"), "delivered {{instance}}"),
             prom(rate("iotpipe_messages_stored_total"), "stored {{instance}}")], unit="reqps",
            description="From MQTT (bridge, run); delivered = acknowledged by Kafka (bridge), "
                        "stored = committed to the store (run).")
    b.panel("timeseries", "Dead-lettered by reason",
            [prom(rate("iotpipe_messages_dead_lettered_total", "reason"), "routing: {{reason}}"),
             prom(rate("iotpipe_sink_dead_lettered_total", "reason"), "stored: {{reason}}")], unit="reqps",
            description="routing: dead-lettered by bridge / run; stored: dead letters written by sink / run.")
    b.panel("timeseries", "In flight", [prom(f"sum by (instance) (iotpipe_messages_in_flight{{{S}}})", "{{instance}}")],
            w=8, description="Received (or replayed) and not yet durable downstream.")
    b.panel("timeseries", "Delivery latency p50 / p99", quantiles("iotpipe_delivery_latency_seconds", "{{instance}}"),
            w=8, unit="s", description="Receive to Kafka ack (bridge), receive to store commit (run).")
    b.panel("timeseries", "MQTT reconnects and redeliveries",
            [prom(f"sum by (instance) (increase(iotpipe_mqtt_reconnects_total{{{S}}}[$__rate_interval]))",
                  "reconnects {{instance}}"),
             prom(rate("iotpipe_mqtt_redelivered_total"), "redelivered/s {{instance}}"),
             prom(rate("iotpipe_mqtt_acks_abandoned_total"), "acks abandoned/s {{instance}}"),
             prom(rate("iotpipe_mqtt_past_receive_maximum_total"), "past the receive maximum/s {{instance}}")], w=8,
            description="Reconnects, messages the broker sent again, acks dropped with a lost connection, and "
                        "messages the broker sent past the receive maximum (mqtt.max_in_flight; "
                        "IotpipeMqttBrokerPastWindow).")

    b.panel("timeseries", "Delivery stalled", [prom(f"iotpipe_delivery_stalled_seconds{{{S}}}", "{{instance}}")],
            w=8, unit="s", description="Seconds since delivery (Kafka for the bridge, the store for run) last made "
                                       "progress while messages wait; 0 when none waits. IotpipeDeliveryStalled "
                                       "fires above 60 s.")
    b.panel("timeseries", "End-to-end latency p50 / p99 (receipt to store commit)",
            quantiles("iotpipe_sink_end_to_end_seconds", "{{instance}}")
            + [prom(f"histogram_quantile(0.99, sum by (le) (rate(iotpipe_sink_event_to_store_seconds_bucket{{{S}}}"
                    "[$__rate_interval])))", "p99 event time to store")], w=8, unit="s",
            description="Per stored row, from the bridge's receipt (run: its own) to the store commit "
                        "(iotpipe_sink_end_to_end_seconds); and from the device's event time "
                        "(iotpipe_sink_event_to_store_seconds, includes the device's delay and clock).")
    slo_le = str(SLO_SECONDS).replace(".", "\\\\.")
    b.panel("timeseries", f"Freshness SLO: rows stored within {SLO_SECONDS} s",
            [prom(f'sum(rate(iotpipe_sink_end_to_end_seconds_bucket{{le=~"{slo_le}(\\\\.0)?", {S}}}[$__rate_interval]))'
                  f" / sum(rate(iotpipe_sink_end_to_end_seconds_count{{{S}}}[$__rate_interval]))", "within SLO"),
             prom(f'(1 - sum(rate(iotpipe_sink_end_to_end_seconds_bucket{{le=~"{slo_le}(\\\\.0)?", {S}}}[1h]))'
                  f" / sum(rate(iotpipe_sink_end_to_end_seconds_count{{{S}}}[1h]))) / {1 - SLO_TARGET:.2f}",
                  "burn rate (1h)")], w=8, unit="percentunit",
            description=f"Share of rows stored within {SLO_SECONDS} s of their receipt (SLO: {SLO_TARGET:.0%}); "
                        "burn rate 1 spends the 30-day error budget in 30 days, IotpipeFreshnessBudgetBurn pages at "
                        "14.4 (1h and 5m) and tickets at 6 (6h and 30m).",
            extra={"fieldConfig": {"defaults": {"unit": "percentunit"}, "overrides": [
                {"matcher": {"id": "byName", "options": "burn rate (1h)"},
                 "properties": [{"id": "unit", "value": "none"}, {"id": "custom.axisPlacement", "value": "right"}]}]}})
    b.panel("table", "Freshness per tenant / project (stalest 20)",
            [dict(prom(f"topk(20, min by (tenant_id, project_id) (iotpipe_sink_freshness_seconds{{{S}}}))"),
                  format="table", instant=True, range=False)], w=16, unit="s",
            description="Seconds since the last row of each pair was committed (the lowest of its sinks), stalest "
                        "first; IotpipeTenantSilent fires above 15 minutes. A bounded set per process: when full "
                        "the stalest pair is evicted (counted beside).",
            options={"showHeader": True, "cellHeight": "sm", "sortBy": [{"displayName": "Value", "desc": True}]})
    b.panel("timeseries", "Freshness pairs evicted",
            [prom(f"sum by (instance) (increase(iotpipe_sink_freshness_evicted_total{{{S}}}[$__rate_interval]))",
                  "{{instance}}")], w=8,
            description="Pairs dropped from the freshness gauge's bounded label set (the stalest first).")

    b.panel("timeseries", "Journal depth",
            [prom(f"iotpipe_journal_depth{{{S}}}", "depth {{instance}}"),
             prom(f"iotpipe_journal_forward_records{{{S}}}", "forwarding {{instance}}")], w=8,
            description="Records journaled and not yet delivered; forwarding: read by the bridge and not yet "
                        "acknowledged by Kafka.")
    b.panel("timeseries", "Journal fill", [prom(f"iotpipe_journal_bytes{{{S}}} / iotpipe_journal_limit_bytes{{{S}}}",
                                                "{{instance}}")], w=8, unit="percentunit",
            description="Live segment bytes over journal.max_size (iotpipe_journal_limit_bytes). "
                        "IotpipeJournalFilling: above 80%, or above 40% and full within 4 hours at the last hour's "
                        "pace.")
    b.panel("timeseries", "Journal fsyncs and reads",
            [prom(rate("iotpipe_journal_fsyncs_total"), "fsyncs {{instance}}"),
             prom(rate("iotpipe_journal_handed_over_total"), "passed on from memory {{instance}}"),
             prom(rate("iotpipe_journal_read_total"), "read back from disk {{instance}}")], w=8, unit="ops",
            description="Group commits per second, and the bridge's journal records passed on to Kafka: from "
                        "memory right after their commit, or read back from the journal's files (a backlog: "
                        "after a restart, or while Kafka was slow).")

    b.panel("timeseries", "Sink rows/s",
            [prom(rate("iotpipe_sink_rows_written_total"), "written {{instance}}"),
             prom(rate("iotpipe_sink_rows_duplicate_total"), "duplicate {{instance}}"),
             prom(rate("iotpipe_sink_records_consumed_total"), "consumed from Kafka {{instance}}")], unit="reqps")
    b.panel("timeseries", "Consumer lag (seconds)",
            [prom(f"max by (instance) (iotpipe_sink_consumer_lag_seconds{{{S}}})", "{{instance}}")], w=6, unit="s",
            description="Age of the oldest record each sink has not consumed yet (estimated per partition, the "
                        "maximum); 0 when caught up. IotpipeConsumerLagGrowing: above 5 minutes and not shrinking.")
    b.panel("timeseries", "Consumer lag (records)",
            [prom(f"sum by (instance) (iotpipe_sink_consumer_lag_records{{{S}}})", "{{instance}}")], w=6,
            description="Records behind the end of the partitions each sink holds (watermarks, every 5 s).")
    b.panel("timeseries", "Store write latency (batch) p50 / p99", quantiles("iotpipe_sink_batch_seconds", "{{instance}}")
            + [prom(rate("iotpipe_sink_batches_total"), "batches/s {{instance}}")], w=8, unit="s",
            description="Time to write and commit one batch.",
            extra={"fieldConfig": {"defaults": {"unit": "s"}, "overrides": [
                {"matcher": {"id": "byRegexp", "options": "batches/s.*"},
                 "properties": [{"id": "unit", "value": "ops"}, {"id": "custom.axisPlacement", "value": "right"}]}]}})
    b.panel("timeseries", "Store errors", [prom(rate("iotpipe_sink_store_errors_total"), "{{instance}}")], w=8,
            unit="ops", description="Failed writes (each retried).")
    b.panel("timeseries", "Retention",
            [prom(f"sum by (instance) (increase(iotpipe_sink_retention_runs_total{{{S}}}[1h]))", "runs/h {{instance}}"),
             prom(f"sum by (instance) (increase(iotpipe_sink_retention_failures_total{{{S}}}[1h]))",
                  "failures/h {{instance}}"),
             prom(f"sum by (instance) (increase(iotpipe_sink_retention_partitions_dropped_total{{{S}}}[1h]))",
                  "partitions dropped/h {{instance}}")], w=8)
    b.panel("stat", "Since the last successful retention run",
            [prom(f"time() - iotpipe_sink_retention_last_success_timestamp_seconds{{{S}}} > 0 "
                  f"and iotpipe_sink_retention_last_success_timestamp_seconds{{{S}}} > 0", "{{instance}}")],
            w=8, h=5, unit="s", options=stat,
            field_defaults={"thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                                        {"color": "red", "value": 3600}]}})
    b.panel("timeseries", "Kafka producer retries / restarts",
            [prom(rate("iotpipe_kafka_retries_total"), "retries/s {{instance}}"),
             prom(f"sum by (instance) (increase(iotpipe_kafka_producer_restarts_total{{{S}}}[$__rate_interval]))",
                  "producer restarts {{instance}}")], w=8, h=5)
    b.panel("timeseries", "Uptime", [prom(f"time() - process_start_time_seconds{{{S}}}", "{{instance}}")], w=8, h=5,
            unit="s")

    b.panel("timeseries", "CPU per pod",
            [prom(f"sum by (instance) (rate(process_cpu_seconds_total{{{S}}}[$__rate_interval]))", "{{instance}}")],
            unit="percentunit", description="User + system CPU, in cores.")
    b.panel("timeseries", "Memory per pod",
            [prom(f"process_resident_memory_bytes{{{S}}}", "RSS {{instance}}"),
             prom(f"iotpipe_process_peak_resident_memory_bytes{{{S}}}", "peak RSS {{instance}}"),
             prom(f"iotpipe_memory_limit_bytes{{{S}}}", "limit {{instance}}")], unit="bytes",
            description="The limit is the cgroup (v2) memory limit, a pod's limits.memory; absent without one.")
    b.panel("timeseries", "Messages per tenant / project (top 20)",
            [prom(f"topk(20, sum by (tenant_id, project_id) "
                  f"(rate(iotpipe_tenant_messages_total{{{S}}}[$__rate_interval])))",
                  "{{tenant_id}}/{{project_id}}")], w=24, unit="reqps",
            description="Only with http.per_tenant_metrics = true (at most 5,000 series; beyond, the least recently "
                        "used pair is evicted).")
    return b.render(time_from="now-3h", description="iotpipe bridge, sink and run from their /metrics "
                                                    "(docs/metrics.md, docs/observability.md).")


def dashboards():
    return {
        "iotpipe-pipeline.json": pipeline(),
        "iotpipe-telemetry-postgres.json": telemetry_sql("postgres"),
        "iotpipe-telemetry-timescaledb.json": telemetry_sql("timescaledb"),
        "iotpipe-telemetry-influxdb.json": telemetry_influx(),
    }


# --------------------------------------------------------------------------
# Alert and recording rules: the one source of every shipped rule set
# --------------------------------------------------------------------------
#
# Generated from RULES below (docs/observability.md lists every alert and its
# runbook):
#   deploy/prometheus/iotpipe.rules.yaml                    plain Prometheus rule file
#   deploy/prometheus/prometheusrule.yaml                   PrometheusRule "iotpipe-rules"
#   deploy/kustomize/components/monitoring/prometheusrule.yaml  PrometheusRule "iotpipe-kustomize-rules"
#   deploy/helm/iotpipe/templates/prometheusrule.yaml       PrometheusRule "<fullname>-helm-rules"
#   deploy/alertmanager/alertmanager.yml                    inhibition rules (and an example route)
#
# Selectors name no job: a process is identified by iotpipe_build_info{command}
# (every iotpipe process exports it), and aggregations keep namespace and
# cluster. Every hold is a plain duration in `for:` (tests scale those, never
# the shipped files).

RUNBOOK_BASE_URL = "https://github.com/iotpipe/iotpipe/blob/main/docs/observability.md"
COMMANDS = ("bridge", "sink", "run")
# How long a component that disappeared from a namespace keeps its "down"
# alert in the rule sets that cannot know which components exist (plain file,
# Kustomize): the window of max_over_time(iotpipe_build_info[...]).
DOWN_LOOKBACK = "1d"
# The freshness SLO: SLO_TARGET of the rows are stored within SLO_SECONDS of
# their receipt (iotpipe_sink_end_to_end_seconds; SLO_SECONDS must be one of
# its bucket bounds, src/telemetry/mod.rs LATENCY_BUCKETS).
SLO_SECONDS = 10
SLO_TARGET = 0.99
# Multiwindow, multi-burn-rate (kubernetes-mixin): severity, long window,
# short window, burn-rate factor, for.
BURN_RATES = [("critical", "1h", "5m", 14.4, "2m"), ("warning", "6h", "30m", 6, "15m")]
AGG = "namespace, cluster"
# Dead-letter reasons the sink decides itself (decoding, the store); the
# routing reasons it stores arrive from the bridge, which counted them already
# (src/record/reason.rs ROUTING). empty_payload is left to the bridge too.
SINK_ORIGIN_REASONS = ("missing_tenant", "invalid_id", "undecodable", "store_rejected")
SINK_REASONS_RE = "|".join(SINK_ORIGIN_REASONS)

NOT_BRIDGE_FAULTS = ["IotpipeDeliveryStalled", "IotpipeJournalFilling", "IotpipeJournalFull",
                     "IotpipeConsumerLagGrowing", "IotpipeTenantSilent", "IotpipeFreshnessBudgetBurn"]
# Alertmanager inhibition: (source alerts, target alerts, extra source matchers,
# extra target matchers, why). Equal on namespace and cluster.
INHIBIT = [
    (["IotpipeKafkaUnreachable"], NOT_BRIDGE_FAULTS, {}, {},
     "Kafka down: delivery stalls, journals fill, the sink lags and tenants fall silent; one page"),
    (["IotpipeStoreUnreachable"], NOT_BRIDGE_FAULTS + ["IotpipeStoreErrors"], {}, {},
     "store down: the same symptoms downstream of the sink or run"),
    (["IotpipeBridgeDown", "IotpipeSinkDown", "IotpipeRunDown"],
     ["IotpipeInstanceDown", "IotpipeTenantSilent", "IotpipeFreshnessBudgetBurn", "IotpipeConsumerLagGrowing",
      "IotpipeDeliveryStalled"], {}, {},
     "a whole component down explains its instances and the silence"),
    (["IotpipeMqttDisconnected", "IotpipeMqttNotSubscribed"], ["IotpipeTenantSilent", "IotpipeMqttReconnecting"],
     {}, {}, "nothing arrives from MQTT: every pair falls silent"),
    (["IotpipeDeliveryStalled"], ["IotpipeTenantSilent", "IotpipeFreshnessBudgetBurn", "IotpipeJournalFilling"],
     {}, {}, "a stalled delivery explains late and missing rows"),
    (["IotpipeJournalFull"], ["IotpipeJournalFilling"], {}, {}, "full explains filling"),
    (["IotpipeFreshnessBudgetBurn"], ["IotpipeFreshnessBudgetBurn"], {"severity": "critical"},
     {"severity": "warning"}, "the fast burn page covers the slow burn ticket"),
]


def _down_expr(command, mode, namespace):
    if mode == "absent":
        return f'absent(iotpipe_build_info{{command="{command}", namespace="{namespace}"}})'
    return (f'count by ({AGG}) (max_over_time(iotpipe_build_info{{command="{command}"}}[{DOWN_LOOKBACK}]))\n'
            f'unless\ncount by ({AGG}) (iotpipe_build_info{{command="{command}"}})\n')


def _slow_ratio(window):
    le = str(SLO_SECONDS).replace(".", "\\\\.")
    return (f'1 - (\n'
            f'  sum by ({AGG}) (rate(iotpipe_sink_end_to_end_seconds_bucket{{le=~"{le}(\\\\.0)?"}}[{window}]))\n'
            f'  /\n'
            f'  sum by ({AGG}) (rate(iotpipe_sink_end_to_end_seconds_count[{window}]))\n'
            f')\n')


def slo_record(window):
    return f"iotpipe:sink_end_to_end_slow:ratio_rate{window}"


def rule_groups(runbook_base=RUNBOOK_BASE_URL, down="seen", components=COMMANDS, namespace=None):
    """The rule groups. down="seen": a component alerts as down in a namespace
    where it ran in the last DOWN_LOOKBACK (plain file, Kustomize: they cannot
    know what is deployed); down="absent": the deployment has `components` in
    `namespace` (Helm), so their absence alerts."""

    def alert(name, expr, for_, severity, summary, description, labels=None):
        return {"alert": name, "expr": expr, "for": for_,
                "labels": {"severity": severity, **(labels or {})},
                "annotations": {"summary": summary, "description": description,
                                "runbook_url": f"{runbook_base}#{name.lower()}"}}

    what = {"bridge": ("bridge", "MQTT messages queue at the broker (up to its limits)"),
            "sink": ("sink", "records pile up in Kafka and nothing is stored"),
            "run": ("run", "nothing is received from MQTT nor stored")}
    availability = []
    for c in COMMANDS:
        if c not in components:
            continue
        scope = f" in namespace {namespace}" if down == "absent" else " in {{ $labels.namespace }}"
        availability.append(alert(
            f"Iotpipe{c.capitalize()}Down", _down_expr(c, down, namespace), "2m", "critical",
            f"No iotpipe {what[c][0]} is up{scope}",
            f"No process exporting iotpipe_build_info{{command=\"{c}\"}} has been scraped for 2 minutes; "
            f"{what[c][1]}."))
    availability.append(alert(
        "IotpipeInstanceDown",
        f"up == 0\nand on (job, instance) max_over_time(iotpipe_build_info[{DOWN_LOOKBACK}])\n", "5m", "warning",
        "iotpipe {{ $labels.job }} instance {{ $labels.instance }} cannot be scraped",
        "A target that exported iotpipe_build_info has been down for 5 minutes."))
    le = SLO_SECONDS
    groups = [
        {"name": "iotpipe-availability", "rules": availability},
        {"name": "iotpipe-mqtt", "rules": [
            alert("IotpipeMqttDisconnected", "iotpipe_mqtt_connected == 0", "2m", "critical",
                  "iotpipe {{ $labels.instance }} is not connected to the MQTT broker",
                  "iotpipe_mqtt_connected has been 0 for 2 minutes; no message is received."),
            alert("IotpipeMqttNotSubscribed", "iotpipe_mqtt_connected == 1 and iotpipe_mqtt_subscribed == 0", "2m",
                  "critical", "iotpipe {{ $labels.instance }} is connected but not subscribed",
                  "The broker accepted the connection but the subscriptions are not in place; "
                  "no message is received."),
            alert("IotpipeMqttReconnecting", "increase(iotpipe_mqtt_reconnects_total[15m]) > 3", "1m", "warning",
                  "iotpipe {{ $labels.instance }} lost its MQTT connection {{ $value | humanize }} times "
                  "in 15 minutes",
                  "A flapping connection redelivers messages and stalls acknowledgements."),
            alert("IotpipeMqttBrokerPastWindow", "increase(iotpipe_mqtt_past_receive_maximum_total[10m]) > 0",
                  "1m", "warning",
                  "The MQTT broker of iotpipe {{ $labels.instance }} sends past the receive maximum",
                  "{{ $value | humanize }} QoS 1/2 messages arrived in 10 minutes while mqtt.max_in_flight "
                  "were already unacknowledged: the broker does not keep MQTT 5's receive maximum. The "
                  "bridge holds its window by not reading, so what the broker sent past it waits in the "
                  "connection. Mosquitto before 2.0.13 does this once acknowledgements lag; upgrade the broker."),
        ]},
        {"name": "iotpipe-delivery", "rules": [
            alert("IotpipeDeliveryStalled", "iotpipe_delivery_stalled_seconds > 60", "1m", "critical",
                  "iotpipe {{ $labels.instance }} has delivered nothing for {{ $value | humanizeDuration }} "
                  "while messages wait",
                  "Received messages wait and none became durable downstream (Kafka for the bridge, the store "
                  "for run) for over 2 minutes; MQTT acks are held back (or the journal grows)."),
            alert("IotpipeDeadLettersRising",
                  f'label_replace(\n'
                  f'  sum by ({AGG}) (rate(iotpipe_messages_dead_lettered_total[10m]))\n'
                  f'  / sum by ({AGG}) (rate(iotpipe_messages_received_total[10m])),\n'
                  f'  "origin", "routing", "", "")\n'
                  f'> 0.01\n'
                  f'or\n'
                  f'label_replace(\n'
                  f'  sum by ({AGG}) (\n'
                  f'    rate(iotpipe_sink_dead_lettered_total{{reason=~"{SINK_REASONS_RE}"}}[10m])\n'
                  f'    and on (job, instance) iotpipe_build_info{{command="sink"}}\n'
                  f'  )\n'
                  f'  / sum by ({AGG}) (rate(iotpipe_sink_records_consumed_total[10m])),\n'
                  f'  "origin", "sink", "", "")\n'
                  f'> 0.01\n',
                  "10m", "warning",
                  "More than 1% of the messages are dead-lettered ({{ $labels.origin }}, "
                  "{{ $labels.namespace }})",
                  "{{ $value | humanizePercentage }} of the messages were dead-lettered over 10 minutes by "
                  "{{ $labels.origin }} (routing: bridge or run; sink: decoding and the store in the sink). One bad "
                  "message counts once: the sink's count of dead letters the bridge made is left out."),
            alert("IotpipeKafkaUnreachable", "iotpipe_kafka_reachable == 0 or iotpipe_sink_kafka_reachable == 0",
                  "1m", "critical", "iotpipe {{ $labels.instance }} cannot reach Kafka",
                  "Kafka has not answered metadata requests for a minute."),
            alert("IotpipeConsumerLagGrowing",
                  "iotpipe_sink_consumer_lag_seconds > 300\n"
                  "and deriv(iotpipe_sink_consumer_lag_seconds[10m]) >= 0\n", "10m", "warning",
                  "iotpipe sink {{ $labels.instance }} is {{ $value | humanizeDuration }} behind Kafka",
                  "The oldest record not yet consumed is over 5 minutes old and the lag is not shrinking "
                  "(10 minutes)."),
        ]},
        {"name": "iotpipe-journal", "rules": [
            alert("IotpipeJournalFull", "iotpipe_journal_full == 1", "1m", "critical",
                  "The journal of iotpipe {{ $labels.instance }} is full",
                  "The journal refuses appends, so MQTT acks are paused and the broker queues messages."),
            alert("IotpipeJournalFilling",
                  "(\n"
                  "  iotpipe_journal_bytes / iotpipe_journal_limit_bytes > 0.8\n"
                  "or\n"
                  "  (\n"
                  "    iotpipe_journal_bytes / iotpipe_journal_limit_bytes > 0.4\n"
                  "    and\n"
                  "    predict_linear(iotpipe_journal_bytes[1h], 4 * 3600) > iotpipe_journal_limit_bytes\n"
                  "  )\n"
                  ")\n"
                  "and iotpipe_journal_limit_bytes > 0\n", "15m", "warning",
                  "The journal of iotpipe {{ $labels.instance }} is {{ $value | humanizePercentage }} full",
                  "The journal is above 80% of journal.max_size, or above 40% and on course to fill within "
                  "4 hours (predict_linear over 1h)."),
        ]},
        {"name": "iotpipe-store", "rules": [
            alert("IotpipeStoreUnreachable", "iotpipe_sink_store_reachable == 0", "1m", "critical",
                  "iotpipe {{ $labels.instance }} cannot write to its store",
                  "The store has refused writes for a minute; batches are retried and nothing is stored."),
            alert("IotpipeStoreErrors", "rate(iotpipe_sink_store_errors_total[5m]) > 0", "10m", "warning",
                  "iotpipe {{ $labels.instance }} keeps failing store writes",
                  "Store writes have failed (and been retried) for 10 minutes."),
            alert("IotpipeRetentionNotRun",
                  "time() - iotpipe_sink_retention_last_success_timestamp_seconds > 1800\n"
                  "and on (job, instance) time() - process_start_time_seconds > 1800\n", "30m", "warning",
                  "Retention has not succeeded on iotpipe {{ $labels.instance }} for over an hour",
                  "Old partitions (chunks, rows) are not dropped; the database grows beyond store.retention."),
            alert("IotpipeRetentionFailing", "increase(iotpipe_sink_retention_failures_total[1h]) > 0", "1m",
                  "warning", "Retention runs fail on iotpipe {{ $labels.instance }}",
                  "At least one retention run failed in the last hour."),
            alert("IotpipeTimescaleJobFailed",
                  f"max by ({AGG}, kind) (iotpipe_sink_timescale_jobs_failed) > 0", "10m", "warning",
                  "A TimescaleDB {{ $labels.kind }} job of iotpipe failed ({{ $labels.namespace }})",
                  "{{ $value }} TimescaleDB {{ $labels.kind }} job(s) of iotpipe's policies have had a failed "
                  "last run for 10 minutes (timescaledb_information.job_stats; the error is in "
                  "timescaledb_information.job_errors). Compression, retention or the rollup's refresh is not "
                  "done until a run succeeds."),
        ]},
        {"name": "iotpipe-freshness-slo", "rules":
            [{"record": slo_record(w), "expr": _slow_ratio(w)} for w in ("5m", "30m", "1h", "6h")] + [
            alert("IotpipeFreshnessBudgetBurn",
                  f"{slo_record(long)} > ({factor} * {1 - SLO_TARGET:.2f})\n"
                  f"and\n{slo_record(short)} > ({factor} * {1 - SLO_TARGET:.2f})\n",
                  for_, severity,
                  f"iotpipe stores rows late: the freshness error budget burns {factor}x "
                  "({{ $labels.namespace }})",
                  f"Over {long} (and {short}) {{{{ $value | humanizePercentage }}}} of the rows took longer than "
                  f"{le} s from receipt to store commit; the SLO allows {1 - SLO_TARGET:.0%}. At this rate the "
                  f"30-day budget is gone in {30 / factor:.1f} days.",
                  labels={"long": long, "short": short})
            for severity, long, short, factor, for_ in BURN_RATES]},
        {"name": "iotpipe-freshness", "rules": [
            alert("IotpipeTenantSilent",
                  f"min by ({AGG}, tenant_id, project_id) (iotpipe_sink_freshness_seconds) > 900", "5m", "warning",
                  "Tenant {{ $labels.tenant_id }} / project {{ $labels.project_id }} has stored nothing for "
                  "{{ $value | humanizeDuration }}",
                  "A tenant/project pair that was sending has had no row committed for over 15 minutes "
                  "(the lowest iotpipe_sink_freshness_seconds of its sinks)."),
        ]},
        {"name": "iotpipe-process", "rules": [
            alert("IotpipeMemoryNearLimit",
                  "process_resident_memory_bytes / iotpipe_memory_limit_bytes > 0.9", "5m",
                  "warning", "iotpipe {{ $labels.instance }} uses {{ $value | humanizePercentage }} of its "
                  "memory limit",
                  "The resident set has been above 90% of the cgroup memory limit for 5 minutes; the pod is "
                  "close to an OOM kill."),
        ]},
    ]
    return groups


def alert_names(groups):
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, s):
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def ydump(obj):
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


RULES_HEAD = """\
# Prometheus alerting and recording rules for iotpipe. Runbooks:
# docs/observability.md (runbook_url: {base}#<alert>).
# Generated by scripts/observability_gen.py (the one rule source; the same
# alerts go to deploy/prometheus/prometheusrule.yaml, the Kustomize monitoring
# component and the Helm chart); do not edit: change the generator and run
# `python3 scripts/observability_gen.py`. Another runbook base:
# `python3 scripts/observability_gen.py --runbook-base-url URL --print rules`.
# Unit tests: deploy/prometheus/iotpipe.rules_test.yaml (`promtool test rules`).
#
# No job names: a process is known by iotpipe_build_info{{command}}. Component
# down alerts (IotpipeBridgeDown, ...SinkDown, ...RunDown) fire for a namespace
# in which that command ran within the last {lookback} and none runs now: this
# file cannot know which commands you deploy, so a command you never ran never
# alerts (the Helm chart's rules alert on the absence of its enabled ones).
"""


def rules_text(runbook_base=RUNBOOK_BASE_URL):
    return RULES_HEAD.format(base=runbook_base, lookback=DOWN_LOOKBACK) + ydump(
        {"groups": rule_groups(runbook_base)})


def prometheusrule_doc(name, labels, runbook_base=RUNBOOK_BASE_URL):
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": name, "labels": labels}, "spec": {"groups": rule_groups(runbook_base)}}


def prometheusrule_text(runbook_base=RUNBOOK_BASE_URL):
    head = ("# Generated by scripts/observability_gen.py (the same alerts as iotpipe.rules.yaml); do not edit.\n"
            "# The Prometheus Operator picks it up when its ruleSelector matches these labels\n"
            "# (kube-prometheus-stack: add the label `release: <its release name>`). Its name differs from\n"
            "# the Kustomize (iotpipe-kustomize-rules) and Helm (<release>-helm-rules) ones: apply one of them.\n")
    return head + ydump(prometheusrule_doc("iotpipe-rules", {"app.kubernetes.io/name": "iotpipe",
                                                             "app.kubernetes.io/part-of": "iotpipe"}, runbook_base))


def kustomize_rule_text(runbook_base=RUNBOOK_BASE_URL):
    head = ("# Generated by scripts/observability_gen.py (the alerts of deploy/prometheus/iotpipe.rules.yaml);\n"
            "# do not edit. Component down alerts fire in a namespace where the command ran in the last\n"
            f"# {DOWN_LOOKBACK} and none runs now, so this one component serves overlays with bridge + sink\n"
            "# (base) and with run (single-node). release: kube-prometheus-stack is the label its\n"
            "# ruleSelector wants by default; with another release name, patch it.\n")
    return head + ydump(prometheusrule_doc(
        "iotpipe-kustomize-rules", {"app.kubernetes.io/name": "iotpipe", "release": "kube-prometheus-stack"},
        runbook_base))


HELM_RUNBOOK = "@@RUNBOOK@@"
HELM_NAMESPACE = "@@NAMESPACE@@"


def helm_rule_text():
    """The Helm template: the same rules, component down alerts only for the
    enabled components (absent() in the release's namespace), the runbook base
    from .Values.prometheusRule.runbookBaseUrl."""
    groups = rule_groups(HELM_RUNBOOK, down="absent", namespace=HELM_NAMESPACE)
    out = ["{{- if .Values.prometheusRule.enabled }}",
           "# Generated by scripts/observability_gen.py (the alerts of deploy/prometheus/iotpipe.rules.yaml);",
           "# do not edit. Component down alerts only for the enabled components, in the release's namespace.",
           "apiVersion: monitoring.coreos.com/v1",
           "kind: PrometheusRule",
           "metadata:",
           '  name: {{ include "iotpipe.fullname" . }}-helm-rules',
           "  namespace: {{ .Release.Namespace }}",
           "  labels:",
           '    {{- include "iotpipe.labels" (dict "ctx" . "component" "") | nindent 4 }}',
           "    {{- with merge (dict) .Values.prometheusRule.labels .Values.monitoring.labels }}",
           "    {{- toYaml . | nindent 4 }}",
           "    {{- end }}",
           "spec:",
           "  groups:"]
    downs = {f"Iotpipe{c.capitalize()}Down": c for c in COMMANDS}
    for g in groups:
        out.append(f"  - name: {g['name']}")
        out.append("    rules:")
        for r in g["rules"]:
            text = ydump([r]).replace("{{", '{{ "{{" }}')
            text = text.replace(HELM_RUNBOOK, "{{ .Values.prometheusRule.runbookBaseUrl }}")
            text = text.replace(HELM_NAMESPACE, "{{ .Release.Namespace }}")
            body = "\n".join("    " + ln if ln else ln for ln in text.rstrip("\n").split("\n"))
            if r.get("alert") in downs:
                out += [f"{{{{- if .Values.{downs[r['alert']]}.enabled }}}}", body, "{{- end }}"]
            else:
                out.append(body)
    out.append("{{- end }}")
    return "\n".join(out) + "\n"


def alertmanager_doc():
    def m(names):
        return [f'alertname=~"{"|".join(names)}"'] if len(names) > 1 else [f'alertname="{names[0]}"']

    inhibit = []
    for src, dst, src_extra, dst_extra, _why in INHIBIT:
        inhibit.append({
            "source_matchers": m(src) + [f'{k}="{v}"' for k, v in src_extra.items()],
            "target_matchers": m(dst) + [f'{k}="{v}"' for k, v in dst_extra.items()],
            "equal": ["namespace", "cluster"]})
    return {
        "route": {"receiver": "default", "group_by": ["alertname", "namespace", "cluster"],
                  "group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h",
                  "routes": [{"receiver": "pager", "matchers": ['severity="critical"']}]},
        "receivers": [{"name": "default"}, {"name": "pager"}],
        "inhibit_rules": inhibit,
    }


def alertmanager_text():
    head = ["# Alertmanager configuration for iotpipe's alerts, generated by scripts/observability_gen.py",
            "# (do not edit; docs/observability.md \"Alertmanager\"). The inhibit_rules are the part to",
            "# copy into your Alertmanager: one outage is one page. The route and the two empty receivers",
            "# are an example (checked with `amtool check-config`): put your own notifiers there.",
            "#"]
    for src, dst, _s, _d, why in INHIBIT:
        head.append(f"# - {', '.join(src)} inhibits {', '.join(dst)}: {why}.")
    head.append("# All of them only within the same namespace and cluster.")
    return "\n".join(head) + "\n" + ydump(alertmanager_doc())


def outputs():
    out = {os.path.join(DASHBOARDS, n): json.dumps(d, indent=2, ensure_ascii=False) + "\n"
           for n, d in dashboards().items()}
    out[RULES] = rules_text()
    out[PROMETHEUSRULE] = prometheusrule_text()
    out[KUSTOMIZE_RULE] = kustomize_rule_text()
    out[HELM_RULE] = helm_rule_text()
    out[ALERTMANAGER] = alertmanager_text()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when a generated file is stale")
    ap.add_argument("--runbook-base-url", default=RUNBOOK_BASE_URL,
                    help="the page the runbook_url annotations point into (#<alert> is appended); "
                         f"default {RUNBOOK_BASE_URL}")
    ap.add_argument("--print", dest="print_", choices=["rules", "prometheusrule", "kustomize", "alertmanager"],
                    help="print one rule set (with --runbook-base-url) instead of writing the files")
    args = ap.parse_args()
    if args.print_:
        sys.stdout.write({"rules": rules_text, "prometheusrule": prometheusrule_text,
                          "kustomize": kustomize_rule_text,
                          "alertmanager": lambda _base: alertmanager_text()}[args.print_](args.runbook_base_url))
        return
    if args.runbook_base_url != RUNBOOK_BASE_URL:
        sys.exit("--runbook-base-url needs --print: the committed files keep the default "
                 "(Helm: prometheusRule.runbookBaseUrl)")
    stale = []
    for path, text in outputs().items():
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            stale.append(os.path.relpath(path, REPO))
            if not args.check:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
    if args.check and stale:
        sys.exit("stale generated files (run python3 scripts/observability_gen.py): " + ", ".join(stale))
    if not args.check:
        print("written: " + (", ".join(stale) or "nothing changed"))


if __name__ == "__main__":
    main()
