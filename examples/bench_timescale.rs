//! TimescaleDB against plain PostgreSQL on this machine (run through
//! `scripts/bench-timescale.sh`, release build): rows/s through the store's
//! write path into both, the size of a million rows before and after
//! compression, and the dashboard's typical queries on raw rows and on the
//! rollup. Prints figures; asserts nothing about them.
//!
//! Arguments (all optional): `--rows N --batch N --runs N`.

#[allow(dead_code)]
#[path = "../tests/common/postgres.rs"]
mod postgres;
#[allow(dead_code)]
#[path = "../tests/common/services.rs"]
mod services;
#[allow(dead_code)]
#[path = "../tests/common/store.rs"]
mod store;

use iotpipe::store::{Store, StoreRow, TimescaleMode};
use postgres::Server;
use std::time::Instant;
use store::{config, fleet_rows, fresh_name, DAY_MS};

struct Args {
    rows: usize,
    batch: usize,
    runs: usize,
}

fn args() -> Args {
    let mut a = Args { rows: 1_000_000, batch: 2_000, runs: 5 };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).and_then(|v| v.parse().ok());
        match (pair[0].as_str(), value) {
            ("--rows", Some(v)) => a.rows = v,
            ("--batch", Some(v)) => a.batch = v,
            ("--runs", Some(v)) => a.runs = v,
            (flag, _) => {
                eprintln!("unknown or incomplete argument `{flag}`; see the file's header");
                std::process::exit(2);
            }
        }
    }
    a
}

/// Write `rows` in batches; rows/s.
async fn write_all(server: &Server, name: &str, mode: TimescaleMode, rows: &[StoreRow], batch: usize) -> f64 {
    let mut cfg = config(server.url(name), 3);
    cfg.timescaledb = mode;
    let mut store = Store::connect(&cfg).await.expect("connect");
    let start = Instant::now();
    for chunk in rows.chunks(batch) {
        store.write(chunk, &[]).await.expect("write");
    }
    rows.len() as f64 / start.elapsed().as_secs_f64()
}

async fn one(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// Median wall time of `runs` executions of `sql`, ms.
async fn time_query(db: &tokio_postgres::Client, sql: &str, runs: usize) -> (f64, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut rows = 0;
    for _ in 0..runs {
        let start = Instant::now();
        rows = db.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).len();
        times.push(start.elapsed());
    }
    times.sort();
    (times[times.len() / 2].as_secs_f64() * 1e3, rows)
}

fn mib(bytes: i64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The dashboard's two typical questions, on raw rows and on the rollup.
fn queries() -> [(&'static str, String); 4] {
    let device = "tenant_id = 'tenant-0' AND project_id = 'project-0' AND device_id = 'dev-00'";
    let project = "tenant_id = 'tenant-0' AND project_id = 'project-0'";
    [
        (
            "one device, one field, 3 days, 5-minute points (raw)",
            format!(
                "SELECT time_bucket('5 minutes', time) AS t, avg(value) FROM telemetry_numeric \
                 WHERE {device} AND field = 'temperature' AND time > now() - interval '3 days' GROUP BY 1 ORDER BY 1"
            ),
        ),
        (
            "one device, one field, 3 days, 5-minute points (rollup)",
            format!(
                "SELECT time_bucket('5 minutes', bucket) AS t, sum(avg * samples) / sum(samples) \
                 FROM telemetry_numeric_rollup \
                 WHERE {device} AND field = 'temperature' AND bucket > now() - interval '3 days' GROUP BY 1 ORDER BY 1"
            ),
        ),
        (
            "all devices of a project, last hour, latest temperature each (raw)",
            format!(
                "SELECT DISTINCT ON (device_id) device_id, value FROM telemetry_numeric \
                 WHERE {project} AND field = 'temperature' AND time > now() - interval '1 hour' \
                 ORDER BY device_id, time DESC"
            ),
        ),
        (
            "all devices of a project, last hour, latest temperature each (rollup)",
            format!(
                "SELECT DISTINCT ON (device_id) device_id, last FROM telemetry_numeric_rollup \
                 WHERE {project} AND field = 'temperature' AND bucket > now() - interval '1 hour' \
                 ORDER BY device_id, bucket DESC"
            ),
        ),
    ]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let Some(tsdb) = Server::timescale() else {
        eprintln!("SKIPPED: no TimescaleDB server (scripts/services.sh up timescaledb; docs/storage.md)");
        std::process::exit(0);
    };
    let plain = Server::shared();
    let rows = fleet_rows(a.rows, 3 * DAY_MS - 3_600_000);
    let mut sorted = rows.clone();
    sorted.sort_by_key(|r| r.time_ms);
    println!("{} rows over 3 days, 3 tenants x 2 projects x 20 devices, batches of {}", rows.len(), a.batch);

    let pg_name = fresh_name("bench_pg");
    let ts_name = fresh_name("bench_ts");
    let pg_rate = write_all(plain, &pg_name, TimescaleMode::Off, &sorted, a.batch).await;
    let ts_rate = write_all(tsdb, &ts_name, TimescaleMode::On, &sorted, a.batch).await;
    println!("| write path (store batches, time order) | PostgreSQL day partitions {pg_rate:.0} rows/s | TimescaleDB hypertable {ts_rate:.0} rows/s |");

    let pg = plain.admin(&pg_name).await;
    let ts = tsdb.admin(&ts_name).await;
    let per_million = |bytes: i64| mib(bytes) * 1_000_000.0 / rows.len() as f64;
    let pg_size = one(&pg, "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'telemetry'::regclass").await;
    let before = one(&ts, "SELECT hypertable_size('telemetry')").await;
    ts.batch_execute("SELECT count(compress_chunk(c, if_not_compressed => true)) FROM show_chunks('telemetry') c")
        .await
        .expect("compress");
    let after = one(&ts, "SELECT hypertable_size('telemetry')").await;
    println!(
        "| size per million rows | PostgreSQL {:.0} MiB | TimescaleDB {:.0} MiB uncompressed, {:.0} MiB compressed ({:.1}x) |",
        per_million(pg_size),
        per_million(before),
        per_million(after),
        before as f64 / after.max(1) as f64
    );

    let refresh = Instant::now();
    // TimescaleDB's own scheduler may be refreshing it already: wait for it.
    loop {
        match ts.batch_execute("CALL refresh_continuous_aggregate('telemetry_numeric_rollup', NULL, NULL)").await {
            Ok(()) => break,
            Err(e) if e.code().map(|c| c.code()) == Some("55P03") => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await
            }
            Err(e) => panic!("refresh: {e}"),
        }
    }
    println!("| rollup refresh over all {} rows | {:.1} s |", rows.len(), refresh.elapsed().as_secs_f64());
    for (what, sql) in queries() {
        let on_rollup = sql.contains("rollup");
        let (ts_ms, n) = time_query(&ts, &sql, a.runs).await;
        if on_rollup {
            println!("| {what} | TimescaleDB {ts_ms:.1} ms ({n} rows) |");
        } else {
            let (pg_ms, _) = time_query(
                &pg,
                &sql.replace("time_bucket('5 minutes', time)", "date_bin('5 minutes', time, TIMESTAMPTZ '2000-01-01')"),
                a.runs,
            )
            .await;
            println!("| {what} | PostgreSQL {pg_ms:.1} ms, TimescaleDB (compressed) {ts_ms:.1} ms ({n} rows) |");
        }
    }
    drop((pg, ts));
    plain.drop_database(&pg_name).await;
    tsdb.drop_database(&ts_name).await;
}
