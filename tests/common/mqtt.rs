//! Test-side MQTT: a private Mosquitto per test (one listener, or an open
//! listener next to one that needs a password or a client certificate), a
//! publisher of known payloads and a session reader.

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private Mosquitto on a free port (the binary comes from `scripts/services.sh`).
pub struct Mosquitto {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: std::path::PathBuf,
}

impl Mosquitto {
    pub fn start(max_queued: u32) -> Self {
        Self::start_with(max_queued, false)
    }

    /// With `persistence`, Mosquitto writes its sessions and queued messages
    /// to a file in `dir` when it stops (SIGTERM) and reads them back on start.
    pub fn start_with(max_queued: u32, persistence: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let conf = dir.path().join("mosquitto.conf");
        let persist = if persistence {
            format!("persistence true\npersistence_location {}/\n", dir.path().display())
        } else {
            "persistence false\n".to_string()
        };
        let user = if super::is_root() { "user root\n" } else { "" };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n{persist}{user}max_queued_messages {max_queued}\nmax_inflight_messages 1000\nmessage_size_limit 0\nlog_dest file {}\n",
                dir.path().join("mosquitto.log").display()
            ),
        )
        .expect("write mosquitto.conf");
        let child = spawn_mosquitto(&conf, &[port]);
        Self { child, port, dir, conf }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop the broker with SIGTERM (it writes its persistence file) and
    /// start it again on the same port and config.
    pub fn restart(&mut self) {
        super::signal(self.child.id(), "TERM");
        self.start_again();
    }

    /// Wait until the broker has exited (a test signalled it), then start it
    /// again on the same port and config.
    pub fn start_again(&mut self) {
        let _ = self.child.wait();
        self.child = spawn_mosquitto(&self.conf, &[self.port]);
    }
}

/// The services' Mosquitto binary.
fn mosquitto_bin() -> String {
    super::services::shared(&["mosquitto"]).get("IOTPIPE_TEST_MOSQUITTO_BIN").unwrap_or("mosquitto").to_string()
}

/// The services' Mosquitto's version, from `mosquitto -h` ("mosquitto
/// version 2.0.11").
pub fn mosquitto_version() -> (u32, u32, u32) {
    let out = Command::new(mosquitto_bin()).arg("-h").output().expect("run mosquitto -h");
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().skip_while(|w| *w != "version").nth(1).expect("a version in mosquitto -h");
    let mut n = version.split('.').map(|p| p.parse::<u32>().expect("a numeric version"));
    (n.next().unwrap_or(0), n.next().unwrap_or(0), n.next().unwrap_or(0))
}

/// Start the services' Mosquitto on `conf` and wait until each of its
/// listener `ports` is open.
fn spawn_mosquitto(conf: &Path, ports: &[u16]) -> Child {
    let child = Command::new(mosquitto_bin())
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    for &port in ports {
        super::wait_for_port(port, Duration::from_secs(10));
    }
    child
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private Mosquitto with two listeners on free ports: `open` takes
/// anonymous clients (the test's publishers), `guarded` asks for a password
/// or a client certificate (the iotpipe under test connects there).
pub struct GuardedMosquitto {
    child: Child,
    pub open: u16,
    pub guarded: u16,
}

impl GuardedMosquitto {
    /// `guarded` needs user `user` with `password` (a password file made
    /// with `mosquitto_passwd` in `dir`).
    pub fn with_password(dir: &Path, user: &str, password: &str) -> Self {
        let passwd = dir.join("mosquitto.passwd");
        let out = Command::new("mosquitto_passwd")
            .args(["-b", "-c"])
            .arg(&passwd)
            .args([user, password])
            .output()
            .expect("mosquitto_passwd (Debian package mosquitto)");
        assert!(out.status.success(), "mosquitto_passwd: {}", String::from_utf8_lossy(&out.stderr));
        Self::start(dir, &format!("allow_anonymous false\npassword_file {}\n", passwd.display()))
    }

    /// `guarded` is TLS with the server certificate `cert`/`key` and requires
    /// a client certificate signed by `ca`.
    pub fn with_client_certificate(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> Self {
        Self::start(
            dir,
            &format!(
                "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                ca.display(),
                cert.display(),
                key.display()
            ),
        )
    }

    /// Writes `dir/mosquitto.conf` (log in `dir/mosquitto.log`), the
    /// `guarded` listener's settings from `guard`, and starts it.
    fn start(dir: &Path, guard: &str) -> Self {
        let (open, guarded) = (super::free_port(), super::free_port());
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings true\npersistence false\nlog_dest file {log}\n\
                 listener {open} 127.0.0.1\nallow_anonymous true\n\
                 listener {guarded} 127.0.0.1\n{guard}",
                log = dir.join("mosquitto.log").display(),
            ),
        )
        .expect("write mosquitto.conf");
        let child = spawn_mosquitto(&conf, &[open, guarded]);
        Self { child, open, guarded }
    }

    /// `mqtt://` URL of the open listener.
    pub fn open_url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.open)
    }
}

