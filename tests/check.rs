//! `iotpipe check`: it tries exactly what the command a config is for uses,
//! reads the store's schema version without changing anything, and exits
//! non-zero when something fails. Real Mosquitto, Tansu and PostgreSQL.

mod common;

use common::kafka::Tansu;
use common::mqtt::Mosquitto;
use common::postgres::{count, Server};
use common::process::{write_config, Iotpipe};
use common::store::fresh_name;
use std::path::Path;

/// `iotpipe check --config <dir>/check.toml [args]`: exit code, stdout, stderr.
fn check(dir: &Path, toml: &str, args: &[&str]) -> (i32, String, String) {
    let out = common::process::check(&write_config(dir, "check.toml", toml), args, &[]);
    (out.code.unwrap_or(-1), out.stdout, out.stderr)
}

fn line<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    out.lines().find(|l| l.split_whitespace().nth(1) == Some(name))
}

#[test]
fn a_sink_config_is_checked_against_kafka_and_the_store_not_mqtt() {
    let kafka = Tansu::start();
    let db = fresh_name("check");
    let url = Server::shared().url(&db);
    let dir = tempfile::tempdir().unwrap();
    let toml =
        format!("[kafka]\nbrokers = \"{}\"\n[sink]\ngroup_id = \"g\"\n[store]\nurl = \"{url}\"\n", kafka.brokers());
    let (code, out, err) = check(dir.path(), &toml, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(line(&out, "config").is_some_and(|l| l.contains("iotpipe sink")), "{out}");
    assert!(line(&out, "kafka").is_some_and(|l| l.starts_with("ok")), "{out}");
    assert!(line(&out, "store").is_some_and(|l| l.contains("does not exist yet")), "{out}");
    assert!(line(&out, "mqtt").is_none(), "the sink does not use MQTT: {out}");
    assert_eq!(
        count(&Server::shared().url("postgres"), &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'")),
        0,
        "check creates nothing"
    );

    // Once the sink has created the schema, check reports its version.
    let sink_dir = tempfile::tempdir().unwrap();
    let sink = Iotpipe::sink(sink_dir.path(), &format!("{toml}[http]\nlisten = \"{{HTTP}}\"\n"));
    common::eventually(std::time::Duration::from_secs(30), "sink ready", || sink.get("/readyz").0 == 200);
    let (code, out, _) = check(dir.path(), &toml, &["--command", "sink"]);
    assert_eq!(code, 0, "{out}");
    let latest = iotpipe::store::postgres::migrate::MIGRATIONS.len();
    let want = format!("schema version {latest} of {latest}");
    assert!(line(&out, "store").is_some_and(|l| l.contains(&want)), "{out}");
}

#[test]
fn a_store_that_refuses_the_role_fails_the_check() {
    let kafka = Tansu::start();
    let url = Server::shared().url(&fresh_name("check")).replacen("postgres://iotpipe@", "postgres://nobody_here@", 1);
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("[kafka]\nbrokers = \"{}\"\n[store]\nurl = \"{url}\"\n", kafka.brokers());
    let (code, out, _) = check(dir.path(), &toml, &["--command", "sink"]);
    assert_eq!(code, 1, "{out}");
    let store = line(&out, "store").expect("a store line");
    assert!(store.starts_with("FAIL") && store.contains("28000"), "{out}");
}

#[test]
fn bridge_and_run_configs_are_checked_against_what_they_use() {
    let mqtt = Mosquitto::start(1_000);
    let kafka = Tansu::start();
    let dir = tempfile::tempdir().unwrap();
    let bridge = format!("[mqtt]\nurl = \"{}\"\n[kafka]\nbrokers = \"{}\"\n[bridge]\n", mqtt.url(), kafka.brokers());
    let (code, out, _) = check(dir.path(), &bridge, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "mqtt").is_some_and(|l| l.starts_with("ok")), "{out}");
    assert!(line(&out, "kafka").is_some_and(|l| l.starts_with("ok")), "{out}");
    assert!(line(&out, "store").is_none(), "the bridge has no store: {out}");

    let run = format!(
        "[mqtt]\nurl = \"{}\"\n[store]\nurl = \"sqlite://{}\"\n[journal]\npath = {:?}\n[run]\n",
        mqtt.url(),
        dir.path().join("iotpipe.db").display(),
        dir.path().join("journal").display().to_string()
    );
    let (code, out, _) = check(dir.path(), &run, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, "config").is_some_and(|l| l.contains("iotpipe run")), "{out}");
    assert!(line(&out, "store").is_some_and(|l| l.contains("does not exist yet")), "{out}");
    assert!(line(&out, "journal").is_some_and(|l| l.starts_with("ok")), "{out}");
    assert!(line(&out, "kafka").is_none(), "run has no Kafka: {out}");

    // Kafka gone: the bridge check fails, naming Kafka.
    drop(kafka);
    let (code, out, _) = check(dir.path(), &bridge, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "kafka").is_some_and(|l| l.starts_with("FAIL")), "{out}");
}

