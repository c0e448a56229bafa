//! Shared by the store tests: the project's script starts PostgreSQL and
//! InfluxDB (once per test binary); every test uses a database of its own,
//! so tests run in parallel; rows with realistic JSON payloads.
#![allow(dead_code)]

use bytes::Bytes;
use iotpipe::config::HumanDuration;
use iotpipe::record::{now_ms, RecordId};
use iotpipe::store::{DeadLetterRow, StoreConfig, StoreRow};
use rand::Rng;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub const DAY_MS: i64 = 86_400_000;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Endpoints of the running services.
pub struct Services {
    /// `postgres://iotpipe@127.0.0.1:PORT/postgres` (superuser, trust auth).
    pub postgres_url: String,
    /// `http://127.0.0.1:PORT`.
    pub influx_url: String,
}

/// Start (or find) PostgreSQL and InfluxDB through `scripts/services.sh`.
pub fn services() -> &'static Services {
    static S: OnceLock<Services> = OnceLock::new();
    S.get_or_init(|| {
        let status = Command::new("bash")
            .arg(repo().join("scripts/services.sh"))
            .args(["up", "postgres", "influxdb"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("run scripts/services.sh");
        assert!(status.success(), "scripts/services.sh up postgres influxdb failed");
        let dir = std::env::var("IOTPIPE_SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|_| repo().join(".services"));
        let text = std::fs::read_to_string(dir.join("env")).expect("services env file");
        let env: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Services {
            postgres_url: env.get("IOTPIPE_TEST_POSTGRES_URL").cloned().expect("IOTPIPE_TEST_POSTGRES_URL"),
            influx_url: env.get("IOTPIPE_TEST_INFLUX_URL").cloned().expect("IOTPIPE_TEST_INFLUX_URL"),
        }
    })
}

/// A fresh database name: `iot_test_<random>`.
pub fn fresh_name() -> String {
    format!("iot_test_{:016x}", rand::random::<u64>())
}

/// The test server's URL with another database.
pub fn pg_url(database: &str) -> String {
    let base = &services().postgres_url;
    let (server, _) = base.rsplit_once('/').expect("postgres URL with a database");
    format!("{server}/{database}?sslmode=disable")
}

/// `influxdb://host:port/database` for the test server.
pub fn influx_url(database: &str) -> String {
    let base = services().influx_url.trim_start_matches("http://");
    format!("influxdb://{base}/{database}")
}

pub fn config(url: String, retention_days: u64) -> StoreConfig {
    StoreConfig {
        url,
        retention: HumanDuration::secs(retention_days * 86_400),
        write_timeout: HumanDuration::secs(60),
        ..StoreConfig::default()
    }
}

/// A client on the test server's `postgres` database, for checks and cleanup.
pub async fn pg_admin(database: &str) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&pg_url(database), tokio_postgres::NoTls).await.expect("connect to postgres");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

pub async fn drop_pg_database(name: &str) {
    let admin = pg_admin("postgres").await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await.expect("drop database");
}

/// One InfluxQL statement; the JSON answer.
pub async fn influx_query(database: &str, q: &str) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .post(format!("{}/query", services().influx_url))
        .form(&[("db", database), ("q", q)])
        .send()
        .await
        .expect("influx query");
    let body = resp.bytes().await.expect("influx answer");
    serde_json::from_slice(&body).expect("influx JSON")
}

pub async fn drop_influx_database(name: &str) {
    influx_query(name, &format!("DROP DATABASE \"{name}\"")).await;
}

/// A realistic 100-300 byte JSON payload.
pub fn payload(rng: &mut impl Rng, device: &str, ts: i64, seq: u64) -> Vec<u8> {
    let mut v = serde_json::json!({
        "deviceId": device,
        "ts": ts,
        "seq": seq,
        "temperature": (rng.gen_range(-200..450) as f64) / 10.0,
        "humidity": rng.gen_range(10..95),
        "battery": {"voltage": (rng.gen_range(300..420) as f64) / 100.0, "level": rng.gen_range(0..100)},
        "status": if rng.gen_bool(0.9) { "ok" } else { "degraded" },
    });
    if rng.gen_bool(0.5) {
        v["location"] = serde_json::json!({"lat": rng.gen_range(-90.0..90.0), "lon": rng.gen_range(-180.0..180.0)});
    }
    if rng.gen_bool(0.3) {
        v["fw"] = serde_json::json!(format!("1.{}.{}", rng.gen_range(0..9), rng.gen_range(0..30)));
        v["tags"] = serde_json::json!(["indoor", "floor-3"]);
    }
    serde_json::to_vec(&v).expect("payload")
}

/// A row for `device` of `tenant`/`project` with event time `ts`.
pub fn row(tenant: &str, project: &str, device: &str, ts: i64, payload: Vec<u8>) -> StoreRow {
    let topic = format!("mtic/msg/client/realtime/{tenant}/{project}/{device}");
    let received = now_ms();
    StoreRow {
        id: RecordId::derive(Some(ts), received, &topic, &payload).0,
        time_ms: ts,
        event_time_ms: Some(ts),
        received_ms: received,
        tenant_id: tenant.into(),
        project_id: project.into(),
        device_id: device.into(),
        mqtt_topic: topic,
        payload: Bytes::from(payload),
    }
}

/// `n` rows over 3 tenants × 2 projects × 20 devices, event times spread
/// over the `span_ms` before now.
pub fn fleet_rows(n: usize, span_ms: i64) -> Vec<StoreRow> {
    let mut rng = rand::thread_rng();
    let now = now_ms();
    (0..n)
        .map(|i| {
            let tenant = format!("tenant-{}", i % 3);
            let project = format!("project-{}", (i / 3) % 2);
            let device = format!("dev-{:02}", (i / 6) % 20);
            let ts = now - rng.gen_range(0..span_ms);
            let p = payload(&mut rng, &device, ts, i as u64);
            row(&tenant, &project, &device, ts, p)
        })
        .collect()
}

pub fn dead_letter(source: &str, received_ms: i64) -> DeadLetterRow {
    DeadLetterRow {
        source: source.into(),
        received_ms,
        reason: "invalid_json".into(),
        error: "payload is not JSON: expected value at line 1 column 1".into(),
        mqtt_topic: Some("mtic/msg/client/realtime/acme/p1".into()),
        headers: vec![("id".into(), "0190".into()), ("received_at".into(), "2026-01-01T00:00:00.000Z".into())],
        payload: Bytes::from_static(b"\x00\x01not json"),
    }
}