impl Drop for GuardedMosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const TENANTS: u64 = 3;
pub const PROJECTS: u64 = 2;
pub const DEVICES: u64 = 20;

/// Where message `seq` is published and what it says. Deterministic, so a
/// test can check the bytes that reach Kafka.
pub fn message(seq: u64) -> (String, Vec<u8>) {
    let d = seq % (TENANTS * PROJECTS * DEVICES);
    let t = d / (PROJECTS * DEVICES) + 1;
    let p = (d / DEVICES) % PROJECTS + 1;
    let dev = d % DEVICES + 1;
    let topic = format!("mtic/msg/client/realtime/tenant-{t}/project-{p}");
    let payload = format!(
        r#"{{"deviceId":"dev-{t}-{p}-{dev}","ts":{},"seq":{seq},"temperature":{}.5,"note":"ünïcødé ✓"}}"#,
        1_700_000_000_000u64 + seq,
        seq % 40
    );
    (topic, payload.into_bytes())
}

fn options(url: &str, id: &str) -> MqttOptions {
    let addr = url.trim_start_matches("mqtt://");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut o = MqttOptions::new(id, host, port.parse().expect("port"));
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(500);
    o.set_max_packet_size(8 << 20, 8 << 20);
    o
}

/// Publish messages `range` at QoS 1 (at about `rate` per second when given)
/// and wait until the broker acknowledged each one.
pub async fn publish(url: &str, range: std::ops::Range<u64>, rate: Option<u64>) {
    let id = format!("test-pub-{}-{}", std::process::id(), range.start);
    let (client, mut el) = AsyncClient::new(options(url, &id), 1024);
    let total = range.end - range.start;
    let acker = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher lost its connection: {e}"),
            }
        }
    });
    let start = Instant::now();
    for (i, seq) in range.enumerate() {
        let (topic, payload) = message(seq);
        client.publish(topic, QoS::AtLeastOnce, false, payload).await.expect("publish");
        if let Some(r) = rate {
            let due = start + Duration::from_secs_f64((i + 1) as f64 / r as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    tokio::time::timeout(Duration::from_secs(120), acker).await.expect("broker acked in time").expect("acker");
    let _ = client.disconnect().await;
}

/// Publish raw (topic, payload) pairs at QoS 1 and wait for the acks.
pub async fn publish_raw(url: &str, msgs: Vec<(String, Vec<u8>)>) {
    let (client, mut el) = AsyncClient::new(options(url, &format!("test-raw-{}", std::process::id())), 64);
    let total = msgs.len();
    let acker = tokio::spawn(async move {
        let mut acked = 0;
        while acked < total {
            if let Ok(Event::Incoming(Packet::PubAck(_))) = el.poll().await {
                acked += 1;
            }
        }
    });
    for (t, p) in msgs {
        client.publish(t, QoS::AtLeastOnce, false, p).await.expect("publish");
    }
    tokio::time::timeout(Duration::from_secs(60), acker).await.expect("acks").expect("acker");
}

/// Take over the persistent MQTT 5 session `client_id` and return the `seq`
/// of every message the broker still held for it (those never acked).
pub async fn drain_session(url: &str, client_id: &str, idle: Duration) -> Vec<u64> {
    use rumqttc::v5::{AsyncClient as C5, Event as E5, Incoming as I5, MqttOptions as O5};
    let addr = url.trim_start_matches("mqtt://");
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut o = O5::new(client_id, host, port.parse().expect("port"));
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(3600));
    o.set_max_packet_size(Some(8 << 20));
    let (_client, mut el) = C5::new(o, 64);
    let mut seqs = Vec::new();
    loop {
        match tokio::time::timeout(idle, el.poll()).await {
            Err(_) => break,
            Ok(Ok(E5::Incoming(I5::Publish(p)))) => {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&p.payload) {
                    if let Some(s) = v["seq"].as_u64() {
                        seqs.push(s);
                    }
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("session reader: {e}"),
        }
    }
    seqs
}

/// Run `publish` on a thread of its own (tests stay synchronous).
pub fn spawn_publish(url: String, range: std::ops::Range<u64>, rate: Option<u64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || block_on(publish(&url, range, rate)))
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime").block_on(f)
}
