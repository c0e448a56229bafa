//! Journal append throughput with fsync group commit, on the real disk.
//!
//! `cargo run --release --example journal_bench [-- SECONDS [RECORD_BYTES [DIR]]]`
//!
//! For 1, 16 and 256 concurrent appenders: each appends records of
//! RECORD_BYTES (default 200) in a loop for SECONDS (default 3), awaiting
//! each append (so it resolves only after its fdatasync). Then one reader
//! reads everything back. DIR defaults to /var/tmp (a disk, not tmpfs).
//! Prints figures only; asserts nothing about time.

use bytes::Bytes;
use iotpipe::config::ByteSize;
use iotpipe::journal::{Journal, JournalConfig};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CONCURRENCY: [usize; 3] = [1, 16, 256];

struct Row {
    appenders: usize,
    records: u64,
    secs: f64,
    fsyncs: u64,
    p50: Duration,
    p99: Duration,
    read_per_sec: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3.0);
    let size: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let base = PathBuf::from(args.next().unwrap_or_else(|| "/var/tmp".into()));
    let tmp = tempfile::Builder::new().prefix("iotpipe-journal-bench").tempdir_in(&base)?;
    println!("journal bench: {size}-byte records, {secs} s per run, in {}", tmp.path().display());

    let mut rows = Vec::new();
    for appenders in CONCURRENCY {
        let cfg = JournalConfig {
            path: tmp.path().join(format!("run-{appenders}")),
            max_size: ByteSize::mib(16 * 1024),
            ..JournalConfig::default()
        };
        rows.push(run(cfg, appenders, size, Duration::from_secs_f64(secs)).await?);
    }

    println!();
    println!("appenders   records     msg/s     MB/s  fsyncs/s  records/fsync  p50 ms  p99 ms   read msg/s");
    for r in &rows {
        let rate = r.records as f64 / r.secs;
        println!(
            "{:>9} {:>9} {:>9.0} {:>8.2} {:>9.0} {:>14.1} {:>7.2} {:>7.2} {:>12.0}",
            r.appenders,
            r.records,
            rate,
            rate * (size + 16) as f64 / 1e6,
            r.fsyncs as f64 / r.secs,
            r.records as f64 / r.fsyncs.max(1) as f64,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
            r.read_per_sec,
        );
    }
    println!("(MB/s counts the 16-byte frame header; latency is per append, until its fsync.)");
    Ok(())
}

async fn run(
    cfg: JournalConfig,
    appenders: usize,
    size: usize,
    time: Duration,
) -> Result<Row, Box<dyn std::error::Error>> {
    let (journal, _) = Journal::open(cfg)?;
    let payload = Bytes::from(vec![b'x'; size]);
    let start = Instant::now();
    let deadline = start + time;
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (a, p) = (journal.appender(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                a.append(p.clone()).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, iotpipe::journal::JournalError>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct =
        |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1))).copied();
    let records = latencies.len() as u64;
    let fsyncs = journal.fsyncs();

    let mut reader = journal.reader(0)?;
    let t = Instant::now();
    let mut read = 0u64;
    while reader.try_next()?.is_some() {
        read += 1;
    }
    let read_per_sec = read as f64 / t.elapsed().as_secs_f64();
    journal.close().await?;
    println!("{appenders:>4} appenders: {records} records, {fsyncs} fsyncs in {secs:.2} s");
    Ok(Row {
        appenders,
        records,
        secs,
        fsyncs,
        p50: pct(0.5).unwrap_or_default(),
        p99: pct(0.99).unwrap_or_default(),
        read_per_sec,
    })
}
