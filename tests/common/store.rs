//! Store rows for tests: realistic JSON payloads, rows of a fleet, dead
//! letters, fresh database names and a store config.
//!
//! Self-contained (no `super::`), so examples can include it with `#[path]`.

use bytes::Bytes;
use iotpipe::config::HumanDuration;
use iotpipe::record::{now_ms, RecordId};
use iotpipe::store::{DeadLetterRow, StoreConfig, StoreRow};
use rand::Rng;

pub const DAY_MS: i64 = 86_400_000;

/// A fresh database name: `<prefix>_<random>`.
pub fn fresh_name(prefix: &str) -> String {
    format!("{prefix}_{:016x}", rand::random::<u64>())
}

/// A store config for `url` with a retention window of `retention_days`.
pub fn config(url: String, retention_days: u64) -> StoreConfig {
    StoreConfig {
        url,
        retention: HumanDuration::secs(retention_days * 86_400),
        write_timeout: HumanDuration::secs(60),
        ..StoreConfig::default()
    }
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
