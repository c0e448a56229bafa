//! The dashboard on fixture data, for working on the page without the
//! pipeline: a SQLite file seeded through `Store::write`, served by the real
//! page and API (`iotpipe::http::dashboard::router()` merged with
//! `iotpipe::http::api::router()`), so what you see is what `iotpipe run`
//! would show for that data.
//!
//! ```sh
//! cargo run --example dashboard_fixture -- --port 8099 [--token SECRET] [--db PATH]
//! ```
//!
//! Prints the URL on the first line of stdout and serves on 127.0.0.1 until
//! Ctrl-C or SIGTERM (`--port 0`, the default, picks a free port). Without `--db` the
//! file lives in a temporary directory; a `--db` file that already holds
//! telemetry (a previous run's, or the database of `iotpipe run`) is served
//! as it is: delete it to seed afresh. The page is compiled into the binary:
//! after editing `assets/dashboard/`, run the command again.
//!
//! Fixtures, relative to the time of seeding (docs/dashboard.md):
//! - `tenant-1/project-1`: `dev-1-1-1` ~200 points per field in the last 15
//!   minutes with a one-minute gap, and a point every 10 minutes over two
//!   days; `dev-1-1-2` a single point; `dev-1-1-3` nothing in the last hour
//!   (one message two days ago); `dev-1-1-4` payloads that are not JSON;
//!   `dev-1-1-5`, `dev-1-1-6` ordinary devices;
//! - ordinary devices in `tenant-1/project-2`, `tenant-2/project-{1,2}` and
//!   `acme-industrial/project-1` (the tenant the page opens first), one of
//!   them named `dev/ü-3`;
//! - 12 dead letters with five reasons.
//!
//! `tests/dashboard.rs` starts it the same way ([`start`]) and checks it in
//! headless Chromium with `scripts/dashboard_check.py`.

use bytes::Bytes;
use iotpipe::record::{now_ms, RecordId};
use iotpipe::store::{DeadLetterRow, Store, StoreConfig, StoreRow};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Command-line options (also what [`start`] takes).
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(about = "The iotpipe dashboard on a seeded SQLite file")]
pub struct Options {
    /// Port on 127.0.0.1; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Require `Authorization: Bearer TOKEN` on /api/.
    #[arg(long)]
    pub token: Option<String>,
    /// The SQLite file (created and seeded when it holds no telemetry yet).
    #[arg(long)]
    pub db: Option<PathBuf>,
}

/// A running fixture server.
pub struct Fixture {
    /// `http://127.0.0.1:PORT/`.
    pub url: String,
    pub port: u16,
    /// The SQLite file.
    pub db: PathBuf,
    /// Whether this start seeded the file (false: it held telemetry already).
    pub seeded: bool,
    _dir: Option<tempfile::TempDir>,
}

/// Open (or create) the file, seed it unless it holds telemetry, and serve
/// the page and API in the background on the current tokio runtime.
pub async fn start(options: Options) -> anyhow::Result<Fixture> {
    let (dir, db) = match options.db {
        Some(path) => (None, path),
        None => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("dashboard.db");
            (Some(dir), path)
        }
    };
    let cfg = StoreConfig { url: format!("sqlite://{}", db.display()), ..StoreConfig::default() };
    let mut store = Store::connect(&cfg).await?;
    let query = store.query_handle()?;
    let seeded = query.tenants(&iotpipe::store::Page::first(iotpipe::store::MAX_LIST_LIMIT)).await?.is_empty();
    if seeded {
        let (rows, dead) = fixtures(now_ms());
        store.write(&rows, &dead).await?;
    }
    let stored: u64 = query
        .tenants(&iotpipe::store::Page::first(iotpipe::store::MAX_LIST_LIMIT))
        .await?
        .iter()
        .map(|t| t.messages)
        .sum();
    let dead_lettered = query.dead_letters(500).await?.len() as u64;
    let state = iotpipe::http::api::ApiState { query, health: health(stored, dead_lettered), token: options.token };
    let app = iotpipe::http::dashboard::router().merge(iotpipe::http::api::router(state));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        // The store lives as long as the server: the query handle reads its file.
        let _store = store;
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("dashboard_fixture: server stopped: {error}");
        }
    });
    Ok(Fixture { url: format!("http://127.0.0.1:{port}/"), port, db, seeded, _dir: dir })
}

