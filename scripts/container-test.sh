#!/usr/bin/env bash
# Build the image (scripts/image.sh) and run it the way a pod runs it:
# --read-only --user 65532:65532 --memory 64m --network host.
#
#   1. a bridge container and a sink container against the test Mosquitto,
#      Tansu and PostgreSQL (scripts/services.sh): 20,000 messages published,
#      20,000 rows expected, each exactly once;
#   2. `iotpipe demo` from the image: the dashboard page and its API answer,
#      with data from the simulated fleet;
#   3. the arm64 image of the manifest list under qemu-user-static (Debian's,
#      through binfmt_misc, mounted and enabled here when missing):
#      `iotpipe --version`, `iotpipe check --offline` of `iotpipe config`'s
#      example for bridge, sink and run, and `iotpipe demo` for a few seconds
#      (/healthz, /api/tenants, exit 0 on SIGTERM). Without binfmt_misc (not
#      root, no mount) the same runs as dist/arm64/iotpipe under
#      qemu-aarch64-static, outside a container.
#
# Prints each image's size (both must be under 25 MB) and each container's
# peak memory as read from its memory cgroup (v1 memory.max_usage_in_bytes,
# v2 memory.peak), and fails if anything above does not happen or a container
# goes over its limit.
#
# Usage: scripts/container-test.sh            (MESSAGES=20000 to change the count)
#        IOTPIPE_IMAGE_ARCHES=amd64 scripts/container-test.sh   (no arm64: skips 3)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/containers.sh
. scripts/lib/containers.sh

