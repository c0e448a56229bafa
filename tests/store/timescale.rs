//! TimescaleDB only: the hypertables and their jobs (retention, compression,
//! the rollup's refresh) exist and run, a job that fails in the background
//! shows in the sink's metrics, one row per id survives compressed
//! chunks, the rollup aggregates the numeric fields; and on a server that has
//! the extension's files but does not preload it, `auto` falls back to day
//! partitions while `on` refuses with the reason.

use crate::common::store::{dead_letter, fleet_rows, row, DAY_MS};
use crate::engine::postgres::count;
use crate::engine::Engine;
use iotpipe::pipeline::poll_timescale_jobs;
use iotpipe::record::now_ms;
use iotpipe::store::{Store, TimescaleMode};
use iotpipe::telemetry::StoreMetrics;
use std::time::{Duration, Instant};

/// Run every job of `proc` (e.g. `policy_retention`) now; each must succeed.
async fn run_jobs(db: &tokio_postgres::Client, proc: &str) -> usize {
    let jobs = db
        .query("SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = $1 ORDER BY job_id", &[&proc])
        .await
        .expect("jobs");
    for j in &jobs {
        let id: i32 = j.get(0);
        // TimescaleDB's scheduler runs new jobs by itself within seconds; a
        // refresh it has under way makes ours wait (55P03), not fail.
        let mut attempts = 0;
        loop {
            match db.batch_execute(&format!("CALL run_job({id})")).await {
                Ok(()) => break,
                Err(e) if e.code().map(|c| c.code()) == Some("55P03") && attempts < 40 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Err(e) => panic!("run_job({id}) {proc}: {e}"),
            }
        }
    }
    jobs.len()
}

