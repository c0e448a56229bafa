#!/usr/bin/env python3
"""Generates the Grafana dashboards (deploy/grafana/dashboards/*.json) and the
PrometheusRule (deploy/prometheus/prometheusrule.yaml, from
deploy/prometheus/iotpipe.rules.yaml). The generated files are committed;
scripts/check-observability.sh fails when they differ from what this prints.

Usage: python3 scripts/observability_gen.py           # write the files
       python3 scripts/observability_gen.py --check   # exit 1 when a file is stale
The dashboards' queries are the contract: docs/observability.md describes them.
"""
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARDS = os.path.join(REPO, "deploy", "grafana", "dashboards")
RULES = os.path.join(REPO, "deploy", "prometheus", "iotpipe.rules.yaml")
PROMETHEUSRULE = os.path.join(REPO, "deploy", "prometheus", "prometheusrule.yaml")

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
        self.uid, self.title, self.ds, self.tags = uid, title, ds, tags
        self.panels, self.variables = [], []
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
        "WHERE $__timeFilter(received_at)\n"
        "GROUP BY 1, 2\n"
        "ORDER BY 1")
    b.panel("timeseries", "Dead letters by reason", [sql_target(dl_rate)], w=8, h=9,
            description="Dead letters stored per interval (all tenants: a dead letter may have none).",
            extra={"fieldConfig": {"defaults": {"custom": {"drawStyle": "bars", "fillOpacity": 60,
                                                           "stacking": {"mode": "normal", "group": "A"}}},
                                   "overrides": []}})
    dl_sum = ("SELECT reason, count(*) AS dead_letters\nFROM dead_letters\nWHERE $__timeFilter(received_at)\n"
              "GROUP BY reason\nORDER BY 2 DESC")
    b.panel("bargauge", "Dead letters in the range", [sql_target(dl_sum, "table")], w=4, h=9,
            options={"orientation": "horizontal", "displayMode": "basic",
                     "reduceOptions": {"values": True, "calcs": [], "fields": "/^dead_letters$/"}})
    dl_table = (
        "SELECT received_at AS time, reason, error, mqtt_topic, source, length(payload) AS bytes,\n"
        "       encode(substring(payload FROM 1 FOR 200), 'escape') AS payload\n"
        "FROM dead_letters\n"
        "WHERE $__timeFilter(received_at)\n"
        "ORDER BY received_at DESC\n"
        "LIMIT 100")
    b.panel("table", "Latest dead letters", [sql_target(dl_table, "table")], w=12, h=9,
            options={"showHeader": True, "cellHeight": "sm"})
    return b.render(description=f"Telemetry stored by iotpipe sink / run in {name} (docs/observability.md).")


# --------------------------------------------------------------------------
# IoT telemetry: InfluxDB 1.x (InfluxQL)
# --------------------------------------------------------------------------

INFLUX_DEVICE_FILTER = '"tenant_id" =~ /^$tenant$/ AND "project_id" =~ /^$project$/ AND "device_id" =~ /^$device$/'
# iotpipe's own fields of a telemetry point; not payload fields.
INFLUX_OWN_FIELDS = ["id", "mqtt_topic", "event_time_ms", "raw", "raw_base64"]


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
    dl_rate = 'SELECT count("source") FROM "dead_letters" WHERE $timeFilter GROUP BY time($__interval), "reason" fill(none)'
    b.panel("timeseries", "Dead letters by reason", [influx_target(dl_rate, alias="$tag_reason")], w=8, h=9,
            extra={"fieldConfig": {"defaults": {"custom": {"drawStyle": "bars", "fillOpacity": 60,
                                                           "stacking": {"mode": "normal", "group": "A"}}},
                                   "overrides": []}})
    dl_sum = 'SELECT count("source") AS "dead_letters" FROM "dead_letters" WHERE $timeFilter GROUP BY "reason"'
    b.panel("bargauge", "Dead letters in the range", [influx_target(dl_sum, alias="$tag_reason")], w=4, h=9,
            options={"orientation": "horizontal", "displayMode": "basic",
                     "reduceOptions": {"values": False, "calcs": ["sum"], "fields": ""}})
    dl_table = ('SELECT "reason", "error", "mqtt_topic", "source", "payload" FROM "dead_letters" '
                'WHERE $timeFilter ORDER BY time DESC LIMIT 100')
    b.panel("table", "Latest dead letters", [influx_target(dl_table, "table")], w=12, h=9,
            options={"showHeader": True, "cellHeight": "sm"})
    return b.render(description="Telemetry stored by iotpipe sink / run in InfluxDB 1.x (docs/observability.md).")


# --------------------------------------------------------------------------
# iotpipe pipeline (Prometheus)
# --------------------------------------------------------------------------

