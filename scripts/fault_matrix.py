#!/usr/bin/env python3
"""Fault matrix: nothing lost, nothing stored twice.

Runs the whole pipeline as real processes on loopback,

    iotpipe simulate (QoS 1) -> Mosquitto (persistence on) -> iotpipe bridge
        (direct or [journal]) -> Tansu (Kafka API) -> iotpipe sink -> PostgreSQL

injects one kind of fault per scenario (SIGKILL, SIGTERM, SIGSTOP/SIGCONT,
restarts, outages), then reconciles what the simulator published (every
payload carries "run", "seq", "deviceSeq" and "deviceId") against the rows in
PostgreSQL (`telemetry.payload`), and against the records in Kafka (read back
with confluent-kafka). Prints a markdown table, writes it and a JSON file to
the results directory, and exits 1 if any scenario lost a message, stored one
twice or had an iotpipe process above 64 MiB peak RSS (VmHWM) -- except
where a scenario is marked as losing messages by design.

Alerts: each scenario also runs a private Prometheus (scripts/promharness.py)
with a scaled copy of the shipped rules (deploy/prometheus/iotpipe.rules.yaml;
`--alert-time-scale`, env IOTPIPE_ALERT_TIME_SCALE, default 0.05: `for: 2m`
becomes 6 s, `[5m]` 15 s), scraping every iotpipe process every second. A
scenario declares the alerts that must go pending after its fault
(expect_alerts; the table gives seconds from the fault to pending and to
firing) and those that must not go pending at all (forbid_alerts); either
breach fails the scenario. Without a prometheus binary the alert checks are
skipped with one line saying so.

Usage (normally through scripts/fault-matrix.sh, which starts the services,
builds the binary and installs confluent-kafka):
    python3 scripts/fault_matrix.py [--short] [--scenario NAME ...] [--results DIR] [--list]
        [--alert-time-scale 0.05] [--alert-rules FILE] [--no-prometheus]
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchlib  # noqa: E402
import promharness  # noqa: E402
from benchlib import BIN, REPO, free_port, metric, metrics, services_env, status_kib, wait_port  # noqa: E402

PYLIB = os.environ.get("FAULT_MATRIX_PYLIB")
if PYLIB:
    sys.path.insert(0, PYLIB)
try:
    from confluent_kafka import Consumer, TopicPartition  # noqa: E402
except ImportError:  # reported when a scenario needs it
    Consumer = None

PG_BINDIR = os.environ.get("IOTPIPE_PG_BINDIR", "/usr/lib/postgresql/15/bin")
TANSU_SQL_BIN = os.environ.get("IOTPIPE_TEST_TANSU_SQL_BIN") or os.path.join(
    os.path.expanduser("~"), ".cache", "iotpipe", "tansu-sql", "bin", "tansu")
RULES = os.path.join(REPO, "deploy", "prometheus", "iotpipe.rules.yaml")
RSS_LIMIT_KIB = 64 * 1024
# The sink's kafka.consumer (--sink-consumer), one value for the whole run.
SINK_CONSUMER = ["auto"]
TENANTS, PROJECTS, DEVICES = 1, 2, 5
FLEET = TENANTS * PROJECTS * DEVICES
NICE = ["nice", "-n", "10"]


class ScenarioError(Exception):
    """The harness could not run a scenario as planned (not a finding about iotpipe)."""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def device_of(seq):
    """The device the simulator gives sequence number `seq` (src/simulate.rs)."""
    d = seq % FLEET
    t = d // (PROJECTS * DEVICES) + 1
    p = (d // DEVICES) % PROJECTS + 1
    return f"dev-{t}-{p}-{d % DEVICES + 1}"


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------

class Role:
    """One iotpipe process role (bridge-a, sink, ...) across its restarts."""

    def __init__(self, sc, name, command, config_fn):
        self.sc, self.name, self.command, self.config_fn = sc, name, command, config_fn
        self.proc = None
        self.port = None
        self.incarnation = 0
        self.peaks = {}  # pid -> VmHWM KiB
        self.exits = []  # (pid, returncode, how)

    def start(self, wait_ready=False):
        self.incarnation += 1
        # The same port across restarts (a pod keeps its address in a StatefulSet):
        # Prometheus sees one target go down and come back. A new one only if
        # something else took the port meanwhile.
        if self.port is None or not port_free(self.port):
            self.port = free_port()
        cfg = os.path.join(self.sc.work, f"{self.name}.{self.incarnation}.toml")
        with open(cfg, "w") as f:
            f.write(self.config_fn(self.port))
        logf = open(os.path.join(self.sc.work, f"{self.name}.log"), "a")
        logf.write(f"----- start {self.incarnation} at {time.strftime('%H:%M:%S')} -----\n")
        logf.flush()
        self.proc = subprocess.Popen(NICE + [BIN, self.command, "--config", cfg], stdout=logf, stderr=logf)
        logf.close()
        self.sc.track(self)
        if self.sc.prom:
            self.sc.prom.set_target(self.command, self.name, self.port)
        wait_port(self.port, timeout=30)
        if wait_ready:
            benchlib.wait_ready(self.port, timeout=60)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def sample(self):
        if self.alive():
            try:
                kib = status_kib(self.proc.pid, "VmHWM")
            except OSError:
                return
            self.peaks[self.proc.pid] = max(self.peaks.get(self.proc.pid, 0), kib)

    def signal(self, sig):
        self.sample()
        os.kill(self.proc.pid, sig)

    def kill(self):
        self.sample()
        self.proc.kill()
        self.proc.wait()
        self.exits.append((self.proc.pid, self.proc.returncode, "SIGKILL"))

    def term(self, timeout=60):
        self.sample()
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise ScenarioError(f"{self.name} did not exit within {timeout}s of SIGTERM")
        self.exits.append((self.proc.pid, rc, "SIGTERM"))
        return rc

    def metric(self, name):
        return metric(metrics(self.port), name)

    def peak_kib(self):
        return max(self.peaks.values(), default=0)


class Mosquitto:
    """A private broker with persistence, on a fixed port so that it can restart."""

    def __init__(self, work, env, max_queued):
        self.work, self.env = work, env
        self.port = free_port()
        self.conf = os.path.join(work, "mosquitto.conf")
        os.makedirs(os.path.join(work, "mosquitto-data"), exist_ok=True)
        with open(self.conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                    f"persistence true\npersistence_location {work}/mosquitto-data/\n"
                    f"max_queued_messages {max_queued}\nmax_inflight_messages 1000\nmessage_size_limit 0\n"
                    f"log_dest file {work}/mosquitto.log\nlog_type error\nlog_type warning\n"
                    f"log_type notice\nlog_type information\nconnection_messages true\nlog_timestamp true\n"
                    f"log_timestamp_format %H:%M:%S\n")
            if os.geteuid() == 0:
                f.write("user root\n")
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(NICE + [benchlib.mosquitto_bin(self.env), "-c", self.conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        """SIGTERM: Mosquitto writes its persistence file on the way out."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def log_lines(self, needle):
        try:
            with open(os.path.join(self.work, "mosquitto.log")) as f:
                return [ln.rstrip() for ln in f if needle in ln]
        except OSError:
            return []


