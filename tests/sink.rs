//! `iotpipe sink` against real Tansu and PostgreSQL (and InfluxDB).

mod common;

use common::eventually;
use common::kafka::{bridge_record, produce, Tansu};
use common::mqtt::{DEVICES, PROJECTS, TENANTS};
use common::postgres::{count, query, PrivatePostgres, Server};
use common::process::{sink_config, Iotpipe, SinkConfig};
use common::store::fresh_name;
use std::time::Duration;

/// The sink config of these tests: batches of up to 2,000 rows, 3 days of
/// retention (the records' event times span the last two days).
fn config(brokers: &str, store_url: &str, group: &str) -> SinkConfig {
    sink_config(brokers, group).sink_key("batch_max_rows", "2000").store(store_url).store_key("retention", "\"3d\"")
}

fn wait_ready(sink: &Iotpipe) {
    eventually(Duration::from_secs(30), "sink ready", || sink.get("/readyz").0 == 200);
}

#[test]
fn stores_50000_records_exactly_once_even_when_replayed() {
    const N: u64 = 50_000;
    let kafka = Tansu::start();
    let url = Server::shared().url(&fresh_name("sink_once"));
    produce(&kafka.brokers(), (0..N).map(bridge_record));
    let dir = tempfile::tempdir().unwrap();
    let sink = Iotpipe::sink(dir.path(), &config(&kafka.brokers(), &url, "sink-once").toml());
    wait_ready(&sink);
    eventually(Duration::from_secs(120), "50,000 rows", || count(&url, "SELECT count(*) FROM telemetry") == N as i64);
    // Every committed row's latency since the bridge received it.
    eventually(Duration::from_secs(10), "end-to-end latency observed", || {
        sink.metric("iotpipe_sink_end_to_end_seconds_count") == N as f64
    });

    // Correct tenant/project/device and byte-identical payloads.
    for seq in [0, 1, 59, 120, 4_999, 49_999] {
        let (_, _, payload, headers) = bridge_record(seq);
        let id = &headers.iter().find(|(k, _)| *k == "id").unwrap().1;
        let row = query(&url, &format!("SELECT tenant_id || '|' || project_id || '|' || device_id || '|' || encode(raw, 'hex') FROM telemetry WHERE id = '{id}'")).unwrap();
        let want: Vec<&str> = ["tenant_id", "project_id", "device_id"]
            .iter()
            .map(|k| headers.iter().find(|(h, _)| h == k).unwrap().1.as_str())
            .collect();
        let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(row, format!("{}|{}|{}|{hex}", want[0], want[1], want[2]), "row of seq {seq}");
    }
    assert_eq!(count(&url, "SELECT count(DISTINCT (tenant_id, project_id)) FROM telemetry"), 6);

    // A replay of every record adds nothing.
    produce(&kafka.brokers(), (0..N).map(bridge_record));
    eventually(Duration::from_secs(120), "replay consumed", || {
        sink.metric("iotpipe_sink_records_consumed_total") >= (2 * N) as f64
    });
    eventually(Duration::from_secs(30), "duplicates counted", || {
        sink.metric("iotpipe_sink_rows_duplicate_total") == N as f64
    });
    assert_eq!(count(&url, "SELECT count(*) FROM telemetry"), N as i64);
    assert_eq!(sink.metric("iotpipe_sink_rows_written_total"), N as f64);
}