MESSAGES=${MESSAGES:-20000}
IMAGE=localhost/iotpipe:latest
ARCHES=${IOTPIPE_IMAGE_ARCHES:-amd64,arm64}
MAX_IMAGE_BYTES=25000000
PREFIX=iotpipe-ctest-$$
log() { printf 'container-test: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

containers_setup
bash scripts/image.sh >&2

# The manifest list: exactly one image per architecture built, and the local
# architecture's is what `podman run localhost/iotpipe:latest` runs.
declare -A size digest
while read -r platform d; do
    digest[${platform#linux/}]=$d
done < <(buildah "${BUILDAH_OPTS[@]}" manifest inspect "$IMAGE" | python3 -c '
import json, sys
for m in json.load(sys.stdin)["manifests"]:
    print(m["platform"]["os"] + "/" + m["platform"]["architecture"], m["digest"])')
[[ $(printf '%s\n' "${!digest[@]}" | sort | paste -sd,) == $(tr ',' '\n' <<<"$ARCHES" | sort | paste -sd,) ]] ||
    die "the manifest list $IMAGE has ${!digest[*]}, not $ARCHES"
for arch in ${ARCHES//,/ }; do
    read -r a s < <(podman "${PODMAN_OPTS[@]}" image inspect "${IMAGE%:*}@${digest[$arch]}" --format '{{.Architecture}} {{.Size}}')
    [[ $a == "$arch" ]] || die "the $arch entry of $IMAGE is an $a image"
    ((s < MAX_IMAGE_BYTES)) || die "the $arch image is $s bytes, over $MAX_IMAGE_BYTES"
    size[$arch]=$s
done
[[ $(podman "${PODMAN_OPTS[@]}" image inspect "$IMAGE" --format '{{.Architecture}}') == amd64 ]] ||
    die "$IMAGE does not resolve to the amd64 image here"

bash scripts/services.sh up mosquitto tansu postgres >/dev/null
# shellcheck source=/dev/null
. "${IOTPIPE_SERVICES_DIR:-.services}/env.sh"

work=$(mktemp -d)
chmod 755 "$work"
arm64_pid=
cleanup() {
    local c
    [[ -z $arm64_pid ]] || kill "$arm64_pid" 2>/dev/null || true
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

# Whether the dashboard API on PORT lists a tenant within 30 s.
wait_tenants() { # PORT
    local i
    for ((i = 0; i < 100; i++)); do
        curl -fsS "http://127.0.0.1:$1/api/tenants" 2>/dev/null | grep -q 'tenant' && return 0
        sleep 0.3
    done
    return 1
}

alive() { [[ $(podman "${PODMAN_OPTS[@]}" inspect "$PREFIX-$1" --format '{{.State.Running}}') == true ]]; }

report_logs() {
    local c
    for c in bridge sink demo demo-arm64; do
        podman "${PODMAN_OPTS[@]}" logs --tail 30 "$PREFIX-$c" 2>/dev/null | sed "s/^/  $c: /" >&2 || true
    done
    [[ ! -f $work/demo-arm64.log ]] || tail -30 "$work/demo-arm64.log" | sed 's/^/  demo-arm64: /' >&2
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
wait_tenants "$demo_http" || { report_logs; die "the demo's API shows no tenants"; }
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

# arm64 under qemu-user-static. binfmt_misc makes the kernel hand aarch64 ELF
# files to qemu-aarch64-static; with the F flag (Debian's registration has
# it) that works inside a container's root too.
qemu_install() {
    local -a pkgs=()
    command -v qemu-aarch64-static >/dev/null || pkgs+=(qemu-user-static)
    command -v update-binfmts >/dev/null || pkgs+=(binfmt-support)
    ((${#pkgs[@]})) || return 0
    ((EUID == 0)) || die "missing Debian packages: ${pkgs[*]}; install them as root"
    log "apt-get install ${pkgs[*]}"
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then apt-get update -qq >&2; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${pkgs[@]}" >&2
}

# 0 when aarch64 binaries run through binfmt_misc (mounted and enabled here
# when missing, as root), 1 when that cannot be set up.
binfmt_setup() {
    local b=/proc/sys/fs/binfmt_misc
    [[ -e $b/register ]] || mount binfmt_misc -t binfmt_misc "$b" 2>/dev/null || return 1
    grep -qx enabled "$b/qemu-aarch64" 2>/dev/null || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    grep -qx enabled "$b/qemu-aarch64" 2>/dev/null && grep -q '^flags:.*F' "$b/qemu-aarch64"
}

arm64_report=
if [[ ,$ARCHES, == *,arm64,* ]]; then
    arm64_start=$SECONDS
    arm64_image=${IMAGE%:*}@${digest[arm64]}
    demo_http=$(free_port)
    demo_mqtt=$(free_port)
    qemu_install
    # IOTPIPE_ARM64_QEMU=binary: the binary under qemu-aarch64-static, no container.
    if [[ ${IOTPIPE_ARM64_QEMU:-image} != binary ]] && binfmt_setup; then
        log "arm64: $arm64_image in podman under qemu-user-static (binfmt_misc)"
        a64() { # ARGS...: the arm64 image, run like the others
            podman "${PODMAN_OPTS[@]}" run --rm --arch arm64 --pull never \
                --read-only --user 65532:65532 --memory 64m --memory-swap 64m --network host \
                -v "$work:/config:ro" "$arm64_image" "$@"
        }
        conf=/config
        a64_demo() { # sets pid
            podman "${PODMAN_OPTS[@]}" run -d --name "$PREFIX-demo-arm64" --arch arm64 --pull never \
                --read-only --user 65532:65532 --memory 64m --memory-swap 64m --network host \
                "$arm64_image" demo --listen "127.0.0.1:$demo_http" --mqtt-listen "127.0.0.1:$demo_mqtt" >/dev/null
            pid=$(podman "${PODMAN_OPTS[@]}" inspect "$PREFIX-demo-arm64" --format '{{.State.Pid}}')
        }
        a64_alive() { alive demo-arm64; }
        a64_stop() { # SIGTERM; sets code
            podman "${PODMAN_OPTS[@]}" stop -t 10 "$PREFIX-demo-arm64" >/dev/null
            [[ $(podman "${PODMAN_OPTS[@]}" inspect "$PREFIX-demo-arm64" --format '{{.State.OOMKilled}}') == false ]] ||
                die "arm64: the demo was OOM-killed"
            code=$(podman "${PODMAN_OPTS[@]}" inspect "$PREFIX-demo-arm64" --format '{{.State.ExitCode}}')
        }
        arm64_how="image $arm64_image, podman, binfmt_misc"
    else
        command -v qemu-aarch64-static >/dev/null || die "no qemu-aarch64-static"
        [[ ${IOTPIPE_ARM64_QEMU:-image} == binary ]] || log "arm64: binfmt_misc cannot be set up here"
        log "arm64: dist/arm64/iotpipe under qemu-aarch64-static, outside a container"
        a64() { qemu-aarch64-static dist/arm64/iotpipe "$@"; }
        conf=$work
        a64_demo() {
            qemu-aarch64-static dist/arm64/iotpipe demo --listen "127.0.0.1:$demo_http" --mqtt-listen "127.0.0.1:$demo_mqtt" \
                >"$work/demo-arm64.log" 2>&1 &
            arm64_pid=$!
            pid=$arm64_pid
        }
        a64_alive() { kill -0 "$arm64_pid" 2>/dev/null; }
        a64_stop() {
            local i
            kill -TERM "$arm64_pid"
            for ((i = 0; i < 50; i++)); do a64_alive || break; sleep 0.2; done
            ! a64_alive || die "arm64: the demo did not exit within 10 s of SIGTERM"
            code=0
            wait "$arm64_pid" || code=$?
            arm64_pid=
        }
        arm64_how="binary dist/arm64/iotpipe, qemu-aarch64-static"
    fi

    got=$(a64 --version) || die "arm64: iotpipe --version failed"
    [[ $got == "iotpipe $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ]] || die "arm64: --version printed '$got'"
    a64 config >"$work/example.toml" || die "arm64: iotpipe config failed"
    chmod 644 "$work/example.toml"
    for c in bridge sink run; do
        a64 check --offline --command "$c" --config "$conf/example.toml" >&2 ||
            die "arm64: iotpipe check --offline --command $c of the example config failed"
    done

    demo_start=$(date +%s.%N)
    a64_demo
    wait_http "$demo_http" /healthz 90 || { report_logs; die "arm64: the demo's /healthz did not answer"; }
    healthz_s=$(python3 -c "import time; print(f'{time.time() - $demo_start:.1f}')")
    [[ $(readlink "/proc/$pid/exe") == *qemu-aarch64* ]] || die "arm64: the demo runs $(readlink "/proc/$pid/exe"), not qemu-aarch64"
    wait_tenants "$demo_http" || { report_logs; die "arm64: the demo's API shows no tenants"; }
    sleep 3
    a64_alive || { report_logs; die "arm64: the demo exited"; }
    arm64_peak=0
    [[ $arm64_how != image* ]] || arm64_peak=$(peak_bytes demo-arm64)
    a64_stop
    [[ $code == 0 ]] || { report_logs; die "arm64: the demo exited with $code after SIGTERM"; }
    arm64_report="arm64 under qemu ($arm64_how): --version, check --offline (bridge, sink, run), demo (/healthz after ${healthz_s}s, tenants, exit 0 on SIGTERM), $((SECONDS - arm64_start))s in all"
    ((arm64_peak == 0)) || arm64_report+="; peak $(python3 -c "print(f'{$arm64_peak / 1048576:.1f}')") MiB of 64 MiB with qemu"
    log "arm64: done"
else
    log "arm64 not built (IOTPIPE_IMAGE_ARCHES=$ARCHES): no qemu test"
fi

mib() { python3 -c "print(f'{$1 / 1048576:.1f}')"; }
for arch in ${ARCHES//,/ }; do
    echo "image localhost/iotpipe:latest linux/$arch: $(mib "${size[$arch]}") MiB (${size[$arch]} bytes)"
done
echo "bridge container: peak $(mib "$bridge_peak") MiB of 64 MiB ($MESSAGES messages)"
echo "sink container:   peak $(mib "$sink_peak") MiB of 64 MiB ($MESSAGES rows in ${elapsed}s end to end)"
echo "demo container:   peak $(mib "$demo_peak") MiB of 64 MiB"
[[ -z $arm64_report ]] || echo "$arm64_report"
