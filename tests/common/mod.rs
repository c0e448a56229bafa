//! Real services for integration tests: the project's script installs them;
//! each test starts its own Mosquitto and Tansu on free loopback ports, so
//! tests can stop and kill them without disturbing each other.
#![allow(dead_code)]

pub mod kafka;
pub mod mqtt;
pub mod postgres;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Paths of the installed service binaries (runs `scripts/services.sh install` once).
pub struct Binaries {
    pub mosquitto: String,
    pub tansu: String,
    pub tansu_args: String,
    pub env: HashMap<String, String>,
}

pub fn binaries() -> &'static Binaries {
    static B: OnceLock<Binaries> = OnceLock::new();
    B.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("scripts/services.sh"))
            .args(["up", "mosquitto", "tansu"])
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/services.sh");
        assert!(out.status.success(), "scripts/services.sh up failed");
        let dir = std::env::var("IOTPIPE_SERVICES_DIR").map(PathBuf::from).unwrap_or_else(|_| repo().join(".services"));
        let text = std::fs::read_to_string(dir.join("env")).expect("services env file");
        let env: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').trim_matches('\'').to_string()))
            .collect();
        Binaries {
            mosquitto: env.get("IOTPIPE_TEST_MOSQUITTO_BIN").cloned().unwrap_or_else(|| "mosquitto".into()),
            tansu: env.get("IOTPIPE_TEST_TANSU_BIN").cloned().expect("IOTPIPE_TEST_TANSU_BIN"),
            tansu_args: env.get("IOTPIPE_TEST_TANSU_ARGS").cloned().expect("IOTPIPE_TEST_TANSU_ARGS"),
            env,
        }
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn wait_for_port(port: u16, within: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < within, "port {port} did not open within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
}

/// A private Mosquitto.
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start(max_queued: u32) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages {max_queued}\nmax_inflight_messages 1000\nmessage_size_limit 0\nlog_dest file {}\n",
                dir.path().join("mosquitto.log").display()
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(&binaries().mosquitto)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        wait_for_port(port, Duration::from_secs(10));
        Self { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Tansu (in-memory engine).
pub struct Tansu {
    child: Child,
    pub port: u16,
}

impl Tansu {
    pub fn start() -> Self {
        let b = binaries();
        let port = free_port();
        let args: Vec<String> =
            b.tansu_args.replace("{PORT}", &port.to_string()).split_whitespace().map(String::from).collect();
        let child = Command::new(&b.tansu)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        wait_for_port(port, Duration::from_secs(10));
        Self { child, port }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `iotpipe bridge` (or another long-running subcommand).
pub struct Bridge {
    child: Option<Child>,
    command: &'static str,
    pub http_port: u16,
    config: PathBuf,
    log: PathBuf,
}

pub fn iotpipe() -> &'static str {
    env!("CARGO_BIN_EXE_iotpipe")
}

impl Bridge {
    /// Write `toml` (with `{HTTP}` replaced by a free port) and start the bridge on it.
    pub fn start(dir: &Path, toml: &str) -> Self {
        Self::start_command(dir, "bridge", toml)
    }

    /// Start `iotpipe <command> --config` on `toml`.
    pub fn start_command(dir: &Path, command: &'static str, toml: &str) -> Self {
        let http_port = free_port();
        let config = dir.join(format!("{command}.toml"));
        std::fs::write(&config, toml.replace("{HTTP}", &format!("127.0.0.1:{http_port}"))).expect("write config");
        let mut b = Self { child: None, command, http_port, config, log: dir.join(format!("{command}.log")) };
        b.restart();
        b
    }

    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(iotpipe())
            .args([self.command, "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
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

    /// SIGTERM and wait; returns the exit code and how long the exit took.
    pub fn terminate(&mut self, within: Duration) -> (Option<i32>, Duration) {
        let mut c = self.child.take().expect("bridge running");
        let start = Instant::now();
        signal(c.id(), "TERM");
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

impl Drop for Bridge {
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

/// Minimal HTTP/1.1 GET against 127.0.0.1.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Poll `f` until it returns true.
pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
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
