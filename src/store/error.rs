//! Store errors, and the one place that decides whether one is worth a retry.

use std::time::Duration;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A `[store]` key is wrong.
    #[error("store.{key}: {message}")]
    Config {
        /// The key, without the `store.` prefix.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A file named by a `[store]` key cannot be read.
    #[error("store.{key}: cannot read {path}: {source}")]
    File {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS setup failed (CA file, server name).
    #[error("store TLS: {0}")]
    Tls(String),
    /// PostgreSQL refused or failed an operation.
    #[error("postgres: {context}: {}", pg_detail(.source))]
    Postgres {
        /// What was being done.
        context: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// The database does not exist and could not be created.
    #[error("postgres: database `{database}` does not exist and user `{user}` may not create it ({detail}); create it or set store.create_database = true with a user that has CREATEDB")]
    CreateDatabase {
        /// The database the URL names.
        database: String,
        /// The user connecting.
        user: String,
        /// The server's answer.
        detail: String,
    },
    /// The InfluxDB request did not complete (connection, TLS, timeout).
    #[error("influxdb: {context}: {source}")]
    Http {
        /// What was being done.
        context: &'static str,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// InfluxDB answered with an error status.
    #[error("influxdb: {context}: HTTP {status}: {message}")]
    Influx {
        /// What was being done.
        context: &'static str,
        /// HTTP status code.
        status: u16,
        /// The error InfluxDB reported.
        message: String,
    },
    /// SQLite refused or failed an operation.
    #[error("sqlite: {context}: {source}")]
    Sqlite {
        /// What was being done.
        context: String,
        /// The driver's error.
        source: rusqlite::Error,
    },
    /// A file or directory of the store could not be created or inspected.
    #[error("store: cannot {context} {path}: {source}")]
    Io {
        /// What was being done, e.g. `create the directory`.
        context: &'static str,
        /// The file or directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The blocking task that ran a database call ended without an answer
    /// (it panicked, or the runtime is shutting down).
    #[error("{what}: the worker task failed: {message}")]
    Worker {
        /// What was being done.
        what: &'static str,
        /// Why the task ended.
        message: String,
    },
    /// The store cannot answer dashboard queries.
    #[error("queries are not supported by this store ({store})")]
    QueriesUnsupported {
        /// The store, as [`crate::store::Store::describe`] names it.
        store: String,
    },
    /// An operation took longer than its configured limit.
    #[error("{what} timed out after {}", humantime::format_duration(*.after))]
    Timeout {
        /// What was being done.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
}

impl StoreError {
    pub(crate) fn config(key: &'static str, message: impl Into<String>) -> Self {
        Self::Config { key, message: message.into() }
    }

    pub(crate) fn pg(context: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Self::Postgres { context: context.into(), source }
    }

    pub(crate) fn sqlite(context: impl Into<String>, source: rusqlite::Error) -> Self {
        Self::Sqlite { context: context.into(), source }
    }

    /// Worth retrying the same operation later: the connection was lost, an
    /// operation timed out, the database is restarting, overloaded or broke a
    /// deadlock. Not worth it: bad configuration, bad SQL, a constraint.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Config { .. } | Self::File { .. } | Self::Tls(_) | Self::CreateDatabase { .. } => false,
            Self::Postgres { source, .. } => pg_retryable(source),
            Self::Http { source, .. } => !source.is_builder(),
            Self::Influx { status, .. } => http_status_retryable(*status),
            Self::Sqlite { source, .. } => sqlite_retryable(source),
            Self::Io { source, .. } => io_retryable(source.kind()),
            Self::Worker { .. } | Self::QueriesUnsupported { .. } => false,
            Self::Timeout { .. } => true,
        }
    }

    /// The SQLSTATE of a PostgreSQL error, if the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Postgres { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// The server's message (with SQLSTATE and detail) or the driver's error and its cause.
fn pg_detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            s.push_str("; ");
            s.push_str(detail);
        }
        return s;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

fn pg_retryable(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return sqlstate_retryable(code.code());
    }
    if e.is_closed() {
        return true;
    }
    if std::error::Error::source(e).is_some_and(|c| c.is::<std::io::Error>()) {
        return true;
    }
    // Errors without a SQLSTATE are only told apart by their kind's text.
    let text = e.to_string();
    [
        "error connecting to server",
        "error communicating with the server",
        "timeout waiting for server",
        "unexpected message from server",
    ]
    .iter()
    .any(|k| text.starts_with(k))
}

/// SQLSTATE classes and codes that say "not now" rather than "never".
pub(crate) fn sqlstate_retryable(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
        || code.starts_with("57P") // admin/crash shutdown, cannot connect now
        || code.starts_with("58") // system error (I/O)
        || matches!(
            code,
            "40001" // serialization failure
            | "40P01" // deadlock detected
            | "55P03" // lock not available
            | "57014" // query canceled (statement timeout)
            | "55006" // object in use
        )
}

/// SQLite result codes that say "not now": another connection holds the
/// lock, the operation was interrupted (a timeout), the disk is full or failed.
fn sqlite_retryable(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(
            C::DatabaseBusy
                | C::DatabaseLocked
                | C::OperationInterrupted
                | C::SystemIoFailure
                | C::DiskFull
                | C::OutOfMemory
                | C::FileLockingProtocolFailed
                | C::SchemaChanged
        )
    )
}

/// I/O failures that may pass (a full disk is freed, a busy resource released).
fn io_retryable(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind as K;
    matches!(kind, K::Interrupted | K::WouldBlock | K::TimedOut | K::StorageFull | K::ResourceBusy | K::OutOfMemory)
}

fn http_status_retryable(status: u16) -> bool {
    // 404: the database was dropped under us; the store recreates it on the next write.
    status >= 500 || matches!(status, 404 | 408 | 429)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_retryable_and_mistakes_are_not() {
        for code in ["08006", "08001", "57P01", "57P03", "53300", "40001", "40P01", "57014"] {
            assert!(sqlstate_retryable(code), "{code}");
        }
        for code in ["42601", "42P01", "23505", "22P02", "28P01", "3D000", "42501"] {
            assert!(!sqlstate_retryable(code), "{code}");
        }
        assert!(http_status_retryable(503));
        assert!(http_status_retryable(429));
        assert!(!http_status_retryable(400));
        assert!(!http_status_retryable(401));
        assert!(StoreError::Timeout { what: "write", after: Duration::from_secs(1) }.is_retryable());
        assert!(!StoreError::config("url", "bad").is_retryable());
        let sqlite = |code: i32| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        assert!(StoreError::sqlite("write", sqlite(rusqlite::ffi::SQLITE_BUSY)).is_retryable());
        assert!(StoreError::sqlite("write", sqlite(rusqlite::ffi::SQLITE_FULL)).is_retryable());
        assert!(StoreError::sqlite("write", sqlite(rusqlite::ffi::SQLITE_INTERRUPT)).is_retryable());
        assert!(!StoreError::sqlite("write", sqlite(rusqlite::ffi::SQLITE_CORRUPT)).is_retryable());
        assert!(!StoreError::sqlite("write", sqlite(rusqlite::ffi::SQLITE_READONLY)).is_retryable());
        assert!(!StoreError::sqlite("open", rusqlite::Error::InvalidQuery).is_retryable());
        assert!(!StoreError::QueriesUnsupported { store: "influxdb h:8086/iot".into() }.is_retryable());
    }

    #[test]
    fn timeouts_read_well() {
        let e = StoreError::Timeout { what: "postgres write", after: Duration::from_secs(30) };
        assert_eq!(e.to_string(), "postgres write timed out after 30s");
    }
}
