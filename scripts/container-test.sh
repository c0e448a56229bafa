#!/usr/bin/env bash
# Build the image (scripts/image.sh) and run it the way a pod runs it:
# --read-only --user 65532:65532 --memory 64m --network host.
#
#   1. a bridge container and a sink container against the test Mosquitto,
#      Tansu and PostgreSQL (scripts/services.sh): 20,000 messages published,
#      20,000 rows expected, each exactly once;
#   2. `iotpipe demo` from the image: the dashboard page and its API answer,
#      with data from the simulated fleet.
#
# Prints the image size and each container's peak memory as read from its
# memory cgroup (v1 memory.max_usage_in_bytes, v2 memory.peak), and fails if
# anything above does not happen or a container goes over its limit.
#
# Usage: scripts/container-test.sh            (MESSAGES=20000 to change the count)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/containers.sh
. scripts/lib/containers.sh

MESSAGES=${MESSAGES:-20000}
IMAGE=localhost/iotpipe:latest
PREFIX=iotpipe-ctest-$$
log() { printf 'container-test: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

containers_setup
bash scripts/image.sh >&2
size=$(podman "${PODMAN_OPTS[@]}" image inspect "$IMAGE" --format '{{.Size}}')

bash scripts/services.sh up mosquitto tansu postgres >/dev/null
# shellcheck source=/dev/null
. "${IOTPIPE_SERVICES_DIR:-.services}/env.sh"

work=$(mktemp -d)
chmod 755 "$work"
cleanup() {
    local c
    for c in $(podman "${PODMAN_OPTS[@]}" ps -a --format '{{.Names}}' | grep "^$PREFIX-" || true); do
        podman "${PODMAN_OPTS[@]}" rm -f "$c" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

db=ctest_$$
psql "$IOTPIPE_TEST_POSTGRES_URL" -qAtc "CREATE DATABASE $db" >/dev/null
store_url=${IOTPIPE_TEST_POSTGRES_URL%/*}/$db
bridge_http=$(free_port)
sink_http=$(free_port)
group=ctest-$$
topic_prefix=ctest$$

cat >"$work/bridge.toml" <<EOF
[mqtt]
url = "$IOTPIPE_TEST_MQTT_URL"
client_id = "$PREFIX-bridge"
topics = ["$topic_prefix/#"]
qos = 1

[route]
topic_pattern = "$topic_prefix/{tenant_id}/{project_id}"
device_id = "/deviceId"

[kafka]
brokers = "$IOTPIPE_TEST_KAFKA_BROKERS"
topic = "$topic_prefix.{tenant_id}.{project_id}"
dead_letter_topic = "$topic_prefix-dead-letters"

[http]
listen = "127.0.0.1:$bridge_http"
EOF

cat >"$work/sink.toml" <<EOF
[kafka]
brokers = "$IOTPIPE_TEST_KAFKA_BROKERS"

[sink]
topics = ["^$topic_prefix\\\\..+"]
group_id = "$group"
properties = { "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }

[store]
url = "$store_url"

[http]
listen = "127.0.0.1:$sink_http"
EOF
chmod 644 "$work"/*.toml

run_container() { # NAME ARGS...
    local name=$1
    shift
    podman "${PODMAN_OPTS[@]}" run -d --name "$PREFIX-$name" \
        --read-only --user 65532:65532 --memory 64m --memory-swap 64m --network host \
        -v "$work:/config:ro" "$IMAGE" "$@" >/dev/null
}

# Peak memory of a running container, in bytes, from its memory cgroup.
peak_bytes() {
    local pid path f
    pid=$(podman "${PODMAN_OPTS[@]}" inspect "$PREFIX-$1" --format '{{.State.Pid}}')
    [[ $pid != 0 ]] || { echo 0; return; }
    path=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' "/proc/$pid/cgroup")
    for f in "/sys/fs/cgroup/memory$path/memory.max_usage_in_bytes" "/sys/fs/cgroup$(awk -F: '$1 == 0 {print $3}' "/proc/$pid/cgroup")/memory.peak"; do
        [[ -n $path || $f == */memory.peak ]] || continue
        if [[ -r $f ]]; then cat "$f"; return; fi
    done
    echo 0
}

limit_bytes() {
    local pid path
    pid=$(podman "${PODMAN_OPTS[@]}" inspect "$PREFIX-$1" --format '{{.State.Pid}}')
    path=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' "/proc/$pid/cgroup")
    cat "/sys/fs/cgroup/memory$path/memory.limit_in_bytes" 2>/dev/null ||
        cat "/sys/fs/cgroup$(awk -F: '$1 == 0 {print $3}' "/proc/$pid/cgroup")/memory.max"
}

