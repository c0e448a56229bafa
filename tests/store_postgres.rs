//! The PostgreSQL store against a real PostgreSQL 15 (no TimescaleDB here):
//! each test has a database of its own.

mod common_store;

use common_store::*;
use iotpipe::record::now_ms;
use iotpipe::store::postgres::{partition, Flavor};
use iotpipe::store::{Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.expect(sql).get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_rows_are_stored_exactly_once_and_byte_identical() {
    let name = fresh_name();
    let mut store = Store::connect(&config(pg_url(&name), 3)).await.expect("connect");
    let Store::Postgres(pg) = &store else { panic!("expected postgres") };
    assert_eq!(pg.flavor(), Flavor::Partitioned);
    let describe = store.describe();
    assert!(describe.starts_with("postgres 127.0.0.1:") && describe.ends_with(&format!("/{name}")), "{describe}");

    let rows = fleet_rows(50_000, 2 * DAY_MS);
    for batch in rows.chunks(5_000) {
        let out = store.write(batch, &[]).await.expect("write");
        assert_eq!((out.inserted, out.duplicates), (5_000, 0));
    }

    let db = pg_admin(&name).await;
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry").await, 50_000);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry_default").await, 0, "every row found its day partition");

    let mut expected: HashMap<(String, String, String), i64> = HashMap::new();
    for r in &rows {
        *expected.entry((r.tenant_id.clone(), r.project_id.clone(), r.device_id.clone())).or_default() += 1;
    }
    assert_eq!(expected.len(), 120);
    let stored: HashMap<(String, String, String), i64> = db
        .query("SELECT tenant_id, project_id, device_id, count(*) FROM telemetry GROUP BY 1, 2, 3", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
        .collect();
    assert_eq!(stored, expected);

    let by_id: HashMap<uuid::Uuid, _> = rows.iter().map(|r| (r.id, r)).collect();
    let stored = db
        .query(
            "SELECT id, raw, payload, time, event_time, tenant_id, project_id, device_id, mqtt_topic FROM telemetry",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), 50_000);
    for s in &stored {
        let id: uuid::Uuid = s.get(0);
        let r = by_id[&id];
        let raw: Vec<u8> = s.get(1);
        assert_eq!(raw, r.payload.as_ref(), "raw is byte-identical");
        let payload: serde_json::Value = s.get(2);
        assert_eq!(payload, serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap());
        assert_eq!(ms(s.get(3)), r.time_ms, "event time inside the window is the row's time");
        assert_eq!(ms(s.get(4)), r.time_ms);
        let names: (String, String, String, String) = (s.get(5), s.get(6), s.get(7), s.get(8));
        assert_eq!(names, (r.tenant_id.clone(), r.project_id.clone(), r.device_id.clone(), r.mqtt_topic.clone()));
    }

    // A replay: nothing new, everything reported as duplicates.
    let mut duplicates = 0;
    for batch in rows.chunks(10_000) {
        let out = store.write(batch, &[]).await.expect("write again");
        assert_eq!(out.inserted, 0);
        duplicates += out.duplicates;
    }
    assert_eq!(duplicates, 50_000);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry").await, 50_000);
    drop(store);
    drop_pg_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_expired_days_and_old_dead_letters() {
    let name = fresh_name();
    let now = now_ms();
    // Written under a 7-day window, so the 4- and 5-day-old rows keep their event time.
    let mut wide = Store::connect(&config(pg_url(&name), 7)).await.expect("connect 7d");
    let mut rng = rand::thread_rng();
    let mut rows = Vec::new();
    for (age_days, n) in [(1, 10), (2, 10), (4, 10), (5, 10)] {
        for i in 0..n {
            let ts = now - age_days * DAY_MS - i * 60_000;
            rows.push(row("acme", "p1", &format!("age-{age_days}"), ts, payload(&mut rng, "d", ts, i as u64)));
        }
    }
    let dead = [dead_letter("kafka:dl/0@1", now - 5 * DAY_MS), dead_letter("kafka:dl/0@2", now - 60_000)];
    let out = wide.write(&rows, &dead).await.expect("write");
    assert_eq!((out.inserted, out.dead_letters_inserted), (40, 2));
    let db = pg_admin(&name).await;
    let old_days: Vec<String> =
        [4, 5].iter().map(|a| partition::name(partition::day_of_ms(now - a * DAY_MS).unwrap()).unwrap()).collect();
    for table in &old_days {
        assert_eq!(count(&db, &format!("SELECT count(*) FROM pg_class WHERE relname = '{table}'")).await, 1);
    }

    let mut narrow = Store::connect(&config(pg_url(&name), 3)).await.expect("connect 3d");
    let outcome = narrow.enforce_retention().await.expect("retention");
    for table in &old_days {
        assert!(outcome.partitions_dropped.contains(table), "{table} dropped: {outcome:?}");
        assert_eq!(count(&db, &format!("SELECT count(*) FROM pg_class WHERE relname = '{table}'")).await, 0);
    }
    assert_eq!(outcome.dead_letters_deleted, 1);
    let remaining: HashSet<String> =
        db.query("SELECT DISTINCT device_id FROM telemetry", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(remaining, HashSet::from(["age-1".to_string(), "age-2".to_string()]));
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry").await, 20);
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 1);

    // Running it again finds nothing more to do.
    let again = narrow.enforce_retention().await.expect("retention again");
    assert!(again.partitions_dropped.is_empty() && again.dead_letters_deleted == 0, "{again:?}");
    drop((wide, narrow));
    drop_pg_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_numeric_view_lists_numbers_at_the_top_and_one_level_down() {
    let name = fresh_name();
    let mut store = Store::connect(&config(pg_url(&name), 3)).await.expect("connect");
    let body =
        br#"{"temp": 21.5, "hum": 40, "ok": true, "mode": "eco", "battery": {"v": 3.7, "pct": 88, "deep": {"x": 1}},
                    "arr": [1, 2], "tiny": 1e-400, "none": null}"#;
    let r = row("acme", "p1", "dev-1", now_ms() - 1_000, body.to_vec());
    store.write(std::slice::from_ref(&r), &[]).await.expect("write");
    let db = pg_admin(&name).await;
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
    drop(store);
    drop_pg_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_kept_with_their_reason_once_per_source() {
    let name = fresh_name();
    let mut store = Store::connect(&config(pg_url(&name), 3)).await.expect("connect");
    let d = dead_letter("kafka:iot-dead-letters/2@1234", now_ms());
    let first = store.write(&[], std::slice::from_ref(&d)).await.expect("write");
    assert_eq!((first.dead_letters_inserted, first.dead_letters_duplicates), (1, 0));
    let second = store.write(&[], std::slice::from_ref(&d)).await.expect("write again");
    assert_eq!((second.dead_letters_inserted, second.dead_letters_duplicates), (0, 1));
    let db = pg_admin(&name).await;
    let rows =
        db.query("SELECT source, reason, error, mqtt_topic, headers, payload FROM dead_letters", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.get::<_, String>(0), d.source);
    assert_eq!(r.get::<_, String>(1), "invalid_json");
    assert_eq!(r.get::<_, String>(2), d.error);
    assert_eq!(r.get::<_, Option<String>>(3), d.mqtt_topic);
    assert_eq!(
        r.get::<_, serde_json::Value>(4),
        serde_json::json!({"id": "0190", "received_at": "2026-01-01T00:00:00.000Z"})
    );
    assert_eq!(r.get::<_, Vec<u8>>(5), d.payload.to_vec());
    drop(store);
    drop_pg_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_that_are_not_json_keep_their_bytes() {
    let name = fresh_name();
    let mut store = Store::connect(&config(pg_url(&name), 3)).await.expect("connect");
    let now = now_ms();
    let bodies: [&[u8]; 4] = [b"\xff\xfe\x00binary", b"plain text", br#"{"nul": "a\u0000b"}"#, b""];
    let rows: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| row("acme", "p1", &format!("d{i}"), now - i as i64, b.to_vec()))
        .collect();
    let out = store.write(&rows, &[]).await.expect("write");
    assert_eq!(out.inserted, 4);
    let db = pg_admin(&name).await;
    for r in &rows {
        let s = db.query_one("SELECT payload IS NULL, raw FROM telemetry WHERE id = $1", &[&r.id]).await.unwrap();
        assert!(s.get::<_, bool>(0), "{}: payload is NULL", r.device_id);
        assert_eq!(s.get::<_, Vec<u8>>(1), r.payload.to_vec());
    }
    drop(store);
    drop_pg_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_outside_the_window_are_filed_under_the_receive_time() {
    let name = fresh_name();
    let mut store = Store::connect(&config(pg_url(&name), 3)).await.expect("connect");
    let now = now_ms();
    let future = now + 30 * DAY_MS;
    let ancient = now - 400 * DAY_MS;
    let mut rng = rand::thread_rng();
    let rows = vec![
        row("acme", "p1", "future", future, payload(&mut rng, "future", future, 1)),
        row("acme", "p1", "ancient", ancient, payload(&mut rng, "ancient", ancient, 2)),
    ];
    store.write(&rows, &[]).await.expect("write");
    let db = pg_admin(&name).await;
    for r in &rows {
        let s =
            db.query_one("SELECT time, received_at, event_time FROM telemetry WHERE id = $1", &[&r.id]).await.unwrap();
        assert_eq!(ms(s.get(0)), r.received_ms, "{}", r.device_id);
        assert_eq!(ms(s.get(1)), r.received_ms);
        assert_eq!(ms(s.get(2)), r.time_ms, "the device's timestamp is kept");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry_default").await, 0);
    let far = partition::name(partition::day_of_ms(future).unwrap()).unwrap();
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM pg_class WHERE relname = '{far}'")).await,
        0,
        "no partition 30 days ahead"
    );
    // Replaying them keeps one row each.
    assert_eq!(store.write(&rows, &[]).await.expect("replay").duplicates, 2);
    drop(store);
    drop_pg_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_is_created_and_concurrent_connects_migrate_once() {
    let name = fresh_name();
    let cfg = config(pg_url(&name), 3);
    let (a, b) = tokio::join!(Store::connect(&cfg), Store::connect(&cfg));
    let (mut a, b) = (a.expect("first connect"), b.expect("second connect"));
    let again = Store::connect(&cfg).await.expect("connect a third time");
    let db = pg_admin(&name).await;
    let versions: Vec<i32> = db
        .query("SELECT version FROM iotpipe_schema_migrations ORDER BY version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
    let today = partition::name(partition::day_of_ms(now_ms()).unwrap()).unwrap();
    let ahead = partition::name(partition::day_of_ms(now_ms() + 2 * DAY_MS).unwrap()).unwrap();
    for table in [today, ahead, "telemetry_default".to_string()] {
        assert_eq!(count(&db, &format!("SELECT count(*) FROM pg_class WHERE relname = '{table}'")).await, 1, "{table}");
    }
    a.ping().await.expect("ping");
    drop((a, b, again));
    drop_pg_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_caught_by_the_default_partition_move_into_a_new_day_partition() {
    let name = fresh_name();
    let mut cfg = config(pg_url(&name), 3);
    cfg.partitions_ahead = 0;
    let store = Store::connect(&cfg).await.expect("connect");
    let db = pg_admin(&name).await;
    let tomorrow = now_ms() + DAY_MS;
    let table = partition::name(partition::day_of_ms(tomorrow).unwrap()).unwrap();
    assert_eq!(count(&db, &format!("SELECT count(*) FROM pg_class WHERE relname = '{table}'")).await, 0);
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
    let mut store2 = Store::connect(&cfg).await.expect("connect with partitions ahead");
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry_default").await, 0);
    assert_eq!(count(&db, &format!("SELECT count(*) FROM {table}")).await, 1);
    store2.enforce_retention().await.expect("retention");
    drop((store, store2));
    drop_pg_database(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_whether_to_retry() {
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = config(format!("postgres://iotpipe@127.0.0.1:{port}/x?sslmode=disable"), 3);
    cfg.connect_timeout = iotpipe::config::HumanDuration::secs(2);
    let e = Store::connect(&cfg).await.err().expect("no server");
    assert!(e.is_retryable(), "{e}");

    // A user without CREATEDB cannot create the database: a clear, final error.
    let admin = pg_admin("postgres").await;
    let role = fresh_name();
    admin.batch_execute(&format!("CREATE ROLE {role} LOGIN NOCREATEDB")).await.unwrap();
    let url =
        pg_url("postgres").replacen("iotpipe@", &format!("{role}@"), 1).replace("/postgres?", &format!("/{role}_db?"));
    let e = Store::connect(&config(url, 3)).await.err().expect("no right to create");
    assert!(matches!(e, StoreError::CreateDatabase { .. }), "{e}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("may not create it"), "{e}");
    admin.batch_execute(&format!("DROP ROLE {role}")).await.unwrap();

    // A bad URL names the key.
    let e = Store::connect(&config("mysql://x/y".into(), 3)).await.err().expect("bad url");
    assert!(e.to_string().starts_with("store.url:"), "{e}");
}