S = 'job=~"$job", instance=~"$instance"'


def prom(expr, legend=""):
    return {"expr": expr, "legendFormat": legend, "range": True, "editorMode": "code"}


def rate(metric, by="instance", window="$__rate_interval"):
    return f"sum by ({by}) (rate({metric}{{{S}}}[{window}]))"


def quantiles(metric, legend):
    return [prom(f"histogram_quantile({q}, sum by (le, instance) (rate({metric}_bucket{{{S}}}[$__rate_interval])))",
                 f"p{int(q * 100)} {legend}") for q in (0.5, 0.99)]


def pipeline():
    b = Board("iotpipe-pipeline", "iotpipe pipeline", DS["prometheus"], ["iotpipe", "pipeline"])
    b.variable("job", "Job", {"query": "label_values(iotpipe_build_info, job)", "refId": "job"},
               all_value="iotpipe-.*")
    b.variable("instance", "Instance",
               {"query": 'label_values(iotpipe_build_info{job=~"$job"}, instance)', "refId": "instance"},
               all_value=".*")
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

    b.panel("timeseries", "Messages received / delivered",
            [prom(rate("iotpipe_messages_received_total"), "received {{instance}}"),
             prom(rate("iotpipe_messages_delivered_total"), "delivered {{instance}}")], unit="reqps",
            description="From MQTT (bridge, run); delivered = acknowledged by Kafka (bridge) or stored (run).")
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
             prom(rate("iotpipe_mqtt_acks_abandoned_total"), "acks abandoned/s {{instance}}")], w=8)

    b.panel("timeseries", "Journal depth",
            [prom(f"iotpipe_journal_depth{{{S}}}", "depth {{instance}}"),
             prom(f"iotpipe_journal_forward_records{{{S}}}", "forwarding {{instance}}")], w=8,
            description="Records journaled and not yet delivered; forwarding: read by the bridge and not yet "
                        "acknowledged by Kafka.")
    b.panel("timeseries", "Journal bytes", [prom(f"iotpipe_journal_bytes{{{S}}}", "{{instance}}")], w=8, unit="bytes")
    b.panel("timeseries", "Journal fsyncs", [prom(rate("iotpipe_journal_fsyncs_total"), "{{instance}}")], w=8,
            unit="ops")

    b.panel("timeseries", "Sink rows/s",
            [prom(rate("iotpipe_sink_rows_written_total"), "written {{instance}}"),
             prom(rate("iotpipe_sink_rows_duplicate_total"), "duplicate {{instance}}"),
             prom(rate("iotpipe_sink_records_consumed_total"), "consumed from Kafka {{instance}}")], unit="reqps")
    b.panel("timeseries", "Consumer lag",
            [prom(f"sum by (instance) (iotpipe_sink_consumer_lag_records{{{S}}})", "{{instance}}")],
            description="Records behind the end of the partitions each sink holds (librdkafka statistics, 5 s).")
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
            description="Only with http.per_tenant_metrics = true (at most 5,000 series, then other).")
    return b.render(time_from="now-3h", description="iotpipe bridge, sink and run from their /metrics "
                                                    "(docs/metrics.md, docs/observability.md).")


def dashboards():
    return {
        "iotpipe-pipeline.json": pipeline(),
        "iotpipe-telemetry-postgres.json": telemetry_sql("postgres"),
        "iotpipe-telemetry-timescaledb.json": telemetry_sql("timescaledb"),
        "iotpipe-telemetry-influxdb.json": telemetry_influx(),
    }


def prometheusrule_text():
    import yaml
    with open(RULES) as f:
        rules = yaml.safe_load(f)
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "iotpipe", "labels": {"app.kubernetes.io/name": "iotpipe",
                                                     "app.kubernetes.io/part-of": "iotpipe"}},
        "spec": rules,
    }
    head = ("# Generated from iotpipe.rules.yaml by scripts/observability_gen.py; do not edit.\n"
            "# The Prometheus Operator picks it up when its ruleSelector matches these labels\n"
            "# (kube-prometheus-stack: add the label `release: <its release name>`).\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=120, allow_unicode=True)


def outputs():
    out = {os.path.join(DASHBOARDS, n): json.dumps(d, indent=2, ensure_ascii=False) + "\n"
           for n, d in dashboards().items()}
    out[PROMETHEUSRULE] = prometheusrule_text()
    return out


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for path, text in outputs().items():
        old = open(path).read() if os.path.exists(path) else None
        if old != text:
            stale.append(os.path.relpath(path, REPO))
            if not check:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
    if check and stale:
        sys.exit("stale generated files (run python3 scripts/observability_gen.py): " + ", ".join(stale))
    if not check:
        print("written: " + (", ".join(stale) or "nothing changed"))


if __name__ == "__main__":
    main()