wait_http() { # PORT PATH SECONDS
    local i
    for ((i = 0; i < $3 * 5; i++)); do
        curl -fsS -o /dev/null "http://127.0.0.1:$1$2" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

alive() { [[ $(podman "${PODMAN_OPTS[@]}" inspect "$PREFIX-$1" --format '{{.State.Running}}') == true ]]; }

report_logs() {
    local c
    for c in bridge sink demo; do
        podman "${PODMAN_OPTS[@]}" logs --tail 30 "$PREFIX-$c" 2>/dev/null | sed "s/^/  $c: /" >&2 || true
    done
}

log "bridge and sink containers (read-only, uid 65532, 64 MiB)"
run_container bridge bridge --config /config/bridge.toml
run_container sink sink --config /config/sink.toml
wait_http "$bridge_http" /readyz 30 || { report_logs; die "the bridge container did not get ready"; }
wait_http "$sink_http" /healthz 30 || { report_logs; die "the sink container did not start"; }
[[ $(limit_bytes bridge) == 67108864 ]] || die "the bridge container's memory limit is $(limit_bytes bridge), not 64 MiB"

log "publishing $MESSAGES messages"
start=$(date +%s.%N)
dist/amd64/iotpipe simulate --broker "$IOTPIPE_TEST_MQTT_URL" --count "$MESSAGES" --topic-prefix "$topic_prefix" \
    --tenants 2 --projects 2 --devices 25 --timeout 120s >/dev/null
rows=0
for ((i = 0; i < 600; i++)); do
    rows=$(psql "$store_url" -qAtc "SELECT count(*) FROM telemetry" 2>/dev/null || echo 0)
    ((rows >= MESSAGES)) && break
    alive bridge && alive sink || { report_logs; die "a container exited"; }
    sleep 0.2
done
elapsed=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
distinct=$(psql "$store_url" -qAtc "SELECT count(DISTINCT id) FROM telemetry")
((rows == MESSAGES && distinct == MESSAGES)) || { report_logs; die "$rows rows ($distinct distinct) for $MESSAGES messages"; }
bridge_peak=$(peak_bytes bridge)
sink_peak=$(peak_bytes sink)
alive bridge && alive sink || { report_logs; die "a container exited"; }
log "$rows rows for $MESSAGES messages in ${elapsed}s"

log "iotpipe demo from the image"
demo_http=$(free_port)
demo_mqtt=$(free_port)
run_container demo demo --listen "127.0.0.1:$demo_http" --mqtt-listen "127.0.0.1:$demo_mqtt"
wait_http "$demo_http" / 60 || { report_logs; die "the demo's dashboard did not answer"; }
curl -fsS "http://127.0.0.1:$demo_http/" | grep -qi '<html' || die "the demo's page is not HTML"
seen=0
for ((i = 0; i < 100; i++)); do
    if curl -fsS "http://127.0.0.1:$demo_http/api/tenants" 2>/dev/null | grep -q 'tenant'; then seen=1; break; fi
    sleep 0.3
done
((seen)) || { report_logs; die "the demo's API shows no tenants"; }
sleep 5
demo_peak=$(peak_bytes demo)
alive demo || { report_logs; die "the demo container exited"; }

for c in bridge sink demo; do
    podman "${PODMAN_OPTS[@]}" stop -t 10 "$PREFIX-$c" >/dev/null
    code=$(podman "${PODMAN_OPTS[@]}" inspect "$PREFIX-$c" --format '{{.State.ExitCode}}')
    oom=$(podman "${PODMAN_OPTS[@]}" inspect "$PREFIX-$c" --format '{{.State.OOMKilled}}')
    [[ $oom == false ]] || die "$c was OOM-killed"
    [[ $code == 0 ]] || { report_logs; die "$c exited with $code after SIGTERM"; }
done
psql "$IOTPIPE_TEST_POSTGRES_URL" -qAtc "DROP DATABASE $db" >/dev/null || true

mib() { python3 -c "print(f'{$1 / 1048576:.1f}')"; }
echo "image localhost/iotpipe:latest: $(mib "$size") MiB ($size bytes)"
echo "bridge container: peak $(mib "$bridge_peak") MiB of 64 MiB ($MESSAGES messages)"
echo "sink container:   peak $(mib "$sink_peak") MiB of 64 MiB ($MESSAGES rows in ${elapsed}s end to end)"
echo "demo container:   peak $(mib "$demo_peak") MiB of 64 MiB"
