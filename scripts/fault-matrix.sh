#!/usr/bin/env bash
# Fault matrix: nothing lost, nothing stored twice (RELIABILITY.md).
#
#   scripts/fault-matrix.sh [--short] [--scenario NAME ...] [--results DIR] [--list]
#                           [--alert-time-scale 0.05] [--no-prometheus]
#
# Starts the test services (scripts/services.sh: Mosquitto, Tansu and
# PostgreSQL; each scenario also starts its own private Mosquitto and Tansu),
# builds the release binary unless IOTPIPE_BIN names one, installs
# confluent-kafka (to read Kafka back) into a private pip --target dir,
# installs Debian's prometheus if it is missing (each scenario runs a private
# server with a scaled copy of deploy/prometheus/iotpipe.rules.yaml; without
# it the alert checks are skipped with one line), and runs
# scripts/fault_matrix.py. Exit status 1 if any scenario lost or duplicated a
# message, an iotpipe process went above 64 MiB, an expected alert never went
# pending or a forbidden one did.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export IOTPIPE_SERVICES_DIR=${IOTPIPE_SERVICES_DIR:-$REPO/.services}

# Prometheus (Debian package) for the alert checks: installed only when missing,
# its own system service kept from starting (the matrix runs private servers).
if [[ " $* " != *" --no-prometheus "* && " $* " != *" --list "* && -z ${IOTPIPE_PROMETHEUS_BIN:-} ]] &&
    ! command -v prometheus >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "fault-matrix: apt-get install -y prometheus (for the alert checks)" >&2
        policy=/usr/sbin/policy-rc.d made_policy=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
        fi
        { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
            prometheus >/dev/null 2>&1 ||
            { DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1 &&
                DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
                    --no-install-recommends prometheus >/dev/null 2>&1; }; } || true
        ((made_policy == 0)) || rm -f "$policy"
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
            systemctl disable --now prometheus >/dev/null 2>&1 || true
        fi
    fi
    # Not installed: scripts/fault_matrix.py says "alert checks SKIPPED" and how to enable them.
fi

bash scripts/services.sh up mosquitto tansu postgres >/dev/null

if [[ -z ${IOTPIPE_BIN:-} ]]; then
    nice -n 10 cargo build --release --locked --quiet --bin iotpipe
    export IOTPIPE_BIN=$REPO/target/release/iotpipe
fi
[[ -x $IOTPIPE_BIN ]] || { echo "fault-matrix: error: IOTPIPE_BIN=$IOTPIPE_BIN is not executable" >&2; exit 1; }

CONFLUENT_KAFKA_VERSION=2.16.1
export FAULT_MATRIX_PYLIB=${FAULT_MATRIX_PYLIB:-$IOTPIPE_SERVICES_DIR/tools/fault-matrix-python}
if ! PYTHONPATH=$FAULT_MATRIX_PYLIB python3 -c "import confluent_kafka" 2>/dev/null; then
    echo "fault-matrix: pip install confluent-kafka==$CONFLUENT_KAFKA_VERSION into $FAULT_MATRIX_PYLIB" >&2
    python3 -m pip --version >/dev/null 2>&1 ||
        { echo "fault-matrix: error: python3 -m pip is missing (apt-get install python3-pip)" >&2; exit 1; }
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check --no-input \
        --upgrade --target "$FAULT_MATRIX_PYLIB" "confluent-kafka==$CONFLUENT_KAFKA_VERSION" >&2
fi

exec python3 scripts/fault_matrix.py "$@"
