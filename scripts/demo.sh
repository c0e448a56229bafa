#!/usr/bin/env bash
# Until `iotpipe demo` exists: the bridge against local services with the
# simulator. Installs and starts Mosquitto and Tansu on free loopback ports,
# builds iotpipe, runs the bridge, publishes simulated telemetry and shows the
# bridge's metrics. Ctrl-C stops the bridge (services keep running; stop them
# with `bash scripts/services.sh down`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh up mosquitto tansu >/dev/null
# shellcheck disable=SC1091
. .services/env.sh
cargo build --release --quiet
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export IOTPIPE_MQTT__URL="$IOTPIPE_TEST_MQTT_URL" IOTPIPE_KAFKA__BROKERS="$IOTPIPE_TEST_KAFKA_BROKERS"
export IOTPIPE_MQTT__CLIENT_ID=iotpipe-demo IOTPIPE_HTTP__LISTEN="127.0.0.1:$port"
export IOTPIPE_ROUTE__DEVICE_ID=/deviceId IOTPIPE_ROUTE__EVENT_TIME=/ts IOTPIPE_HTTP__PER_TENANT_METRICS=true
./target/release/iotpipe bridge &
bridge=$!
trap 'kill $bridge 2>/dev/null; wait $bridge 2>/dev/null' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
echo "bridge: MQTT $IOTPIPE_TEST_MQTT_URL -> Kafka $IOTPIPE_TEST_KAFKA_BROKERS, metrics http://127.0.0.1:$port/metrics"
./target/release/iotpipe simulate --broker "$IOTPIPE_TEST_MQTT_URL" --count 20000 --rate 2000 --payload-size 200
sleep 1
curl -fs "http://127.0.0.1:$port/metrics" | grep -E '^iotpipe_(messages|tenant)' || true
echo "publish your own: mosquitto_pub -p ${IOTPIPE_TEST_MQTT_URL##*:} -q 1 -t mtic/msg/client/realtime/acme/site-1 -m '{\"deviceId\":\"d1\",\"ts\":$(date +%s%3N),\"temperature\":21.5}'"
echo "bridge running; Ctrl-C to stop"
wait $bridge
