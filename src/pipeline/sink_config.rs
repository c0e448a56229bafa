//! `iotpipe sink`'s configuration: its own section, `[sink]` (the consumer
//! group, batching, writers, store retries and shutdown), and
//! [`SinkSettings`], every section the sink pipeline reads.

use crate::http::HttpConfig;
use crate::kafka::{ConsumerSettings, KafkaConfig};
use crate::store::StoreConfig;
use crate::units::{ByteSize, HumanDuration, KeyError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The `[sink]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Topic names, or regexes when they start with `^` (e.g. `^iot\\..+`).
    pub topics: Vec<String>,
    /// Topics whose records are the bridge's dead letters: stored in the dead-letter table.
    pub dead_letter_topics: Vec<String>,
    pub group_id: String,
    /// A batch ends at this many records …
    pub batch_max_rows: usize,
    /// … or this many payload bytes …
    pub batch_max_bytes: ByteSize,
    /// … or this long after its first record. 100 ms: at 2,000 msg/s,
    /// publish -> commit p50 130 ms instead of 540 ms at 500 ms, for five
    /// times as many (smaller) transactions below the row bound; at high
    /// rates batches end at `batch_max_rows` first (BENCHMARKS.md,
    /// "End-to-end latency").
    pub batch_max_wait: HumanDuration,
    /// Batches written at the same time, each on its own database connection
    /// (offsets are still stored strictly in batch order).
    pub writers: usize,
    /// Longest wait between store retries.
    pub retry_backoff_max: HumanDuration,
    /// librdkafka `max.poll.interval.ms`: how long a store outage may last
    /// before this member leaves the group (its records are then re-read elsewhere).
    pub max_poll_interval: HumanDuration,
    /// Extra librdkafka consumer properties, verbatim (`<key>_file` reads a secret from a file).
    pub properties: BTreeMap<String, String>,
    /// On SIGTERM: time to finish the current batch and commit.
    pub grace_period: HumanDuration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            topics: vec!["^iot\\..+".into()],
            dead_letter_topics: vec!["iot-dead-letters".into()],
            group_id: "iotpipe-sink".into(),
            batch_max_rows: 2000,
            batch_max_bytes: ByteSize::mib(4),
            batch_max_wait: HumanDuration::millis(100),
            writers: 2,
            retry_backoff_max: HumanDuration::secs(10),
            max_poll_interval: HumanDuration::secs(1800),
            properties: BTreeMap::new(),
            grace_period: HumanDuration::secs(25),
        }
    }
}

impl SinkConfig {
    /// Keys are relative to `[sink]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.topics.is_empty() {
            return Err(KeyError::new("topics", "at least one topic name or regex is needed"));
        }
        if self.group_id.trim().is_empty() {
            return Err(KeyError::new("group_id", "is empty"));
        }
        if self.batch_max_rows == 0 {
            return Err(KeyError::new("batch_max_rows", "must be at least 1"));
        }
        if self.batch_max_bytes.bytes() < 1024 {
            return Err(KeyError::new("batch_max_bytes", "must be at least 1KiB"));
        }
        if self.batch_max_wait.get().is_zero() {
            return Err(KeyError::new("batch_max_wait", "must be more than 0s"));
        }
        if !(1..=8).contains(&self.writers) {
            return Err(KeyError::new("writers", format!("{} is outside 1..=8", self.writers)));
        }
        if self.retry_backoff_max.get() < Duration::from_millis(100) {
            return Err(KeyError::new("retry_backoff_max", "must be at least 100ms"));
        }
        if self.max_poll_interval.get() < Duration::from_secs(10) {
            return Err(KeyError::new("max_poll_interval", "must be at least 10s"));
        }
        Ok(())
    }

    /// Read `properties.<key>_file` secrets.
    pub fn resolve_secrets(&mut self) -> Result<(), KeyError> {
        crate::kafka::resolve_property_files(&mut self.properties, "properties")
    }

    /// What the Kafka consumer needs from this section.
    pub fn consumer(&self) -> ConsumerSettings {
        let mut topics = self.topics.clone();
        topics.extend(self.dead_letter_topics.iter().cloned());
        ConsumerSettings {
            topics,
            group_id: self.group_id.clone(),
            max_rows: self.batch_max_rows.max(1),
            max_bytes: usize::try_from(self.batch_max_bytes.bytes()).unwrap_or(usize::MAX),
            max_wait: self.batch_max_wait.get(),
            max_poll_interval: self.max_poll_interval.get(),
            properties: self.properties.clone(),
        }
    }
}

/// What `iotpipe sink` reads: `[kafka]`, `[sink]`, `[store]` and `[http]`.
#[derive(Debug, Clone, Default)]
pub struct SinkSettings {
    pub kafka: KafkaConfig,
    pub sink: SinkConfig,
    pub store: StoreConfig,
    pub http: HttpConfig,
}
