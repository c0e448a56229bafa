//! A running `iotpipe <command>` (bridge, sink, run): its config on a free
//! HTTP port, its log file, SIGTERM/SIGKILL, metrics; when the test panics
//! it prints the end of its log and its last metrics. Also the standard
//! bridge and sink configs of the tests, and `iotpipe check` as a one-shot
//! command.

use super::{free_port, http_get, signal, wait_for_port};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A long-running iotpipe subcommand.
pub struct Iotpipe {
    child: Option<Child>,
    command: &'static str,
    pub http_port: u16,
    config: PathBuf,
    log: PathBuf,
    /// Extra environment (after `RUST_LOG=info`, so it may override it).
    env: Vec<(String, String)>,
}

impl Iotpipe {
    /// The binary under test.
    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_iotpipe")
    }

    /// `iotpipe bridge` on `toml`.
    pub fn bridge(dir: &Path, toml: &str) -> Self {
        Self::start(dir, "bridge", toml)
    }

    /// `iotpipe sink` on `toml`.
    pub fn sink(dir: &Path, toml: &str) -> Self {
        Self::start(dir, "sink", toml)
    }

    /// `iotpipe run` on `toml`.
    pub fn run(dir: &Path, toml: &str) -> Self {
        Self::start(dir, "run", toml)
    }

    /// Write `toml` (with `{HTTP}` replaced by a free port) to `dir` and
    /// start `iotpipe <command> --config` on it; returns once the HTTP port is open.
    pub fn start(dir: &Path, command: &'static str, toml: &str) -> Self {
        Self::start_named(dir, command, command, toml, &[])
    }

    /// As [`Iotpipe::start`], with files named after `name` (several of one
    /// command in a dir) and `env` added to the environment.
    pub fn start_named(dir: &Path, command: &'static str, name: &str, toml: &str, env: &[(&str, &str)]) -> Self {
        let http_port = free_port();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, toml.replace("{HTTP}", &format!("127.0.0.1:{http_port}"))).expect("write config");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut p = Self { child: None, command, http_port, config, log: dir.join(format!("{name}.log")), env };
        p.restart();
        p
    }

    /// Start the process again (same config, same port, same log).
    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(Self::binary())
            .args([self.command, "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start iotpipe");
        self.child = Some(child);
        wait_for_port(self.http_port, Duration::from_secs(15));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for the process to exit by itself (SIGKILL after `within`); its
    /// exit code (`None` if it had to be killed) and how long it took.
    pub fn wait_exit(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let mut c = self.child.take().unwrap_or_else(|| panic!("iotpipe {} is not running", self.command));
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return (status.code(), start.elapsed());
            }
            if start.elapsed() > within {
                let _ = c.kill();
                let _ = c.wait();
                return (None, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait; returns the exit code and how long the exit took.
    pub fn terminate(&mut self, within: Duration) -> (Option<i32>, Duration) {
        signal(self.pid(), "TERM");
        self.wait_exit(within)
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path)
    }

    /// A metric's value (the first sample whose name and labels start with `prefix`).
    pub fn metric(&self, prefix: &str) -> f64 {
        let (_, body) = self.get("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find(
                |l| {
                    if prefix.contains('{') {
                        l.starts_with(prefix)
                    } else {
                        l.split([' ', '{']).next() == Some(prefix)
                    }
                },
            )
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Iotpipe {
    /// Stops the process; when the test failed, prints the end of its log
    /// (and its last metrics) so a CI failure can be diagnosed.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let metrics = self.get("/metrics").1;
            let interesting: Vec<&str> =
                metrics.lines().filter(|l| !l.starts_with('#') && !l.contains("_bucket{")).collect();
            eprintln!("--- iotpipe {} metrics at failure ---\n{}", self.command, interesting.join("\n"));
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("--- iotpipe {} log (last {} lines) ---\n{}", self.command, tail.len(), tail.join("\n"));
        }
        self.kill9();
    }
}

/// The standard bridge config for tests.
pub fn bridge_config(mqtt_url: &str, brokers: &str, client_id: &str, extra: &str) -> String {
    format!(
        r#"[mqtt]
url = "{mqtt_url}"
client_id = "{client_id}"
topics = ["mtic/msg/client/realtime/#"]
qos = 1
reconnect_backoff_max = "1s"

[route]
topic_pattern = "mtic/msg/client/realtime/{{tenant_id}}/{{project_id}}/#"
device_id = "/deviceId"
event_time = "/ts"

[kafka]
brokers = "{brokers}"
topic = "iot.{{tenant_id}}.{{project_id}}"
key = "{{tenant_id}}/{{project_id}}/{{device_id}}"
dead_letter_topic = "iot-dead-letters"
partitions = 3

[http]
listen = "{{HTTP}}"

[bridge]
grace_period = "20s"
{extra}
"#
    )
}

/// An `iotpipe sink` config, built from the test defaults: Kafka at
/// `brokers`, the consumer group `group` on the `iot.*` topics, batches of at
/// most 200 ms, retries of at most 1 s, a 6 s Kafka session, and `{HTTP}` as
/// the listen address ([`Iotpipe::start`] fills it in).
///
/// `IOTPIPE_TEST_KAFKA_CONSUMER` (`native` or `librdkafka`) sets
/// `kafka.consumer`, so that every sink test can run with either consumer.
pub fn sink_config(brokers: &str, group: &str) -> SinkConfig {
    let kafka = match std::env::var("IOTPIPE_TEST_KAFKA_CONSUMER") {
        Ok(c) if !c.is_empty() => vec![("consumer".to_string(), format!("{c:?}"))],
        _ => Vec::new(),
    };
    SinkConfig {
        brokers: brokers.to_string(),
        kafka,
        kafka_properties: String::new(),
        sink: vec![
            ("topics".into(), r#"["^iot\\..+"]"#.into()),
            ("group_id".into(), format!("{group:?}")),
            ("batch_max_wait".into(), r#""200ms""#.into()),
            ("retry_backoff_max".into(), r#""1s""#.into()),
            ("properties".into(), r#"{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "500" }"#.into()),
        ],
        store: Vec::new(),
        extra: String::new(),
    }
}

/// The sections of a sink config; [`SinkConfig::toml`] writes them out.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    brokers: String,
    /// Further `[kafka]` keys and their TOML values.
    kafka: Vec<(String, String)>,
    kafka_properties: String,
    /// `[sink]` keys and their TOML values, in order.
    sink: Vec<(String, String)>,
    /// `[store]` keys and their TOML values (no section when empty).
    store: Vec<(String, String)>,
    extra: String,
}

fn set(keys: &mut Vec<(String, String)>, key: &str, value: &str) {
    match keys.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value.to_string(),
        None => keys.push((key.to_string(), value.to_string())),
    }
}

impl SinkConfig {
    /// `store.url`.
    pub fn store(self, url: &str) -> Self {
        self.store_key("url", &format!("{url:?}"))
    }

    /// Another `[store]` key (`value` as TOML, e.g. `"\"3d\""`).
    pub fn store_key(mut self, key: &str, value: &str) -> Self {
        set(&mut self.store, key, value);
        self
    }

    /// Sets or replaces a `[sink]` key (`value` as TOML).
    pub fn sink_key(mut self, key: &str, value: &str) -> Self {
        set(&mut self.sink, key, value);
        self
    }

    /// A `[kafka]` key (`value` as TOML, e.g. `"\"native\""`).
    pub fn kafka_key(mut self, key: &str, value: &str) -> Self {
        set(&mut self.kafka, key, value);
        self
    }

    /// `[kafka.properties]` lines (TLS, SASL).
    pub fn kafka_properties(mut self, lines: &str) -> Self {
        self.kafka_properties = lines.to_string();
        self
    }

    /// TOML appended after the `[http]` section (whole sections).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra = toml.to_string();
        self
    }

    pub fn toml(&self) -> String {
        let lines = |keys: &[(String, String)]| keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect::<String>();
        let mut t = format!("[kafka]\nbrokers = {:?}\n{}", self.brokers, lines(&self.kafka));
        if !self.kafka_properties.is_empty() {
            t.push_str(&format!("\n[kafka.properties]\n{}\n", self.kafka_properties.trim_end()));
        }
        t.push_str(&format!("\n[sink]\n{}", lines(&self.sink)));
        if !self.store.is_empty() {
            t.push_str(&format!("\n[store]\n{}", lines(&self.store)));
        }
        t.push_str("\n[http]\nlisten = \"{HTTP}\"\n");
        t.push_str(&self.extra);
        t
    }
}

/// Write `toml` to `dir/name` for a one-shot command (`{HTTP}` becomes
/// `127.0.0.1:0`); its path.
pub fn write_config(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, toml.replace("{HTTP}", "127.0.0.1:0")).expect("write config");
    path
}

/// How `iotpipe check` ended and what it printed.
#[derive(Debug, Clone)]
pub struct Checked {
    /// `None` when it was ended by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Checked {
    /// stdout, then stderr.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The exit code and [`Checked::text`].
    pub fn code_and_text(&self) -> (Option<i32>, String) {
        (self.code, self.text())
    }
}

/// `iotpipe check --config <config> <args>`, with `RUST_LOG` unset unless
/// `env` (added to the environment) sets it.
pub fn check(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Checked {
    let out = Command::new(Iotpipe::binary())
        .args(["check", "--config"])
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run iotpipe check");
    Checked {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