/// Records arriving in small bursts while the sink runs: a batch is often
/// half-collected when the previous write commits. None may be skipped.
#[test]
fn records_trickling_in_are_all_stored() {
    const N: u64 = 6_000;
    const CHUNK: u64 = 100;
    // One record of every tenant/project pair (one topic each).
    const EVERY_PAIR: u64 = TENANTS * PROJECTS * DEVICES;
    let kafka = Tansu::start();
    let url = Server::shared().url(&fresh_name("sink_trickle"));
    // Every topic exists before the sink subscribes: a topic appearing later
    // would rebalance the group while batches are in flight, and those
    // records would be read again (stored once, but not read once).
    produce(&kafka.brokers(), (0..EVERY_PAIR).map(bridge_record));
    let dir = tempfile::tempdir().unwrap();
    let config = config(&kafka.brokers(), &url, "sink-trickle")
        .sink_key("batch_max_rows", "150")
        .sink_key("batch_max_wait", "\"50ms\"")
        .toml();
    let sink = Iotpipe::sink(dir.path(), &config);
    wait_ready(&sink);
    for start in (EVERY_PAIR..N).step_by(CHUNK as usize) {
        produce(&kafka.brokers(), (start..(start + CHUNK).min(N)).map(bridge_record));
        std::thread::sleep(Duration::from_millis(20));
    }
    eventually(Duration::from_secs(60), "every record consumed", || {
        sink.metric("iotpipe_sink_records_consumed_total") >= N as f64
    });
    eventually(Duration::from_secs(30), "one row per record", || {
        count(&url, "SELECT count(*) FROM telemetry") == N as i64
    });
    assert_eq!(sink.metric("iotpipe_sink_records_consumed_total"), N as f64, "each record read once");
    assert!(sink.metric("iotpipe_sink_batches_total") > 10.0, "the records came in many batches");
}

/// The sink SIGKILLed three times while records arrive: one row per record.
#[test]
fn sigkill_three_times_still_one_row_per_record() {
    const N: u64 = 30_000;
    let kafka = Tansu::start();
    let url = Server::shared().url(&fresh_name("sink_kill"));
    let dir = tempfile::tempdir().unwrap();
    let mut sink = Iotpipe::sink(dir.path(), &config(&kafka.brokers(), &url, "sink-kill").toml());
    let brokers = kafka.brokers();
    let producer = std::thread::spawn(move || {
        for chunk in 0..30 {
            produce(&brokers, (chunk * 1_000..(chunk + 1) * 1_000).map(bridge_record));
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1_500));
        sink.kill9();
        sink.restart();
    }
    producer.join().unwrap();
    eventually(Duration::from_secs(300), "all rows", || count(&url, "SELECT count(*) FROM telemetry") >= N as i64);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&url, "SELECT count(*) FROM telemetry"), N as i64);
    assert_eq!(count(&url, "SELECT count(DISTINCT id) FROM telemetry"), N as i64);
}

