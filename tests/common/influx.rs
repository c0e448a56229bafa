//! InfluxDB for tests: the shared server of `scripts/services.sh`, InfluxQL
//! over HTTP, and the rows of an answer.
//!
//! Needs only `super::services`, so examples can include it with `#[path]`.

use super::services;
use serde_json::Value;

/// One row of an answer: column → value.
pub type Row = serde_json::Map<String, Value>;

/// `http://127.0.0.1:PORT` of the shared server (`scripts/services.sh up influxdb`).
pub fn base_url() -> &'static str {
    services::shared(&["influxdb"]).require("IOTPIPE_TEST_INFLUX_URL")
}

/// `influxdb://127.0.0.1:PORT/<database>`: a store URL on the shared server.
pub fn store_url(database: &str) -> String {
    format!("influxdb://{}/{database}", base_url().trim_start_matches("http://"))
}

/// One InfluxQL statement; the JSON answer (times as epoch nanoseconds).
pub async fn query(database: &str, q: &str) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}/query", base_url()))
        .form(&[("db", database), ("q", q), ("epoch", "ns")])
        .send()
        .await
        .expect("influx query");
    let body = resp.bytes().await.expect("influx answer");
    serde_json::from_slice(&body).expect("influx JSON")
}

pub async fn drop_database(name: &str) {
    query(name, &format!("DROP DATABASE \"{name}\"")).await;
}

/// The series of the first statement's answer: (tags, rows as column → value maps).
pub fn series(answer: &Value) -> Vec<(Row, Vec<Row>)> {
    let Some(all) = answer.pointer("/results/0/series").and_then(Value::as_array) else { return Vec::new() };
    all.iter()
        .map(|s| {
            let columns: Vec<String> =
                s["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
            let rows = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| columns.iter().cloned().zip(row.as_array().unwrap().iter().cloned()).collect())
                .collect();
            (s["tags"].as_object().cloned().unwrap_or_default(), rows)
        })
        .collect()
}

/// The rows of the first series of a query answer, as column → value maps.
pub fn records(answer: &Value) -> Vec<Row> {
    series(answer).into_iter().next().map(|(_, rows)| rows).unwrap_or_default()
}
