//! PostgreSQL-only behaviour: the `telemetry_numeric` view (PostgreSQL and
//! TimescaleDB), the DEFAULT partition's rows moving into a day partition,
//! a batch larger than one insert statement, and a batch whose COPY meets
//! a row already stored.

use crate::common::store::{fleet_rows, row, DAY_MS};
use crate::engine::postgres::{count, ms, relation_exists};
use crate::engine::Engine;
use iotpipe::record::now_ms;
use iotpipe::store::postgres::partition;
use iotpipe::store::DeadLetterRow;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub async fn the_numeric_view_lists_numbers_at_the_top_and_one_level_down(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let body =
        br#"{"temp": 21.5, "hum": 40, "ok": true, "mode": "eco", "battery": {"v": 3.7, "pct": 88, "deep": {"x": 1}},
                    "arr": [1, 2], "tiny": 1e-400, "none": null}"#;
    let r = row("acme", "p1", "dev-1", now_ms() - 1_000, body.to_vec());
    store.write(std::slice::from_ref(&r), &[]).await.expect("write");
    let db = engine.pg().await;
    let got: HashMap<String, f64> = db
        .query("SELECT field, value FROM telemetry_numeric WHERE tenant_id = 'acme' AND device_id = 'dev-1'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: HashMap<String, f64> = [("temp", 21.5), ("hum", 40.0), ("battery.v", 3.7), ("battery.pct", 88.0)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    assert_eq!(got, want);
    let time: SystemTime = db.query_one("SELECT time FROM telemetry_numeric LIMIT 1", &[]).await.unwrap().get(0);
    assert_eq!(ms(time), r.time_ms);
}

pub async fn rows_caught_by_the_default_partition_move_into_a_new_day_partition(engine: &Engine) {
    let mut cfg = engine.config(3);
    cfg.partitions_ahead = 0;
    let _store = engine.connect_with(&cfg).await;
    let db = engine.pg().await;
    let tomorrow = now_ms() + DAY_MS;
    let table = partition::name(partition::day_of_ms(tomorrow).unwrap()).unwrap();
    assert!(!relation_exists(&db, &table).await, "{table} not made yet");
    // Someone inserts by hand for a day without a partition.
    db.execute(
        "INSERT INTO telemetry (time, received_at, tenant_id, project_id, device_id, mqtt_topic, id, raw) \
         VALUES ($1, now(), 'acme', 'p1', 'd', 't', gen_random_uuid(), '\\x00')",
        &[&(UNIX_EPOCH + Duration::from_millis(tomorrow as u64))],
    )
    .await
    .unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry_default").await, 1);
    cfg.partitions_ahead = 2;
    let mut store2 = engine.connect_with(&cfg).await;
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry_default").await, 0);
    assert_eq!(count(&db, &format!("SELECT count(*) FROM {table}")).await, 1);
    store2.enforce_retention().await.expect("retention");
}

/// A batch goes 500 rows per statement in one transaction: a record id
/// twice in one batch, in different statements, is stored once and counted
/// once as a duplicate; the batch's dead letter commits with it.
pub async fn a_batch_of_many_statements_stores_each_id_once(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let mut rows = fleet_rows(1_200, 2 * DAY_MS);
    let again = rows[3].clone();
    rows.push(again);
    let dead = DeadLetterRow {
        source: "kafka:iot-dead-letters/0@1".into(),
        received_ms: now_ms(),
        reason: "invalid_json".into(),
        error: "test".into(),
        mqtt_topic: None,
        headers: vec![],
        payload: bytes::Bytes::from_static(b"x"),
    };
    let out = store.write(&rows, std::slice::from_ref(&dead)).await.expect("write");
    assert_eq!((out.inserted, out.duplicates, out.dead_letters_inserted), (1_200, 1, 1));
    let db = engine.pg().await;
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry").await, 1_200);
    assert_eq!(count(&db, "SELECT count(DISTINCT id) FROM telemetry").await, 1_200);
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 1);
    let out = store.write(&rows, &[]).await.expect("write again");
    assert_eq!((out.inserted, out.duplicates), (0, 1_201));
}

/// Rows inserted into `telemetry`'s partitions (or chunks), as the server's
/// statistics count them: aborted inserts included. Waits until they reach
/// `at_least` (the counters are published up to a second or so after a
/// transaction ends), or 20 s; returns the count then.
async fn tuples_inserted(db: &tokio_postgres::Client, at_least: i64) -> i64 {
    let sql = "SELECT coalesce(sum(n_tup_ins), 0)::bigint FROM pg_stat_user_tables \
               WHERE relid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'telemetry'::regclass)";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = count(db, sql).await;
        if n >= at_least || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A batch goes by binary COPY; one holding a row already stored (placed
/// last, so the COPY writes every other row before it fails) is written
/// again by INSERT .. ON CONFLICT DO NOTHING. The server's count of inserted
/// tuples shows both attempts: the rolled-back COPY's rows and the INSERT's.
/// What is stored is each row once, and the duplicate is counted.
pub async fn a_batch_with_a_stored_row_is_copied_then_inserted(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let db = engine.pg().await;
    let first = fleet_rows(1_000, DAY_MS);
    let out = store.write(&first, &[]).await.expect("write the first batch");
    assert_eq!((out.inserted, out.duplicates), (1_000, 0));
    assert!(!out.redone_by_insert, "the first batch goes by COPY alone");
    let before = tuples_inserted(&db, 1_000).await;
    assert_eq!(before, 1_000, "the first batch, once");

    let stored = first.iter().max_by_key(|r| (r.time_ms, r.id)).expect("rows").clone();
    let mut second = fleet_rows(999, DAY_MS);
    for (i, r) in second.iter_mut().enumerate() {
        // Before the stored row in (time, id) order, so it is copied last.
        r.time_ms = r.time_ms.min(stored.time_ms - 1 - i as i64);
    }
    second.push(stored);
    let out = store.write(&second, &[]).await.expect("write the batch with a stored row");
    assert_eq!((out.inserted, out.duplicates), (999, 1));
    assert!(out.redone_by_insert, "COPY met the stored row: the batch went again by INSERT");
    let after = tuples_inserted(&db, before + 2 * 999).await;
    // The COPY's rows up to the stored one (which counts too, in this
    // server's version) were written and rolled back; INSERT alone writes 999.
    assert!((2 * 999..=2 * 1_000).contains(&(after - before)), "COPY, then INSERT: {} tuples", after - before);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry").await, 1_999);
    assert_eq!(count(&db, "SELECT count(DISTINCT (time, id)) FROM telemetry").await, 1_999);

    // The batches right after a conflict go by INSERT: the same batch again
    // is all duplicates, and no tuple is written for it.
    let out = store.write(&second, &[]).await.expect("write it again");
    assert_eq!((out.inserted, out.duplicates), (0, 1_000));
    assert!(!out.redone_by_insert, "after a conflict, batches go by INSERT first");
    let third = fleet_rows(10, DAY_MS);
    let out = store.write(&third, &[]).await.expect("write new rows");
    assert_eq!((out.inserted, out.duplicates), (10, 0));
    assert_eq!(tuples_inserted(&db, after + 10).await - after, 10);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry").await, 2_009);
}
