//! The journal's CPU per record at a paced rate, with and without direct I/O
//! (`journal.direct_io`), in alternating rounds on the real disk.
//!
//! `cargo run --release --example journal_cpu [-- RATE [SECONDS [ROUNDS [DIR]]]]`
//!
//! Appends batches of 57 records of 200 bytes (what the bridge's ingest
//! hands the writer at ~50,000 msg/s) at RATE records/s (default 40,000)
//! for SECONDS (default 5) per run, with the default commit delay, keeping
//! up to 16 batches in flight as the bridge does. CPU is the whole
//! process's (`CLOCK_PROCESS_CPUTIME_ID`: every thread, user + system), measured from the first
//! append to the last commit. DIR defaults to /var/tmp (a disk, not tmpfs).
//! Prints figures only; asserts nothing about time.

use iotpipe::config::ByteSize;
use iotpipe::journal::{Batch, Journal, JournalConfig};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BATCH: usize = 57;
const RECORD: usize = 200;
const IN_FLIGHT: usize = 16;

/// CPU seconds of this process so far, every thread's (those that ended too).
fn cpu_secs() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

struct Run {
    records: u64,
    cpu: f64,
    wall: f64,
    fsyncs: u64,
}

async fn run(cfg: JournalConfig, rate: f64, secs: f64) -> Result<Run, Box<dyn std::error::Error>> {
    let (j, _) = Journal::open(cfg)?;
    let a = j.appender();
    let payload = vec![0x5Au8; RECORD];
    let fsyncs0 = j.fsyncs();
    let (cpu0, t0) = (cpu_secs(), Instant::now());
    let mut pending = VecDeque::new();
    let mut records = 0u64;
    while t0.elapsed().as_secs_f64() < secs {
        let due = t0 + Duration::from_secs_f64(records as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let mut b = Batch::with_capacity(BATCH, BATCH * (RECORD + 16));
        for _ in 0..BATCH {
            b.push(&payload);
        }
        pending.push_back(a.enqueue_batch(b).map_err(|(e, _)| e)?);
        records += BATCH as u64;
        while pending.len() > IN_FLIGHT {
            if let Some(p) = pending.pop_front() {
                p.await?;
            }
        }
    }
    for p in pending {
        p.await?;
    }
    let (cpu, wall) = (cpu_secs() - cpu0, t0.elapsed().as_secs_f64());
    let fsyncs = j.fsyncs() - fsyncs0;
    j.close().await?;
    Ok(Run { records, cpu, wall, fsyncs })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rate: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(40_000.0);
    let secs: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5.0);
    let rounds: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let base = PathBuf::from(args.next().unwrap_or_else(|| "/var/tmp".into()));
    let tmp = tempfile::Builder::new().prefix("iotpipe-journal-cpu").tempdir_in(&base)?;
    println!(
        "journal CPU: {RECORD}-byte records in batches of {BATCH}, {rate} records/s, {secs} s per run, in {}",
        tmp.path().display()
    );
    println!();
    println!("round  direct_io   records   rec/s  fsyncs  rec/fsync  CPU µs/rec  CPU µs/fsync");
    let mut totals = [(0.0f64, 0u64, 0u64); 2];
    for round in 0..rounds {
        // Alternate which goes first, so drift in the machine's speed evens out.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for direct_io in order {
            let cfg = JournalConfig {
                path: tmp.path().join(format!("r{round}-{direct_io}")),
                max_size: ByteSize::mib(4096),
                direct_io,
                ..JournalConfig::default()
            };
            let r = run(cfg, rate, secs).await?;
            let t = &mut totals[usize::from(direct_io)];
            (t.0, t.1, t.2) = (t.0 + r.cpu, t.1 + r.records, t.2 + r.fsyncs);
            println!(
                "{:>5}  {:>9}  {:>8}  {:>6.0}  {:>6}  {:>9.0}  {:>10.2}  {:>12.1}",
                round + 1,
                direct_io,
                r.records,
                r.records as f64 / r.wall,
                r.fsyncs,
                r.records as f64 / r.fsyncs.max(1) as f64,
                r.cpu * 1e6 / r.records as f64,
                r.cpu * 1e6 / r.fsyncs.max(1) as f64,
            );
        }
    }
    println!();
    for (direct_io, (cpu, records, fsyncs)) in [(false, totals[0]), (true, totals[1])] {
        println!(
            "all rounds, direct_io = {direct_io}: {:.2} µs CPU per record, {:.1} µs per fsync",
            cpu * 1e6 / records as f64,
            cpu * 1e6 / fsyncs.max(1) as f64
        );
    }
    let ratio = (totals[1].0 / totals[1].1 as f64) / (totals[0].0 / totals[0].1 as f64);
    println!("direct ÷ buffered CPU per record: {ratio:.2}×");
    Ok(())
}
