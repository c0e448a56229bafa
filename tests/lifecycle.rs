//! How the pipelines end: a store that refuses the configured role, bad
//! settings, a task that dies, a shutdown while Kafka is away, and memory
//! while a journal backlog waits for Kafka. Real Mosquitto, Tansu,
//! PostgreSQL and SQLite; iotpipe as a process.

mod common;

use common::eventually;
use common::kafka::Tansu;
use common::mqtt::{spawn_publish, Mosquitto};
use common::postgres::Server;
use common::process::{bridge_config, Iotpipe};
use common::store::fresh_name;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `iotpipe <command> --config <dir>/<command>.toml`, stderr captured.
fn spawn(dir: &Path, command: &str, toml: &str) -> Child {
    let config = dir.join(format!("{command}.toml"));
    std::fs::write(&config, toml).expect("write config");
    Command::new(Iotpipe::binary())
        .args([command, "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start iotpipe")
}

/// Wait for `child` to exit; its status and stderr. Kills it after `within`.
fn exit_of(mut child: Child, within: Duration) -> (Option<ExitStatus>, String) {
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break Some(s);
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status, err)
}

/// The shared PostgreSQL with a role it does not know.
fn unknown_role_url() -> String {
    let url = Server::shared().url(&fresh_name("lifecycle"));
    url.replacen("postgres://iotpipe@", &format!("postgres://{}@", fresh_name("nobody")), 1)
}

#[test]
fn sink_exits_non_zero_with_one_clear_line_when_postgres_refuses_the_role() {
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[kafka]\nbrokers = \"{}\"\n[store]\nurl = \"{}\"\n[http]\nlisten = \"\"\n",
        kafka.brokers(),
        unknown_role_url()
    );
    let (status, stderr) = exit_of(spawn(dir.path(), "sink", &toml), Duration::from_secs(60));
    let status = status.expect("the sink exits by itself");
    assert_eq!(status.code(), Some(1), "a permanent store failure is not a success: {stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.starts_with("error: ") && last.contains("28000") && last.contains("does not exist"), "{stderr}");
}

#[test]
fn run_exits_non_zero_when_postgres_refuses_the_role() {
    let mqtt = Mosquitto::start(1_000);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "[mqtt]\nurl = \"{}\"\n[store]\nurl = \"{}\"\n[journal]\npath = {:?}\n[http]\nlisten = \"\"\n",
        mqtt.url(),
        unknown_role_url(),
        dir.path().join("journal").display().to_string()
    );
    let (status, stderr) = exit_of(spawn(dir.path(), "run", &toml), Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.starts_with("error: ") && last.contains("28000") && last.contains("does not exist"), "{stderr}");
}

#[test]
fn store_settings_are_validated_at_load_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    for (keys, named) in [
        ("retention = \"10m\"", "store.retention"),
        ("write_timeout = \"0s\"", "store.write_timeout"),
        ("connect_timeout = \"0s\"", "store.connect_timeout"),
        ("timescaledb = \"maybe\"", "store.timescaledb"),
    ] {
        let toml = format!("[store]\nurl = \"sqlite://{}\"\n{keys}\n", dir.path().join("x.db").display());
        for command in ["sink", "run"] {
            let (status, stderr) = exit_of(spawn(dir.path(), command, &toml), Duration::from_secs(20));
            assert_eq!(status.and_then(|s| s.code()), Some(2), "{command} with {keys}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            assert!(stderr.contains(named), "{command} with {keys} should name {named}: {stderr}");
        }
    }
}

/// The newest segment of the journal in `dir`.
fn newest_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("journal dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

/// Overwrite bytes three quarters into the newest segment: the record there
/// no longer passes its checksum.
fn corrupt_journal(dir: &Path) {
    use std::os::unix::fs::FileExt;
    let seg = newest_segment(dir);
    // The records' end: a preallocated segment is zeros after its last record.
    let bytes = std::fs::read(&seg).expect("read segment");
    let len = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1);
    let f = std::fs::OpenOptions::new().write(true).open(&seg).expect("open segment");
    f.write_all_at(&[0xA5; 64], len * 3 / 4).expect("corrupt segment");
}

#[test]
fn a_failing_journal_reader_ends_the_bridge_with_a_non_zero_status() {
    const N: u64 = 4_000;
    let mqtt = Mosquitto::start(100_000);
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let extra = format!("[journal]\npath = {:?}\nforward_max_records = 100\n", journal.display().to_string());
    let toml = bridge_config(&mqtt.url(), &kafka.brokers(), "bridge-dead-reader", &extra)
        .replace("grace_period = \"20s\"", "grace_period = \"3s\"");
    let mut bridge = Iotpipe::bridge(dir.path(), &toml);
    eventually(Duration::from_secs(20), "bridge ready", || bridge.get("/readyz").0 == 200);
    kafka.pause();
    spawn_publish(mqtt.url(), 0..N, None).join().unwrap();
    eventually(Duration::from_secs(30), "all journaled", || bridge.metric("iotpipe_journal_depth") >= N as f64);
    corrupt_journal(&journal);
    kafka.resume();
    let (code, _) = bridge.wait_exit(Duration::from_secs(60));
    let log = bridge.log_text();
    assert_eq!(code, Some(1), "the bridge must not go on acking into a journal nobody reads:\n{log}");
    assert!(log.contains("journal-reader"), "the log names the task that failed:\n{log}");
}

