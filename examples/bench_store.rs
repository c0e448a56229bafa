//! Store throughput on this machine (run through `scripts/bench-store.sh`,
//! release build): rows/s into PostgreSQL through the store's batch path, the same by one
//! INSERT per row (the naive baseline), and rows/s into InfluxDB. Prints
//! figures; asserts nothing about them.
//!
//! Arguments (all optional): `--copy-rows N --batch N --naive-rows N --influx-rows N`.

#[allow(dead_code)]
#[path = "../tests/common/influx.rs"]
mod influx;
#[allow(dead_code)]
#[path = "../tests/common/postgres.rs"]
mod postgres;
#[allow(dead_code)]
#[path = "../tests/common/services.rs"]
mod services;
#[allow(dead_code)]
#[path = "../tests/common/store.rs"]
mod store;

use iotpipe::store::{Store, StoreRow};
use postgres::Server;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::{config, fleet_rows, fresh_name, DAY_MS};

struct Args {
    copy_rows: usize,
    batch: usize,
    naive_rows: usize,
    influx_rows: usize,
}

fn args() -> Args {
    let mut a = Args { copy_rows: 200_000, batch: 5_000, naive_rows: 20_000, influx_rows: 100_000 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value) {
            ("--copy-rows", Some(v)) => a.copy_rows = v,
            ("--batch", Some(v)) => a.batch = v,
            ("--naive-rows", Some(v)) => a.naive_rows = v,
            ("--influx-rows", Some(v)) => a.influx_rows = v,
            (flag, _) => {
                eprintln!("unknown or incomplete argument `{flag}`; see the file's header");
                std::process::exit(2);
            }
        }
    }
    a
}

fn rate(rows: usize, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}

fn avg_payload(rows: &[StoreRow]) -> usize {
    rows.iter().map(|r| r.payload.len()).sum::<usize>() / rows.len().max(1)
}

/// The store's path: one prepared INSERT .. SELECT FROM unnest(..) ON CONFLICT DO NOTHING per batch.
async fn copy_path(rows: &[StoreRow], batch: usize) -> f64 {
    let name = fresh_name("iot_bench");
    let mut store = Store::connect(&config(Server::shared().url(&name), 3)).await.expect("connect");
    let start = Instant::now();
    let mut inserted = 0;
    for chunk in rows.chunks(batch) {
        inserted += store.write(chunk, &[]).await.expect("write").inserted;
    }
    let took = start.elapsed();
    assert_eq!(inserted as usize, rows.len());
    drop(store);
    Server::shared().drop_database(&name).await;
    rate(rows.len(), took)
}

/// The naive baseline: one INSERT (one autocommit transaction) per row.
async fn naive_path(rows: &[StoreRow]) -> f64 {
    let name = fresh_name("iot_bench");
    let store = Store::connect(&config(Server::shared().url(&name), 3)).await.expect("connect");
    let db = Server::shared().admin(&name).await;
    let stmt = db
        .prepare(
            "INSERT INTO telemetry (time, received_at, event_time, tenant_id, project_id, device_id, mqtt_topic, id, payload, raw) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        )
        .await
        .expect("prepare");
    let ts = |ms: i64| UNIX_EPOCH + Duration::from_millis(ms as u64);
    let start = Instant::now();
    for r in rows {
        let payload: Option<serde_json::Value> = serde_json::from_slice(&r.payload).ok();
        let event: Option<SystemTime> = r.event_time_ms.map(ts);
        db.execute(
            &stmt,
            &[
                &ts(r.time_ms),
                &ts(r.received_ms),
                &event,
                &r.tenant_id,
                &r.project_id,
                &r.device_id,
                &r.mqtt_topic,
                &r.id,
                &payload,
                &r.payload.as_ref(),
            ],
        )
        .await
        .expect("insert");
    }
    let took = start.elapsed();
    drop(store);
    Server::shared().drop_database(&name).await;
    rate(rows.len(), took)
}

async fn influx_path(rows: &[StoreRow], batch: usize) -> f64 {
    let name = fresh_name("iot_bench");
    let mut store = Store::connect(&config(influx::store_url(&name), 3)).await.expect("connect");
    let start = Instant::now();
    for chunk in rows.chunks(batch) {
        let out = store.write(chunk, &[]).await.expect("write");
        assert_eq!(out.rejected, 0);
    }
    let took = start.elapsed();
    drop(store);
    influx::drop_database(&name).await;
    rate(rows.len(), took)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    Server::shared();
    influx::base_url();
    let rows = fleet_rows(a.copy_rows.max(a.naive_rows).max(a.influx_rows), 2 * DAY_MS);
    println!(
        "store benchmark: {} rows prepared, payload {} bytes on average, 3 tenants x 2 projects x 20 devices",
        rows.len(),
        avg_payload(&rows)
    );
    let copy = copy_path(&rows[..a.copy_rows], a.batch).await;
    println!("postgres store batches:    {:>9.0} rows/s  ({} rows, batches of {})", copy, a.copy_rows, a.batch);
    let naive = naive_path(&rows[..a.naive_rows]).await;
    println!("postgres INSERT per row:   {:>9.0} rows/s  ({} rows, one autocommit INSERT each)", naive, a.naive_rows);
    println!("batches / naive:           {:>9.1}x", copy / naive);
    let influx = influx_path(&rows[..a.influx_rows], a.batch).await;
    println!("influxdb line protocol:    {:>9.0} rows/s  ({} rows, batches of {})", influx, a.influx_rows, a.batch);
}
