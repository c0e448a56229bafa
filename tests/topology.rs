//! The two Kafka topologies (docs/topology.md) against real Mosquitto, Tansu
//! and PostgreSQL: the shared default topic keeps per-device order, and a
//! switch from a topic per pair to the shared topic, with one sink reading
//! both layouts throughout, stores every message exactly once.

mod common;

use common::eventually;
use common::kafka::{read_until_complete, topics, Tansu};
use common::mqtt::{spawn_publish, Mosquitto};
use common::postgres::{count, Server};
use common::process::{bridge_config, Iotpipe};
use common::store::fresh_name;
use std::collections::HashMap;
use std::time::Duration;

/// The test bridge config with `topic` as the Kafka topic template.
fn bridge_with_topic(mqtt: &str, brokers: &str, client_id: &str, topic: &str) -> String {
    let cfg = bridge_config(mqtt, brokers, client_id, "");
    let per_pair = "topic = \"iot.{tenant_id}.{project_id}\"";
    assert!(cfg.contains(per_pair), "the test bridge config names its topic template");
    cfg.replace(per_pair, &format!("topic = \"{topic}\""))
}

#[test]
fn the_shared_topic_keeps_each_devices_order_within_its_partition() {
    const N: u64 = 6_000;
    let mqtt = Mosquitto::start(100_000);
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let bridge =
        Iotpipe::bridge(dir.path(), &bridge_with_topic(&mqtt.url(), &kafka.brokers(), "topo-shared", "iot.telemetry"));
    eventually(Duration::from_secs(20), "bridge ready", || bridge.get("/readyz").0 == 200);
    spawn_publish(mqtt.url(), 0..N, None).join().unwrap();
    let records = read_until_complete(&kafka.brokers(), N, Duration::from_secs(90));
    assert_eq!(records.len() as u64, N, "every message once");
    assert_eq!(topics(&kafka.brokers(), "iot."), vec!["iot.telemetry".to_string()], "one topic for every pair");
    // Records of one key come back in publish order (one key, one partition).
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut keys = std::collections::HashSet::new();
    for r in &records {
        let key = r.key.clone().expect("keyed by tenant/project/device");
        let seq = r.seq().expect("seq");
        if let Some(prev) = last.insert(key.clone(), seq) {
            assert!(prev < seq, "device {key}: seq {seq} after {prev}");
        }
        keys.insert(key);
    }
    assert!(keys.len() > 6, "keys name devices, not only pairs");
}

#[test]
fn switching_from_per_pair_topics_to_the_shared_topic_stores_every_message_once() {
    const N: u64 = 8_000;
    let mqtt = Mosquitto::start(100_000);
    let kafka = Tansu::start();
    let url = Server::shared().url(&fresh_name("topology_switch"));
    let dir = tempfile::tempdir().unwrap();

    // One sink with the default subscription (`^iot\..+`) reads both layouts.
    let sink = Iotpipe::sink(
        dir.path(),
        &format!(
            "[kafka]\nbrokers = \"{}\"\n[sink]\ngroup_id = \"topology-switch\"\nbatch_max_wait = \"200ms\"\n\
             properties = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\" }}\n\
             [store]\nurl = \"{url}\"\n[http]\nlisten = \"{{HTTP}}\"\n",
            kafka.brokers()
        ),
    );
    eventually(Duration::from_secs(30), "sink ready", || sink.get("/readyz").0 == 200);

    // The old layout: a topic per pair.
    let old = bridge_config(&mqtt.url(), &kafka.brokers(), "topo-switch", "");
    let mut bridge = Iotpipe::bridge(dir.path(), &old);
    eventually(Duration::from_secs(20), "bridge ready", || bridge.get("/readyz").0 == 200);
    // Messages keep coming during the switch; the broker holds them while
    // no bridge is connected (same client id, persistent session).
    let publisher = spawn_publish(mqtt.url(), 0..N, Some(2_000));
    eventually(Duration::from_secs(30), "some messages on per-pair topics", || {
        bridge.metric("iotpipe_messages_delivered_total") >= 2_000.0
    });
    let (code, _) = bridge.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "the per-pair bridge drains and exits");
    let new = bridge_with_topic(&mqtt.url(), &kafka.brokers(), "topo-switch", "iot.telemetry");
    let bridge = Iotpipe::bridge(dir.path(), &new);
    publisher.join().unwrap();

    eventually(Duration::from_secs(120), "every message stored", || {
        count(&url, "SELECT count(*) FROM telemetry") >= N as i64
    });
    let names = topics(&kafka.brokers(), "iot.");
    assert!(names.iter().any(|t| t == "iot.telemetry"), "the shared topic was written: {names:?}");
    assert!(names.iter().filter(|t| *t != "iot.telemetry").count() >= 2, "per-pair topics were written: {names:?}");
    assert!(bridge.metric("iotpipe_messages_delivered_total") > 0.0, "the new bridge delivered");
    // Nothing twice: one row per message, whatever topic it came through.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&url, "SELECT count(*) FROM telemetry"), N as i64);
    assert_eq!(count(&url, "SELECT count(DISTINCT payload->>'seq') FROM telemetry"), N as i64);
}
