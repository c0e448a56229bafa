//! `iotpipe bridge` with `kafka.producer = "native"` against real Mosquitto
//! and Tansu; what it writes is read back with librdkafka's consumer.

mod common;

use common::eventually;
use common::kafka::{assert_routed, read_until_complete, topics, Record, Tansu};
use common::mqtt::{spawn_publish, Mosquitto};
use common::process::{bridge_config, Iotpipe};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The test bridge config with the native producer and `compression`.
fn native_config(mqtt_url: &str, brokers: &str, client_id: &str, compression: &str) -> String {
    let cfg = bridge_config(mqtt_url, brokers, client_id, "").replace(
        "partitions = 3\n",
        &format!("partitions = 3\nproducer = \"native\"\ncompression = \"{compression}\"\n"),
    );
    assert!(cfg.contains("producer = \"native\""), "the test config selects the native producer");
    cfg
}

/// Seq numbers missing from `records`, and how many extra copies there were.
fn missing_and_duplicates(records: &[Record], n: u64) -> (Vec<u64>, u64) {
    let mut count: HashMap<u64, u64> = HashMap::new();
    for r in records {
        *count.entry(r.seq().unwrap_or(u64::MAX)).or_default() += 1;
    }
    let missing = (0..n).filter(|s| !count.contains_key(s)).collect();
    (missing, count.values().map(|c| c - 1).sum())
}

#[test]
fn every_compression_is_read_back_by_librdkafka_with_keys_headers_and_unchanged_bytes() {
    let mqtt = Mosquitto::start(100_000);
    let kafka = Tansu::start();
    let mut sent = 0u64;
    for (i, compression) in ["lz4", "zstd", "none"].into_iter().enumerate() {
        const N: u64 = 6_000;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = native_config(&mqtt.url(), &kafka.brokers(), &format!("native-{compression}"), compression);
        let bridge = Iotpipe::bridge(dir.path(), &cfg);
        eventually(Duration::from_secs(20), "bridge ready", || bridge.get("/readyz").0 == 200);
        let range = sent..sent + N;
        spawn_publish(mqtt.url(), range.clone(), None).join().expect("publisher");
        sent += N;
        eventually(Duration::from_secs(60), "all delivered", || {
            bridge.metric("iotpipe_messages_delivered_total") == N as f64
        });
        assert_eq!(bridge.metric("iotpipe_messages_in_flight"), 0.0);
        assert_eq!(bridge.metric("iotpipe_mqtt_acks_sent_total"), N as f64);
        assert_eq!(bridge.metric("iotpipe_messages_dead_lettered_total"), 0.0, "{compression}");
        println!("{compression}: bridge {} delivered", i + 1);
    }
    let records = read_until_complete(&kafka.brokers(), sent, Duration::from_secs(90));
    let (missing, dups) = missing_and_duplicates(&records, sent);
    assert!(missing.is_empty(), "{} messages missing, e.g. {:?}", missing.len(), &missing[..missing.len().min(10)]);
    assert_eq!(dups, 0, "no fault, so no duplicates");
    assert_routed(&records);
    assert_eq!(topics(&kafka.brokers(), "iot.").len(), 6, "3 tenants x 2 projects");
}

#[test]
fn sigkill_three_times_loses_nothing() {
    const N: u64 = 20_000;
    let mqtt = Mosquitto::start(100_000);
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bridge = Iotpipe::bridge(dir.path(), &native_config(&mqtt.url(), &kafka.brokers(), "native-kill", "lz4"));
    eventually(Duration::from_secs(20), "bridge ready", || bridge.get("/readyz").0 == 200);
    let publisher = spawn_publish(mqtt.url(), 0..N, Some(2_000));
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(2_500));
        bridge.kill9();
        std::thread::sleep(Duration::from_millis(300));
        bridge.restart();
    }
    publisher.join().expect("publisher");
    let records = read_until_complete(&kafka.brokers(), N, Duration::from_secs(120));
    let (missing, dups) = missing_and_duplicates(&records, N);
    println!("native, sigkill x3: {} records for {N} messages, {dups} duplicates", records.len());
    assert!(missing.is_empty(), "{} messages lost, e.g. {:?}", missing.len(), &missing[..missing.len().min(10)]);
    assert_routed(&records);
}

/// Kafka stalled 20 s: the native producer keeps what it was handed (at most
/// the MQTT window), acks nothing meanwhile, and delivers all of it after.
#[test]
fn kafka_stalled_for_20s_loses_nothing() {
    const N: u64 = 10_000;
    let mqtt = Mosquitto::start(100_000);
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let bridge = Iotpipe::bridge(dir.path(), &native_config(&mqtt.url(), &kafka.brokers(), "native-stall", "lz4"));
    eventually(Duration::from_secs(20), "bridge ready", || bridge.get("/readyz").0 == 200);
    let publisher = spawn_publish(mqtt.url(), 0..N, Some(500));
    std::thread::sleep(Duration::from_secs(3));
    kafka.pause();
    let stalled_at = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let acks_before = bridge.metric("iotpipe_mqtt_acks_sent_total");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(acks_before, bridge.metric("iotpipe_mqtt_acks_sent_total"), "no acks while Kafka is stalled");
    let in_flight = bridge.metric("iotpipe_messages_in_flight");
    assert!(in_flight > 0.0 && in_flight <= 1001.0, "in flight bounded by max_in_flight: {in_flight}");
    std::thread::sleep(Duration::from_secs(20).saturating_sub(stalled_at.elapsed()));
    kafka.resume();
    publisher.join().expect("publisher");
    let records = read_until_complete(&kafka.brokers(), N, Duration::from_secs(120));
    let (missing, dups) = missing_and_duplicates(&records, N);
    println!("native, kafka stall: {} records, {dups} duplicates", records.len());
    assert!(missing.is_empty(), "{} messages lost", missing.len());
    eventually(Duration::from_secs(20), "all acked", || bridge.metric("iotpipe_messages_in_flight") == 0.0);
    assert_eq!(bridge.metric("iotpipe_mqtt_reconnects_total"), 0.0, "the MQTT connection lasted through the stall");
}