class Tansu:
    """A private Kafka-compatible broker: in-memory (SIGSTOP/SIGCONT keep it),
    or Tansu with SQLite storage (keeps data across a restart)."""

    def __init__(self, work, env, sqlite=False):
        self.work, self.env, self.sqlite = work, env, sqlite
        self.port = free_port()
        self.brokers = f"127.0.0.1:{self.port}"
        self.proc = None
        self.stopped = False

    def start(self):
        if self.sqlite:
            d = os.path.join(self.work, "tansu-sql")
            os.makedirs(d, exist_ok=True)
            url = f"tcp://127.0.0.1:{self.port}"
            cmd = [TANSU_SQL_BIN, "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "sqlite://tansu.db"]
            cwd = d
        else:
            cmd = [self.env["IOTPIPE_TEST_TANSU_BIN"],
                   *self.env["IOTPIPE_TEST_TANSU_ARGS"].replace("{PORT}", str(self.port)).split()]
            cwd = None
        logf = open(os.path.join(self.work, "tansu.log"), "a")
        self.proc = subprocess.Popen(NICE + cmd, stdout=logf, stderr=logf, cwd=cwd)
        logf.close()
        wait_port(self.port)

    def stall(self):
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped = True

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)
        self.stopped = False

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            if self.stopped:
                self.resume()
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Postgres:
    """A database on the services' PostgreSQL (fresh per scenario), or a private
    cluster (initdb) that the scenario may stop and start without disturbing
    anyone else."""

    def __init__(self, work, env, name, private=False):
        self.work, self.private = work, private
        self.db = name
        self.datadir = None
        if private:
            self.port = free_port()
            self._initdb()
        else:
            url = env.get("IOTPIPE_TEST_POSTGRES_URL")
            if not url:
                raise ScenarioError("IOTPIPE_TEST_POSTGRES_URL is not in the services env (scripts/services.sh up postgres)")
            self.port = int(url.rsplit(":", 1)[1].split("/")[0])
        self.url = f"postgres://iotpipe@127.0.0.1:{self.port}/{self.db}"

    # as root, PostgreSQL runs as the postgres OS user
    def _as_pg(self, cmd, **kw):
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        return subprocess.run(cmd, **kw)

    def _initdb(self):
        base = os.path.join(self.work, "pg")
        os.makedirs(base, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(base, "postgres")
            if self._as_pg(["test", "-x", base]).returncode != 0:
                # an ancestor of the results dir is closed to the postgres user
                base = subprocess.run(["mktemp", "-d", "/var/tmp/iotpipe-fault-pg-XXXXXX"], check=True,
                                      capture_output=True, text=True).stdout.strip()
                os.symlink(base, os.path.join(self.work, "pg-cluster"))
                shutil.chown(base, "postgres")
        self.base = base
        self.datadir = os.path.join(base, "data")
        # a short path: a Unix socket address holds at most 107 bytes
        self.sock = subprocess.run(["mktemp", "-d", "/tmp/fm-pgsock-XXXXXX"], check=True,
                                   capture_output=True, text=True).stdout.strip()
        if os.geteuid() == 0:
            shutil.chown(self.sock, "postgres")
        r = self._as_pg([f"{PG_BINDIR}/initdb", "-D", self.datadir, "-U", "postgres", "-E", "UTF8", "--locale=C",
                         "--auth=trust", "--no-instructions"], capture_output=True, text=True)
        if r.returncode != 0:
            raise ScenarioError(f"initdb failed: {r.stderr.strip()}")
        self.start()
        self.sql("CREATE ROLE iotpipe LOGIN SUPERUSER", db="postgres", user="postgres")

    def start(self):
        r = self._as_pg(NICE + [f"{PG_BINDIR}/pg_ctl", "-D", self.datadir, "-l", os.path.join(self.base, "postgres.log"),
                                "-w", "-t", "60", "-o", f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1",
                                "start"], capture_output=True, text=True)
        if r.returncode != 0:
            raise ScenarioError(f"pg_ctl start failed: {r.stdout.strip()} {r.stderr.strip()}")

    def stop(self, mode="immediate"):
        r = self._as_pg([f"{PG_BINDIR}/pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop"],
                        capture_output=True, text=True)
        if r.returncode != 0:
            raise ScenarioError(f"pg_ctl stop failed: {r.stderr.strip()}")

    def sql(self, query, db=None, user="iotpipe", timeout=30):
        r = subprocess.run([f"{PG_BINDIR}/psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", user,
                            "-d", db or self.db, "-AtX", "-v", "ON_ERROR_STOP=1", "-c", query],
                           capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PGCONNECT_TIMEOUT": "2"})
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip())
        return r.stdout

    def drop(self):
        if self.private:
            try:
                self.stop("fast")
            except ScenarioError:
                pass
            shutil.rmtree(self.base, ignore_errors=True)
            shutil.rmtree(self.sock, ignore_errors=True)
        else:
            try:
                self.sql(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)', db="postgres")
            except Exception as e:  # noqa: BLE001
                log(f"could not drop database {self.db}: {e}")


# --------------------------------------------------------------------------
# A scenario's run
# --------------------------------------------------------------------------

class Run:
    """The processes of one scenario, its fault timeline and its reconciliation."""

    def __init__(self, h, name, journal=False, bridges=1, shared=False, max_queued=1_000_000, private_pg=False,
                 tansu_sqlite=False, journal_fs=None, journal_extra="", leave=False):
        self.h, self.name, self.journal = h, name, journal
        self.work = os.path.join(h.results, name)
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        self.run_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.roles, self.sims, self.events, self.fault_ends, self.notes = [], [], [], [], []
        self.fault_starts = []  # (time, what): faults injected, the reference of the alert timings
        self.prom, self.watch = None, None
        self.samples = []  # (t, [count of rows with time <= fault end i])
        self.t0 = time.time()
        self.stop_sampling = False
        self.lock = threading.Lock()
        self.max_queued = max_queued
        self.mqtt = Mosquitto(self.work, h.env, max_queued)
        self.kafka = Tansu(self.work, h.env, sqlite=tansu_sqlite)
        self.pg = Postgres(self.work, h.env, "fm_" + self.run_id.replace("-", "_"), private=private_pg)
        self.group = f"fm-sink-{self.run_id}"
        self.shared = shared
        self.leave = leave
        self.nbridges = bridges
        self.next_seq = 0
        self.journal_extra = journal_extra
        self.journal_root = self.work
        self.small_fs = None
        if journal_fs:
            self.small_fs = SmallFs(os.path.join(self.work, "journal-fs"), journal_fs)
            self.journal_root = self.small_fs.path
        self.sampler = threading.Thread(target=self._sample_loop, daemon=True)

    # ---- configs
    def bridge_config(self, client_id):
        def cfg(port):
            text = f"""[mqtt]
url = "{self.mqtt.url}"
client_id = "{client_id}"
topics = ["mtic/msg/client/realtime/#"]
qos = 1
"""
            if self.shared:
                text += 'shared_group = "iotpipe"\n'
                if self.leave:
                    text += "leave_group_on_shutdown = true\n"
            text += f"""[route]
device_id = "/deviceId"
event_time = "/ts"
[kafka]
brokers = "{self.kafka.brokers}"
partitions = 3
[http]
listen = "127.0.0.1:{port}"
[log]
level = "info"
"""
            if self.journal:
                text += f"""[journal]
path = "{os.path.join(self.journal_root, 'journal-' + client_id)}"
max_size = "1GiB"
{self.journal_extra}"""
            return text
        return cfg

    def sink_config(self, port):
        return f"""[kafka]
brokers = "{self.kafka.brokers}"
consumer = "{SINK_CONSUMER[0]}"
[sink]
topics = ["^iot\\\\..+"]
group_id = "{self.group}"
[sink.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
[store]
url = "{self.pg.url}"
timescaledb = "off"
[http]
listen = "127.0.0.1:{port}"
[log]
level = "info"
"""

    def track(self, role):
        if role not in self.roles:
            self.roles.append(role)

    def event(self, what):
        t = time.time() - self.t0
        self.events.append((round(t, 2), what))
        log(f"  {self.name} +{t:6.1f}s {what}")

    def fault_start(self, what):
        self.event(what + " (fault)")
        with self.lock:
            self.fault_starts.append((time.time(), what))

    def fault_end(self, what):
        self.event(what + " (fault end)")
        with self.lock:
            self.fault_ends.append((time.time(), what))

    # ---- set-up
    def setup(self):
        if self.h.prom_bin:
            try:
                self.prom = promharness.Prometheus(self.work, self.h.prom_bin, self.h.rules, self.h.alert_scale,
                                                   keep=self.h.keep)
                self.prom.start()  # self.prom first: teardown stops a server that did not become ready
            except RuntimeError as e:
                raise ScenarioError(str(e))
        self.mqtt.start()
        self.kafka.start()
        self.bridges = []
        for i in range(self.nbridges):
            cid = f"iotpipe-fm-{chr(ord('a') + i)}"
            r = Role(self, f"bridge-{chr(ord('a') + i)}", "bridge", self.bridge_config(cid))
            r.start(wait_ready=True)
            self.bridges.append(r)
        self.sink = Role(self, "sink", "sink", self.sink_config).start()
        self.sampler.start()
        # Warm-up: creates the topics, lets the sink join its group and create the schema.
        warm = self.publish(50, rate=100, run_suffix="-warmup", track=False)
        warm.wait()
        self.wait_rows(50, timeout=90, what="warm-up rows", run=self.run_id + "-warmup")
        self.event("set up (warm-up stored)")
        if self.prom:
            self.watch = promharness.AlertWatch(self.prom)
            try:
                self.watch.arm(timeout=30)
            except RuntimeError as e:
                raise ScenarioError(str(e))
            self.event("Prometheus: every target up, alert watch armed"
                       + (f" ({len(self.watch.active_at_arm)} alerts still active)" if self.watch.active_at_arm else ""))

    # ---- load
    def publish(self, count, rate, run_suffix="", track=True):
        start = self.next_seq
        self.next_seq += count
        sim = Sim(self, start, count, rate, self.run_id + run_suffix)
        if track:
            self.sims.append(sim)
        return sim

    def published(self):
        seqs = set()
        for s in self.sims:
            seqs.update(range(s.start, s.start + s.count))
        return seqs

    # ---- sampling: peak RSS of every iotpipe process; stored rows over time
    def _sample_loop(self):
        last_pg = 0.0
        while not self.stop_sampling:
            for r in self.roles:
                r.sample()
            for s in self.sims:
                s.sample()
            now = time.time()
            if now - last_pg >= 0.5:
                last_pg = now
                with self.lock:
                    ends = [f for f, _ in self.fault_ends]
                if ends:
                    q = "SELECT " + ", ".join(
                        f"(SELECT count(*) FROM telemetry WHERE time <= to_timestamp({f:.3f}))" for f in ends)
                    try:
                        out = self.pg.sql(q, timeout=5).strip().split("|")
                        self.samples.append((now, [int(x) for x in out]))
                    except Exception:  # noqa: BLE001  (the store may be down: that is a scenario)
                        pass
            time.sleep(0.2)

    def stored_count(self, run=None):
        try:
            return int(self.pg.sql("SELECT count(DISTINCT payload->>'seq') FROM telemetry "
                                   f"WHERE payload->>'run' = '{run or self.run_id}'", timeout=10).strip())
        except Exception:  # noqa: BLE001
            return -1

    def wait_rows(self, n, timeout, what, run=None):
        end = time.time() + timeout
        while time.time() < end:
            if self.stored_count(run) >= n:
                return
            time.sleep(0.5)
        raise ScenarioError(f"{what}: fewer than {n} rows after {timeout}s (logs in {self.work})")

    def settle(self, quiet=None, limit=None):
        """Wait for the simulators, then until every published message is stored
        or the stored count has not moved for `quiet` seconds."""
        quiet = quiet or self.h.quiet
        limit = limit or self.h.drain_limit
        for s in self.sims:
            s.wait()
        target = sum(s.count for s in self.sims)
        end = time.time() + limit
        last, since = -2, time.time()
        while time.time() < end:
            n = self.stored_count()
            if n >= target:
                break
            if n != last:
                last, since = n, time.time()
            elif time.time() - since > quiet:
                self.event(f"stored count stuck at {n} of {target} for {quiet}s")
                break
            time.sleep(0.5)
        time.sleep(1.0)  # one more sink batch window: late duplicates would show up
        self.event(f"settled: {self.stored_count()} rows stored of {target}")

    # ---- reconciliation
    def reconcile(self):
        published = self.published()
        out = self.pg.sql("COPY (SELECT payload->>'seq', payload->>'deviceId', id FROM telemetry "
                          f"WHERE payload->>'run' = '{self.run_id}') TO STDOUT", timeout=120)
        counts, wrong_device = {}, 0
        for line in out.splitlines():
            seq_s, dev, _id = line.split("\t")
            seq = int(seq_s)
            counts[seq] = counts.get(seq, 0) + 1
            if dev != device_of(seq):
                wrong_device += 1
        stored = set(counts)
        lost = published - stored
        per_device = {}
        for seq in lost:
            per_device[device_of(seq)] = per_device.get(device_of(seq), 0) + 1
        rows = sum(counts.values())
        res = {
            "published": len(published),
            "stored_rows": rows,
            "stored_distinct": len(stored & published),
            "lost": len(lost),
            "lost_per_device": per_device,
            "lost_sample": sorted(lost)[:20],
            "duplicate_rows": rows - len(stored),
            "unexpected_rows": len(stored - published),
            "wrong_device": wrong_device,
        }
        return res, lost

    def kafka_counts(self):
        """Every record of the run in the iot.* topics, read from the beginning
        until each partition reports its end twice in a row with no new record."""
        if Consumer is None:
            return {"kafka_error": "confluent-kafka is not installed (FAULT_MATRIX_PYLIB)"}
        c = Consumer({"bootstrap.servers": self.kafka.brokers, "group.id": f"fm-reader-{uuid.uuid4().hex[:8]}",
                      "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": True})
        try:
            md = c.list_topics(timeout=15)
            parts = [(name, p) for name, t in md.topics.items() if name.startswith("iot.") for p in t.partitions]
            c.assign([TopicPartition(n, p, 0) for n, p in parts])
            per_seq, records, end = {}, 0, time.time() + 180
            eof, highs = set(), {}
            while time.time() < end:
                m = c.poll(1.0)
                if m is None:
                    if len(eof) == len(parts):
                        break
                    continue
                key = (m.topic(), m.partition())
                if m.error():
                    if m.error().code() == -191:  # _PARTITION_EOF
                        eof.add(key)
                        highs[key] = m.offset()
                    continue
                eof.discard(key)
                try:
                    v = json.loads(m.value())
                except ValueError:
                    continue
                if v.get("run") == self.run_id:
                    records += 1
                    per_seq[v["seq"]] = per_seq.get(v["seq"], 0) + 1
            if len(eof) < len(parts):
                return {"kafka_error": f"{len(parts) - len(eof)} of {len(parts)} partitions not read to their end"}
            published = self.published()
            missing = sorted(published - set(per_seq))
            return {"kafka_records": records, "kafka_distinct": len(per_seq),
                    "kafka_duplicates": records - len(per_seq), "kafka_missing": len(missing),
                    "kafka_missing_sample": missing[:20], "kafka_partitions": len(parts),
                    "kafka_end_offsets": {f"{n}/{p}": o for (n, p), o in highs.items()}}
        finally:
            c.close()

    def recovery(self):
        """Per fault end F: seconds from F until every message with event time
        <= F that was finally stored was stored (`time` is the payload's "ts")."""
        with self.lock:
            ends = list(self.fault_ends)
        if not ends:
            return []
        final = [int(x) for x in self.pg.sql("SELECT " + ", ".join(
            f"(SELECT count(*) FROM telemetry WHERE time <= to_timestamp({f:.3f}))" for f, _ in ends)).strip().split("|")]
        out = []
        for i, (f, what) in enumerate(ends):
            rec = None
            for t, counts in self.samples:
                if t >= f and len(counts) > i and counts[i] >= final[i]:
                    rec = t - f
                    break
            out.append({"fault": what, "recovered_s": None if rec is None else round(rec, 1)})
        return out

    def peaks(self):
        res = {}
        for r in self.roles:
            res[r.name] = {"peak_kib": r.peak_kib(), "processes": len(r.peaks),
                           "per_pid_kib": {str(k): v for k, v in r.peaks.items()}}
        res["simulate"] = {"peak_kib": max((s.peak for s in self.sims), default=0), "processes": len(self.sims)}
        return res

    def teardown(self):
        self.stop_sampling = True
        if self.watch:
            self.watch.stop()
        if self.prom:
            self.prom.stop()
        for r in self.roles:
            if r.alive():
                try:
                    os.kill(r.proc.pid, signal.SIGCONT)
                except OSError:
                    pass
                try:
                    r.term(timeout=40)
                except ScenarioError as e:
                    self.notes.append(str(e))
        for s in self.sims:
            if s.proc.poll() is None:
                s.proc.kill()
        self.kafka.stop()
        self.mqtt.stop()
        if self.small_fs:
            self.small_fs.unmount()
        if not self.h.keep:
            self.pg.drop()


class SmallFs:
    """A tmpfs of a given size (root only), for a journal that fills its
    filesystem; unmounted at teardown (and at exit, should a scenario die)."""

    def __init__(self, path, size):
        os.makedirs(path, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise ScenarioError(f"mount -t tmpfs -o size={size} {path} failed: {r.stderr.strip()}")
        self.path, self.size, self.mounted = path, size, True

    def unmount(self):
        if self.mounted:
            r = subprocess.run(["umount", self.path], capture_output=True, text=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", self.path], capture_output=True)
            self.mounted = False

    def usage(self):
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_blocks * st.f_frsize


def readyz(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode().strip()
    except OSError as e:
        return 0, str(e)


class Sim:
    """One `iotpipe simulate` process in the background."""

    def __init__(self, run, start, count, rate, run_id):
        self.run, self.start, self.count, self.rate = run, start, count, rate
        self.out = os.path.join(run.work, f"simulate-{start}.log")
        self.peak = 0
        with open(self.out, "w") as f:
            self.proc = subprocess.Popen(
                NICE + [BIN, "simulate", "--broker", run.mqtt.url, "--count", str(count), "--rate", str(rate),
                        "--qos", "1", "--tenants", str(TENANTS), "--projects", str(PROJECTS), "--devices",
                        str(DEVICES), "--run-id", run_id, "--start-seq", str(start),
                        "--timeout", f"{count // max(rate, 1) + 120}s",
                        "--client-id", f"fm-sim-{run.run_id}-{start}"], stdout=f, stderr=f)

    def sample(self):
        if self.proc.poll() is None:
            try:
                self.peak = max(self.peak, status_kib(self.proc.pid, "VmHWM"))
            except OSError:
                pass

    def wait(self):
        rc = self.proc.wait(timeout=960)
        if rc != 0:
            with open(self.out) as f:
                raise ScenarioError(f"simulate (seq {self.start}..) exited {rc}: {f.read().strip()[-400:]}")


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------

def at(run, seconds):
    """Sleep until `seconds` after the start of the load."""
    time.sleep(max(0.0, run.load_t0 + seconds - time.time()))


def load(run, seconds, rate=None):
    rate = rate or run.h.rate
    run.load_t0 = time.time()
    run.event(f"load: {rate * seconds} messages at {rate} msg/s")
    return run.publish(rate * seconds, rate)


def restart_kill(run, role, n, every, offset, pause=1.0):
    for i in range(n):
        at(run, offset + i * every)
        role.kill()
        run.fault_start(f"{role.name} SIGKILL")
        time.sleep(pause)
        role.start()
        run.fault_end(f"{role.name} restarted")


def sc_bridge_kill(run):
    """SIGKILL of the bridge, 3 times during load, restarted each time (journal
    mode only here: the direct-mode bridge's SIGKILLs are
    tests/bridge.rs::sigkill_three_times_loses_nothing)."""
    run.setup()
    d = run.h.dur
    load(run, d)
    restart_kill(run, run.bridges[0], 3, d / 4, d / 4)
    run.settle()


def sc_shared_group(run):
    """Two bridge replicas in one shared-subscription group: rolling restart
    with SIGTERM, then with SIGKILL, then a scale-down from 2 to 1 (and the
    departed member's session drained by starting it once more). The
    scale-down alone, with leave_group_on_shutdown and checked against Kafka,
    is tests/bridge.rs::a_member_leaving_its_shared_group_on_sigterm_strands_nothing;
    here it comes after the rolling restarts and is reconciled in PostgreSQL."""
    run.setup()
    a, b = run.bridges
    d = max(run.h.dur, 30)
    load(run, d)
    step = d / 7
    at(run, step)
    for r in (a, b):
        run.fault_start(f"{r.name} SIGTERM, rolling restart")
        rc = r.term()
        run.event(f"{r.name} exited {rc}")
        r.start()
        run.fault_end(f"{r.name} restarted after SIGTERM")
        time.sleep(step / 2)
    at(run, 3 * step)
    for r in (a, b):
        r.kill()
        run.fault_start(f"{r.name} SIGKILL, rolling restart")
        time.sleep(1.0)
        r.start()
        run.fault_end(f"{r.name} restarted after SIGKILL")
        time.sleep(step / 2)
    at(run, 5 * step)
    run.fault_start("scale-down: bridge-b SIGTERM, not restarted")
    rc = b.term()
    departed = time.time()
    run.event(f"bridge-b exited {rc}")
    run.settle(quiet=15)
    res, lost = run.reconcile()
    after = 0
    if lost:
        # lost messages are not in PostgreSQL: their publish time is estimated from seq;
        # the simulator publishes seq s at about load_t0 + (s - first) / rate
        first = run.sims[0].start
        after = sum(1 for s in lost if run.load_t0 + (s - first) / run.h.rate > departed + 0.5)
    run.extra["scale_down"] = {"lost_before_drain": res["lost"], "published_after_departure_and_lost": after,
                               "mqtt_log": run.mqtt.log_lines("iotpipe-fm-b")[-6:]}
    run.notes.append(f"scale-down 2→1: {res['lost']} messages were not delivered while bridge-b was gone "
                     f"(≈{after} of them published after it left): Mosquitto kept them in bridge-b's persistent session")
    b.start()
    run.fault_end("bridge-b started once more to drain its session")
    run.settle(quiet=15)
    b.term()
    run.event("bridge-b stopped again (drained)")


def sc_mosquitto_restart(run):
    """Mosquitto restarted (SIGTERM, persistence file kept) in the middle of
    the load while it holds a backlog for the bridge: Kafka is stalled, so
    the bridge has mqtt.max_in_flight messages unacked and the rest queue in
    its session. The simulator keeps publishing across the restart (it sends
    its unacknowledged publishes again after reconnecting)."""
    run.setup()
    d = run.h.dur
    load(run, d)
    at(run, run.h.margin)
    run.kafka.stall()
    run.fault_start("tansu SIGSTOP: the bridge cannot deliver, the broker holds the backlog")
    at(run, d / 2)
    run.fault_start("mosquitto SIGTERM (persistence written), load running")
    run.mqtt.stop()
    time.sleep(2.0)
    run.mqtt.start()
    run.fault_end("mosquitto restarted on the same port and persistence file")
    at(run, d / 2 + 4)
    run.kafka.resume()
    run.fault_end("tansu SIGCONT")
    run.settle()


def stall_kafka(run, seconds, settle=True):
    d = seconds + 2 * run.h.margin
    load(run, d)
    at(run, run.h.margin)
    run.kafka.stall()
    run.fault_start(f"tansu SIGSTOP for {seconds}s")
    at(run, run.h.margin + seconds)
    run.kafka.resume()
    run.fault_end("tansu SIGCONT")
    if settle:
        run.settle()


def sc_kafka_stall(run, seconds):
    """Tansu SIGSTOPped under load; the alerts and RSS over the whole pipeline.
    The 20 s direct-mode stall (the bridge holding its acks, in flight bounded,
    /readyz, the stalled gauge) is
    tests/bridge.rs::kafka_stalled_for_20s_loses_nothing_and_applies_backpressure;
    the bridge alone in journal mode with a 60 s outage (every message acked
    into the journal) is
    tests/bridge.rs::journal_mode_rides_out_a_60s_kafka_outage_with_a_1000_message_broker_queue."""
    run.setup()
    stall_kafka(run, seconds)


def sc_pg_outage(run, seconds):
    """PostgreSQL crashes (stop -m immediate) under load through the whole
    pipeline; the alerts. A clean stop (-m fast) of the sink's store, with its
    readiness and freshness/lag gauges, is
    tests/sink.rs::postgres_down_for_20s_loses_nothing_and_resumes."""
    run.setup()
    d = seconds + 2 * run.h.margin
    load(run, d)
    at(run, run.h.margin)
    run.pg.stop("immediate")
    run.fault_start(f"private PostgreSQL stopped (-m immediate) for {seconds}s")
    at(run, run.h.margin + seconds)
    run.pg.start()
    run.fault_end("PostgreSQL started")
    run.settle()


def sc_slow_consumer(run, seconds):
    run.setup()
    d = seconds + 2 * run.h.margin
    load(run, d)
    at(run, run.h.margin)
    run.sink.signal(signal.SIGSTOP)
    run.fault_start(f"sink SIGSTOP for {seconds}s (session.timeout.ms 6000: it leaves the group)")
    at(run, run.h.margin + seconds)
    run.sink.signal(signal.SIGCONT)
    run.fault_end("sink SIGCONT")
    run.settle()


def sc_quiet(run):
    """Steady load, no fault: no alert may go pending."""
    run.setup()
    load(run, run.h.dur)
    run.settle()


def sc_mosquitto_outage(run, seconds):
    """The MQTT broker stopped (SIGTERM, persistence written) for `seconds`,
    then started on the same port and file. The load runs before and after
    the outage (the simulators are not the subject here)."""
    run.setup()
    m = run.h.margin
    load(run, m).wait()
    run.fault_start(f"mosquitto SIGTERM for {seconds}s")
    run.mqtt.stop()
    time.sleep(seconds)
    run.mqtt.start()
    run.fault_end("mosquitto restarted on the same port and persistence file")
    load(run, m)
    run.settle()


def sc_bridge_down(run, seconds):
    """The only bridge SIGKILLed and left down for `seconds` under load (the
    broker keeps the backlog in its session), then started again."""
    run.setup()
    d = seconds + 2 * run.h.margin
    load(run, d)
    b = run.bridges[0]
    at(run, run.h.margin)
    b.kill()
    run.fault_start(f"bridge SIGKILL, down for {seconds}s")
    at(run, run.h.margin + seconds)
    b.start()
    run.fault_end("bridge restarted")
    run.settle()


def sc_kafka_restart(run):
    run.setup()
    d = run.h.dur
    load(run, d)
    at(run, d / 3)
    run.kafka.stop(signal.SIGKILL)
    run.fault_start("tansu (SQLite storage) SIGKILL")
    time.sleep(3.0)
    run.kafka.start()
    run.fault_end("tansu restarted on the same SQLite file")
    run.settle()


def sc_journal_disk_full(run, seconds):
    """Journal mode, the journal on a small tmpfs (far below journal.max_size),
    Kafka stalled long enough for the journal to fill the filesystem. The
    bridge must stop acking MQTT (the backlog stays in Mosquitto, whose queue
    is large here), say so in /metrics, /readyz and its log, stay up, and go
    on once Kafka is back and delivered segments are deleted."""
    run.setup()
    b = run.bridges[0]
    d = seconds + 2 * run.h.margin
    load(run, d)
    at(run, run.h.margin)
    run.kafka.stall()
    run.fault_start(f"tansu SIGSTOP for {seconds}s (journal on a {run.small_fs.size} tmpfs)")
    seen = {"journal_full": False, "readyz": None, "peak_fs_used": 0, "fs_size": run.small_fs.usage()[1],
            "journal_bytes_max": 0}
    end = run.load_t0 + run.h.margin + seconds
    while time.time() < end:
        if not b.alive():
            raise ScenarioError(f"bridge exited during the stall (rc {b.proc.returncode}); see {run.work}/bridge-a.log")
        try:
            m = metrics(b.port)
        except OSError:
            m = ""
        seen["journal_bytes_max"] = max(seen["journal_bytes_max"], int(metric(m, "iotpipe_journal_bytes")))
        seen["peak_fs_used"] = max(seen["peak_fs_used"], run.small_fs.usage()[0])
        if metric(m, "iotpipe_journal_full") == 1 and not seen["journal_full"]:
            seen["journal_full"] = True
            run.event("bridge reports iotpipe_journal_full 1")
            seen["readyz"] = readyz(b.port)
        time.sleep(0.5)
    run.kafka.resume()
    run.fault_end("tansu SIGCONT")
    run.settle()
    if not b.alive():
        raise ScenarioError(f"bridge exited after the stall (rc {b.proc.returncode}); see {run.work}/bridge-a.log")
    seen["journal_full_after"] = metric(metrics(b.port), "iotpipe_journal_full")
    seen["readyz_after"] = readyz(b.port)
    with open(os.path.join(run.work, "bridge-a.log")) as f:
        log_text = f.read()
    seen["log_nearly_full"] = log_text.count("filesystem nearly full")
    seen["log_write_failed"] = log_text.count("Journal write failed")
    seen["bridge_starts"] = b.incarnation
    run.extra["disk_full"] = seen
    run.notes.append(f"journal filesystem {seen['fs_size'] // 1024} KiB, peak {seen['peak_fs_used'] // 1024} KiB used; "
                     f"iotpipe_journal_full seen: {seen['journal_full']}, /readyz then: {seen['readyz']}; "
                     f"after: journal_full {seen['journal_full_after']:.0f}, /readyz {seen['readyz_after']}; "
                     f"log 'nearly full' lines: {seen['log_nearly_full']}, write failures: {seen['log_write_failed']}")
    if not seen["journal_full"]:
        raise ScenarioError("the journal's filesystem did not fill up (no iotpipe_journal_full 1): the fault did not happen")
    if seen["log_write_failed"] or b.incarnation != 1 or seen["journal_full_after"] != 0:
        raise ScenarioError("the bridge did not back off cleanly: " + run.notes[-1])


def sc_combined(run):
    """Journal mode, several faults in one run: bridge SIGKILL, Kafka stalled
    with a sink SIGKILL inside the stall, PostgreSQL down, bridge SIGKILL again."""
    run.setup()
    d = max(run.h.dur, 40)
    load(run, d)
    b, s = run.bridges[0], run.sink
    at(run, d * 0.1)
    b.kill()
    run.fault_start("bridge SIGKILL")
    time.sleep(1)
    b.start()
    run.fault_end("bridge restarted")
    at(run, d * 0.2)
    run.kafka.stall()
    run.fault_start("tansu SIGSTOP")
    at(run, d * 0.3)
    s.kill()
    run.fault_start("sink SIGKILL (Kafka stalled)")
    time.sleep(1)
    s.start()
    at(run, d * 0.45)
    run.kafka.resume()
    run.fault_end("tansu SIGCONT, sink restarted")
    at(run, d * 0.55)
    run.pg.stop("immediate")
    run.fault_start("PostgreSQL stopped")
    at(run, d * 0.7)
    run.pg.start()
    run.fault_end("PostgreSQL started")
    at(run, d * 0.8)
    b.kill()
    run.fault_start("bridge SIGKILL")
    time.sleep(1)
    b.start()
    run.fault_end("bridge restarted")
    run.settle()


class Spec:
    """A scenario. expect_alerts: alert names (or (name, metric) when the
    alert depends on a metric the binary may not export yet: then the
    expectation is reported as not checked) that must go pending after the
    first fault. forbid_alerts: names that must not go pending from the
    moment the watch is armed (after the warm-up), or "*" for every alert."""

    def __init__(self, name, title, fn, short=False, by_design=None, expect_alerts=(), forbid_alerts=(), **opts):
        self.note = opts.pop("note", None)
        self.name, self.title, self.fn, self.short, self.by_design, self.opts = name, title, fn, short, by_design, opts
        self.expect = [(e, None) if isinstance(e, str) else tuple(e) for e in expect_alerts]
        self.forbid = forbid_alerts


# The alerts a scenario's fault is for (the contract with deploy/prometheus/iotpipe.rules.yaml).
KAFKA = "IotpipeKafkaUnreachable"
STALLED = ("IotpipeDeliveryStalled", "iotpipe_delivery_stalled_seconds")
STORE = "IotpipeStoreUnreachable"
MQTT = "IotpipeMqttDisconnected"
PAST_WINDOW = "IotpipeMqttBrokerPastWindow"
# Alerts of another cause than the scenario's fault: a page for the wrong thing.
NOT_KAFKA = (STORE, MQTT)
NOT_STORE = (KAFKA, MQTT)


def past_window_alerts(env):
    """(expected, forbidden) for IotpipeMqttBrokerPastWindow in a direct-mode
    Kafka stall: once Kafka resumes, acks flow behind a full window while the
    broker holds a backlog, and a Mosquitto before 2.0.13 sends past the
    receive maximum (docs/bridge.md). A broker that keeps the window must not
    raise it."""
    if env is None:
        return [], []
    version = benchlib.mosquitto_version(benchlib.mosquitto_bin(env))
    return ([(PAST_WINDOW, "iotpipe_mqtt_past_receive_maximum_total")], []) if version < (2, 0, 13) \
        else ([], [PAST_WINDOW])


def specs(h):
    long_s = 120
    past_expect, past_forbid = past_window_alerts(getattr(h, "env", None))
    past_note = f"by the broker's version: expects {PAST_WINDOW} before Mosquitto 2.0.13, forbids it after"
    out = [
        Spec("quiet", "steady load, no fault: no alert may go pending", sc_quiet, short=True, forbid_alerts="*"),
        # Direct-mode bridge SIGKILL ×3 and sink SIGKILL ×3 are tests/bridge.rs and tests/sink.rs
        # (sigkill_three_times_*): one process, checked exactly, in seconds.
        Spec("bridge-kill-journal", "bridge SIGKILL ×3 during load, journal mode", sc_bridge_kill, journal=True),
        Spec("shared-group", "2 bridges, shared subscription: rolling SIGTERM, rolling SIGKILL, scale-down 2→1",
             sc_shared_group, bridges=2, shared=True),
        Spec("shared-group-leave", "the same with mqtt.leave_group_on_shutdown: members unsubscribe on SIGTERM",
             sc_shared_group, bridges=2, shared=True, leave=True),
        Spec("mosquitto-restart", "Mosquitto restart (SIGTERM, persistence) during load", sc_mosquitto_restart),
        Spec("mosquitto-outage-20s", "MQTT broker stopped 20 s (SIGTERM, persistence), then restarted",
             lambda r: sc_mosquitto_outage(r, 20), expect_alerts=[MQTT], forbid_alerts=[KAFKA, STORE]),
        Spec("bridge-down-20s", "the only bridge SIGKILLed and down 20 s under load, then restarted",
             lambda r: sc_bridge_down(r, 20), expect_alerts=["IotpipeInstanceDown", "IotpipeBridgeDown"],
             forbid_alerts=[KAFKA, STORE]),
        # The 20 s direct-mode Kafka stall with a large broker queue, one bridge checked exactly (acks
        # held, in flight bounded), is tests/bridge.rs
        # (kafka_stalled_for_20s_loses_nothing_and_applies_backpressure); kafka-stall-20s here runs it
        # through the whole pipeline for its alerts, the broker's window after the stall among them.
        Spec(f"kafka-stall-{long_s}s", f"Kafka unreachable {long_s} s (Tansu SIGSTOP), direct mode",
             lambda r: sc_kafka_stall(r, long_s), expect_alerts=[KAFKA, STALLED] + past_expect,
             forbid_alerts=NOT_KAFKA + tuple(past_forbid), note=past_note),
        Spec("kafka-stall-20s", "Kafka unreachable 20 s, direct mode: the broker's backlog drains through the "
             "MQTT window", lambda r: sc_kafka_stall(r, 20), short=True, expect_alerts=[KAFKA, STALLED] + past_expect,
             forbid_alerts=NOT_KAFKA + tuple(past_forbid), note=past_note),
        Spec("kafka-stall-20s-small-queue", "Kafka unreachable 20 s, direct mode, broker max_queued_messages 1000",
             lambda r: sc_kafka_stall(r, 20), max_queued=1000,
             by_design="direct mode: the broker drops what exceeds max_queued_messages; journal mode avoids it"),
        Spec("pg-outage-20s", "PostgreSQL down 20 s (private cluster, stop -m immediate: a crash)",
             lambda r: sc_pg_outage(r, 20), private_pg=True, short=True, expect_alerts=[STORE],
             forbid_alerts=NOT_STORE),
        Spec(f"pg-outage-{long_s}s", f"PostgreSQL down {long_s} s (private cluster, stop -m immediate)",
             lambda r: sc_pg_outage(r, long_s), private_pg=True, expect_alerts=[STORE], forbid_alerts=NOT_STORE),
        Spec("slow-consumer", "sink SIGSTOP 30 s while the bridge keeps producing",
             lambda r: sc_slow_consumer(r, 30), expect_alerts=["IotpipeInstanceDown", "IotpipeSinkDown"],
             forbid_alerts=[KAFKA, STORE, MQTT]),
        Spec("journal-kafka-stall-20s", "journal mode, Kafka stalled 20 s, broker max_queued_messages 1000",
             lambda r: sc_kafka_stall(r, 20), journal=True, max_queued=1000, short=True, expect_alerts=[KAFKA, STALLED],
             forbid_alerts=NOT_KAFKA),
        Spec(f"journal-kafka-stall-{long_s}s", f"journal mode, Kafka stalled {long_s} s, broker max_queued_messages 1000",
             lambda r: sc_kafka_stall(r, long_s), journal=True, max_queued=1000, expect_alerts=[KAFKA, STALLED],
             forbid_alerts=NOT_KAFKA),
        Spec("combined", "journal mode: bridge SIGKILL, Kafka stall + sink SIGKILL, PostgreSQL down, bridge SIGKILL",
             sc_combined, journal=True, private_pg=True),
        Spec("journal-disk-full", "journal mode, journal on a 3 MiB tmpfs, Kafka stalled 30 s: the filesystem fills up",
             lambda r: sc_journal_disk_full(r, 30), journal=True, journal_fs="3m",
             journal_extra='segment_size = "512KiB"\nmax_batch = "128KiB"\n', needs_root=True,
             expect_alerts=[KAFKA, STALLED, "IotpipeJournalFull"], forbid_alerts=NOT_KAFKA),
        Spec("kafka-restart", "Kafka restart (Tansu with SQLite storage, SIGKILL) during load", sc_kafka_restart,
             tansu_sqlite=True),
    ]
    return out


SKIP_LINES = {}


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------

class Harness:
    def __init__(self, args):
        self.short = args.short
        self.keep = bool(os.environ.get("KEEP"))
        self.rate = args.rate
        self.dur = args.duration or (20 if args.short else 40)
        self.margin = 5
        self.quiet = 30
        self.drain_limit = 300
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.results = os.path.abspath(args.results or os.path.join(REPO, "target", "fault-matrix", stamp))
        os.makedirs(self.results, exist_ok=True)
        self.env = services_env("mosquitto", "postgres")
        self.alert_scale = args.alert_time_scale
        self.rules = os.path.abspath(args.alert_rules)
        self.prom_bin, self.prom_skip = (None, "--no-prometheus") if args.no_prometheus else promharness.find_prometheus()


def judge_alerts(run, spec):
    """The alert part of a scenario's verdict: every expected alert went
    pending after the first fault (seconds from the fault injected last
    before it), no forbidden one went pending after the watch was armed."""
    if run.watch is None or run.watch.armed_at is None:
        return None
    w, prom = run.watch, run.prom
    known = set(prom.alert_names)
    acts = w.activations()
    with run.lock:
        faults = list(run.fault_starts)
    first = faults[0][0] if faults else None

    def fault_before(t):
        """The fault injected last before t (activeAt is an evaluation time: allow its rounding)."""
        ref = [f for f, _ in faults if f <= t + 0.5]
        return ref[-1] if ref else first

    res = {"time_scale": run.h.alert_scale, "armed_s": round(w.armed_at - run.t0, 1), "expected": [],
           "problems": [], "active_at_arm": [a.get("labels", {}).get("alertname") for a in w.active_at_arm],
           "poll_errors": w.errors,
           "activations": [{"alert": a["alert"], "labels": a["labels"],
                            "pending_s": round(a["active_at"] - run.t0, 1),
                            "firing_s": None if a["firing_at"] is None else round(a["firing_at"] - run.t0, 1),
                            "last_seen_s": round(a["last_seen"] - run.t0, 1)} for a in acts]}
    for name, needs in spec.expect:
        e = {"alert": name}
        res["expected"].append(e)
        if name not in known:
            e["status"] = "not in the rules"
            res["problems"].append(f"expected alert {name} is not in {prom.rules}")
            continue
        if needs:
            try:
                has = bool(prom.api("query", query=f"count({needs})")["result"])
            except (OSError, RuntimeError):
                has = False
            if not has:
                e["status"] = "not checked"
                e["why"] = f"the binary exports no {needs} yet"
                continue
        mine = [a for a in acts if a["alert"] == name and first is not None and a["active_at"] >= first - 0.5]
        if not mine:
            e["status"] = "never pending"
            res["problems"].append(f"{name} never went pending after the fault")
            continue
        a0 = mine[0]
        e["status"] = "ok"
        e["pending_s"] = round(a0["active_at"] - fault_before(a0["active_at"]), 1)
        fired = [a for a in mine if a["firing_at"] is not None]
        e["firing_s"] = round(fired[0]["firing_at"] - fault_before(fired[0]["active_at"]), 1) if fired else None
    forbidden = known | {a["alert"] for a in acts} if spec.forbid == "*" else set(spec.forbid)
    for a in acts:
        if a["alert"] in forbidden:
            res["problems"].append(f"forbidden alert {a['alert']} pending at +{a['active_at'] - run.t0:.1f}s "
                                   f"({a['labels']}){' and firing' if a['firing_at'] else ''}")
    expected = {n for n, _ in spec.expect}
    res["other"] = sorted({a["alert"] for a in acts if a["alert"] not in expected and a["alert"] not in forbidden})
    return res


def run_spec(h, spec):
    if spec.opts.pop("needs_root", False) and os.geteuid() != 0:
        return {"scenario": spec.name, "title": spec.title, "status": "SKIPPED",
                "reason": "needs root (mounts a small tmpfs for the journal)"}
    if spec.opts.get("tansu_sqlite") and not os.access(TANSU_SQL_BIN, os.X_OK):
        return {"scenario": spec.name, "title": spec.title, "status": "SKIPPED",
                "reason": f"no Tansu with SQLite storage at {TANSU_SQL_BIN}; build it with "
                          "`bash scripts/services.sh tansu-sql` (about 25 minutes)"}
    t0 = time.time()
    log(f"scenario {spec.name}: {spec.title}")
    run = None
    row = {"scenario": spec.name, "title": spec.title, "mode": "journal" if spec.opts.get("journal") else "direct",
           "by_design": spec.by_design, "forbid_all": spec.forbid == "*"}
    try:
        run = Run(h, spec.name, **spec.opts)
        run.extra = {}
        spec.fn(run)
        if run.watch:
            run.watch.stop()
            row["alerts"] = judge_alerts(run, spec)
            if row["alerts"] is not None:
                row["alerts"]["scrapes"] = run.watch.scrape_health()
                row["alerts"]["max_load_1m"] = run.watch.max_load
        res, _ = run.reconcile()
        row.update(res)
        row.update(run.kafka_counts())
        row["recovery"] = run.recovery()
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001
        row["status"] = "ERROR"
        row["error"] = f"{type(e).__name__}: {e}"
        log(f"  {spec.name}: ERROR {row['error']}")
        if run is not None:  # what was stored, for the diagnosis (not a verdict)
            try:
                row["partial"] = run.reconcile()[0]
            except Exception as e2:  # noqa: BLE001
                row["partial"] = f"could not reconcile: {e2}"
    except BaseException:  # interrupted: stop this scenario's processes, then stop
        if run is not None:
            run.teardown()
        raise
    finally:
        if run is not None:
            try:
                run.teardown()
            except Exception as e:  # noqa: BLE001
                row.setdefault("notes", []).append(f"teardown: {e}")
            row["peaks"] = run.peaks()
            row["events"] = run.events
            row.setdefault("notes", []).extend(run.notes)
            dropped = run.mqtt.log_lines("are being dropped")
            if dropped:
                row["notes"].append(f"Mosquitto logged {len(dropped)}× '{dropped[0].split(': ', 1)[-1]}'")
            row["extra"] = getattr(run, "extra", {})
            row["exits"] = {r.name: r.exits for r in run.roles}
            row["work"] = run.work
    row["seconds"] = round(time.time() - t0, 1)
    verdict(row)
    log(f"  {spec.name}: {row['verdict']} in {row['seconds']} s")
    return row


def verdict(row):
    if row["status"] == "SKIPPED":
        row["verdict"] = "SKIPPED"
        row["pass"] = True
        return
    if row["status"] != "ok":
        row["verdict"] = "ERROR"
        row["pass"] = False
        return
    over = [n for n, p in row["peaks"].items() if n != "simulate" and p["peak_kib"] >= RSS_LIMIT_KIB]
    alert_bad = (row.get("alerts") or {}).get("problems", [])
    bad = []
    if row["lost"]:
        bad.append(f"lost {row['lost']}")
    if row["duplicate_rows"]:
        bad.append(f"{row['duplicate_rows']} duplicate rows")
    if row["unexpected_rows"] or row["wrong_device"]:
        bad.append("unexpected rows")
    if over:
        bad.append("over 64 MiB: " + ", ".join(over))
    if "kafka_error" in row:
        bad.append("Kafka not read: " + row["kafka_error"])
    if alert_bad:
        row["verdict"], row["pass"] = "FAIL: " + "; ".join(bad + alert_bad), False
    elif not bad:
        row["verdict"], row["pass"] = "PASS", True
    elif row["by_design"] and row["lost"] and not row["duplicate_rows"] and not over:
        row["verdict"], row["pass"] = f"LOSS BY DESIGN ({row['by_design']})", True
    else:
        row["verdict"], row["pass"] = "FAIL: " + "; ".join(bad), False


def mib(kib):
    return f"{kib / 1024:.1f}"


def alert_cell(r):
    """Alert, seconds from the fault to pending (and to firing)."""
    a = r.get("alerts")
    if not a:
        return "–"
    parts = []
    for e in a["expected"]:
        n = e["alert"].removeprefix("Iotpipe")
        if e["status"] == "ok":
            fire = "not firing" if e["firing_s"] is None else f"firing {e['firing_s']:.1f}"
            parts.append(f"{n} {e['pending_s']:.1f} ({fire})")
        elif e["status"] == "not checked":
            parts.append(f"{n}: not checked ({e['why']})")
        else:
            parts.append(f"{n}: {e['status'].upper()}")
    forb = [p for p in a["problems"] if p.startswith("forbidden")]
    if forb:
        parts.append("FORBIDDEN: " + ", ".join(sorted({p.split()[2].removeprefix('Iotpipe') for p in forb})))
    elif r.get("forbid_all"):
        parts.append("none pending (as required)")
    return "; ".join(parts) or "–"


def table(rows):
    lines = ["| scenario | mode | published | stored | lost | duplicate rows | Kafka duplicates | "
             "longest recovery s | peak RSS bridge / sink MiB | alert: s from fault to pending (firing) | result |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        if r["status"] == "SKIPPED":
            lines.append(f"| {r['scenario']} | – | – | – | – | – | – | – | – | – | SKIPPED: {r['reason']} |")
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['scenario']} | {r['mode']} | – | – | – | – | – | – | – | {alert_cell(r)} | "
                         f"ERROR: {r['error']} |")
            continue
        rec = [x["recovered_s"] for x in r.get("recovery", [])]
        longest = "–" if not rec else ("not recovered" if None in rec else f"{max(rec):.1f}")
        peaks = r["peaks"]
        br = max((p["peak_kib"] for n, p in peaks.items() if n.startswith("bridge")), default=0)
        sk = peaks.get("sink", {}).get("peak_kib", 0)
        kd = r.get("kafka_duplicates")
        kd = "?" if kd is None else f"{kd:,}"
        lines.append(f"| {r['scenario']} | {r['mode']} | {r['published']:,} | {r['stored_distinct']:,} | {r['lost']:,} | "
                     f"{r['duplicate_rows']:,} | {kd} | {longest} | {mib(br)} / {mib(sk)} | {alert_cell(r)} | "
                     f"{r['verdict']} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short", action="store_true", help="the CI subset: a few scenarios, small counts")
    ap.add_argument("--scenario", action="append", help="run only this scenario (repeatable); see --list")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--sink-consumer", choices=["auto", "librdkafka", "native"], default="auto",
                    help="the sink's kafka.consumer (default auto, what ships: the native consumer here)")
    ap.add_argument("--results", help="results directory (default target/fault-matrix/<UTC time>)")
    ap.add_argument("--rate", type=int, default=500, help="messages per second of the load (default 500)")
    ap.add_argument("--duration", type=int, help="seconds of load for the timed scenarios (20 short, 40 full)")
    ap.add_argument("--alert-time-scale", type=float, default=float(os.environ.get("IOTPIPE_ALERT_TIME_SCALE", "0.05")),
                    help="multiply the rules' for:, range and offset durations by this in the test's copy "
                         "(default 0.05, env IOTPIPE_ALERT_TIME_SCALE; 1 = the shipped windows)")
    ap.add_argument("--alert-rules", default=RULES, help="the rule file to scale and load (default: the shipped one)")
    ap.add_argument("--no-prometheus", action="store_true", help="skip the alert checks (no Prometheus)")
    args = ap.parse_args()
    SINK_CONSUMER[0] = args.sink_consumer
    if args.alert_time_scale <= 0:
        sys.exit("error: --alert-time-scale must be above 0")
    if not os.access(BIN, os.X_OK):
        sys.exit(f"error: no iotpipe binary at {BIN}: build it (cargo build --release --bin iotpipe) or set IOTPIPE_BIN")
    if args.list:
        class _H:
            pass
        for s in specs(_H()):
            alerts = "".join(f"\n{'':39}expects {n}" + (f" (needs {m})" if m else "") for n, m in s.expect)
            if s.forbid:
                alerts += f"\n{'':39}forbids " + ("every alert" if s.forbid == "*" else ", ".join(s.forbid))
            if s.note:
                alerts += f"\n{'':39}{s.note}"
            print(f"{s.name:32} {'short ' if s.short else '      '}{s.title}{alerts}")
        for line in SKIP_LINES.values():
            print(line)
        return
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    h = Harness(args)
    all_specs = specs(h)
    if args.scenario:
        known = {s.name for s in all_specs}
        unknown = [n for n in args.scenario if n not in known]
        if unknown:
            sys.exit(f"error: unknown scenario {', '.join(unknown)} (see --list)")
        chosen = [s for s in all_specs if s.name in args.scenario]
    elif args.short:
        chosen = [s for s in all_specs if s.short]
    else:
        chosen = all_specs
    if Consumer is None:
        sys.exit("error: confluent-kafka is not importable (scripts/fault-matrix.sh installs it; "
                 "or set FAULT_MATRIX_PYLIB to a pip --target dir holding it)")
    log(f"iotpipe binary {BIN}; results in {h.results}; {len(chosen)} scenarios, {h.rate} msg/s")
    if h.prom_bin:
        log(f"alerts: {h.prom_bin}, rules {os.path.relpath(h.rules, REPO)} scaled ×{h.alert_scale:g} "
            f"(for: 2m -> {promharness.fmt_duration(120 * h.alert_scale)}), scrape and evaluation every 1 s")
    else:
        print(f"fault-matrix: alert checks SKIPPED: {h.prom_skip}", file=sys.stderr, flush=True)
    t0 = time.time()
    rows = [run_spec(h, s) for s in chosen]
    total = time.time() - t0
    text = table(rows)
    skipped = [] if args.scenario else list(SKIP_LINES.values())
    header = (f"Fault matrix, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{'--short' if args.short else ('--scenario ' + ' '.join(args.scenario) if args.scenario else 'full')}, "
              f"{h.rate} msg/s, {TENANTS}×{PROJECTS}×{DEVICES} devices, "
              + (f"alert time scale {h.alert_scale:g}, " if h.prom_bin else f"alert checks skipped ({h.prom_skip}), ")
              + f"{total / 60:.1f} min in all")
    print()
    print(header)
    print()
    print(text)
    for line in skipped:
        print(line)
    for r in rows:
        for n in r.get("notes", []):
            print(f"note: {r['scenario']}: {n}")
        a = r.get("alerts") or {}
        if a.get("other"):
            print(f"note: {r['scenario']}: other alerts pending (neither expected nor forbidden): "
                  + ", ".join(a["other"]))
        for p in a.get("problems", []):
            print(f"alert: {r['scenario']}: {p}")
        failed = {pod: v for pod, v in (a.get("scrapes") or {}).items() if v.get("failed_scrapes")}
        if failed and a.get("problems"):
            print(f"alert: {r['scenario']}: failed scrapes (1 s timeout) {failed}, load average up to "
                  f"{a.get('max_load_1m', 0):.1f} on {os.cpu_count()} CPUs: a *Down alert with the process "
                  "running means a starved machine, not a dead process")
    with open(os.path.join(h.results, "fault-matrix.md"), "w") as f:
        f.write(header + "\n\n" + text + "\n" + "".join(line + "\n" for line in skipped))
    with open(os.path.join(h.results, "fault-matrix.json"), "w") as f:
        json.dump({"header": header, "seconds": round(total, 1), "binary": BIN, "rate": h.rate,
                   "scenarios": rows, "skipped": skipped}, f, indent=2, default=str)
    print(f"\nresults: {h.results}/fault-matrix.md, fault-matrix.json")
    if not all(r["pass"] for r in rows):
        print("FAILED: " + ", ".join(r["scenario"] for r in rows if not r["pass"]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
