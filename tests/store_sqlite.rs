//! The SQLite store on a file in a temporary directory: writes, replays,
//! retention, dead letters, reopening, and the dashboard's queries.

mod common_store;

use common_store::*;
use iotpipe::record::now_ms;
use iotpipe::store::query::SeriesRange;
use iotpipe::store::{Store, StoreError, StoreRow};
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A plain connection to check what the store wrote.
fn open(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path).expect("open the database")
}

fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).expect(sql)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_rows_are_stored_exactly_once_and_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/iotpipe.db");
    let mut store = Store::connect(&config(sqlite_url(&path), 3)).await.expect("connect");
    assert_eq!(store.describe(), format!("sqlite {}", path.display()));
    assert!(matches!(store, Store::Sqlite(_)));

    let rows = fleet_rows(20_000, 2 * DAY_MS);
    let started = Instant::now();
    for batch in rows.chunks(5_000) {
        let out = store.write(batch, &[]).await.expect("write");
        assert_eq!((out.inserted, out.duplicates, out.rejected), (5_000, 0, 0));
    }
    let secs = started.elapsed().as_secs_f64();
    println!("sqlite: wrote 20,000 rows in batches of 5,000 in {secs:.2} s = {:.0} rows/s", 20_000.0 / secs);

    let db = open(&path);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry"), 20_000);
    let mut expected: HashMap<(String, String, String), i64> = HashMap::new();
    for r in &rows {
        *expected.entry((r.tenant_id.clone(), r.project_id.clone(), r.device_id.clone())).or_default() += 1;
    }
    assert_eq!(expected.len(), 120);
    let grouped = |sql: &str| -> HashMap<(String, String, String), i64> {
        let mut stmt = db.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?, r.get(2)?), r.get(3)?))).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    };
    assert_eq!(grouped("SELECT tenant_id, project_id, device_id, count(*) FROM telemetry GROUP BY 1, 2, 3"), expected);
    assert_eq!(
        grouped("SELECT tenant_id, project_id, device_id, messages FROM telemetry_devices"),
        expected,
        "the device summary counts every row"
    );

    let by_id: HashMap<String, &StoreRow> = rows.iter().map(|r| (r.id.to_string(), r)).collect();
    let mut stmt = db
        .prepare(
            "SELECT id, raw, payload, time, event_time, received_at, tenant_id, device_id, mqtt_topic FROM telemetry",
        )
        .unwrap();
    let mut stored = stmt.query([]).unwrap();
    let mut seen = 0;
    while let Some(s) = stored.next().unwrap() {
        let id: String = s.get(0).unwrap();
        let r = by_id[&id];
        assert_eq!(s.get::<_, Vec<u8>>(1).unwrap(), r.payload.as_ref(), "raw is byte-identical");
        let payload: String = s.get(2).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&payload).unwrap(),
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()
        );
        assert_eq!(s.get::<_, i64>(3).unwrap(), r.time_ms, "event time inside the window is the row's time");
        assert_eq!(s.get::<_, Option<i64>>(4).unwrap(), Some(r.time_ms));
        assert_eq!(s.get::<_, i64>(5).unwrap(), r.received_ms);
        assert_eq!(s.get::<_, String>(6).unwrap(), r.tenant_id);
        assert_eq!(s.get::<_, String>(7).unwrap(), r.device_id);
        assert_eq!(s.get::<_, String>(8).unwrap(), r.mqtt_topic);
        seen += 1;
    }
    assert_eq!(seen, 20_000);

    // A replay: nothing new, everything reported as duplicates, the summary unchanged.
    let mut duplicates = 0;
    for batch in rows.chunks(7_000) {
        let out = store.write(batch, &[]).await.expect("write again");
        assert_eq!(out.inserted, 0);
        duplicates += out.duplicates;
    }
    assert_eq!(duplicates, 20_000);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry"), 20_000);
    assert_eq!(count(&db, "SELECT sum(messages) FROM telemetry_devices"), 20_000);
    store.ping().await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_expired_rows_and_old_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iotpipe.db");
    let now = now_ms();
    // Written under a 7-day window, so the 4- and 5-day-old rows keep their event time.
    let mut wide = Store::connect(&config(sqlite_url(&path), 7)).await.expect("connect 7d");
    let mut rng = rand::thread_rng();
    let mut rows = Vec::new();
    for (age_days, n) in [(1, 10), (2, 10), (4, 10), (5, 10)] {
        for i in 0..n {
            let ts = now - age_days * DAY_MS - i * 60_000;
            rows.push(row("acme", "p1", &format!("age-{age_days}"), ts, payload(&mut rng, "d", ts, i as u64)));
        }
    }
    let dead = [dead_letter("journal:1", now - 5 * DAY_MS), dead_letter("journal:2", now - 60_000)];
    let out = wide.write(&rows, &dead).await.expect("write");
    assert_eq!((out.inserted, out.dead_letters_inserted), (40, 2));

    let mut narrow = Store::connect(&config(sqlite_url(&path), 3)).await.expect("connect 3d");
    let outcome = narrow.enforce_retention().await.expect("retention");
    assert_eq!((outcome.rows_deleted, outcome.dead_letters_deleted), (20, 1), "{outcome:?}");
    assert!(outcome.partitions_dropped.is_empty() && outcome.partitions_created.is_empty());
    let db = open(&path);
    let devices = |sql: &str| -> HashSet<String> {
        let mut stmt = db.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    };
    let kept = HashSet::from(["age-1".to_string(), "age-2".to_string()]);
    assert_eq!(devices("SELECT DISTINCT device_id FROM telemetry"), kept);
    assert_eq!(devices("SELECT device_id FROM telemetry_devices"), kept, "expired devices leave the summary");
    assert_eq!(count(&db, "SELECT sum(messages) FROM telemetry_devices"), 20);
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters"), 1);

    // Running it again finds nothing more to do.
    let again = narrow.enforce_retention().await.expect("retention again");
    assert_eq!((again.rows_deleted, again.dead_letters_deleted), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_works_through_many_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iotpipe.db");
    let mut wide = Store::connect(&config(sqlite_url(&path), 7)).await.expect("connect 7d");
    let old = now_ms() - 5 * DAY_MS;
    let rows: Vec<_> =
        (0..25_000).map(|i| row("acme", "p1", &format!("d{}", i % 7), old - i, b"{}".to_vec())).collect();
    wide.write(&rows, &[]).await.expect("write");
    let fresh = row("acme", "p1", "d0", now_ms(), b"{}".to_vec());
    wide.write(std::slice::from_ref(&fresh), &[]).await.expect("write");
    let mut narrow = Store::connect(&config(sqlite_url(&path), 3)).await.expect("connect 3d");
    assert_eq!(narrow.enforce_retention().await.expect("retention").rows_deleted, 25_000);
    let db = open(&path);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry_devices WHERE device_id = 'd0' AND messages = 1"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry_devices"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_kept_with_their_reason_once_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iotpipe.db");
    let mut store = Store::connect(&config(sqlite_url(&path), 3)).await.expect("connect");
    let d = dead_letter("journal:42", now_ms());
    let first = store.write(&[], std::slice::from_ref(&d)).await.expect("write");
    assert_eq!((first.dead_letters_inserted, first.dead_letters_duplicates), (1, 0));
    let second = store.write(&[], std::slice::from_ref(&d)).await.expect("write again");
    assert_eq!((second.dead_letters_inserted, second.dead_letters_duplicates), (0, 1));
    let db = open(&path);
    let got = db
        .query_row(
            "SELECT source, received_at, reason, error, mqtt_topic, headers, payload FROM dead_letters",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                ))
            },
        )
        .unwrap();
    assert_eq!((got.0, got.1, got.2, got.3, got.4), (d.source, d.received_ms, d.reason, d.error, d.mqtt_topic));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&got.5).unwrap(),
        serde_json::json!({"id": "0190", "received_at": "2026-01-01T00:00:00.000Z"})
    );
    assert_eq!(got.6, d.payload.to_vec());
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_that_are_not_json_keep_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iotpipe.db");
    let mut store = Store::connect(&config(sqlite_url(&path), 3)).await.expect("connect");
    let now = now_ms();
    let bodies: [&[u8]; 5] = [b"\xff\xfe\x00binary", b"plain text", b"", b"1e400", br#"{"nul": "a\u0000b"}"#];
    let rows: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| row("acme", "p1", &format!("d{i}"), now - i as i64, b.to_vec()))
        .collect();
    assert_eq!(store.write(&rows, &[]).await.expect("write").inserted, 5);
    let db = open(&path);
    for (i, r) in rows.iter().enumerate() {
        let (payload, raw): (Option<String>, Vec<u8>) = db
            .query_row("SELECT payload, raw FROM telemetry WHERE id = ?1", [r.id.to_string()], |s| {
                Ok((s.get(0)?, s.get(1)?))
            })
            .unwrap();
        assert_eq!(raw, r.payload.to_vec(), "{}: raw keeps every byte", r.device_id);
        assert_eq!(payload.is_some(), i == 4, "{}: payload only for JSON", r.device_id);
    }
    // The queries cope with every kind of payload.
    let q = store.query_handle().expect("query handle");
    for i in 0..5 {
        let device = format!("d{i}");
        q.series("acme", "p1", &device, SeriesRange::Minutes15, None).await.expect("series").expect("known device");
        let latest = q.latest("acme", "p1", &device).await.expect("latest").expect("known device");
        if i == 1 {
            assert_eq!(latest.payload, serde_json::json!("plain text"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_outside_the_window_are_filed_under_the_receive_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iotpipe.db");
    let mut store = Store::connect(&config(sqlite_url(&path), 3)).await.expect("connect");
    let now = now_ms();
    let mut rng = rand::thread_rng();
    let (future, ancient) = (now + 30 * DAY_MS, now - 400 * DAY_MS);
    let rows = vec![
        row("acme", "p1", "future", future, payload(&mut rng, "future", future, 1)),
        row("acme", "p1", "ancient", ancient, payload(&mut rng, "ancient", ancient, 2)),
    ];
    store.write(&rows, &[]).await.expect("write");
    let db = open(&path);
    for r in &rows {
        let (time, received, event): (i64, i64, i64) = db
            .query_row("SELECT time, received_at, event_time FROM telemetry WHERE id = ?1", [r.id.to_string()], |s| {
                Ok((s.get(0)?, s.get(1)?, s.get(2)?))
            })
            .unwrap();
        assert_eq!((time, received, event), (r.received_ms, r.received_ms, r.time_ms), "{}", r.device_id);
    }
    assert_eq!(store.write(&rows, &[]).await.expect("replay").duplicates, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_the_data_and_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iotpipe.db");
    let cfg = config(sqlite_url(&path), 3);
    let rows = fleet_rows(1_000, DAY_MS);
    {
        let mut store = Store::connect(&cfg).await.expect("connect");
        store.write(&rows, &[dead_letter("journal:7", now_ms())]).await.expect("write");
    }
    let (a, b) = tokio::join!(Store::connect(&cfg), Store::connect(&cfg));
    let (mut a, _b) = (a.expect("reopen"), b.expect("reopen at the same time"));
    let out = a.write(&rows, &[]).await.expect("write again");
    assert_eq!((out.inserted, out.duplicates), (0, 1_000));
    let db = open(&path);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry"), 1_000);
    assert_eq!(count(&db, "SELECT count(*) FROM dead_letters"), 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM iotpipe_schema_migrations"),
        iotpipe::store::sqlite::migrate::MIGRATIONS.len() as i64
    );
    let tenants = a.query_handle().expect("query handle").tenants().await.expect("tenants");
    assert_eq!(tenants.iter().map(|t| t.messages).sum::<u64>(), 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_is_created_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(sqlite_url(&dir.path().join("none/iotpipe.db")), 3);
    cfg.create_database = false;
    let e = Store::connect(&cfg).await.err().expect("no file, no creating");
    assert!(matches!(e, StoreError::Sqlite { .. }) && !e.is_retryable(), "{e}");
    assert!(e.to_string().contains("none/iotpipe.db"), "{e}");
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, [b'x'; 4096]).unwrap();
    let e = Store::connect(&config(sqlite_url(&blocked.join("iotpipe.db")), 3)).await.err().expect("not a directory");
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    let e = Store::connect(&config(sqlite_url(&blocked), 3)).await.err().expect("not a database");
    assert!(e.to_string().starts_with("sqlite:"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_answer_from_the_stored_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iotpipe.db");
    let mut store = Store::connect(&config(sqlite_url(&path), 3)).await.expect("connect");
    let now = now_ms();
    let mut rows = Vec::new();
    for (i, (tenant, project, device)) in
        [("t1", "p1", "a"), ("t1", "p1", "b"), ("t1", "p2", "a"), ("t2", "p1", "a")].into_iter().enumerate()
    {
        for k in 0..10 {
            let ts = now - 60_000 + k * 1_000;
            let body = serde_json::json!({"temp": 20 + k, "hum": 50.5, "ok": true, "name": "x", "nested": {"v": 1}});
            rows.push(row(tenant, project, device, ts, serde_json::to_vec(&body).unwrap()));
        }
        rows.push(row(tenant, project, device, now - 2 * DAY_MS + i as i64, br#"{"temp": 1000}"#.to_vec()));
    }
    store.write(&rows, &[dead_letter("journal:1", now - 10), dead_letter("journal:2", now)]).await.expect("write");
    let q = store.query_handle().expect("query handle");
    assert_eq!(q.describe(), store.describe());

    let tenants = q.tenants().await.unwrap();
    let t: Vec<_> = tenants.iter().map(|t| (t.tenant_id.as_str(), t.projects, t.devices, t.messages)).collect();
    assert_eq!(t, vec![("t1", 2, 3, 33), ("t2", 1, 1, 11)]);
    assert!(tenants.iter().all(|t| t.last_seen >= now - 1_000 && t.last_seen <= now_ms()));
    let p: Vec<_> =
        q.projects("t1").await.unwrap().into_iter().map(|p| (p.project_id, p.devices, p.messages)).collect();
    assert_eq!(p, vec![("p1".to_string(), 2, 22), ("p2".to_string(), 1, 11)]);
    assert!(q.projects("nobody").await.unwrap().is_empty());
    let d: Vec<_> = q.devices("t1", "p1").await.unwrap().into_iter().map(|d| (d.device_id, d.messages)).collect();
    assert_eq!(d, vec![("a".to_string(), 11), ("b".to_string(), 11)]);
    assert!(q.devices("t1", "p9").await.unwrap().is_empty());

    let s = q.series("t1", "p1", "a", SeriesRange::Minutes15, None).await.unwrap().expect("series");
    assert_eq!((s.range, s.device_id.as_str()), (SeriesRange::Minutes15, "a"));
    assert_eq!(s.fields.keys().collect::<Vec<_>>(), vec!["hum", "temp"], "numeric top-level fields only");
    let temps = &s.fields["temp"];
    let n: usize = temps.len();
    assert!((4..=10).contains(&n), "{temps:?}");
    assert!(temps.windows(2).all(|w| w[0].0 + 3_000 <= w[1].0), "3 s buckets in time order: {temps:?}");
    assert!(temps.iter().all(|(t, v)| *t >= s.from && *t <= s.to && (20.0..=29.0).contains(v)), "{temps:?}");
    assert!(s.fields["hum"].iter().all(|(_, v)| *v == 50.5));
    let day3 = q.series("t1", "p1", "a", SeriesRange::Days3, Some("temp")).await.unwrap().expect("series");
    assert_eq!(day3.fields.keys().collect::<Vec<_>>(), vec!["temp"]);
    assert_eq!(day3.fields["temp"].first().map(|p| p.1), Some(1000.0), "the 2-day-old row");
    let none = q.series("t1", "p1", "a", SeriesRange::Hour1, Some("no such \"field\"")).await.unwrap().unwrap();
    assert!(none.fields.is_empty());
    assert!(q.series("t1", "p1", "zz", SeriesRange::Hour1, None).await.unwrap().is_none());

    let latest = q.latest("t2", "p1", "a").await.unwrap().expect("latest");
    let newest = rows.iter().filter(|r| r.tenant_id == "t2").max_by_key(|r| r.time_ms).unwrap();
    assert_eq!((latest.time, latest.id.clone()), (newest.time_ms, newest.id.to_string()));
    assert_eq!(latest.payload["temp"], serde_json::json!(29));
    assert_eq!(latest.mqtt_topic, newest.mqtt_topic);
    assert!(q.latest("t2", "p1", "b").await.unwrap().is_none());

    let dl = q.dead_letters(50).await.unwrap();
    assert_eq!(dl.iter().map(|d| d.source.as_str()).collect::<Vec<_>>(), vec!["journal:2", "journal:1"]);
    assert_eq!(dl[0].payload_preview, "\u{0}\u{1}not json");
    assert_eq!(q.dead_letters(1).await.unwrap().len(), 1);
}

/// Query latencies on a million rows (3 tenants × 2 projects × 20 devices
/// over 3 days). Slow to fill: run it on its own, in release:
/// `cargo test --release --test store_sqlite -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn a_million_rows_query_latencies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iotpipe.db");
    let mut store = Store::connect(&config(sqlite_url(&path), 3)).await.expect("connect");
    // As a live fleet sends them: batch k holds the k-th hundredth of the 3 days.
    let span = 3 * DAY_MS - 3_600_000;
    let start = now_ms() - span;
    let mut rng = rand::thread_rng();
    let mut writing = std::time::Duration::ZERO;
    for k in 0..100 {
        let rows: Vec<StoreRow> = (0..10_000)
            .map(|i| {
                let (tenant, project, device) = (
                    format!("tenant-{}", i % 3),
                    format!("project-{}", (i / 3) % 2),
                    format!("dev-{:02}", (i / 6) % 20),
                );
                let ts = start + k * span / 100 + rng.gen_range(0..span / 100);
                let p = payload(&mut rng, &device, ts, i as u64);
                row(&tenant, &project, &device, ts, p)
            })
            .collect();
        let started = Instant::now();
        store.write(&rows, &[]).await.expect("write");
        writing += started.elapsed();
    }
    let secs = writing.as_secs_f64();
    println!("wrote 1,000,000 rows (batches of 10,000, in time order) in {secs:.1} s = {:.0} rows/s", 1e6 / secs);
    // The same with times all over the 3 days (a replay of old data), into the full database.
    let rows = fleet_rows(20_000, span);
    let started = Instant::now();
    for batch in rows.chunks(10_000) {
        store.write(batch, &[]).await.expect("write");
    }
    let secs = started.elapsed().as_secs_f64();
    println!("then 20,000 rows with random times: {:.0} rows/s", 20_000.0 / secs);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("database file: {:.0} MiB", size as f64 / 1048576.0);
    let q = store.query_handle().expect("query handle");
    async fn time<T>(label: &str, f: impl std::future::Future<Output = Result<T, StoreError>>) -> T {
        let started = Instant::now();
        let v = f.await.expect(label);
        println!("{label}: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        v
    }
    time("tenants", q.tenants()).await;
    time("projects", q.projects("tenant-1")).await;
    time("devices", q.devices("tenant-1", "project-1")).await;
    for range in SeriesRange::ALL {
        let s = time(&format!("series {}", range.as_str()), q.series("tenant-1", "project-1", "dev-03", range, None))
            .await
            .expect("device");
        println!(
            "  {} fields, {} points of temperature",
            s.fields.len(),
            s.fields.get("temperature").map_or(0, Vec::len)
        );
        time(
            &format!("series {} field=temperature", range.as_str()),
            q.series("tenant-1", "project-1", "dev-03", range, Some("temperature")),
        )
        .await;
    }
    time("latest", q.latest("tenant-1", "project-1", "dev-03")).await;
    time("dead letters", q.dead_letters(50)).await;
    let started = Instant::now();
    let out = store.enforce_retention().await.expect("retention");
    println!("retention run (nothing to delete): {:.1} ms, {out:?}", started.elapsed().as_secs_f64() * 1e3);
}
