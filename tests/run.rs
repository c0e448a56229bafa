//! `iotpipe run` (MQTT → journal → SQLite) and `iotpipe demo`.

mod common;

use common::mqtt::{spawn_publish, Mosquitto};
use common::process::Iotpipe;
use common::{eventually, free_port, http_get};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rows(db: &std::path::Path, sql: &str) -> i64 {
    let Ok(c) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return -1;
    };
    c.query_row(sql, [], |r| r.get(0)).unwrap_or(-1)
}

fn run_config(mqtt_url: &str, dir: &std::path::Path, client_id: &str) -> String {
    format!(
        r#"[mqtt]
url = "{mqtt_url}"
client_id = "{client_id}"
reconnect_backoff_max = "1s"
[route]
device_id = "/deviceId"
event_time = "/ts"
[store]
url = "sqlite://{db}"
[journal]
path = {journal:?}
[http]
listen = "{{HTTP}}"
"#,
        db = dir.join("iotpipe.db").display(),
        journal = dir.join("journal").display().to_string(),
    )
}

#[test]
fn run_with_sqlite_survives_three_sigkills_with_exactly_one_row_per_message() {
    const N: u64 = 20_000;
    let mqtt = Mosquitto::start(100_000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("iotpipe.db");
    let mut run = Iotpipe::run(dir.path(), &run_config(&mqtt.url(), dir.path(), "run-kill"));
    eventually(Duration::from_secs(20), "run ready", || run.get("/readyz").0 == 200);
    let publisher = spawn_publish(mqtt.url(), 0..N, Some(2_000));
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(2_500));
        run.kill9();
        std::thread::sleep(Duration::from_millis(200));
        run.restart();
    }
    publisher.join().unwrap();
    eventually(Duration::from_secs(120), "20,000 rows", || rows(&db, "SELECT count(*) FROM telemetry") >= N as i64);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rows(&db, "SELECT count(*) FROM telemetry"), N as i64, "exactly one row per message");
    assert_eq!(rows(&db, "SELECT count(DISTINCT json_extract(payload, '$.seq')) FROM telemetry"), N as i64);
}