pub async fn hypertables_and_their_jobs_exist_and_run(engine: &Engine) {
    let mut store = engine.connect(3).await;
    store.write(&fleet_rows(500, DAY_MS / 2), &[dead_letter("journal:1", now_ms())]).await.expect("write");
    let db = engine.pg().await;
    let hypertables: Vec<String> = db
        .query("SELECT hypertable_name::text FROM timescaledb_information.hypertables ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(hypertables, ["dead_letters", "telemetry"]);
    let chunk: String = db
        .query_one(
            "SELECT time_interval::text FROM timescaledb_information.dimensions WHERE hypertable_name = 'telemetry'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(chunk, "1 day");
    let jobs = |sql: &'static str| {
        let db = &db;
        async move { count(db, sql).await }
    };
    assert_eq!(
        jobs("SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'").await,
        3,
        "telemetry, dead_letters and the rollup each have a retention policy"
    );
    assert_eq!(run_jobs(&db, "policy_retention").await, 3);
    assert_eq!(run_jobs(&db, "policy_compression").await, 1);
    assert_eq!(run_jobs(&db, "policy_refresh_continuous_aggregate").await, 1);
    let retention: String = db
        .query_one(
            "SELECT config->>'drop_after' FROM timescaledb_information.jobs \
             WHERE proc_name = 'policy_retention' AND hypertable_name = 'telemetry'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(retention, "72:00:00", "the window of store.retention (3 days, as seconds)");
    assert_eq!(engine.count().await, 500, "nothing inside the window was dropped");
    // Reconnecting (a restart) replaces the policies instead of adding more.
    drop(store);
    let _again = engine.connect(3).await;
    assert_eq!(jobs("SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL").await, 5);
}

/// The value of one sample line (`name{labels}`) of the store metrics after a poll.
async fn polled(store: &mut Store, metrics: &StoreMetrics, series: &str) -> Option<f64> {
    poll_timescale_jobs(store, metrics).await;
    let mut text = String::new();
    metrics.render(&mut text);
    let prefix = format!("{series} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.parse().ok())
}

/// The scheduler's view of one job: (total runs, last run status).
async fn job_stats(db: &tokio_postgres::Client, job: i32) -> (i64, Option<String>) {
    let r = db
        .query_one(
            "SELECT coalesce(total_runs, 0)::bigint, last_run_status FROM timescaledb_information.job_stats \
             WHERE job_id = $1",
            &[&job],
        )
        .await
        .expect("job_stats");
    (r.get(0), r.get(1))
}

/// Have TimescaleDB's scheduler (not `run_job`, which runs in the calling
/// session and records no stats) run `job` now, and wait until it finished.
async fn run_in_background(db: &tokio_postgres::Client, job: i32) -> Option<String> {
    let (runs_before, _) = job_stats(db, job).await;
    db.batch_execute(&format!("SELECT alter_job({job}, next_start => now())")).await.expect("alter_job next_start");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (runs, status) = job_stats(db, job).await;
        if runs > runs_before && status.is_some() {
            return status;
        }
        assert!(Instant::now() < deadline, "the scheduler did not run job {job} within 120 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A retention job that fails for real (a view depends on an expired chunk,
/// so `drop_chunks` refuses to drop it) raises
/// `iotpipe_sink_timescale_jobs_failed{kind="retention"}` and the failure
/// counter; once the job succeeds again the gauge is 0 and the counter stays.
pub async fn a_failing_job_shows_in_the_job_metrics(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let metrics = StoreMetrics::new();
    let failed = "iotpipe_sink_timescale_jobs_failed{kind=\"retention\"}";
    let failures = "iotpipe_sink_timescale_job_failures_total{kind=\"retention\"}";
    assert_eq!(polled(&mut store, &metrics, failed).await, Some(0.0), "a fresh store has no failed job");
    assert_eq!(polled(&mut store, &metrics, "iotpipe_sink_timescale_jobs{kind=\"retention\"}").await, Some(3.0));
    assert_eq!(polled(&mut store, &metrics, failures).await, Some(0.0));

    // Ten days old (received then too): an expired chunk, and a view on it.
    let ten_days_ago = now_ms() - 10 * DAY_MS;
    let mut old = row("acme", "p1", "dev-1", ten_days_ago, b"{\"v\":1}".to_vec());
    old.received_ms = ten_days_ago;
    store.write(&[old], &[]).await.expect("write an expired row");
    let db = engine.pg().await;
    let chunk: String = db
        .query_one(
            "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks \
             WHERE hypertable_name = 'telemetry' AND range_end < now() - INTERVAL '3 days'",
            &[],
        )
        .await
        .expect("the expired chunk")
        .get(0);
    db.batch_execute(&format!("CREATE VIEW pinned_chunk AS SELECT * FROM {chunk}")).await.expect("pin the chunk");
    let job: i32 = db
        .query_one(
            "SELECT job_id FROM timescaledb_information.jobs \
             WHERE proc_name = 'policy_retention' AND hypertable_name = 'telemetry'",
            &[],
        )
        .await
        .expect("the telemetry retention job")
        .get(0);
    assert_eq!(
        run_in_background(&db, job).await.as_deref(),
        Some("Failed"),
        "drop_chunks must refuse the pinned chunk"
    );
    assert_eq!(polled(&mut store, &metrics, failed).await, Some(1.0));
    let counted = polled(&mut store, &metrics, failures).await.expect("the failure counter");
    assert!(counted >= 1.0, "{counted}");
    assert_eq!(engine.count().await, 1, "the expired row is still there");

    db.batch_execute("DROP VIEW pinned_chunk").await.expect("unpin");
    assert_eq!(run_in_background(&db, job).await.as_deref(), Some("Success"));
    assert_eq!(polled(&mut store, &metrics, failed).await, Some(0.0), "the job works again");
    assert_eq!(polled(&mut store, &metrics, failures).await, Some(counted), "a counter does not go down");
    assert_eq!(engine.count().await, 0, "the retention job dropped the chunk");
}

pub async fn compressed_chunks_keep_one_row_per_id(engine: &Engine) {
    let mut store = engine.connect(3).await;
    // Two days old: past compress_after (1 day), inside the window (3 days).
    let old: Vec<_> = (0..300)
        .map(|i| {
            row(
                "acme",
                "p1",
                &format!("dev-{}", i % 3),
                now_ms() - 2 * DAY_MS + i,
                format!("{{\"v\":{i}}}").into_bytes(),
            )
        })
        .collect();
    store.write(&old, &[]).await.expect("write");
    let db = engine.pg().await;
    assert_eq!(run_jobs(&db, "policy_compression").await, 1);
    let compressed = count(
        &db,
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'telemetry' AND is_compressed",
    )
    .await;
    assert!(compressed >= 1, "the old chunk is compressed");
    let again = store.write(&old, &[]).await.expect("write the same rows again");
    assert_eq!((again.inserted, again.duplicates), (0, 300), "ON CONFLICT DO NOTHING holds on compressed chunks");
    let newer: Vec<_> =
        (0..10).map(|i| row("acme", "p1", "dev-9", now_ms() - 2 * DAY_MS + 1_000 + i, b"{\"v\":1}".to_vec())).collect();
    let out = store.write(&newer, &[]).await.expect("write new rows into the compressed chunk's range");
    assert_eq!(out.inserted, 10);
    assert_eq!(engine.count().await, 310);
}

pub async fn the_rollup_aggregates_the_numeric_fields(engine: &Engine) {
    let mut store = engine.connect(3).await;
    // Aligned to a minute so that 120 samples 10 s apart fill exactly 20 buckets.
    let start = (now_ms() - 30 * 60_000) / 60_000 * 60_000;
    let rows: Vec<_> = (0..120)
        .map(|i| {
            let body = format!("{{\"temp\": {}, \"battery\": {{\"v\": 3.5}}, \"mode\": \"eco\"}}", i % 10);
            row("acme", "p1", "dev-1", start + i * 10_000, body.into_bytes())
        })
        .collect();
    store.write(&rows, &[]).await.expect("write");
    let db = engine.pg().await;
    assert_eq!(run_jobs(&db, "policy_refresh_continuous_aggregate").await, 1);
    let per_field: Vec<(String, i64, f64)> = db
        .query(
            "SELECT field, sum(samples)::bigint, avg(avg) FROM telemetry_numeric_rollup \
             WHERE device_id = 'dev-1' GROUP BY field ORDER BY field",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(per_field.len(), 2, "numbers only, top level and one object deep: {per_field:?}");
    assert_eq!((per_field[0].0.as_str(), per_field[0].1), ("battery.v", 120));
    assert!((per_field[0].2 - 3.5).abs() < 1e-9);
    assert_eq!((per_field[1].0.as_str(), per_field[1].1), ("temp", 120));
    let buckets = count(&db, "SELECT count(DISTINCT bucket) FROM telemetry_numeric_rollup").await;
    assert_eq!(buckets, 20, "one-minute buckets over 20 minutes");
    let raw = count(&db, "SELECT count(*) FROM telemetry_numeric WHERE field = 'temp'").await;
    assert_eq!(raw, 120, "the raw view agrees");
}

/// The shared test server has the extension's files only when TimescaleDB is
/// installed on this machine; it never preloads it. One line when that
/// cannot be checked here.
pub async fn without_the_preload_auto_uses_partitions_and_on_refuses(engine: &Engine) {
    let admin = engine.server().expect("a PostgreSQL engine").admin("postgres").await;
    let available = count(&admin, "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'").await == 1;
    if !available {
        eprintln!(
            "SKIPPED: TimescaleDB preload test: the extension is not installed in the test PostgreSQL (docs/storage.md)"
        );
        return;
    }
    let mut cfg = engine.config(3);
    cfg.timescaledb = TimescaleMode::On;
    let err = Store::connect(&cfg).await.err().expect("\"on\" without the preload must fail").to_string();
    assert!(err.contains("store.timescaledb") && err.contains("shared_preload_libraries"), "{err}");
    cfg.timescaledb = TimescaleMode::Auto;
    let store = Store::connect(&cfg).await.expect("auto falls back");
    let db = engine.pg().await;
    assert_eq!(count(&db, "SELECT count(*) FROM pg_class WHERE relname = 'telemetry' AND relkind = 'p'").await, 1);
    drop(store);
}

pub async fn a_partitioned_database_is_not_converted(engine: &Engine) {
    let mut cfg = engine.config(3);
    cfg.timescaledb = TimescaleMode::Off;
    let mut store = Store::connect(&cfg).await.expect("off: day partitions");
    store.write(&fleet_rows(10, DAY_MS / 4), &[]).await.expect("write");
    drop(store);
    cfg.timescaledb = TimescaleMode::On;
    let err = Store::connect(&cfg).await.err().expect("no silent conversion").to_string();
    assert!(err.contains("already partitioned"), "{err}");
    cfg.timescaledb = TimescaleMode::Auto;
    let _store = Store::connect(&cfg).await.expect("auto keeps the partitions");
    let db = engine.pg().await;
    assert_eq!(count(&db, "SELECT count(*) FROM pg_class WHERE relname = 'telemetry' AND relkind = 'p'").await, 1);
    assert_eq!(engine.count().await, 10);
}
