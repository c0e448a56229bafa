//! Time-series stores: PostgreSQL (daily partitions, or a TimescaleDB
//! hypertable when the extension is there), InfluxDB 1.x, and SQLite (one
//! file, the embedded default of `iotpipe run`).
//!
//! The sink hands [`Store::write`] one batch at a time: telemetry rows and
//! the dead letters that came with them. A batch is written whole or not at
//! all (one transaction on PostgreSQL), and writing it again is harmless:
//! rows are keyed by their record id, so a replay after a crash never
//! creates a second row. [`Store::enforce_retention`] runs on a timer and
//! drops what is older than `store.retention`.
//!
//! A backend is one variant of [`Store`] and one folder here. The
//! dashboard reads through a [`QueryHandle`] ([`Store::query_handle`]), on
//! connections separate from the writer's.

mod config;
mod error;
pub mod influx;
mod json;
pub mod postgres;
pub mod query;
pub mod sqlite;
pub mod time_rule;
mod tls;

pub use config::{InfluxUrl, StoreConfig, StoreUrl, TimescaleMode};
pub use error::StoreError;
pub use query::{Page, QueryHandle, MAX_LIST_LIMIT};

use bytes::Bytes;

/// One telemetry record as the store receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreRow {
    /// Record id (UUIDv7), stable across replays: part of the primary key.
    pub id: uuid::Uuid,
    /// Event time if known, else received time (epoch ms). The store may
    /// still file the row under `received_ms`; see [`time_rule`].
    pub time_ms: i64,
    /// The device's own timestamp, when the payload had one (epoch ms).
    pub event_time_ms: Option<i64>,
    /// When iotpipe received the message from MQTT (epoch ms).
    pub received_ms: i64,
    /// Tenant extracted from the MQTT topic.
    pub tenant_id: String,
    /// Project extracted from the MQTT topic.
    pub project_id: String,
    /// Device id (from the payload or the topic; may be empty).
    pub device_id: String,
    /// The MQTT topic the message arrived on.
    pub mqtt_topic: String,
    /// The original payload bytes, whatever they are.
    pub payload: Bytes,
}

/// A message that could not be routed, kept with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow {
    /// Unique origin, e.g. `kafka:iot-dead-letters/2@1234`: a replay of the
    /// same origin is stored once.
    pub source: String,
    /// When iotpipe received the message (epoch ms); retention uses it.
    pub received_ms: i64,
    /// Machine-readable reason, e.g. `invalid_json`.
    pub reason: String,
    /// Human-readable detail.
    pub error: String,
    /// The MQTT topic, when known.
    pub mqtt_topic: Option<String>,
    /// Metadata that travelled with the message (e.g. Kafka headers).
    pub headers: Vec<(String, String)>,
    /// The payload bytes as they were dead-lettered.
    pub payload: Bytes,
}

/// What one [`Store::write`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Telemetry rows newly stored.
    pub inserted: u64,
    /// Telemetry rows skipped because a row with the same key was already
    /// stored (a replay). InfluxDB overwrites instead and always reports 0.
    pub duplicates: u64,
    /// Telemetry rows the database refused individually while storing the
    /// rest (InfluxDB partial writes, e.g. a field type conflict). Logged.
    pub rejected: u64,
    /// Dead letters newly stored.
    pub dead_letters_inserted: u64,
    /// Dead letters already stored under the same `source`.
    pub dead_letters_duplicates: u64,
    /// The batch was written twice: PostgreSQL's binary `COPY` failed (a
    /// row already stored, or COPY refused) and the batch went again by
    /// `INSERT .. ON CONFLICT DO NOTHING` (docs/storage.md, "Writes").
    pub redone_by_insert: bool,
}

/// What one [`Store::enforce_retention`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Daily partitions (or TimescaleDB chunks) dropped.
    pub partitions_dropped: Vec<String>,
    /// Partitions created ahead of time.
    pub partitions_created: Vec<String>,
    /// Expired telemetry rows deleted one by one (from the default partition).
    pub rows_deleted: u64,
    /// Expired dead letters deleted.
    pub dead_letters_deleted: u64,
}

/// What `iotpipe check` found at a store, without changing anything there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// Where, without secrets (as [`Store::describe`]).
    pub describe: String,
    /// What is there, e.g. `schema version 3 of 3` or `database does not exist yet (created on first start)`.
    pub detail: String,
}