#[test]
fn run_stores_dead_letters_and_keeps_running() {
    let mqtt = Mosquitto::start(100_000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("iotpipe.db");
    let run = Iotpipe::run(dir.path(), &run_config(&mqtt.url(), dir.path(), "run-bad"));
    eventually(Duration::from_secs(20), "run ready", || run.get("/readyz").0 == 200);
    common::mqtt::block_on(common::mqtt::publish_raw(
        &mqtt.url(),
        vec![
            ("mtic/msg/client/realtime/a".into(), b"{}".to_vec()),
            ("mtic/msg/client/realtime/a/p".into(), b"{nope".to_vec()),
            ("mtic/msg/client/realtime/a/p".into(), br#"{"deviceId":"d","ts":1700000000000,"v":1}"#.to_vec()),
            ("mtic/msg/client/realtime/a/p".into(), Vec::new()),
            ("mtic/msg/client/realtime/a/p".into(), b"\xff\xfe\x00".to_vec()),
        ],
    ));
    eventually(Duration::from_secs(20), "dead letters", || rows(&db, "SELECT count(*) FROM dead_letters") == 4);
    eventually(Duration::from_secs(20), "good row", || rows(&db, "SELECT count(*) FROM telemetry") == 1);
    assert_eq!(run.metric("iotpipe_messages_dead_lettered_total{reason=\"invalid_json\"}"), 1.0);
    // Dead letters are named after their journal position.
    assert_eq!(rows(&db, "SELECT count(*) FROM dead_letters WHERE source LIKE 'journal:%'"), 4);
    // What run counts is what it stored.
    eventually(Duration::from_secs(10), "one message stored", || run.metric("iotpipe_messages_stored_total") == 1.0);
    // `run` has no Kafka: its metrics say nothing about one.
    let (_, metrics) = run.get("/metrics");
    assert!(!metrics.contains("kafka_reachable"), "run reports a Kafka it does not have");
    assert!(!metrics.contains("iotpipe_messages_delivered_total"), "run delivers nothing to Kafka");
    assert!(!metrics.contains("iotpipe_sink_records_consumed_total"));
    assert!(metrics.contains("iotpipe_build_info{command=\"run\""));
    assert_eq!(run.metric("iotpipe_sink_store_reachable"), 1.0);
    assert_eq!(run.get("/healthz").0, 200);
    // The dashboard's dead-letter list shows every one of them, whatever the payload.
    let (status, body) = run.get("/api/dead-letters");
    assert_eq!(status, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(4), "{body}");
}

/// A store that refuses one row on its own (here a SQLite trigger, as a
/// constraint would): the batch is written row by row, the refused row
/// becomes a `store_rejected` dead letter, and the rows written one by one
/// count in the end-to-end latency and freshness like any other.
#[test]
fn a_row_the_store_refuses_is_dead_lettered_and_the_rest_are_stored_and_measured() {
    const N: u64 = 40;
    let mqtt = Mosquitto::start(100_000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("iotpipe.db");
    let run = Iotpipe::run(dir.path(), &run_config(&mqtt.url(), dir.path(), "run-refuse"));
    eventually(Duration::from_secs(20), "run ready", || run.get("/readyz").0 == 200);
    // The schema exists once run is ready; the trigger goes on top of it.
    let c = rusqlite::Connection::open(&db).expect("open the store");
    c.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    c.execute_batch(
        "CREATE TRIGGER refuse_bad BEFORE INSERT ON telemetry WHEN NEW.device_id = 'bad' \
         BEGIN SELECT RAISE(ABORT, 'device bad is refused'); END;",
    )
    .expect("create the trigger");
    drop(c);
    let mut msgs: Vec<(String, Vec<u8>)> = (0..N).map(common::mqtt::message).collect();
    msgs.insert(
        (N / 2) as usize,
        ("mtic/msg/client/realtime/acme/p1".into(), br#"{"deviceId":"bad","ts":1700000000000,"v":1}"#.to_vec()),
    );
    common::mqtt::block_on(common::mqtt::publish_raw(&mqtt.url(), msgs));
    eventually(Duration::from_secs(30), "the refused row dead-lettered", || {
        rows(&db, "SELECT count(*) FROM dead_letters WHERE reason = 'store_rejected'") == 1
    });
    eventually(Duration::from_secs(10), "every other row", || rows(&db, "SELECT count(*) FROM telemetry") == N as i64);
    assert_eq!(rows(&db, "SELECT count(*) FROM telemetry WHERE device_id = 'bad'"), 0);
    assert_eq!(run.metric("iotpipe_sink_dead_lettered_total{reason=\"store_rejected\"}"), 1.0);
    // The message accounting: the refused row is a dead letter, not a stored message.
    eventually(Duration::from_secs(10), "the refused message counted as a dead letter", || {
        run.metric("iotpipe_messages_dead_lettered_total{reason=\"store_rejected\"}") == 1.0
    });
    assert_eq!(run.metric("iotpipe_messages_stored_total"), N as f64);
    eventually(Duration::from_secs(10), "every stored row measured", || {
        run.metric("iotpipe_sink_end_to_end_seconds_count") == N as f64
    });
    assert!(run.metric("iotpipe_sink_freshness_seconds{tenant_id=\"tenant-1\"") < 60.0);
    assert_eq!(run.get("/healthz").0, 200);
}

/// `iotpipe demo` on these ports, its data in `dir`.
fn demo_command(dir: &std::path::Path, http: u16, mqtt: u16) -> Command {
    let mut cmd = Command::new(Iotpipe::binary());
    cmd.args(["demo", "--listen", &format!("127.0.0.1:{http}"), "--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
        .arg("--data-dir")
        .arg(dir);
    cmd
}

#[test]
fn demo_starts_shows_data_through_the_api_and_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let mut demo = demo_command(dir.path(), http, mqtt).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    eventually(Duration::from_secs(30), "tenants through the API", || {
        let (status, body) = http_get(http, "/api/tenants");
        status == 200 && body.contains("tenant_id")
    });
    println!("demo: first data through the API {:?} after start", started.elapsed());
    let (status, body) = http_get(http, "/api/tenants/nope/projects");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("error"));
    let (status, _) = http_get(http, "/api/dead-letters?limit=abc");
    assert_eq!(status, 400);

    let artifacts = common::services::repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    let check = Command::new("python3")
        .arg(common::services::repo().join("scripts/dashboard_check.py"))
        .arg(format!("http://127.0.0.1:{http}/"))
        .arg(&shot)
        .output()
        .unwrap();
    let _ = demo.kill();
    let _ = demo.wait();
    assert!(
        check.status.success(),
        "dashboard check failed:\n{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    println!("{}", String::from_utf8_lossy(&check.stdout).trim());
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "screenshot saved");
}

/// Ctrl-C on the demo: it stops, exits 0, and logs no ERROR of its own,
/// nor the embedded broker's "no-connection id N is already gone" for the
/// pipeline's clean DISCONNECT (`demo::is_clean_leave_noise`).
#[test]
fn the_demo_stops_on_ctrl_c_without_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let mut demo = demo_command(dir.path(), http, mqtt)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "tenants through the API", || {
        let (status, body) = http_get(http, "/api/tenants");
        status == 200 && body.contains("tenant_id")
    });
    common::signal(demo.id(), "INT");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = demo.kill();
            panic!("the demo did not stop within 20 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut demo.stderr.take().unwrap(), &mut log).unwrap();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(log.contains("SIGINT received"), "the log shows the stop:\n{log}");
    // rumqttd may also log, at times, a reset or a dropped router for a
    // connection cut off by the stop itself: not checked here.
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" ERROR ") && (l.contains("iotpipe::") || l.contains("is already gone")))
        .collect();
    assert!(errors.is_empty(), "no ERROR on a clean stop:\n{}", errors.join("\n"));
}

/// The demo's fleet runs as tasks of its pipeline: once `demo::run` has
/// returned (a clean stop), nothing publishes to the embedded broker any
/// more. A fleet spawned beside the pipeline would go on publishing.
#[test]
fn the_demo_stops_its_fleet_with_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let (http, mqtt) = (free_port(), free_port());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let args = iotpipe::demo::DemoArgs {
            listen: format!("127.0.0.1:{http}"),
            mqtt_listen: format!("127.0.0.1:{mqtt}"),
            data_dir: Some(dir.path().to_path_buf()),
            rate: 200,
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let demo = tokio::spawn(iotpipe::demo::run(args, async move {
            let _ = stop_rx.await;
        }));

        // A subscriber to everything the fleet publishes.
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut o = rumqttc::MqttOptions::new("demo-fleet-watcher", "127.0.0.1", mqtt);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut events) = rumqttc::AsyncClient::new(o, 16);
        client.subscribe("mtic/#", rumqttc::QoS::AtMostOnce).await.unwrap();
        let count = received.clone();
        let watcher = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(_))) => {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let seen = || received.load(std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        while seen() < 100 {
            assert!(started.elapsed() < Duration::from_secs(30), "the fleet publishes ({} seen)", seen());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        stop_tx.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(20), demo).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "the demo stops cleanly: {ended:?}");
        // What was already on its way is delivered; then nothing more.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after_stop = seen();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(seen(), after_stop, "nothing is published once the demo has stopped");
        watcher.abort();
    });
}