/// Two sinks in one group: a second member joins mid-run (partitions move
/// away from the first, which commits what it stored before they go) and
/// leaves again with SIGTERM (they move back). Still one row per record.
#[test]
fn members_joining_and_leaving_the_group_keep_one_row_per_record() {
    const N: u64 = 30_000;
    let kafka = Tansu::start();
    let url = Server::shared().url(&fresh_name("sink_group"));
    produce(&kafka.brokers(), (0..1_000).map(bridge_record));
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = config(&kafka.brokers(), &url, "sink-group").toml();
    let a = Iotpipe::sink(dir_a.path(), &config);
    wait_ready(&a);
    let brokers = kafka.brokers();
    let producer = std::thread::spawn(move || {
        for chunk in 1..N / 1_000 {
            produce(&brokers, (chunk * 1_000..(chunk + 1) * 1_000).map(bridge_record));
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    eventually(Duration::from_secs(60), "the first member has all partitions and reads", || {
        a.metric("iotpipe_sink_records_consumed_total") > 0.0
    });
    let mut b = Iotpipe::sink(dir_b.path(), &config);
    eventually(Duration::from_secs(60), "the second member gets partitions and reads", || {
        b.metric("iotpipe_sink_records_consumed_total") > 0.0
    });
    std::thread::sleep(Duration::from_secs(2));
    let (code, _) = b.terminate(Duration::from_secs(30));
    assert_eq!(code, Some(0), "the second member leaves cleanly");
    producer.join().unwrap();
    eventually(Duration::from_secs(120), "all rows", || count(&url, "SELECT count(*) FROM telemetry") >= N as i64);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(&url, "SELECT count(*) FROM telemetry"), N as i64);
    assert_eq!(count(&url, "SELECT count(DISTINCT id) FROM telemetry"), N as i64);
    let log = a.log_text();
    assert!(log.contains("Partitions revoked."), "the first member gave partitions away:\n{log}");
}

/// The sink alone while its PostgreSQL is stopped cleanly (`pg_ctl stop -m
/// fast`) for 20 s: not ready, freshness and lag grow, then everything is
/// stored once. The fault matrix's `pg-outage-*` crash the server (`-m
/// immediate`) under the whole pipeline and measure the alerts.
#[test]
fn postgres_down_for_20s_loses_nothing_and_resumes() {
    const N: u64 = 20_000;
    let kafka = Tansu::start();
    let pg = PrivatePostgres::start();
    let url = pg.url("sink_outage");
    let dir = tempfile::tempdir().unwrap();
    let sink = Iotpipe::sink(dir.path(), &config(&kafka.brokers(), &url, "sink-outage").toml());
    wait_ready(&sink);
    produce(&kafka.brokers(), (0..N / 2).map(bridge_record));
    eventually(Duration::from_secs(60), "first half stored", || {
        count(&url, "SELECT count(*) FROM telemetry") == (N / 2) as i64
    });

    pg.stop();
    produce(&kafka.brokers(), (N / 2..N).map(bridge_record));
    eventually(Duration::from_secs(30), "readyz reports the store down", || sink.get("/readyz").0 == 503);
    let down_at = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(18));
    // What an operator sees: no pair has been stored to since the outage
    // began, and the backlog's age grows although the reader stopped reading.
    let outage = down_at.elapsed().as_secs_f64();
    let freshest = sink.metric("iotpipe_sink_freshness_seconds{");
    assert!(freshest >= outage - 1.0, "freshness {freshest} s during a {outage} s outage");
    let lag = sink.metric("iotpipe_sink_consumer_lag_seconds");
    assert!(lag >= 10.0, "consumer lag {lag} s during a {outage} s outage");
    pg.restart();
    eventually(Duration::from_secs(90), "all rows after the outage", || {
        count(&url, "SELECT count(*) FROM telemetry") == N as i64
    });
    assert_eq!(count(&url, "SELECT count(DISTINCT id) FROM telemetry"), N as i64);
    assert!(sink.metric("iotpipe_sink_store_errors_total") > 0.0);
    eventually(Duration::from_secs(30), "ready again", || sink.get("/readyz").0 == 200);
    eventually(Duration::from_secs(15), "caught up in time", || {
        sink.metric("iotpipe_sink_consumer_lag_seconds") == 0.0
    });
    assert!(sink.metric("iotpipe_sink_freshness_seconds{") < 30.0, "stored to again");
}

#[test]
fn poison_records_land_in_dead_letters_and_the_consumer_moves_on() {
    let kafka = Tansu::start();
    let url = Server::shared().url(&fresh_name("sink_poison"));
    let mut records: Vec<_> = (0..10).map(bridge_record).collect();
    let topic = records[0].0.clone();
    records.insert(3, (topic.clone(), "k".into(), b"\xff\xfe not json".to_vec(), vec![]));
    records.insert(5, (topic.clone(), "k".into(), br#"{"deviceId":"d"}"#.to_vec(), vec![]));
    records.insert(
        7,
        (
            topic.clone(),
            "k".into(),
            b"{}".to_vec(),
            vec![("tenant_id", "a".into()), ("project_id", "p".into()), ("id", "not-a-uuid".into())],
        ),
    );
    records.push((
        "iot-dead-letters".into(),
        "x".into(),
        b"{oops".to_vec(),
        vec![
            ("reason", "invalid_json".into()),
            ("error", "bad".into()),
            ("mqtt_topic", "mtic/msg/client/realtime/a/p".into()),
        ],
    ));
    // Dead letters from some other producer, each with a reason of its own:
    // stored with that text, but the metric's label stays in the fixed set.
    for i in 0..5 {
        records.push((
            "iot-dead-letters".into(),
            "x".into(),
            b"{}".to_vec(),
            vec![("reason", format!("made_up_reason_{i}")), ("error", "elsewhere".into())],
        ));
    }
    produce(&kafka.brokers(), records);
    let dir = tempfile::tempdir().unwrap();
    let sink = Iotpipe::sink(dir.path(), &config(&kafka.brokers(), &url, "sink-poison").toml());
    eventually(Duration::from_secs(60), "good rows", || count(&url, "SELECT count(*) FROM telemetry") == 10);
    eventually(Duration::from_secs(30), "dead letters", || count(&url, "SELECT count(*) FROM dead_letters") == 9);
    let reasons = query(
        &url,
        "SELECT string_agg(reason, ',' ORDER BY reason) FROM dead_letters WHERE reason NOT LIKE 'made_up_reason_%'",
    )
    .unwrap();
    assert_eq!(reasons, "invalid_id,invalid_json,missing_tenant,undecodable");
    assert_eq!(count(&url, "SELECT count(*) FROM dead_letters WHERE reason LIKE 'made_up_reason_%'"), 5);
    let raw = query(&url, "SELECT encode(payload, 'escape') FROM dead_letters WHERE reason = 'invalid_json'").unwrap();
    assert_eq!(raw, "{oops");
    assert_eq!(sink.metric("iotpipe_sink_dead_lettered_total{reason=\"missing_tenant\"}"), 1.0);
    assert_eq!(sink.metric("iotpipe_sink_dead_lettered_total{reason=\"other\"}"), 5.0);
    let (_, metrics) = sink.get("/metrics");
    assert!(!metrics.contains("made_up_reason"), "a producer's reason text must not become a label value");
    // Lag per topic is behind http.per_tenant_metrics (off here); the sum is always there.
    assert!(!metrics.contains("iotpipe_sink_consumer_lag{"), "per-topic lag series without the switch");
    assert!(metrics.contains("\niotpipe_sink_consumer_lag_records "));
}

#[test]
fn writes_to_influxdb_with_tags_fields_and_retention_policy() {
    let kafka = Tansu::start();
    let influx = common::influx::base_url();
    let db = fresh_name("sink_influx");
    let store_url = common::influx::store_url(&db);
    produce(&kafka.brokers(), (0..600).map(bridge_record));
    let dir = tempfile::tempdir().unwrap();
    let sink = Iotpipe::sink(dir.path(), &config(&kafka.brokers(), &store_url, "sink-influx").toml());
    let q = |q: &str| {
        let path = format!(
            "/query?db={db}&q={}",
            q.replace(' ', "%20").replace('\'', "%27").replace('"', "%22").replace('=', "%3D")
        );
        let port: u16 = influx.rsplit(':').next().unwrap().parse().unwrap();
        common::http_get(port, &path).1
    };
    // The count itself: the answer's text may hold the random database name
    // (an error does). The body comes chunked: the JSON is between its braces.
    let count = |answer: String| {
        let json = answer.find('{').zip(answer.rfind('}')).map_or("", |(a, b)| &answer[a..=b]);
        let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        v.pointer("/results/0/series/0/values/0/1").and_then(serde_json::Value::as_u64)
    };
    eventually(Duration::from_secs(60), "points", || count(q("SELECT count(temperature) FROM telemetry")) == Some(600));
    let one = q("SELECT temperature, device_id FROM telemetry WHERE tenant_id = 'tenant-1' AND project_id = 'project-1' AND device_id = 'dev-1-1-1'");
    assert!(one.contains("dev-1-1-1"), "{one}");
    let rp = q("SHOW RETENTION POLICIES");
    assert!(rp.contains("72h0m0s"), "{rp}");
    drop(sink);
}
