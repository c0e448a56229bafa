//! Start-up with a large journal: the HTTP endpoints answer while the
//! journal recovers (`/healthz` 200, `/readyz` 503 "recovering journal"),
//! MQTT is not connected before the journal is open, and SIGTERM during
//! recovery ends the process cleanly without losing a record. Real
//! Mosquitto and Tansu; iotpipe (the debug build) as a process; the journal
//! is written here with the library, as a bridge that journaled a backlog
//! while Kafka was away and was then killed would have left it.

mod common;

use bytes::Bytes;
use common::eventually;
use common::kafka::Tansu;
use common::mqtt::{message, Mosquitto};
use common::process::{bridge_config, Iotpipe};
use iotpipe::config::ByteSize;
use iotpipe::journal::{encode_inbound, Journal, JournalConfig};
use iotpipe::record::Inbound;
use std::path::Path;
use std::time::{Duration, Instant};

/// Undelivered records in the test journals: ~210 bytes each on disk, so
/// ~120 MiB, which the debug build takes a few seconds to recover.
const RECORDS: u64 = 600_000;

/// Journal `n` bridge-like messages (`common::mqtt::message`, padded to
/// ~200 bytes) into `dir`, none delivered, and leave without closing, as a
/// crash would. Returns the bytes on disk.
fn write_journal(dir: &Path, n: u64) -> u64 {
    let started = Instant::now();
    let cfg = JournalConfig { max_size: ByteSize::mib(1024), max_batch: ByteSize::mib(4), ..JournalConfig::at(dir) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (journal, _) = Journal::open(cfg).expect("open the journal");
    let appender = journal.appender();
    rt.block_on(async {
        let mut seq = 0;
        while seq < n {
            let end = (seq + 20_000).min(n);
            let mut pending = Vec::with_capacity((end - seq) as usize);
            for s in seq..end {
                let (topic, mut payload) = message(s);
                payload.resize(payload.len().max(150), b' ');
                let msg = Inbound {
                    topic,
                    payload: Bytes::from(payload),
                    received_ms: 1_700_000_000_000,
                    redelivered: false,
                };
                pending.push(appender.enqueue(Bytes::from(encode_inbound(&msg))).expect("enqueue"));
            }
            for p in pending {
                p.await.expect("append");
            }
            seq = end;
        }
    });
    let bytes = journal.used_bytes();
    drop(journal);
    // The dropped journal's threads finish in the background (cut the active
    // segment, stop preparing the next); a crashed process would be gone.
    let lock = std::fs::File::open(dir.join("lock")).expect("the journal's lock file");
    let waited = Instant::now();
    while rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
        assert!(waited.elapsed() < Duration::from_secs(10), "the dropped journal kept its lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(lock);
    println!("journaled {n} records, {} MiB, in {:?}", bytes >> 20, started.elapsed());
    bytes
}

/// What a poll of the endpoints saw while the journal recovered.
#[derive(Debug, Default)]
struct Seen {
    /// Polls whose `/readyz` said "recovering journal".
    recovering: u32,
    /// Polls whose `/readyz` also said "MQTT not connected".
    mqtt_down: u32,
    /// The first reason list without "recovering journal".
    after: String,
    took: Duration,
}

/// Poll `/healthz` and `/readyz` from the start until `/readyz` no longer
/// says "recovering journal"; `/healthz` must answer 200 on every poll.
fn watch_recovery(p: &Iotpipe, also: impl Fn(&Iotpipe)) -> Seen {
    let start = Instant::now();
    let mut seen = Seen::default();
    loop {
        let (status, body) = p.get("/readyz");
        if !body.contains("recovering journal") {
            seen.after = format!("{status} {body}");
            seen.took = start.elapsed();
            return seen;
        }
        assert_eq!(status, 503, "not ready while recovering: {body}");
        seen.recovering += 1;
        if body.contains("MQTT not connected") {
            seen.mqtt_down += 1;
        }
        let (health, text) = p.get("/healthz");
        assert_eq!((health, text.as_str()), (200, "ok\n"), "/healthz while the journal recovers");
        also(p);
        assert!(start.elapsed() < Duration::from_secs(120), "still recovering after 2 min");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Does `/readyz` still say "recovering journal"? Asked after a reading,
/// it tells whether that reading was taken during recovery: recovery may
/// end (and MQTT connect, the dashboard mount) between two requests.
fn still_recovering(p: &Iotpipe) -> bool {
    p.get("/readyz").1.contains("recovering journal")
}

fn bridge_toml(mqtt: &Mosquitto, kafka: &Tansu, client_id: &str, journal: &Path) -> String {
    let extra = format!("[journal]\npath = {:?}\nmax_size = \"1GiB\"\n", journal.display().to_string());
    bridge_config(&mqtt.url(), &kafka.brokers(), client_id, &extra)
}

#[test]
fn bridge_answers_healthz_and_says_recovering_journal_while_a_large_journal_recovers() {
    let mqtt = Mosquitto::start(100_000);
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    write_journal(&journal, RECORDS);
    let bridge = Iotpipe::bridge(dir.path(), &bridge_toml(&mqtt, &kafka, "bridge-recovering", &journal));
    let seen = watch_recovery(&bridge, |b| {
        let connected = b.metric("iotpipe_mqtt_connected");
        if still_recovering(b) {
            assert!(connected == 0.0, "MQTT connects only once the journal is open");
        }
    });
    println!("{seen:?}");
    assert!(seen.recovering >= 2, "/readyz said \"recovering journal\" only {} times", seen.recovering);
    assert_eq!(seen.mqtt_down, seen.recovering, "MQTT not connected while recovering");
    eventually(Duration::from_secs(30), "ready after recovery", || bridge.get("/readyz").0 == 200);
    assert_eq!(bridge.metric("iotpipe_journal_replayed_total"), RECORDS as f64, "every record is replayed");
    eventually(Duration::from_secs(30), "the replay reaches Kafka", || {
        bridge.metric("iotpipe_messages_delivered_total") > 0.0
    });
    assert!(bridge.log_text().contains("Journal recovered."), "{}", bridge.log_text());
}

#[test]
fn sigterm_during_journal_recovery_exits_zero_and_the_next_start_replays_everything() {
    let mqtt = Mosquitto::start(100_000);
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    write_journal(&journal, RECORDS);
    let mut bridge = Iotpipe::bridge(dir.path(), &bridge_toml(&mqtt, &kafka, "bridge-term-recovering", &journal));
    eventually(Duration::from_secs(10), "recovering", || bridge.get("/readyz").1.contains("recovering journal"));
    let (code, took) = bridge.terminate(Duration::from_secs(20));
    let log = bridge.log_text();
    assert_eq!(code, Some(0), "SIGTERM during recovery is a clean exit:\n{log}");
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}:\n{log}");
    assert!(log.contains("Shutting down during start-up"), "{log}");
    assert!(!log.contains("Journal recovered."), "the recovery was cut short:\n{log}");

    kafka.pause(); // nothing is delivered: the journal keeps every record
    bridge.restart();
    let seen = watch_recovery(&bridge, |_| {});
    assert!(seen.recovering >= 1, "{seen:?}");
    eventually(Duration::from_secs(20), "the journal is open", || {
        bridge.metric("iotpipe_journal_replayed_total") == RECORDS as f64
    });
    assert_eq!(bridge.metric("iotpipe_journal_depth"), RECORDS as f64, "no record was lost");
    kafka.resume();
}

#[test]
fn run_answers_healthz_while_its_journal_recovers_and_mounts_the_dashboard_after() {
    let mqtt = Mosquitto::start(100_000);
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    write_journal(&journal, RECORDS);
    let toml = format!(
        "[mqtt]\nurl = \"{}\"\nclient_id = \"run-recovering\"\n[route]\ndevice_id = \"/deviceId\"\nevent_time = \"/ts\"\n\
         [store]\nurl = \"sqlite://{}\"\n[journal]\npath = {:?}\nmax_size = \"1GiB\"\n[http]\nlisten = \"{{HTTP}}\"\n",
        mqtt.url(),
        dir.path().join("iotpipe.db").display(),
        journal.display().to_string()
    );
    let run = Iotpipe::run(dir.path(), &toml);
    let seen = watch_recovery(&run, |r| {
        let dashboard = r.get("/").0;
        if still_recovering(r) {
            assert_eq!(dashboard, 503, "the dashboard is mounted once the store is open");
        }
    });
    println!("{seen:?}");
    assert!(seen.recovering >= 2, "/readyz said \"recovering journal\" only {} times", seen.recovering);
    assert_eq!(seen.mqtt_down, seen.recovering, "MQTT not connected while recovering");
    eventually(Duration::from_secs(30), "ready after recovery", || run.get("/readyz").0 == 200);
    assert_eq!(run.get("/").0, 200, "the dashboard");
    assert_eq!(run.metric("iotpipe_journal_replayed_total"), RECORDS as f64);
}
