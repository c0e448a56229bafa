//! SQLite store, the embedded default of `iotpipe run`: one file, WAL mode,
//! the same logical schema as PostgreSQL (`telemetry`, `dead_letters`), plus
//! `telemetry_devices` (rows per device) for the dashboard's lists.
//!
//! rusqlite is blocking: every call runs on the blocking pool with the
//! connection moved in and back out ([`blocking::run`]), so the async
//! runtime never waits on the disk. Dashboard queries use read-only
//! connections of their own ([`Reader`]).

mod blocking;
mod json;
pub mod migrate;
mod open;
mod read;
mod write;

pub use json::is_json;
pub use read::Reader;

use crate::record::now_ms;
use crate::store::time_rule::duration_ms;
use crate::store::{DeadLetterRow, RetentionOutcome, StoreConfig, StoreError, StoreRow, StoreStatus, WriteOutcome};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Dashboard queries are interrupted after this long (or `write_timeout`, if shorter).
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A SQLite database file with the schema in place.
pub struct SqliteStore {
    /// The database file, as configured.
    path: PathBuf,
    /// The writing connection; None after an error or an abandoned call
    /// (the next call opens a new one). In a mutex only so that the store
    /// is `Sync` like the other backends; `&mut self` reaches it without locking.
    conn: Mutex<Option<Connection>>,
    /// The retention window.
    retention: Duration,
    /// Limit on one batch, a retention run, a ping; also how long a call
    /// waits for the write lock of another connection (busy_timeout).
    write_timeout: Duration,
}

/// Read the schema version of the file, without creating or changing it.
pub async fn inspect(cfg: &StoreConfig, path: &Path) -> Result<StoreStatus, StoreError> {
    let describe = describe(path);
    let latest = migrate::MIGRATIONS.len();
    if !path.exists() {
        if cfg.create_database {
            let detail = format!("{} does not exist yet (created on first start)", path.display());
            return Ok(StoreStatus { describe, detail });
        }
        return Err(StoreError::config(
            "url",
            format!("{} does not exist and store.create_database is false", path.display()),
        ));
    }
    let owned = path.to_path_buf();
    let timeout = cfg.write_timeout.get();
    let version = tokio::task::spawn_blocking(move || {
        let conn = open::reader(&owned, timeout)?;
        let has_ledger: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'iotpipe_schema_migrations'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| StoreError::sqlite("read the schema", e))?;
        if !has_ledger {
            return Ok(0i64);
        }
        conn.query_row("SELECT coalesce(max(version), 0) FROM iotpipe_schema_migrations", [], |r| r.get(0))
            .map_err(|e| StoreError::sqlite("read iotpipe_schema_migrations", e))
    })
    .await
    .map_err(|e| StoreError::Worker { what: "sqlite inspect", message: e.to_string() })??;
    Ok(StoreStatus { describe, detail: format!("schema version {version} of {latest}") })
}

impl SqliteStore {
    /// Open the file (creating it and its directory when
    /// `store.create_database` is set), switch to WAL and run the migrations.
    pub async fn connect(cfg: &StoreConfig, path: &Path) -> Result<Self, StoreError> {
        let (create, write_timeout) = (cfg.create_database, cfg.write_timeout.get());
        let describe = describe(path);
        let owned = path.to_path_buf();
        let conn = blocking::open("open sqlite", move || open::writer(&owned, create, write_timeout)).await?;
        let store = describe.clone();
        let (conn, migrated) =
            blocking::run(conn, write_timeout, "sqlite schema setup", move |c| migrate::run(c, &store)).await;
        migrated?;
        tracing::info!(store = %describe, "Store ready.");
        Ok(Self { path: path.to_path_buf(), conn: Mutex::new(conn), retention: cfg.retention.get(), write_timeout })
    }

    /// Write one batch in one transaction; see [`crate::store::Store::write`].
    pub async fn write(&mut self, rows: &[StoreRow], dead: &[DeadLetterRow]) -> Result<WriteOutcome, StoreError> {
        if rows.is_empty() && dead.is_empty() {
            return Ok(WriteOutcome::default());
        }
        let (owned_rows, owned_dead) = (rows.to_vec(), dead.to_vec());
        let retention = self.retention;
        let written = self
            .call("sqlite write", move |c| write::write_batch(c, &owned_rows, &owned_dead, now_ms(), retention))
            .await?;
        Ok(WriteOutcome {
            inserted: written.rows,
            duplicates: rows.len() as u64 - written.rows,
            rejected: 0,
            dead_letters_inserted: written.dead_letters,
            dead_letters_duplicates: dead.len() as u64 - written.dead_letters,
            redone_by_insert: false,
        })
    }

    /// Delete rows filed before `now - retention` (in chunks of their own
    /// transactions) and dead letters received before it.
    pub async fn enforce_retention(&mut self) -> Result<RetentionOutcome, StoreError> {
        let cutoff = now_ms().saturating_sub(duration_ms(self.retention));
        let expired = self.call("sqlite retention", move |c| write::expire(c, cutoff)).await?;
        if expired.rows > 0 || expired.dead_letters > 0 {
            tracing::info!(
                store = %describe(&self.path),
                rows_deleted = expired.rows,
                dead_letters_deleted = expired.dead_letters,
                "Removed expired data."
            );
        }
        Ok(RetentionOutcome {
            rows_deleted: expired.rows,
            dead_letters_deleted: expired.dead_letters,
            ..RetentionOutcome::default()
        })
    }

    /// Read the schema ledger: the file is there and readable.
    pub async fn ping(&mut self) -> Result<(), StoreError> {
        self.call("sqlite ping", |c| {
            c.query_row("SELECT count(*) FROM iotpipe_schema_migrations", [], |r| r.get::<_, i64>(0))
                .map(|_| ())
                .map_err(|e| StoreError::sqlite("ping", e))
        })
        .await
    }

    /// `sqlite /path/to/file.db`.
    pub fn describe(&self) -> String {
        describe(&self.path)
    }

    /// Read-only connections for the dashboard's queries.
    pub fn reader(&self) -> Reader {
        Reader::new(self.path.clone(), QUERY_TIMEOUT.min(self.write_timeout))
    }

    /// Run `work` on the writing connection (opened again if it was lost).
    async fn call<T, F>(&mut self, what: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let slot = self.conn.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        let conn = match slot.take() {
            Some(c) => c,
            None => {
                let (path, timeout) = (self.path.clone(), self.write_timeout);
                // The file was created at connect: never create an empty one in its place.
                blocking::open("open sqlite", move || open::writer(&path, false, timeout)).await?
            }
        };
        let (conn, result) = blocking::run(conn, self.write_timeout, what, work).await;
        *self.conn.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner()) = conn;
        result
    }
}

fn describe(path: &Path) -> String {
    format!("sqlite {}", path.display())
}