/// `/api/health`: the stored counts, a live-looking rate, and a "degraded"
/// spell in the last 10 s of every minute.
fn health(stored: u64, dead_lettered: u64) -> Arc<dyn Fn() -> serde_json::Value + Send + Sync> {
    let started = Instant::now();
    Arc::new(move || {
        let up = started.elapsed().as_secs_f64();
        let degraded = up as u64 % 60 >= 50;
        json!({
            "status": if degraded { "degraded" } else { "ok" },
            "reasons": if degraded { vec!["store not reachable"] } else { vec![] },
            "uptime_s": (up * 10.0).round() / 10.0,
            "received": stored + dead_lettered,
            "stored": stored,
            "dead_lettered": dead_lettered,
            "in_flight": (up as u64) % 4,
            "rate_per_s": ((200.0 + 25.0 * (up / 9.0).sin()) * 10.0).round() / 10.0,
            "journal_depth": (up as u64) % 4,
            "journal_bytes": 48_213_504 + (up * 1200.0) as u64,
            "latency_p50_ms": 3.1,
            "latency_p99_ms": 9.8,
            "mqtt_connected": !degraded,
        })
    })
}

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

/// The fixture rows and dead letters, with times relative to `now`.
pub fn fixtures(now: i64) -> (Vec<StoreRow>, Vec<DeadLetterRow>) {
    // From just before `now` back to `from`, every `step` ms.
    let every = |step: i64, from: i64| (0..).map(move |k| now - 500 - k * step).take_while(move |t| *t > from);
    let recent = || every(30_000, now - 15 * MINUTE);
    let older = || every(30 * MINUTE, now - 2 * DAY).skip(1);
    let mut rows = Vec::new();
    // 15 minutes every 4.5 s (~200 points) with a one-minute gap, then every 10 minutes back two days.
    let dense = every(4_500, now - 15 * MINUTE).filter(|t| *t < now - 8 * MINUTE || *t > now - 7 * MINUTE);
    add(&mut rows, "tenant-1", "project-1", "dev-1-1-1", dense.chain(every(10 * MINUTE, now - 2 * DAY).skip(2)));
    add(&mut rows, "tenant-1", "project-1", "dev-1-1-2", [now - 42_000]);
    add(&mut rows, "tenant-1", "project-1", "dev-1-1-3", [now - 2 * DAY + 5 * MINUTE]);
    for (i, t) in recent().enumerate() {
        let text = format!("temp=21.{i};hum=40 (firmware 0.9 sends text)");
        rows.push(row("tenant-1", "project-1", "dev-1-1-4", t, text.into_bytes()));
    }
    for (tenant, project, names) in [
        ("tenant-1", "project-1", &["dev-1-1-5", "dev-1-1-6"][..]),
        ("tenant-1", "project-2", &["dev-1-2-1", "dev-1-2-2", "dev-1-2-3"][..]),
        ("tenant-2", "project-1", &["dev-2-1-1", "dev-2-1-2"][..]),
        ("tenant-2", "project-2", &["dev-2-2-1", "dev-2-2-2"][..]),
        ("acme-industrial", "project-1", &["dev-a-1-1", "dev-a-1-2", "dev/ü-3"][..]),
    ] {
        for name in names {
            add(&mut rows, tenant, project, name, recent().chain(older()));
        }
    }
    (rows, dead_letters(now))
}

/// A reading of `device` at each of `times`.
fn add(rows: &mut Vec<StoreRow>, tenant: &str, project: &str, device: &str, times: impl IntoIterator<Item = i64>) {
    rows.extend(times.into_iter().map(|t| row(tenant, project, device, t, reading(device, t))));
}

