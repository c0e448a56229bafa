#!/usr/bin/env python3
"""Check the iotpipe dashboard in headless Chromium.

    python3 scripts/dashboard_check.py URL SCREENSHOT.png

Loads URL with `chromium --dump-dom` (virtual time, so the page's timers and
requests run), and checks that the page loaded (its <title> names iotpipe),
that the tenant list has at least one `data-tenant-id` item and that at least
one `data-testid="chart"` element has `data-points` > 0. Data may take a few
seconds to appear, so it retries for up to --timeout seconds (30 by default).
Then it saves a 1280x900 screenshot to SCREENSHOT.png.

Exit 0 with a one-line summary, or 1 with what was missing and the relevant
part of the DOM. Python 3 standard library only; CHROMIUM overrides the
browser path.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]


def find_chromium():
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def run_chromium(browser, extra, url, timeout):
    """Run one headless Chromium with a fresh profile; return (rc, stdout, stderr)."""
    profile = tempfile.mkdtemp(prefix="iotpipe-dash-")
    cmd = [browser, *FLAGS, f"--user-data-dir={profile}", *extra, url]
    # Its own session, so a timeout can stop Chromium's helper processes too.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out.decode("utf-8", "replace"), err.decode("utf-8", "replace") + "\n(timed out)"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


class DomScan(HTMLParser):
    """Collects the title, tenant ids, charts and visible error messages."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.in_title = False
        self.tenants = []
        self.charts = []  # (field, points)
        self.errors = []
        self.error_depth = 0  # >0 while inside a shown .error element
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag not in ("br", "img", "input", "link", "meta", "hr", "col", "source", "wbr"):
            self.depth += 1
        if tag == "title":
            self.in_title = True
        if "data-tenant-id" in a:
            self.tenants.append(a["data-tenant-id"])
        if a.get("data-testid") == "chart":
            try:
                points = int(a.get("data-points") or 0)
            except ValueError:
                points = 0
            self.charts.append((a.get("data-field") or "?", points))
        classes = (a.get("class") or "").split()
        if ("error" in classes or a.get("id") == "banner") and "hidden" not in a and not self.error_depth:
            self.error_depth = self.depth
            self.errors.append("")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if self.error_depth and self.depth == self.error_depth:
            self.error_depth = 0
        self.depth -= 1

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        if self.error_depth:
            self.errors[-1] += data


def excerpt(dom, marker, size=900):
    i = dom.find(marker)
    if i < 0:
        return f"(no {marker} in the DOM)"
    start = dom.rfind("<", 0, i)
    text = re.sub(r"\s+", " ", dom[start:start + size])
    return text + (" …" if start + size < len(dom) else "")


def chromium_errors(stderr):
    """Chromium's own complaints, without the D-Bus noise of a bare container."""
    lines = [l for l in stderr.strip().splitlines() if "dbus" not in l.lower() and l.strip()]
    return "\n".join(lines[-10:]) or "(nothing on stderr)"


def check(dom):
    """Return (problems, scan)."""
    scan = DomScan()
    scan.feed(dom)
    problems = []
    if "iotpipe" not in scan.title.lower():
        problems.append(f"page title is {scan.title.strip()!r}, expected it to name iotpipe")
    if not scan.tenants:
        problems.append('no tenant in the tenant list (no element with data-tenant-id)')
    if not any(p > 0 for _, p in scan.charts):
        got = ", ".join(f"{f}={p}" for f, p in scan.charts) or "no chart elements"
        problems.append(f'no data-testid="chart" with data-points > 0 ({got})')
    return problems, scan


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("screenshot")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to keep retrying the DOM check")
    args = ap.parse_args()

    browser = find_chromium()
    if not browser:
        print("dashboard check: chromium not found (apt-get install -y chromium, or set CHROMIUM)")
        return 1

    deadline = time.monotonic() + args.timeout
    attempt = 0
    while True:
        attempt += 1
        left = deadline - time.monotonic()
        rc, dom, err = run_chromium(browser, ["--dump-dom"], args.url, max(left, 10.0))
        problems, scan = check(dom) if dom.strip() else (["Chromium returned an empty DOM"], DomScan())
        if not problems or time.monotonic() + 2 >= deadline:
            break
        time.sleep(2)

    if problems:
        print(f"dashboard check FAILED for {args.url} after {attempt} attempt(s): " + "; ".join(problems))
        shown = [e.strip() for e in scan.errors if e.strip()]
        if shown:
            print("errors shown on the page: " + " | ".join(shown))
        if not dom.strip():
            print(f"chromium exit code {rc}:\n{chromium_errors(err)}")
        else:
            markers = ['data-testid="tenant-list"'] if not scan.tenants else []
            markers += ['data-testid="charts"', 'id="crumbs"'] if any("chart" in p for p in problems) else []
            markers = markers or ["<title"]
            for marker in markers:
                print(f"--- DOM at {marker}:\n{excerpt(dom, marker)}")
        return 1

    shot = os.path.abspath(args.screenshot)
    if os.path.dirname(shot):
        os.makedirs(os.path.dirname(shot), exist_ok=True)
    if os.path.exists(shot):
        os.remove(shot)
    rc, _, err = run_chromium(browser, [f"--screenshot={shot}", "--window-size=1280,900"], args.url, 60.0)
    if not os.path.exists(shot) or os.path.getsize(shot) == 0:
        print(f"dashboard check FAILED: the DOM checks passed but no screenshot was written (exit {rc}):\n"
              + chromium_errors(err))
        return 1

    points = max(p for _, p in scan.charts)
    fields = ",".join(f for f, p in scan.charts if p > 0)
    print(f"dashboard check ok: title {scan.title.strip()!r}, {len(scan.tenants)} tenant(s) "
          f"({', '.join(scan.tenants[:5])}{', …' if len(scan.tenants) > 5 else ''}), "
          f"{len(scan.charts)} chart(s), max {points} points ({fields}); screenshot {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
