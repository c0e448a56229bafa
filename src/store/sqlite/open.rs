//! Opening SQLite connections: the file and its directory, WAL mode and the
//! per-connection settings of the writer and of the dashboard's readers.

use crate::store::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

/// Page cache of the writing connection (negative: KiB). Inserts touch the
/// right edge of the time-ordered indexes, and the OS page cache serves the
/// rest. Measured with `iotpipe run`, 300,000 messages over 1,000 pairs
/// (docs/storage.md): 8 MiB stores as fast as 32 MiB (28.0-29.6k against
/// 27.1-27.8k msg/s) and peaks at 29.5 MiB RSS against 58 MiB, which left
/// a 64 MiB pod no headroom.
const WRITER_CACHE_KIB: i64 = 8 * 1024;

/// Page cache of each reading connection (KiB).
const READER_CACHE_KIB: i64 = 8 * 1024;

/// The WAL file is truncated to this size after a checkpoint, so one large
/// retention run does not leave a large file behind.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Prepared statements kept per connection (the write path uses four).
const STATEMENT_CACHE: usize = 32;

/// Open (and, when `create` is set, create) the database for writing.
///
/// WAL mode lets the dashboard read while a batch is written.
/// `synchronous=NORMAL` syncs the WAL at checkpoints, not at every commit:
/// a power loss can lose the last commits. That is safe here because the
/// journal in front of the store is the durability point: its entries are
/// acknowledged only after the SQLite commit returned, so what SQLite lost
/// is replayed from the journal (and stored once, by its key).
pub fn writer(path: &Path, create: bool, busy_timeout: Duration) -> Result<Connection, StoreError> {
    if create {
        create_parent(path)?;
    }
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let hint = if create { "" } else { " (store.create_database = true creates it)" };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::sqlite(format!("open {}{hint}", path.display()), e))?;
    conn.busy_timeout(busy_timeout).map_err(|e| StoreError::sqlite("set busy_timeout", e))?;
    let mode = set_wal(&conn, busy_timeout)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "SQLite refused WAL mode; readers will wait for writers.");
    }
    let settings = format!(
        "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -{WRITER_CACHE_KIB}; \
         PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}; PRAGMA temp_store = MEMORY; PRAGMA foreign_keys = OFF;"
    );
    conn.execute_batch(&settings).map_err(|e| StoreError::sqlite("apply connection settings", e))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// `PRAGMA journal_mode = WAL`. Two connections switching a new file at the
/// same moment can get SQLITE_BUSY without the busy handler being called
/// (the change needs an exclusive lock), so it is tried again until
/// `busy_timeout` is spent.
fn set_wal(conn: &Connection, busy_timeout: Duration) -> Result<String, StoreError> {
    let until = std::time::Instant::now() + busy_timeout;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Ok(mode) => return Ok(mode),
            Err(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(StoreError::sqlite("set journal_mode = WAL", e)),
        }
    }
}

/// Open a read-only connection for dashboard queries. It never takes the
/// write lock, so it neither waits for nor delays the writer (WAL).
pub fn reader(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::sqlite(format!("open {} for reading", path.display()), e))?;
    conn.busy_timeout(busy_timeout).map_err(|e| StoreError::sqlite("set busy_timeout", e))?;
    conn.execute_batch(&format!("PRAGMA cache_size = -{READER_CACHE_KIB}; PRAGMA temp_store = MEMORY;"))
        .map_err(|e| StoreError::sqlite("apply connection settings", e))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Create the directory the database file lives in.
fn create_parent(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            context: "create the directory",
            path: dir.display().to_string(),
            source,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_creates_the_directory_and_uses_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/iotpipe.db");
        let conn = writer(&path, true, Duration::from_secs(1)).unwrap();
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 1, "NORMAL");
        assert!(path.exists());
    }

    #[test]
    fn without_create_a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = writer(&dir.path().join("missing.db"), false, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("missing.db"), "{e}");
        assert!(!e.is_retryable());
    }
}
