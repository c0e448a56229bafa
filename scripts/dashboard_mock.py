#!/usr/bin/env python3
"""A stand-in for iotpipe's dashboard API (docs/api.md), for working on the
page in assets/dashboard/ without the pipeline.

    python3 scripts/dashboard_mock.py [--port 8099] [--token SECRET]

Serves assets/dashboard/* at / (with the same Content-Security-Policy as
src/http/dashboard.rs) and plausible, time-dependent fixtures for every
endpoint. Fixture devices in tenant-1/project-1 cover the edge cases:
dev-1-1-1 has ~200 points per field in 15 min with a one-minute gap,
dev-1-1-2 has a single point, dev-1-1-3 has nothing stored (404 on /latest),
dev-1-1-4 sends non-JSON payloads. Prints the URL on the first line of stdout.
Python 3 standard library only.
"""

import argparse
import json
import math
import pathlib
import random
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

ASSETS = pathlib.Path(__file__).resolve().parent.parent / "assets" / "dashboard"
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/chart.js": ("chart.js", "text/javascript; charset=utf-8"),
    "/format.js": ("format.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
# Keep in step with CSP in src/http/dashboard.rs.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
RANGES = {"15m": 15 * 60_000, "1h": 3_600_000, "3d": 3 * 86_400_000}
FIELDS = ("temperature", "humidity", "battery", "ts", "seq")
START = time.time()
TOPIC = "mtic/msg/client/realtime/{}/{}"


def now_ms():
    return int(time.time() * 1000)


def fleet():
    """tenant -> project -> [device]; the first tenant is the one with data."""
    out = {}
    for t, projects, devices in (("tenant-1", 2, 6), ("tenant-2", 2, 4), ("acme-industrial", 1, 3)):
        short = t.split("-")[-1] if t.startswith("tenant") else "a"
        out[t] = {
            f"project-{p}": [f"dev-{short}-{p}-{d}" for d in range(1, devices + 1)] for p in range(1, projects + 1)
        }
    return out


FLEET = fleet()


def value(field, t_ms, device):
    """A smooth, repeatable signal per field and device."""
    seed = sum(map(ord, device))
    phase = t_ms / 600_000 * 2 * math.pi + seed
    noise = random.Random(int(t_ms // 1000) * 7919 + seed).uniform(-0.25, 0.25)
    if field == "temperature":
        return round(21 + 2.5 * math.sin(phase) + 0.6 * math.sin(phase * 7.3) + noise, 2)
    if field == "humidity":
        return round(47 + 9 * math.cos(phase * 0.7) - 2 * noise, 2)
    if field == "battery":
        return round(100 - ((t_ms / 60_000 + seed) % 600) / 10, 1)
    if field == "ts":
        return t_ms
    return int(t_ms // 4500)  # seq


def series(device, rng, field):
    to = now_ms()
    frm = to - RANGES[rng]
    fields = FIELDS if field is None else (field,) if field in FIELDS else ()
    if device.endswith("-3") or device.endswith("-4"):
        return {"device_id": device, "range": rng, "from": frm, "to": to, "fields": {}}
    if device.endswith("-2"):
        return {"device_id": device, "range": rng, "from": frm, "to": to,
                "fields": {f: [[to - 42_000, value(f, to - 42_000, device)]] for f in fields}}
    # ~200 points in 15 min (every 4.5 s); at most 300 buckets in longer ranges.
    step = 4500 if rng == "15m" else RANGES[rng] // 300
    span = RANGES[rng]
    gap = (frm + span * 0.45, frm + span * 0.52)  # the device was offline here
    first = (frm // step + 1) * step
    if rng == "3d":
        first = max(first, to - 2 * 86_400_000)  # retention holds two days of this device
        first -= first % step
    pts = {f: [] for f in fields}
    for t in range(first, to + 1, step):
        if gap[0] <= t <= gap[1]:
            continue
        for f in fields:
            pts[f].append([t, value(f, t, device)])
    return {"device_id": device, "range": rng, "from": frm, "to": to, "fields": pts}


def latest(tenant, project, device):
    t = now_ms() - 1200
    if device.endswith("-4"):
        payload = "temp=21.5;hum=40 (firmware 0.9 sends text)"
    else:
        payload = {"deviceId": device, "ts": t, "seq": value("seq", t, device), "run": "",
                   "temperature": value("temperature", t, device), "humidity": value("humidity", t, device),
                   "battery": value("battery", t, device), "status": "ok",
                   "location": {"site": "hall-3", "rack": 12}, "tags": ["hvac", "floor-2"]}
    return {"time": t, "received_at": t + 5, "id": "0190f3a2-7c1e-7d40-9a51-5e2b9c%06x" % (t % 0xFFFFFF),
            "mqtt_topic": TOPIC.format(tenant, project), "payload": payload}


def dead_letters(limit):
    reasons = [
        ("invalid_json", "payload is not JSON: expected value at line 1 column 1", "{not json"),
        ("topic_mismatch", "topic does not match mtic/msg/client/realtime/{tenant_id}/{project_id}/#", '{"t":1}'),
        ("oversize", "payload is 2.1 MiB, more than mqtt.max_payload (1 MiB)", '{"blob":"AAAAAAAAAAAAAAAAAAAAAAAA'),
        ("invalid_utf8", "payload is not UTF-8: invalid utf-8 sequence of 1 bytes from index 3", "\ufffd\ufffd\x01"),
        ("empty_payload", "payload is empty", ""),
    ]
    t = now_ms()
    out = []
    for i in range(min(limit, 12)):
        reason, error, preview = reasons[i % len(reasons)]
        out.append({"received_at": t - 7_000 - i * 95_000, "reason": reason, "error": error,
                    "mqtt_topic": TOPIC.format("tenant-%d" % (i % 2 + 1), "project-1")
                    + ("/extra/segment" if reason == "topic_mismatch" else ""),
                    "source": "journal:%d" % (4242 - i), "payload_preview": preview})
    return out


def health():
    up = time.time() - START
    received = int(12_000 + up * 200)
    dead = 12 + int(up / 20)
    in_flight = random.randint(0, 6)
    return {"status": "ok" if int(up) % 60 < 50 else "degraded",
            "reasons": [] if int(up) % 60 < 50 else ["store latency above 500 ms"],
            "uptime_s": round(up + 3600 * 5.2, 1), "received": received, "stored": received - dead - in_flight,
            "dead_lettered": dead, "in_flight": in_flight,
            "rate_per_s": round(200 + 25 * math.sin(up / 9) + random.uniform(-8, 8), 1),
            "journal_depth": in_flight, "journal_bytes": 48_213_504 + int(up * 1200),
            "latency_p50_ms": round(3.1 + random.uniform(-0.3, 0.3), 2),
            "latency_p99_ms": round(9.8 + random.uniform(-1, 2), 2), "mqtt_connected": True}


def summary(devices):
    t = now_ms()
    return {"messages": 200 * len(devices) + 17, "last_seen": t - 900}


class Handler(BaseHTTPRequestHandler):
    token = None
    verbose = False

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("mock: " + fmt % args + "\n")

    def send(self, status, body, ctype="application/json", extra=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path in STATIC:
            name, ctype = STATIC[url.path]
            return self.send(200, (ASSETS / name).read_bytes(), ctype,
                             [("Content-Security-Policy", CSP), ("X-Content-Type-Options", "nosniff")])
        if not url.path.startswith("/api/"):
            return self.send(404, b"not found\n", "text/plain")
        if self.token and self.headers.get("Authorization") != "Bearer " + self.token:
            return self.send(401, {"error": "missing or wrong bearer token"})
        try:
            status, body = self.api([unquote(p) for p in url.path[5:].split("/")], parse_qs(url.query))
        except Exception as e:  # a mock: report, do not die
            status, body = 500, {"error": f"mock failure: {e}"}
        self.send(status, body)

    def api(self, parts, q):
        if parts == ["health"]:
            return 200, health()
        if parts == ["dead-letters"]:
            try:
                limit = int(q.get("limit", ["50"])[0])
            except ValueError:
                limit = 0
            if not 1 <= limit <= 500:
                return 400, {"error": "limit must be 1..500"}
            return 200, dead_letters(limit)
        if parts == ["tenants"]:
            return 200, [{"tenant_id": t, "projects": len(ps), "devices": sum(map(len, ps.values())),
                          **summary([d for ds in ps.values() for d in ds])} for t, ps in FLEET.items()]
        if len(parts) < 2 or parts[0] != "tenants":
            return 404, {"error": "unknown path under /api/"}
        tenant = parts[1]
        if tenant not in FLEET:
            return 404, {"error": f"unknown tenant {tenant!r}"}
        if parts[2:] == ["projects"]:
            return 200, [{"project_id": p, "devices": len(ds), **summary(ds)} for p, ds in FLEET[tenant].items()]
        if len(parts) < 4 or parts[2] != "projects":
            return 404, {"error": "unknown path under /api/"}
        project = parts[3]
        if project not in FLEET[tenant]:
            return 404, {"error": f"unknown project {project!r}"}
        if parts[4:] == ["devices"]:
            return 200, [{"device_id": d, "messages": 0 if d.endswith("-3") else 200 + i,
                          "last_seen": None if d.endswith("-3") else now_ms() - 1000 * i}
                         for i, d in enumerate(FLEET[tenant][project])]
        if len(parts) != 7 or parts[4] != "devices":
            return 404, {"error": "unknown path under /api/"}
        device = parts[5]
        if device not in FLEET[tenant][project]:
            return 404, {"error": f"unknown device {device!r}"}
        if parts[6] == "series":
            rng = q.get("range", ["15m"])[0]
            if rng not in RANGES:
                return 400, {"error": "range must be one of 15m, 1h, 3d"}
            return 200, series(device, rng, q.get("field", [None])[0])
        if parts[6] == "latest":
            if device.endswith("-3"):
                return 404, {"error": f"no message stored for device {device!r}"}
            return 200, latest(tenant, project, device)
        return 404, {"error": "unknown path under /api/"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--token", help="require Authorization: Bearer TOKEN on /api/")
    ap.add_argument("--verbose", action="store_true", help="log every request")
    args = ap.parse_args()
    Handler.token = args.token
    Handler.verbose = args.verbose
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
