//! Test-side Kafka: a private Tansu per test, a reader of every record of
//! the given topics from the start, and a producer of bridge-like records.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private Tansu (in-memory engine) on a free port; the binary and its
/// command line come from `scripts/services.sh`.
pub struct Tansu {
    child: Child,
    pub port: u16,
}

impl Tansu {
    pub fn start() -> Self {
        let env = super::services::shared(&["tansu"]);
        let port = super::free_port();
        let args: Vec<String> = env
            .require("IOTPIPE_TEST_TANSU_ARGS")
            .replace("{PORT}", &port.to_string())
            .split_whitespace()
            .map(String::from)
            .collect();
        Self::spawn(env.require("IOTPIPE_TEST_TANSU_BIN"), port, &args, None)
    }

    /// `bin broker` on a free port that tells clients to connect to
    /// `advertised` (a TLS terminator in front of it), with `extra` flags,
    /// run in `cwd` (Tansu's SQLite engine puts `sqlite://NAME` there).
    pub fn start_behind(bin: &str, advertised: u16, storage: &str, extra: &[&str], cwd: Option<&Path>) -> Self {
        let port = super::free_port();
        let mut args: Vec<String> = [
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine",
            storage,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(bin, port, &args, cwd)
    }

    fn spawn(bin: &str, port: u16, args: &[String], cwd: Option<&Path>) -> Self {
        let mut cmd = Command::new(bin);
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let child = cmd
            .args(args)
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        super::wait_for_port(port, Duration::from_secs(10));
        Self { child, port }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pause(&self) {
        super::signal(self.child.id(), "STOP");
    }

    pub fn resume(&self) {
        super::signal(self.child.id(), "CONT");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        super::signal(self.child.id(), "CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `scripts/null_kafka.py --keep` on a free port: the Kafka stand-in that
/// keeps fetch sessions as Kafka does (Tansu keeps none), with `extra`
/// flags; its fetch counters go to a file in `dir`.
pub struct NullKafka {
    child: Child,
    pub port: u16,
    log: std::path::PathBuf,
}

impl NullKafka {
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let port = super::free_port();
        let log = dir.join(format!("null-kafka-{port}.log"));
        let script = super::services::repo().join("scripts/null_kafka.py");
        let child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--keep", "--stats", "0.2"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("stand-in log"))
            .spawn()
            .expect("start python3 scripts/null_kafka.py");
        super::wait_for_port(port, Duration::from_secs(10));
        Self { child, port, log }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The last line of fetch counters (`fetch full=3 incremental=40 ...`).
    pub fn stats(&self) -> HashMap<String, u64> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let line = text.lines().rev().find(|l| l.starts_with("fetch ")).unwrap_or_default();
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }
}

impl Drop for NullKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Record {
    pub fn seq(&self) -> Option<u64> {
        serde_json::from_slice::<serde_json::Value>(&self.payload).ok()?["seq"].as_u64()
    }
}

/// Every record as the bridge routes the test messages (`super::mqtt::message`):
/// a topic per pair, the key, the headers (a UUIDv7 id, one per message:
/// a redelivered copy keeps its id; the event time from `/ts`) and the
/// payload bytes unchanged.
pub fn assert_routed(records: &[Record]) {
    let mut id_of: HashMap<u64, uuid::Uuid> = HashMap::new();
    let mut seq_of: HashMap<uuid::Uuid, u64> = HashMap::new();
    for r in records {
        let seq = r.seq().expect("seq");
        let (mqtt_topic, payload) = super::mqtt::message(seq);
        assert_eq!(r.payload, payload, "payload bytes unchanged for seq {seq}");
        let v: serde_json::Value = serde_json::from_slice(&payload).expect("json");
        let device = v["deviceId"].as_str().expect("deviceId");
        let parts: Vec<&str> = mqtt_topic.rsplitn(3, '/').collect();
        let (project, tenant) = (parts[0], parts[1]);
        assert_eq!(r.topic, format!("iot.{tenant}.{project}"));
        assert_eq!(r.key.as_deref(), Some(format!("{tenant}/{project}/{device}").as_str()));
        assert_eq!(r.headers["tenant_id"], tenant);
        assert_eq!(r.headers["project_id"], project);
        assert_eq!(r.headers["device_id"], device);
        assert_eq!(r.headers["mqtt_topic"], mqtt_topic);
        assert!(r.headers["received_at"].ends_with('Z'));
        assert_eq!(r.headers["event_time"].len(), r.headers["received_at"].len(), "event_time from /ts");
        let id = uuid::Uuid::parse_str(&r.headers["id"]).expect("id header is a UUID");
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(*id_of.entry(seq).or_insert(id), id, "a copy of message {seq} keeps its id");
        assert_eq!(*seq_of.entry(id).or_insert(seq), seq, "no two messages share an id");
    }
}

/// Topics on the broker whose name starts with `prefix`.
pub fn topics(brokers: &str, prefix: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("consumer");
    match c.fetch_metadata(None, Duration::from_secs(5)) {
        Ok(md) => md.topics().iter().map(|t| t.name().to_string()).filter(|n| n.starts_with(prefix)).collect(),
        Err(_) => Vec::new(),
    }
}

/// Read all records of `topics` from the beginning until `done(records)` or
/// nothing new arrives for `idle` (after at least one full pass).
pub fn read_all(
    brokers: &str,
    topic_names: &[String],
    idle: Duration,
    mut done: impl FnMut(&[Record]) -> bool,
) -> Vec<Record> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("consumer");
    let md = c.fetch_metadata(None, Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| topic_names.iter().any(|n| n == t.name())) {
        for p in t.partitions() {
            tpl.add_partition_offset(t.name(), p.id(), Offset::Beginning).expect("partition");
        }
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut last_new = Instant::now();
    while last_new.elapsed() < idle {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(
                            hd.key.to_string(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    topic: m.topic().to_string(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                last_new = Instant::now();
                if done(&out) {
                    break;
                }
            }
        }
    }
    out
}

/// Read the `iot.*` topics until every seq in `0..n` is present (or `within` passes).
pub fn read_until_complete(brokers: &str, n: u64, within: Duration) -> Vec<Record> {
    let start = Instant::now();
    loop {
        let names = topics(brokers, "iot.");
        let mut seen = vec![false; n as usize];
        let mut missing = n;
        let recs = read_all(brokers, &names, Duration::from_secs(5), |rs| {
            if let Some(s) = rs.last().and_then(Record::seq) {
                if s < n && !seen[s as usize] {
                    seen[s as usize] = true;
                    missing -= 1;
                }
            }
            missing == 0
        });
        if missing == 0 || start.elapsed() > within {
            return recs;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The bridge's record for message `seq`: headers as the bridge writes them.
pub fn bridge_record(seq: u64) -> (String, String, Vec<u8>, Vec<(&'static str, String)>) {
    let (mqtt_topic, payload) = super::mqtt::message(seq);
    let parts: Vec<&str> = mqtt_topic.rsplitn(3, '/').collect();
    let (project, tenant) = (parts[0].to_string(), parts[1].to_string());
    let v: serde_json::Value = serde_json::from_slice(&payload).expect("json");
    let device = v["deviceId"].as_str().unwrap_or_default().to_string();
    let ts = v["ts"].as_i64().unwrap_or_default();
    // Event times spread over the last two days, so rows land in several partitions.
    // Fixed per test process, so producing a record twice gives identical headers (a replay).
    static NOW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    let now = *NOW
        .get_or_init(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64);
    let event_ms = now - ((seq as i64 * 7_919) % (2 * 86_400_000)) - 60_000;
    let _ = ts;
    let id = uuid::Uuid::from_u128(0x0180_0000_0000_7000_8000_0000_0000_0000 | u128::from(seq));
    let fmt = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let headers = vec![
        ("tenant_id", tenant.clone()),
        ("project_id", project.clone()),
        ("device_id", device.clone()),
        ("mqtt_topic", mqtt_topic),
        ("id", id.to_string()),
        ("received_at", fmt(event_ms + 5)),
        ("event_time", fmt(event_ms)),
    ];
    (format!("iot.{tenant}.{project}"), format!("{tenant}/{project}/{device}"), payload, headers)
}

/// Produce records (topic, key, payload, headers) and wait for every delivery.
pub fn produce(
    brokers: &str,
    records: impl IntoIterator<Item = (String, String, Vec<u8>, Vec<(&'static str, String)>)>,
) {
    produce_compressed(brokers, "none", records);
}

/// The same, with librdkafka's `compression.codec` (none, gzip, snappy, lz4, zstd).
pub fn produce_compressed(
    brokers: &str,
    codec: &str,
    records: impl IntoIterator<Item = (String, String, Vec<u8>, Vec<(&'static str, String)>)>,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("compression.codec", codec)
        .create()
        .expect("producer");
    for (topic, key, payload, headers) in records {
        let mut h = OwnedHeaders::new();
        for (k, v) in &headers {
            h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let mut rec = BaseRecord::to(&topic).key(&key).payload(&payload).headers(h);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}
