#!/usr/bin/env python3
"""What the Kafka stand-in of the tests can take with nothing of iotpipe in
the path: a bare idempotent librdkafka producer (confluent-kafka), the
bridge's producer settings (acks=all, enable.idempotence, lz4, linger 20 ms),
COUNT 200-byte messages spread round-robin over N topics of one partition
each, at most WINDOW of them unacknowledged at any time (any order: a freed
slot is refilled at once, where the bridge refills only as the oldest
message is acked, the order MQTT requires for PUBACKs).

Each case runs on a fresh Tansu; the topics are created and each is sent one
message first, so topic creation and metadata are not measured.

librdkafka sends one partition's batch per produce request
(confluentinc/librdkafka#1700), so over many topics with a message or two
each per linger window, messages per second is about produce requests per
second: the broker's cost per request. docs/topology.md compares these
figures with the bridge's (scripts/bench_scale.py) at the same window.

Usage: python3 scripts/bench_kafka_requests.py [--topics 1,10,100,1000] [--windows 1000]
       [--count 20000] [--linger-ms 20]
Needs confluent-kafka, as scripts/fault-matrix.sh installs it (FAULT_MATRIX_PYLIB, default
.services/tools/fault-matrix-python).
"""
import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import REPO, services_env, start_tansu, stop_all  # noqa: E402

PYLIB = os.environ.get("FAULT_MATRIX_PYLIB") or os.path.join(REPO, ".services", "tools", "fault-matrix-python")
sys.path.insert(0, PYLIB)
try:
    from confluent_kafka import KafkaException, Producer  # noqa: E402
    from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
except ImportError:
    sys.exit(f"bench_kafka_requests: confluent-kafka is not in {PYLIB}; `bash scripts/fault-matrix.sh --list` "
             "installs it there (or set FAULT_MATRIX_PYLIB)")

PAYLOAD = b"y" * 200


def create_topics(brokers, names):
    admin = AdminClient({"bootstrap.servers": brokers})
    for i in range(0, len(names), 200):
        for f in admin.create_topics([NewTopic(t, 1, 1) for t in names[i:i + 200]]).values():
            f.result(timeout=60)


def case(brokers, ntopics, window, count, linger_ms):
    names = [f"bench.requests.{i}" for i in range(ntopics)]
    create_topics(brokers, names)
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True, "acks": "all",
                         "linger.ms": linger_ms, "compression.type": "lz4", "batch.num.messages": 10000})
    state = {"outstanding": 0, "errors": 0}

    def done(err, _msg):
        state["outstanding"] -= 1
        if err is not None:
            state["errors"] += 1

    for t in names:  # warm: every topic's metadata and producer state
        state["outstanding"] += 1
        producer.produce(t, PAYLOAD, callback=done)
    producer.flush(120)
    cpu0, t0 = time.process_time(), time.time()
    for i in range(count):
        while state["outstanding"] >= window:
            producer.poll(0.001)
        state["outstanding"] += 1
        producer.produce(names[i % ntopics], PAYLOAD, key=str(i % 2000).encode(), callback=done)
        producer.poll(0)
    left = producer.flush(300)
    wall = time.time() - t0
    return {"topics": ntopics, "window": window, "count": count, "rate": count / wall,
            "cpu_us": (time.process_time() - cpu0) / count * 1e6, "errors": state["errors"], "unflushed": left}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topics", default="1,10,100,1000", help="comma-separated numbers of topics")
    ap.add_argument("--windows", default="1000", help="comma-separated windows (messages unacknowledged at most)")
    ap.add_argument("--count", type=int, default=20_000, help="messages per case")
    ap.add_argument("--linger-ms", type=int, default=20, help="linger.ms (the bridge's kafka.linger default: 20)")
    args = ap.parse_args()
    env = services_env()
    print("| topics | window | msg/s | CPU µs/msg (the whole process: Python and librdkafka's threads) | errors |")
    print("|---|---|---|---|---|")
    failed = False
    for ntopics in (int(t) for t in args.topics.split(",")):
        for window in (int(w) for w in args.windows.split(",")):
            procs = []
            try:
                r = case(start_tansu(env, procs), ntopics, window, args.count, args.linger_ms)
            except KafkaException as e:
                print(f"| {ntopics:,} | {window:,} | failed: {e} | | |", flush=True)
                failed = True
                continue
            finally:
                stop_all(procs)
            failed |= bool(r["errors"] or r["unflushed"])
            print(f"| {ntopics:,} | {window:,} | {r['rate']:,.0f} | {r['cpu_us']:.1f} | "
                  f"{r['errors'] + r['unflushed']} |", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