#[test]
fn a_failing_journal_reader_ends_run_with_a_non_zero_status() {
    const N: u64 = 3_000;
    let mqtt = Mosquitto::start(100_000);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("iotpipe.db");
    let journal = dir.path().join("journal");
    let toml = format!(
        "[mqtt]\nurl = \"{}\"\nclient_id = \"run-dead-reader\"\n[store]\nurl = \"sqlite://{}\"\nwrite_timeout = \"1s\"\n\
         [journal]\npath = {:?}\n[run]\nbatch_max_rows = 100\ngrace_period = \"3s\"\n[http]\nlisten = \"{{HTTP}}\"\n",
        mqtt.url(),
        db.display(),
        journal.display().to_string()
    );
    let mut run = Iotpipe::run(dir.path(), &toml);
    eventually(Duration::from_secs(20), "run ready", || run.get("/readyz").0 == 200);
    // Hold SQLite's write lock: the store writer waits (and retries), the journal fills.
    let lock = rusqlite::Connection::open(&db).expect("open the database");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("take the write lock");
    spawn_publish(mqtt.url(), 0..N, None).join().unwrap();
    eventually(Duration::from_secs(30), "all journaled", || run.metric("iotpipe_journal_depth") >= (N - 100) as f64);
    corrupt_journal(&journal);
    lock.execute_batch("ROLLBACK").expect("release the write lock");
    drop(lock);
    let (code, _) = run.wait_exit(Duration::from_secs(60));
    let log = run.log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("journal-store"), "{log}");
}

#[test]
fn sigterm_while_kafka_is_stalled_exits_within_the_grace_period_however_many_topics_are_new() {
    let mqtt = Mosquitto::start(100_000);
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let toml = bridge_config(&mqtt.url(), &kafka.brokers(), "bridge-new-topics", "")
        .replace("grace_period = \"20s\"", "grace_period = \"3s\"");
    let mut bridge = Iotpipe::bridge(dir.path(), &toml);
    eventually(Duration::from_secs(20), "bridge ready", || bridge.get("/readyz").0 == 200);
    kafka.pause();
    // Thirty tenants Kafka has never seen: thirty topics to create while it does not answer.
    let msgs = (0..30).map(|t| (format!("mtic/msg/client/realtime/new-{t}/p"), br#"{"deviceId":"d"}"#.to_vec()));
    common::mqtt::block_on(common::mqtt::publish_raw(&mqtt.url(), msgs.collect()));
    eventually(Duration::from_secs(10), "received", || bridge.metric("iotpipe_messages_received_total") >= 30.0);
    std::thread::sleep(Duration::from_secs(1));
    let (code, took) = bridge.terminate(Duration::from_secs(60));
    kafka.resume();
    assert_eq!(code, Some(0), "{}", bridge.log_text());
    // 3 s of grace and at most a second to wrap up; creating topics must not add to it.
    assert!(took < Duration::from_secs(6), "SIGTERM took {took:?}:\n{}", bridge.log_text());
}

/// Journal mode, Kafka stalled past librdkafka's delivery timeout (so every
/// record in flight fails and is retried) with a backlog far larger than the
/// forward window: memory stays bounded, the window holds, and everything
/// is delivered once Kafka is back. The 64 MiB is the pods' limit, beyond
/// which the process is killed; BENCHMARKS.md has the soak figures.
#[test]
fn journal_mode_holds_a_bounded_window_while_kafka_is_stalled() {
    const N: u64 = 100_000;
    const WINDOW: u64 = 2_000;
    let mqtt = Mosquitto::start(1_000_000);
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[journal]\npath = {:?}\nmax_size = \"1GiB\"\nforward_max_records = {WINDOW}\n",
        dir.path().join("journal").display().to_string()
    );
    let toml = bridge_config(&mqtt.url(), &kafka.brokers(), "bridge-bounded", &extra)
        .replace("[kafka]\n", "[kafka]\ndelivery_timeout = \"5s\"\n");
    let bridge = Iotpipe::bridge(dir.path(), &toml);
    eventually(Duration::from_secs(20), "bridge ready", || bridge.get("/readyz").0 == 200);
    kafka.pause();
    spawn_publish(mqtt.url(), 0..N, None).join().unwrap();
    let (mut peak_rss, mut peak_window) = (0u64, 0f64);
    let mut sample = |bridge: &Iotpipe| {
        peak_rss = peak_rss.max(rss_kib(bridge.pid()));
        peak_window = peak_window.max(bridge.metric("iotpipe_journal_forward_records"));
    };
    let stall_until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < stall_until {
        sample(&bridge);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(bridge.metric("iotpipe_journal_depth") >= N as f64 - WINDOW as f64, "the backlog is on disk");
    assert!(bridge.metric("iotpipe_kafka_retries_total") > 0.0, "deliveries timed out and were retried");
    kafka.resume();
    let done_by = Instant::now() + Duration::from_secs(180);
    while bridge.metric("iotpipe_messages_delivered_total") < N as f64 {
        assert!(Instant::now() < done_by, "not all delivered: {}", bridge.metric("iotpipe_messages_delivered_total"));
        sample(&bridge);
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("journal backlog {N}, window {WINDOW}: peak RSS {} KiB, peak window {peak_window}", peak_rss);
    assert!(peak_window <= WINDOW as f64, "the window held: {peak_window}");
    assert!(peak_rss < 64 * 1024, "peak RSS {peak_rss} KiB is beyond the 64 MiB pod limit");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
