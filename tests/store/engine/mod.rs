//! The engines a store scenario runs against: how to get a fresh database
//! (or file), connect to it, read back what the store wrote, and drop it
//! afterwards; plus the few ways the engines differ by design.
//!
//! Readers per engine: [`sqlite`], [`postgres`], [`influx`]. They return
//! [`Stored`] rows and [`StoredDeadLetter`]s, so a scenario compares one
//! shape whatever the engine.

pub mod influx;
pub mod postgres;
pub mod sqlite;

use crate::common::postgres::Server;
use crate::common::store::{config, fresh_name};
use iotpipe::store::postgres::Flavor;
use iotpipe::store::{Store, StoreConfig};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One of the engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    Timescale,
    Influx,
}

/// The names the `scenarios!` macro accepts (`exactly_once: sqlite, postgres`):
/// a misspelt engine does not compile.
#[allow(non_upper_case_globals)]
pub mod kinds {
    use super::Kind;
    pub const sqlite: Kind = Kind::Sqlite;
    pub const postgres: Kind = Kind::Postgres;
    pub const timescale: Kind = Kind::Timescale;
    pub const influx: Kind = Kind::Influx;
}

/// How expired data leaves the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// SQLite: one table; expired rows are deleted (`rows_deleted`).
    File,
    /// PostgreSQL: one partition per UTC day, dropped whole; a DEFAULT partition.
    DayPartitions,
    /// TimescaleDB: a hypertable; expired chunks are dropped.
    Hypertable,
    /// InfluxDB: measurements; the server expires points itself.
    Measurements,
}

/// (tenant, project, device).
pub type Device = (String, String, String);

/// One telemetry row as the engine keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: String,
    pub time_ms: i64,
    /// The device's timestamp.
    pub event_time_ms: Option<i64>,
    /// `None`: InfluxDB does not keep the receive time.
    pub received_ms: Option<i64>,
    pub tenant_id: String,
    pub project_id: String,
    pub device_id: String,
    pub mqtt_topic: String,
    /// The payload bytes: always on the SQL engines; on InfluxDB only for a
    /// payload that is not JSON (the `raw` or `raw_base64` field).
    pub raw: Option<Vec<u8>>,
    /// The payload as JSON: the SQL `payload` column; on InfluxDB the
    /// fields of a JSON payload, numbers as floats.
    pub json: Option<Value>,
}

/// One dead letter as the engine keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDeadLetter {
    pub source: String,
    pub received_ms: i64,
    pub reason: String,
    pub error: String,
    pub mqtt_topic: Option<String>,
    /// `None`: InfluxDB keeps no headers.
    pub headers: Option<Value>,
    pub payload: Vec<u8>,
}

