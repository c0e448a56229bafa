//! `iotpipe run`'s configuration: its own section, `[run]` (batch size,
//! store retries and shutdown of the journal → store path), and
//! [`RunSettings`], every section the run pipeline reads. The one default
//! `run` does not share with the other commands, the store URL (a SQLite
//! file), is [`RunSettings::DEFAULT_STORE_URL`].
//!
//! `run` has keys of its own rather than reading `[sink]` and `[bridge]`:
//! its batches are what the journal holds (not a consumer's batches), it has
//! one writer, and its shutdown waits for the store, not Kafka. A file shared
//! between commands can tune each without changing the others.

use crate::http::HttpConfig;
use crate::journal::JournalConfig;
use crate::mqtt::MqttConfig;
use crate::route::{RouteConfig, Targets};
use crate::store::StoreConfig;
use crate::units::{HumanDuration, KeyError};
use serde::Deserialize;
use std::time::Duration;

/// The `[run]` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Most records read from the journal and written in one store transaction.
    pub batch_max_rows: usize,
    /// Longest wait between store retries (connect and write).
    pub retry_backoff_max: HumanDuration,
    /// On SIGTERM: time to store what is journaled and ack what is received.
    pub grace_period: HumanDuration,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { batch_max_rows: 2000, retry_backoff_max: HumanDuration::secs(10), grace_period: HumanDuration::secs(25) }
    }
}

impl RunConfig {
    /// The keys of other sections `run` read before it had `[run]`, with
    /// the key that replaces each (`(old, new)`, both `section.key`).
    pub const MOVED_KEYS: [(&'static str, &'static str); 3] = [
        ("sink.batch_max_rows", "run.batch_max_rows"),
        ("sink.retry_backoff_max", "run.retry_backoff_max"),
        ("bridge.grace_period", "run.grace_period"),
    ];

    /// Keys are relative to `[run]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.batch_max_rows == 0 {
            return Err(KeyError::new("batch_max_rows", "must be at least 1"));
        }
        if self.retry_backoff_max.get() < Duration::from_millis(100) {
            return Err(KeyError::new("retry_backoff_max", "must be at least 100ms"));
        }
        if self.grace_period.get() > Duration::from_secs(3600) {
            return Err(KeyError::new("grace_period", "must be at most 1h"));
        }
        Ok(())
    }
}

/// What `iotpipe run` (and `iotpipe demo`) reads: `[mqtt]`, `[route]`, the
/// routing targets of `[kafka]` (the rows look as if they came through
/// Kafka), `[run]`, `[store]`, `[journal]` and `[http]`.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub mqtt: MqttConfig,
    pub route: RouteConfig,
    /// `kafka.topic`, `kafka.key` and the dead-letter topic, as the bridge renders them.
    pub targets: Targets,
    pub run: RunConfig,
    pub store: StoreConfig,
    /// Always there: `run` acks MQTT after the journal's fsync.
    pub journal: JournalConfig,
    pub http: HttpConfig,
}

impl RunSettings {
    /// Where `run` stores when neither the file nor the environment sets
    /// `store.url`: a SQLite file beside the journal's default directory.
    pub const DEFAULT_STORE_URL: &'static str = "sqlite://data/iotpipe.db";
}
