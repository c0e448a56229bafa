//! The InfluxDB store against a real InfluxDB 1.6: each test has a database
//! of its own.

mod common_store;

use common_store::*;
use iotpipe::record::now_ms;
use iotpipe::store::{Store, StoreRow};
use serde_json::Value;

/// The rows of the first series of a query answer, as column → value maps.
fn records(answer: &Value) -> Vec<serde_json::Map<String, Value>> {
    let Some(series) = answer.pointer("/results/0/series/0") else { return Vec::new() };
    let columns: Vec<String> =
        series["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    series["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| columns.iter().cloned().zip(row.as_array().unwrap().iter().cloned()).collect())
        .collect()
}

async fn count_where(db: &str, condition: &str) -> u64 {
    let answer = influx_query(db, &format!("SELECT count(id) FROM telemetry WHERE {condition}")).await;
    answer.pointer("/results/0/series/0/values/0/1").and_then(Value::as_u64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_are_queryable_by_tenant_project_and_device_with_their_fields() {
    let name = fresh_name();
    let mut store = Store::connect(&config(influx_url(&name), 3)).await.expect("connect");
    assert!(store.describe().starts_with("influxdb http://127.0.0.1:"), "{}", store.describe());
    let rows = fleet_rows(3_000, DAY_MS);
    let out = store.write(&rows, &[]).await.expect("write");
    assert_eq!((out.inserted, out.rejected), (3_000, 0));

    let expected = |f: &dyn Fn(&StoreRow) -> bool| rows.iter().filter(|r| f(r)).count() as u64;
    assert_eq!(count_where(&name, "tenant_id = 'tenant-1'").await, expected(&|r| r.tenant_id == "tenant-1"));
    assert_eq!(
        count_where(&name, "tenant_id = 'tenant-2' AND project_id = 'project-1' AND device_id = 'dev-07'").await,
        expected(&|r| r.tenant_id == "tenant-2" && r.project_id == "project-1" && r.device_id == "dev-07")
    );

    // One point in detail: tags, flattened fields, types, id and topic.
    let r = &rows[42];
    let answer = influx_query(&name, &format!("SELECT * FROM telemetry WHERE id = '{}'", r.id)).await;
    let got = records(&answer);
    assert_eq!(got.len(), 1, "{answer}");
    let got = &got[0];
    let doc: Value = serde_json::from_slice(&r.payload).unwrap();
    assert_eq!(got["tenant_id"], r.tenant_id.as_str());
    assert_eq!(got["project_id"], r.project_id.as_str());
    assert_eq!(got["device_id"], r.device_id.as_str());
    assert_eq!(got["mqtt_topic"], r.mqtt_topic.as_str());
    assert_eq!(got["temperature"].as_f64(), doc["temperature"].as_f64());
    assert_eq!(got["battery.voltage"].as_f64(), doc["battery"]["voltage"].as_f64());
    assert_eq!(got["status"], doc["status"]);
    assert_eq!(got["deviceId"], doc["deviceId"]);
    let time = got["time"].as_str().unwrap();
    assert_eq!(
        time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp_nanos()
            / 1_000_000,
        r.time_ms as i128
    );
    drop(store);
    drop_influx_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_twice_keeps_the_count() {
    let name = fresh_name();
    let mut store = Store::connect(&config(influx_url(&name), 3)).await.expect("connect");
    let rows = fleet_rows(2_000, DAY_MS);
    store.write(&rows, &[]).await.expect("write");
    store.write(&rows, &[]).await.expect("write again");
    assert_eq!(count_where(&name, "time > now() - 3d").await, 2_000);
    drop(store);
    drop_influx_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_iotpipe_retention_policy_has_the_window_and_is_the_default() {
    let name = fresh_name();
    let policy = |answer: &Value| {
        records(answer)
            .into_iter()
            .find(|p| p["name"] == "iotpipe")
            .map(|p| (p["duration"].clone(), p["default"].clone()))
    };
    let store = Store::connect(&config(influx_url(&name), 3)).await.expect("connect");
    let answer = influx_query(&name, &format!("SHOW RETENTION POLICIES ON \"{name}\"")).await;
    assert_eq!(policy(&answer), Some((Value::from("72h0m0s"), Value::from(true))), "{answer}");
    // A store with another window changes it; a shorter one too.
    let mut longer = Store::connect(&config(influx_url(&name), 7)).await.expect("connect 7d");
    let answer = influx_query(&name, &format!("SHOW RETENTION POLICIES ON \"{name}\"")).await;
    assert_eq!(policy(&answer), Some((Value::from("168h0m0s"), Value::from(true))), "{answer}");
    let mut cfg = config(influx_url(&name), 1);
    cfg.retention = iotpipe::config::HumanDuration::secs(3 * 3600);
    let shorter = Store::connect(&cfg).await.expect("connect 3h");
    let answer = influx_query(&name, &format!("SHOW RETENTION POLICIES ON \"{name}\"")).await;
    assert_eq!(policy(&answer), Some((Value::from("3h0m0s"), Value::from(true))), "{answer}");
    // The retention run puts the 7-day store's window back.
    longer.enforce_retention().await.expect("retention");
    let answer = influx_query(&name, &format!("SHOW RETENTION POLICIES ON \"{name}\"")).await;
    assert_eq!(policy(&answer), Some((Value::from("168h0m0s"), Value::from(true))), "{answer}");
    longer.ping().await.expect("ping");
    drop((store, longer, shorter));
    drop_influx_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_records_of_one_device_in_the_same_millisecond_are_both_kept() {
    let name = fresh_name();
    let mut store = Store::connect(&config(influx_url(&name), 3)).await.expect("connect");
    let ts = now_ms() - 5_000;
    let a = row("acme", "p1", "dev-1", ts, br#"{"temp": 1}"#.to_vec());
    let b = row("acme", "p1", "dev-1", ts, br#"{"temp": 2}"#.to_vec());
    assert_ne!(a.id, b.id);
    store.write(&[a, b], &[]).await.expect("write");
    let answer = influx_query(&name, "SELECT temp FROM telemetry WHERE device_id = 'dev-1'").await;
    let mut temps: Vec<f64> = records(&answer).iter().map(|p| p["temp"].as_f64().unwrap()).collect();
    temps.sort_by(f64::total_cmp);
    assert_eq!(temps, vec![1.0, 2.0], "{answer}");
    drop(store);
    drop_influx_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_payloads_and_dead_letters_are_stored() {
    let name = fresh_name();
    let mut store = Store::connect(&config(influx_url(&name), 3)).await.expect("connect");
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
    let answer = influx_query(&name, "SELECT * FROM telemetry WHERE device_id = 'dev,=1' AND project_id = 'p 1'").await;
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
    let answer = influx_query(&name, "SELECT * FROM dead_letters").await;
    let dl = records(&answer);
    assert_eq!(dl.len(), 1, "{answer}");
    assert_eq!(dl[0]["reason"], "invalid_json");
    assert_eq!(dl[0]["source"], "kafka:dl/0@9");
    drop(store);
    drop_influx_database(&name).await;
}
