//! Test-side Kafka: read every record of the given topics from the start.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

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
pub fn read_all(brokers: &str, topic_names: &[String], idle: Duration, mut done: impl FnMut(&[Record]) -> bool) -> Vec<Record> {
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
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(hd.key.to_string(), String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned());
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
            Some(Err(_)) | None => {}
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