/// A connected store. One per sink task; not shared between tasks.
// Created once per task and never moved in a hot path: boxing the larger
// variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    /// PostgreSQL, with or without TimescaleDB.
    Postgres(postgres::PostgresStore),
    /// InfluxDB 1.x over HTTP.
    Influx(influx::InfluxStore),
    /// A SQLite file (WAL mode).
    Sqlite(sqlite::SqliteStore),
}

impl Store {
    /// Connect to the database `cfg.url` names. PostgreSQL: create the
    /// database if missing (when `create_database` is set and the user may),
    /// run the migrations, create today's partitions and those ahead.
    /// InfluxDB: create the database and the `iotpipe` retention policy.
    /// SQLite: create the file and its directory (when `create_database`
    /// is set), switch to WAL mode, run the migrations.
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, StoreError> {
        match cfg.parse_url()? {
            StoreUrl::Postgres(url) => Ok(Store::Postgres(postgres::PostgresStore::connect(cfg, &url).await?)),
            StoreUrl::Influx(target) => Ok(Store::Influx(influx::InfluxStore::connect(cfg, target).await?)),
            StoreUrl::Sqlite(path) => Ok(Store::Sqlite(sqlite::SqliteStore::connect(cfg, &path).await?)),
        }
    }

    /// Connect without creating or migrating anything and report what is
    /// there: the schema version, or that the database or file will be
    /// created on first start. Fails as `connect` would (wrong role,
    /// password, host, or a missing database that may not be created).
    pub async fn inspect(cfg: &StoreConfig) -> Result<StoreStatus, StoreError> {
        match cfg.parse_url()? {
            StoreUrl::Postgres(url) => postgres::inspect(cfg, &url).await,
            StoreUrl::Influx(target) => influx::InfluxStore::inspect(cfg, target).await,
            StoreUrl::Sqlite(path) => sqlite::inspect(cfg, &path).await,
        }
    }

    /// Store one batch: all of it or nothing (one transaction on PostgreSQL and SQLite).
    /// Rows and dead letters already stored are skipped, so a batch can be
    /// written again after an error or a crash.
    pub async fn write(&mut self, rows: &[StoreRow], dead: &[DeadLetterRow]) -> Result<WriteOutcome, StoreError> {
        match self {
            Store::Postgres(s) => s.write(rows, dead).await,
            Store::Influx(s) => s.write(rows, dead).await,
            Store::Sqlite(s) => s.write(rows, dead).await,
        }
    }

    /// Drop data older than the retention window and prepare the partitions
    /// of the days ahead. Run it every `store.retention_interval`.
    pub async fn enforce_retention(&mut self) -> Result<RetentionOutcome, StoreError> {
        match self {
            Store::Postgres(s) => s.enforce_retention().await,
            Store::Influx(s) => s.enforce_retention().await,
            Store::Sqlite(s) => s.enforce_retention().await,
        }
    }

    /// The TimescaleDB jobs of iotpipe's policies (compression, retention,
    /// the rollup's refresh) and whether their last run failed; `None` when
    /// the store is not TimescaleDB.
    pub async fn timescale_jobs(&mut self) -> Result<Option<Vec<postgres::jobs::JobState>>, StoreError> {
        match self {
            Store::Postgres(s) => s.timescale_jobs().await,
            Store::Influx(_) | Store::Sqlite(_) => Ok(None),
        }
    }

    /// Check that the database answers (reconnecting if needed).
    pub async fn ping(&mut self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(s) => s.ping().await,
            Store::Influx(s) => s.ping().await,
            Store::Sqlite(s) => s.ping().await,
        }
    }

    /// Where the store writes, without secrets, e.g. `postgres 127.0.0.1:5432/iot`.
    pub fn describe(&self) -> String {
        match self {
            Store::Postgres(s) => s.describe(),
            Store::Influx(s) => s.describe(),
            Store::Sqlite(s) => s.describe(),
        }
    }

    /// A handle for the dashboard's queries, reading on connections of its
    /// own so that reads never wait behind a batch being written. SQLite
    /// only for now: the other stores answer
    /// [`StoreError::QueriesUnsupported`].
    pub fn query_handle(&self) -> Result<QueryHandle, StoreError> {
        match self {
            Store::Sqlite(s) => Ok(QueryHandle::sqlite(s.reader())),
            Store::Postgres(_) | Store::Influx(_) => Err(StoreError::QueriesUnsupported { store: self.describe() }),
        }
    }
}