#[test]
fn offline_validates_only_and_bad_configs_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let unreachable = "[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\n";
    let (code, out, _) = check(dir.path(), unreachable, &["--offline", "--command", "bridge"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.lines().count(), 1, "only the config line: {out}");
    let (code, _, err) = check(dir.path(), "[store]\nretention = \"10m\"\n", &["--offline", "--command", "sink"]);
    assert_eq!(code, 2);
    assert!(err.contains("store.retention"), "{err}");
    let (code, _, err) = check(dir.path(), "[log]\nlevel = \"info\"\n", &[]);
    assert_eq!(code, 2, "no way to tell the command");
    assert!(err.contains("--command"), "{err}");
}

#[test]
fn the_command_comes_from_the_files_own_section_or_the_flag_never_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("iotpipe.db");
    let journal = dir.path().join("journal").display().to_string();
    let base = format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n[store]\nurl = \"sqlite://{}\"\n[journal]\npath = {journal:?}\n",
        db.display()
    );

    // [run] names the command, even next to [kafka] (run renders its templates).
    let run = format!("{base}[kafka]\ntopic = \"iot.{{tenant_id}}\"\n[run]\ngrace_period = \"5s\"\n");
    let (code, out, err) = check(dir.path(), &run, &["--offline"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(line(&out, "config").is_some_and(|l| l.contains("iotpipe run")), "{out}");

    // MQTT, a store and a journal, but no command's own section: ask.
    let (code, out, err) = check(dir.path(), &base, &["--offline"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--command"), "{err}");
    let (code, out, err) = check(dir.path(), &base, &["--offline", "--command", "run"]);
    assert_eq!(code, 0, "{out}{err}");

    // A file shared by two commands: ask, naming both.
    let shared = format!("{base}[kafka]\n[bridge]\n[sink]\ngroup_id = \"g\"\n");
    let (code, _, err) = check(dir.path(), &shared, &["--offline"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[bridge] and [sink]") && err.contains("--command"), "{err}");
    let (code, out, err) = check(dir.path(), &shared, &["--offline", "--command", "sink"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(line(&out, "config").is_some_and(|l| l.contains("iotpipe sink")), "{out}");
}

#[test]
fn run_names_the_key_that_replaced_one_it_used_to_borrow() {
    let dir = tempfile::tempdir().unwrap();
    let old = format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n[store]\nurl = \"sqlite://{}\"\n[sink]\nbatch_max_rows = 100\n",
        dir.path().join("x.db").display()
    );
    let (code, _, err) = check(dir.path(), &old, &["--offline", "--command", "run"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sink.batch_max_rows") && err.contains("run.batch_max_rows"), "{err}");
    // The sink still reads it.
    let (code, out, err) = check(dir.path(), &old, &["--offline", "--command", "sink"]);
    assert_eq!(code, 0, "{out}{err}");
}
