//! SQLite-only behaviour: retention through many delete chunks, a missing
//! file, the dashboard's queries, and (ignored) query latencies on a
//! million rows.

use crate::common::store::{config, dead_letter, fleet_rows, payload, row, DAY_MS};
use crate::engine::sqlite::{count, open};
use crate::engine::Engine;
use iotpipe::record::now_ms;
use iotpipe::store::query::SeriesRange;
use iotpipe::store::{Page, Store, StoreError, StoreRow, MAX_LIST_LIMIT};
use rand::Rng;
use std::path::Path;
use std::time::Instant;

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

pub async fn retention_works_through_many_chunks(engine: &Engine) {
    let path = engine.path();
    let mut wide = engine.connect(7).await;
    let old = now_ms() - 5 * DAY_MS;
    let rows: Vec<_> =
        (0..25_000).map(|i| row("acme", "p1", &format!("d{}", i % 7), old - i, b"{}".to_vec())).collect();
    wide.write(&rows, &[]).await.expect("write");
    let fresh = row("acme", "p1", "d0", now_ms(), b"{}".to_vec());
    wide.write(std::slice::from_ref(&fresh), &[]).await.expect("write");
    let mut narrow = engine.connect(3).await;
    assert_eq!(narrow.enforce_retention().await.expect("retention").rows_deleted, 25_000);
    let db = open(path);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry_devices WHERE device_id = 'd0' AND messages = 1"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM telemetry_devices"), 1);
}

pub async fn a_missing_file_is_created_only_when_allowed(engine: &Engine) {
    let dir = engine.path().parent().expect("the file's directory");
    let mut cfg = config(sqlite_url(&dir.join("none/iotpipe.db")), 3);
    cfg.create_database = false;
    let e = Store::connect(&cfg).await.err().expect("no file, no creating");
    assert!(matches!(e, StoreError::Sqlite { .. }) && !e.is_retryable(), "{e}");
    assert!(e.to_string().contains("none/iotpipe.db"), "{e}");
    std::fs::create_dir_all(dir).unwrap();
    let blocked = dir.join("file");
    std::fs::write(&blocked, [b'x'; 4096]).unwrap();
    let e = Store::connect(&config(sqlite_url(&blocked.join("iotpipe.db")), 3)).await.err().expect("not a directory");
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    let e = Store::connect(&config(sqlite_url(&blocked), 3)).await.err().expect("not a database");
    assert!(e.to_string().starts_with("sqlite:"), "{e}");
}

pub async fn queries_answer_from_the_stored_rows(engine: &Engine) {
    let mut store = engine.connect(3).await;
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

    let all = Page::first(MAX_LIST_LIMIT);
    let tenants = q.tenants(&all).await.unwrap();
    let t: Vec<_> = tenants.iter().map(|t| (t.tenant_id.as_str(), t.projects, t.devices, t.messages)).collect();
    assert_eq!(t, vec![("t1", 2, 3, 33), ("t2", 1, 1, 11)]);
    assert!(tenants.iter().all(|t| t.last_seen >= now - 1_000 && t.last_seen <= now_ms()));
    let p: Vec<_> =
        q.projects("t1", &all).await.unwrap().into_iter().map(|p| (p.project_id, p.devices, p.messages)).collect();
    assert_eq!(p, vec![("p1".to_string(), 2, 22), ("p2".to_string(), 1, 11)]);
    assert!(q.projects("nobody", &all).await.unwrap().is_empty());
    let d: Vec<_> = q.devices("t1", "p1", &all).await.unwrap().into_iter().map(|d| (d.device_id, d.messages)).collect();
    assert_eq!(d, vec![("a".to_string(), 11), ("b".to_string(), 11)]);
    assert!(q.devices("t1", "p9", &all).await.unwrap().is_empty());
    // Pages: a limit, then the entries after a cursor.
    let first = q.tenants(&Page::first(1)).await.unwrap();
    assert_eq!(first.iter().map(|t| t.tenant_id.as_str()).collect::<Vec<_>>(), vec!["t1"]);
    let next = q.tenants(&Page { after: Some("t1".into()), limit: 1 }).await.unwrap();
    assert_eq!(next.iter().map(|t| t.tenant_id.as_str()).collect::<Vec<_>>(), vec!["t2"]);
    assert!(q.tenants(&Page { after: Some("t2".into()), limit: 1 }).await.unwrap().is_empty());
    let p2 = q.projects("t1", &Page { after: Some("p1".into()), limit: 5 }).await.unwrap();
    assert_eq!(p2.iter().map(|p| p.project_id.as_str()).collect::<Vec<_>>(), vec!["p2"]);
    let d2 = q.devices("t1", "p1", &Page { after: Some("a".into()), limit: 5 }).await.unwrap();
    assert_eq!(d2.iter().map(|d| d.device_id.as_str()).collect::<Vec<_>>(), vec!["b"]);

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
/// `cargo test --release --test store -- --ignored --nocapture a_million_rows`.
pub async fn a_million_rows_query_latencies(engine: &Engine) {
    let path = engine.path();
    let mut store = engine.connect(3).await;
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
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!("database file: {:.0} MiB", size as f64 / 1048576.0);
    let q = store.query_handle().expect("query handle");
    async fn time<T>(label: &str, f: impl std::future::Future<Output = Result<T, StoreError>>) -> T {
        let started = Instant::now();
        let v = f.await.expect(label);
        println!("{label}: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        v
    }
    let all = Page::first(MAX_LIST_LIMIT);
    time("tenants", q.tenants(&all)).await;
    time("projects", q.projects("tenant-1", &all)).await;
    time("devices", q.devices("tenant-1", "project-1", &all)).await;
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