enum Db {
    Sqlite { _dir: tempfile::TempDir, path: PathBuf },
    Postgres { server: &'static Server, name: String },
    Influx { name: String },
}

/// A fresh database of one engine, dropped by [`Engine::finish`].
pub struct Engine {
    pub kind: Kind,
    db: Db,
}

impl Engine {
    /// A fresh database; `None` when the engine is not available here (only
    /// TimescaleDB may be missing: one loud line says so).
    pub fn start(kind: Kind) -> Option<Engine> {
        let db = match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("data/iotpipe.db");
                Db::Sqlite { _dir: dir, path }
            }
            Kind::Postgres => Db::Postgres { server: Server::shared(), name: fresh_name("iot_test") },
            Kind::Timescale => Db::Postgres { server: timescale_server()?, name: fresh_name("iot_test") },
            Kind::Influx => Db::Influx { name: fresh_name("iot_test") },
        };
        Some(Engine { kind, db })
    }

    /// Drop the database (the SQLite file goes with its temporary directory).
    pub async fn finish(self) {
        match &self.db {
            Db::Sqlite { .. } => {}
            Db::Postgres { server, name } => server.drop_database(name).await,
            Db::Influx { name } => crate::common::influx::drop_database(name).await,
        }
    }

    /// The store URL of the fresh database.
    pub fn url(&self) -> String {
        match &self.db {
            Db::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            Db::Postgres { server, name } => server.url(name),
            Db::Influx { name } => crate::common::influx::store_url(name),
        }
    }

    /// The same kind of URL on a port where nothing listens.
    pub fn url_on_port(&self, port: u16) -> String {
        match &self.db {
            Db::Sqlite { .. } => panic!("SQLite has no port"),
            Db::Postgres { .. } => format!("postgres://iotpipe@127.0.0.1:{port}/x?sslmode=disable"),
            Db::Influx { .. } => format!("influxdb://127.0.0.1:{port}/x"),
        }
    }

    pub fn config(&self, retention_days: u64) -> StoreConfig {
        config(self.url(), retention_days)
    }

    /// Connect with `retention_days`, checking the store is of this engine.
    pub async fn connect(&self, retention_days: u64) -> Store {
        self.connect_with(&self.config(retention_days)).await
    }

    pub async fn connect_with(&self, cfg: &StoreConfig) -> Store {
        let store = match Store::connect(cfg).await {
            Ok(store) => store,
            Err(e) => panic!("connect {:?}: {e}{}", self.kind, self.why_not().await),
        };
        self.assert_is(&store);
        store
    }

    /// After a failed connect: a known cause on this server, if any.
    async fn why_not(&self) -> &'static str {
        let Db::Postgres { server, .. } = &self.db else { return "" };
        let Ok((db, connection)) = tokio_postgres::connect(&server.url("postgres"), tokio_postgres::NoTls).await else {
            return "";
        };
        tokio::spawn(connection);
        let sql = "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') \
                   AND current_setting('shared_preload_libraries') NOT LIKE '%timescaledb%'";
        if db.query_one(sql, &[]).await.is_ok_and(|r| r.get::<_, bool>(0)) {
            "\n(this server offers the timescaledb extension without preloading it: CREATE EXTENSION then \
             fails with FATAL, which closes the connection, so iotpipe cannot fall back to day partitions)"
        } else {
            ""
        }
    }

    /// The store is the engine's variant (and flavor), and describes itself.
    pub fn assert_is(&self, store: &Store) {
        let describe = store.describe();
        match (&self.db, store) {
            (Db::Sqlite { path, .. }, Store::Sqlite(_)) => assert_eq!(describe, format!("sqlite {}", path.display())),
            (Db::Postgres { name, .. }, Store::Postgres(pg)) => {
                let want = if self.kind == Kind::Timescale { Flavor::Hypertable } else { Flavor::Partitioned };
                assert_eq!(
                    pg.flavor(),
                    want,
                    "a server that preloads timescaledb gets a hypertable, one without the extension day partitions"
                );
                assert!(
                    describe.starts_with("postgres 127.0.0.1:") && describe.ends_with(&format!("/{name}")),
                    "{describe}"
                );
            }
            (Db::Influx { name }, Store::Influx(_)) => {
                assert!(
                    describe.starts_with("influxdb http://127.0.0.1:") && describe.ends_with(&format!("/{name}")),
                    "{describe}"
                );
            }
            _ => panic!("{:?} engine connected to {describe}", self.kind),
        }
    }

    pub fn layout(&self) -> Layout {
        match self.kind {
            Kind::Sqlite => Layout::File,
            Kind::Postgres => Layout::DayPartitions,
            Kind::Timescale => Layout::Hypertable,
            Kind::Influx => Layout::Measurements,
        }
    }

    /// Rows of the bulk scenarios (as many as the engine's own tests wrote
    /// before the scenarios were shared; InfluxDB reads every point back).
    pub fn fleet_size(&self) -> usize {
        match self.kind {
            Kind::Sqlite => 20_000,
            Kind::Postgres | Kind::Timescale => 50_000,
            Kind::Influx => 3_000,
        }
    }

    /// Whether a write reports rows and dead letters already stored as
    /// duplicates. InfluxDB overwrites a point with itself instead and
    /// reports every row as inserted.
    pub fn reports_duplicates(&self) -> bool {
        self.kind != Kind::Influx
    }

    /// Whether JSON payloads are flattened into fields (InfluxDB) rather
    /// than kept as bytes next to a JSON column.
    pub fn flattens_json(&self) -> bool {
        self.kind == Kind::Influx
    }

    /// Whether JSON with a NUL in a string still counts as JSON (PostgreSQL's
    /// `jsonb` refuses it: such a payload is kept as bytes only).
    pub fn json_may_contain_nul(&self) -> bool {
        !matches!(self.kind, Kind::Postgres | Kind::Timescale)
    }

    /// Whether [`Store::query_handle`] answers the dashboard's queries.
    pub fn answers_queries(&self) -> bool {
        self.kind == Kind::Sqlite
    }

    /// The SQLite file (SQLite only).
    pub fn path(&self) -> &Path {
        match &self.db {
            Db::Sqlite { path, .. } => path,
            _ => panic!("{:?} has no file", self.kind),
        }
    }

    /// The PostgreSQL server (PostgreSQL and TimescaleDB only).
    pub fn server(&self) -> Option<&'static Server> {
        match &self.db {
            Db::Postgres { server, .. } => Some(server),
            _ => None,
        }
    }

    /// The database name (PostgreSQL, TimescaleDB, InfluxDB).
    pub fn name(&self) -> &str {
        match &self.db {
            Db::Postgres { name, .. } | Db::Influx { name } => name,
            Db::Sqlite { .. } => panic!("SQLite has a file, not a database name"),
        }
    }

    /// A client on the PostgreSQL database (PostgreSQL and TimescaleDB only).
    pub async fn pg(&self) -> tokio_postgres::Client {
        match &self.db {
            Db::Postgres { server, name } => server.admin(name).await,
            _ => panic!("{:?} is not PostgreSQL", self.kind),
        }
    }

    /// Every telemetry row.
    pub async fn rows(&self) -> Vec<Stored> {
        match &self.db {
            Db::Sqlite { path, .. } => sqlite::rows(path, None),
            Db::Postgres { .. } => postgres::rows(&self.pg().await, None).await,
            Db::Influx { name } => influx::rows(name, None).await,
        }
    }

    /// The row with record id `id`.
    pub async fn row(&self, id: uuid::Uuid) -> Stored {
        let mut found = match &self.db {
            Db::Sqlite { path, .. } => sqlite::rows(path, Some(id)),
            Db::Postgres { .. } => postgres::rows(&self.pg().await, Some(id)).await,
            Db::Influx { name } => influx::rows(name, Some(id)).await,
        };
        assert_eq!(found.len(), 1, "one row with id {id}: {found:?}");
        found.remove(0)
    }

    pub async fn count(&self) -> i64 {
        self.counts_by_device().await.values().sum()
    }

    /// Rows per (tenant, project, device).
    pub async fn counts_by_device(&self) -> HashMap<Device, i64> {
        match &self.db {
            Db::Sqlite { path, .. } => sqlite::counts_by_device(path),
            Db::Postgres { .. } => postgres::counts_by_device(&self.pg().await).await,
            Db::Influx { name } => influx::counts_by_device(name).await,
        }
    }

    /// Every dead letter, by source.
    pub async fn dead_letters(&self) -> Vec<StoredDeadLetter> {
        let mut all = match &self.db {
            Db::Sqlite { path, .. } => sqlite::dead_letters(path),
            Db::Postgres { .. } => postgres::dead_letters(&self.pg().await).await,
            Db::Influx { name } => influx::dead_letters(name).await,
        };
        all.sort_by(|a, b| a.source.cmp(&b.source));
        all
    }

    /// SQLite's per-device summary (`telemetry_devices`: messages per device);
    /// `None` on the engines that have none.
    pub async fn device_summary(&self) -> Option<HashMap<Device, i64>> {
        match &self.db {
            Db::Sqlite { path, .. } => Some(sqlite::device_summary(path)),
            _ => None,
        }
    }

    /// What the store set up: the applied migration versions (SQL), or the
    /// `iotpipe` retention policy (InfluxDB).
    pub async fn schema(&self) -> Vec<String> {
        match &self.db {
            Db::Sqlite { path, .. } => sqlite::migrations(path),
            Db::Postgres { .. } => postgres::migrations(&self.pg().await).await,
            Db::Influx { name } => influx::retention_policies(name).await,
        }
    }

    /// [`Engine::schema`] of a store connected with `retention_days`.
    pub fn expected_schema(&self, retention_days: u64) -> Vec<String> {
        match self.kind {
            Kind::Sqlite => iotpipe::store::sqlite::migrate::MIGRATIONS.iter().map(|m| m.version.to_string()).collect(),
            Kind::Postgres | Kind::Timescale => {
                iotpipe::store::postgres::migrate::MIGRATIONS.iter().map(|m| m.version.to_string()).collect()
            }
            Kind::Influx => vec![format!("iotpipe {}h0m0s default", retention_days * 24)],
        }
    }
}

/// The TimescaleDB server named in the services env file, or `None` after
/// one loud line (per test binary) saying why those tests do not run.
fn timescale_server() -> Option<&'static Server> {
    static SKIPPED: std::sync::Once = std::sync::Once::new();
    let server = Server::timescale();
    if server.is_none() {
        // Straight to stderr: the test harness captures `eprintln!`.
        SKIPPED.call_once(|| {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: TimescaleDB tests: the timescaledb extension is not installed; \
                 run scripts/services.sh up timescaledb (see docs/storage.md)"
            );
        });
    }
    server
}
