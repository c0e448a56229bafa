#!/usr/bin/env python3
"""The Grafana variable queries (tenant, project, device) of the PostgreSQL
and TimescaleDB telemetry dashboards at thousands of tenant/project pairs.

A fresh database gets iotpipe's telemetry table (the migration file itself)
and ROWS synthetic rows over PAIRS pairs x DEVICES devices in the last 24 h;
then each variable query of the shipped dashboard, and the plain
`SELECT DISTINCT` it replaces, runs REPEAT times over the last 6 h. Prints
the median time of each and checks that both give the same answer.

Usage: python3 scripts/bench_grafana_vars.py [--pairs 10000] [--rows 2000000] [--devices 4]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import REPO, services_env  # noqa: E402

DASHBOARD = os.path.join(REPO, "deploy", "grafana", "dashboards", "iotpipe-telemetry-postgres.json")
NAIVE = {
    "tenant": "SELECT DISTINCT tenant_id FROM telemetry WHERE {tf} ORDER BY 1",
    "project": "SELECT DISTINCT project_id FROM telemetry WHERE {tf} AND tenant_id IN ({tenant}) ORDER BY 1",
    "device": "SELECT DISTINCT device_id FROM telemetry WHERE {tf} AND tenant_id IN ({tenant}) "
              "AND project_id IN ({project}) ORDER BY 1",
}


def psql(url, sql):
    return subprocess.run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def shipped_queries():
    d = json.load(open(DASHBOARD))
    out = {}
    for v in d["templating"]["list"]:
        if v.get("name") in NAIVE:
            q = v["query"]
            out[v["name"]] = q if isinstance(q, str) else q.get("rawSql") or q.get("query")
    return out


def expand(sql, tenant, project):
    """Grafana's macros for the last 6 hours, and the single-value variables."""
    tf = "time BETWEEN now() - interval '6 hours' AND now()"
    return (sql.replace("$__timeFilter(time)", tf).replace("{tf}", tf)
            .replace("$__timeFrom()", "(now() - interval '6 hours')").replace("$__timeTo()", "now()")
            .replace("($tenant)", f"('{tenant}')").replace("({tenant})", f"('{tenant}')")
            .replace("($project)", f"('{project}')").replace("({project})", f"('{project}')"))


def timed(url, sql, repeat):
    times, answer = [], None
    for _ in range(repeat):
        t0 = time.time()
        answer = psql(url, sql)
        times.append(time.time() - t0)
    return statistics.median(times) * 1e3, answer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=10_000)
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--devices", type=int, default=4, help="devices per pair")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    env = services_env("postgres")
    server = env["IOTPIPE_TEST_POSTGRES_URL"].rsplit("/", 1)[0]
    db = f"bench_vars_{time.time_ns()}"
    psql(f"{server}/postgres", f"CREATE DATABASE {db}")
    url = f"{server}/{db}"
    try:
        with open(os.path.join(REPO, "src", "store", "postgres", "sql", "0001_telemetry.sql")) as f:
            psql(url, f.read())
        t0 = time.time()
        tenants = max(1, args.pairs // 10)
        projects = args.pairs // tenants
        psql(url, f"""INSERT INTO telemetry (time, received_at, tenant_id, project_id, device_id, mqtt_topic, id, raw)
            SELECT now() - (g % 86400) * interval '1 second', now(),
                   'tenant-' || (g % {tenants}), 'project-' || ((g / {tenants}) % {projects}),
                   'dev-' || ((g / {args.pairs}) % {args.devices}), 't', gen_random_uuid(), '\\x7b7d'
            FROM generate_series(1, {args.rows}) g""")
        psql(url, "ANALYZE telemetry")
        load = time.time() - t0
        shipped = shipped_queries()
        print(f"{args.rows:,} rows over {args.pairs:,} pairs x {args.devices} devices in the last 24 h "
              f"(loaded in {load:.0f} s); variable queries over the last 6 h, median of {args.repeat}:\n")
        print("| variable | shipped query | plain SELECT DISTINCT | values | same answer |")
        print("|---|---|---|---|---|")
        tenant, project = "tenant-1", "project-1"
        ok = True
        for name in ("tenant", "project", "device"):
            ms_new, ans_new = timed(url, expand(shipped[name], tenant, project), args.repeat)
            ms_old, ans_old = timed(url, expand(NAIVE[name], tenant, project), args.repeat)
            same = sorted(ans_new.split()) == sorted(ans_old.split())
            ok &= same
            print(f"| {name} | {ms_new:,.1f} ms | {ms_old:,.1f} ms | {len(ans_new.split()):,} | {same} |")
        if not ok:
            sys.exit("bench_grafana_vars: the shipped query answers differently")
    finally:
        psql(f"{server}/postgres", f"DROP DATABASE IF EXISTS {db}")


if __name__ == "__main__":
    main()