/// One row as the pipeline would store it, received a few ms after `t`.
fn row(tenant: &str, project: &str, device: &str, t: i64, payload: Vec<u8>) -> StoreRow {
    let topic = format!("mtic/msg/client/realtime/{tenant}/{project}");
    let received = t + 5 + (hash(t, device) % 40) as i64;
    StoreRow {
        id: RecordId::derive(Some(t), received, &topic, &payload).0,
        time_ms: t,
        event_time_ms: Some(t),
        received_ms: received,
        tenant_id: tenant.into(),
        project_id: project.into(),
        device_id: device.into(),
        mqtt_topic: topic,
        payload: Bytes::from(payload),
    }
}

/// A repeatable hash of (second of `t`, device).
fn hash(t: i64, device: &str) -> u64 {
    let mut x = device
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64 ^ (t / 1000) as u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^ (x >> 33)
}

/// Repeatable noise in -1..=1.
fn noise(t: i64, device: &str) -> f64 {
    (hash(t, device) % 20_001) as f64 / 10_000.0 - 1.0
}

/// A device's JSON payload at `t`: smooth signals plus fields the page
/// hides by default (`ts`, `seq`) and ones it cannot chart.
fn reading(device: &str, t: i64) -> Vec<u8> {
    let seed = device.bytes().map(f64::from).sum::<f64>();
    let phase = t as f64 / 600_000.0 * std::f64::consts::TAU + seed;
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let body = json!({
        "deviceId": device,
        "ts": t,
        "seq": t / 4_500,
        "temperature": round(21.0 + 2.5 * phase.sin() + 0.6 * (phase * 7.3).sin() + 0.25 * noise(t, device)),
        "humidity": round(47.0 + 9.0 * (phase * 0.7).cos() - 0.5 * noise(t, device)),
        "battery": ((100.0 - ((t / MINUTE) as f64 + seed) % 600.0 / 10.0) * 10.0).round() / 10.0,
        "status": "ok",
        "run": "",
        "location": {"site": "hall-3", "rack": 12},
        "tags": ["hvac", "floor-2"],
    });
    serde_json::to_vec(&body).expect("JSON")
}

/// Twelve dead letters, five reasons, newest 7 s ago.
fn dead_letters(now: i64) -> Vec<DeadLetterRow> {
    let reasons: [(&str, &str, &[u8]); 5] = [
        ("invalid_json", "payload is not JSON: expected value at line 1 column 1", b"{not json"),
        ("topic_mismatch", "topic does not match mtic/msg/client/realtime/{tenant_id}/{project_id}/#", b"{\"t\":1}"),
        ("oversize", "payload is 2.1 MiB, more than mqtt.max_payload (1 MiB)", b"{\"blob\":\"AAAAAAAAAAAAAAAAAAAAAAAA"),
        ("invalid_utf8", "payload is not UTF-8: invalid utf-8 sequence of 1 bytes from index 3", b"\xff\xfe\x01"),
        ("empty_payload", "payload is empty", b""),
    ];
    (0..12)
        .map(|i| {
            let (reason, error, payload) = reasons[i % reasons.len()];
            let extra = if reason == "topic_mismatch" { "/extra/segment" } else { "" };
            DeadLetterRow {
                source: format!("journal:{}", 4242 - i),
                received_ms: now - 7_000 - i as i64 * 95_000,
                reason: reason.into(),
                error: error.into(),
                mqtt_topic: Some(format!("mtic/msg/client/realtime/tenant-{}/project-1{extra}", i % 2 + 1)),
                headers: vec![("id".into(), format!("0190f3a2-7c1e-7d40-9a51-5e2b9c{i:06x}"))],
                payload: Bytes::from_static(payload),
            }
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let options = <Options as clap::Parser>::parse();
    let fixture = start(options).await?;
    println!("{}", fixture.url);
    let what = if fixture.seeded { "seeded" } else { "already held telemetry, served as it is" };
    eprintln!("dashboard_fixture: {} {what}; Ctrl-C stops it", fixture.db.display());
    // Return (removing a temporary file) on Ctrl-C or SIGTERM.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        stopped = tokio::signal::ctrl_c() => stopped?,
        _ = term.recv() => {}
    }
    Ok(())
}
