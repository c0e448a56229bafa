//! InfluxDB-only behaviour: queries by tag, escaped tags and fields of odd
//! names and payloads, the `iotpipe` retention policy, and two records of
//! one device in one millisecond.

use crate::common::influx::{query, records};
use crate::common::store::{dead_letter, fleet_rows, row, DAY_MS};
use crate::engine::Engine;
use iotpipe::config::HumanDuration;
use iotpipe::record::now_ms;
use iotpipe::store::StoreRow;
use serde_json::Value;

async fn count_where(db: &str, condition: &str) -> u64 {
    let answer = query(db, &format!("SELECT count(id) FROM telemetry WHERE {condition}")).await;
    answer.pointer("/results/0/series/0/values/0/1").and_then(Value::as_u64).unwrap_or(0)
}

pub async fn points_are_queryable_by_tenant_project_and_device(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let rows = fleet_rows(3_000, DAY_MS);
    let out = store.write(&rows, &[]).await.expect("write");
    assert_eq!((out.inserted, out.rejected), (3_000, 0));
    let expected = |f: &dyn Fn(&StoreRow) -> bool| rows.iter().filter(|r| f(r)).count() as u64;
    let name = engine.name();
    assert_eq!(count_where(name, "tenant_id = 'tenant-1'").await, expected(&|r| r.tenant_id == "tenant-1"));
    assert_eq!(
        count_where(name, "tenant_id = 'tenant-2' AND project_id = 'project-1' AND device_id = 'dev-07'").await,
        expected(&|r| r.tenant_id == "tenant-2" && r.project_id == "project-1" && r.device_id == "dev-07")
    );
    assert_eq!(count_where(name, "time > now() - 3d").await, 3_000);
}

pub async fn odd_names_and_payloads_become_escaped_tags_and_fields(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let now = now_ms();
    let rows = vec![
        row("acme", "p 1", "dev,=1", now - 1, b"plain text".to_vec()),
        row("acme", "p 1", "dev,=1", now - 2, b"{}".to_vec()),
        row("acme", "p 1", "dev,=1", now - 3, br#"{"time": 5, "id": "mine", "s": "a \"quoted\"\nline\\"}"#.to_vec()),
        row("acme", "p 1", "dev,=1", now + 30 * DAY_MS, br#"{"v": 1}"#.to_vec()),
    ];
    let dead = [dead_letter("kafka:dl/0@9", now)];
    let out = store.write(&rows, &dead).await.expect("write");
    assert_eq!((out.inserted, out.rejected, out.dead_letters_inserted), (4, 0, 1));
    let answer =
        query(engine.name(), "SELECT * FROM telemetry WHERE device_id = 'dev,=1' AND project_id = 'p 1'").await;
    let points = records(&answer);
    assert_eq!(points.len(), 4, "{answer}");
    let by_id = |r: &StoreRow| points.iter().find(|p| p["id"] == r.id.to_string().as_str()).cloned().expect("point");
    assert_eq!(by_id(&rows[0])["raw"], "plain text");
    let quoted = by_id(&rows[2]);
    assert_eq!(quoted["payload.time"].as_f64(), Some(5.0));
    assert_eq!(quoted["payload.id"], "mine");
    assert_eq!(quoted["s"], "a \"quoted\"\nline\\");
    let future = by_id(&rows[3]);
    assert_eq!(
        future["event_time_ms"].as_i64(),
        Some(rows[3].time_ms),
        "filed under the receive time, event time kept"
    );
    let answer = query(engine.name(), "SELECT * FROM dead_letters").await;
    let dl = records(&answer);
    assert_eq!(dl.len(), 1, "{answer}");
    assert_eq!(dl[0]["reason"], "invalid_json");
    assert_eq!(dl[0]["source"], "kafka:dl/0@9");
}

pub async fn the_iotpipe_retention_policy_has_the_window_and_is_the_default(engine: &Engine) {
    let name = engine.name();
    let policy = |answer: &Value| {
        records(answer)
            .into_iter()
            .find(|p| p["name"] == "iotpipe")
            .map(|p| (p["duration"].clone(), p["default"].clone()))
    };
    let show = format!("SHOW RETENTION POLICIES ON \"{name}\"");
    let store = engine.connect(3).await;
    let answer = query(name, &show).await;
    assert_eq!(policy(&answer), Some((Value::from("72h0m0s"), Value::from(true))), "{answer}");
    // A store with another window changes it; a shorter one too.
    let mut longer = engine.connect(7).await;
    let answer = query(name, &show).await;
    assert_eq!(policy(&answer), Some((Value::from("168h0m0s"), Value::from(true))), "{answer}");
    let mut cfg = engine.config(1);
    cfg.retention = HumanDuration::secs(3 * 3600);
    let shorter = engine.connect_with(&cfg).await;
    let answer = query(name, &show).await;
    assert_eq!(policy(&answer), Some((Value::from("3h0m0s"), Value::from(true))), "{answer}");
    // The retention run puts the 7-day store's window back.
    longer.enforce_retention().await.expect("retention");
    let answer = query(name, &show).await;
    assert_eq!(policy(&answer), Some((Value::from("168h0m0s"), Value::from(true))), "{answer}");
    longer.ping().await.expect("ping");
    drop((store, longer, shorter));
}

pub async fn two_records_of_one_device_in_the_same_millisecond_are_both_kept(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let ts = now_ms() - 5_000;
    let a = row("acme", "p1", "dev-1", ts, br#"{"temp": 1}"#.to_vec());
    let b = row("acme", "p1", "dev-1", ts, br#"{"temp": 2}"#.to_vec());
    assert_ne!(a.id, b.id);
    store.write(&[a, b], &[]).await.expect("write");
    let answer = query(engine.name(), "SELECT temp FROM telemetry WHERE device_id = 'dev-1'").await;
    let mut temps: Vec<f64> = records(&answer).iter().map(|p| p["temp"].as_f64().unwrap()).collect();
    temps.sort_by(f64::total_cmp);
    assert_eq!(temps, vec![1.0, 2.0], "{answer}");
}
