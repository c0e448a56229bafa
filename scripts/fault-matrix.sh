#!/usr/bin/env bash
# Fault matrix: nothing lost, nothing stored twice (RELIABILITY.md).
#
#   scripts/fault-matrix.sh [--short] [--scenario NAME ...] [--results DIR] [--list]
#
# Starts the test services (scripts/services.sh: Mosquitto, Tansu and
# PostgreSQL; each scenario also starts its own private Mosquitto and Tansu),
# builds the release binary unless IOTPIPE_BIN names one, installs
# confluent-kafka (to read Kafka back) into a private pip --target dir, and
# runs scripts/fault_matrix.py. Exit status 1 if any scenario lost or
# duplicated a message or an iotpipe process went above 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export IOTPIPE_SERVICES_DIR=${IOTPIPE_SERVICES_DIR:-$REPO/.services}

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
