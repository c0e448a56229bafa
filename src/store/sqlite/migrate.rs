//! Versioned schema migrations for SQLite: SQL files embedded in the binary,
//! applied in order, each in its own `BEGIN IMMEDIATE` transaction (which
//! takes the write lock, so two processes opening the file at once take
//! turns) and recorded in `iotpipe_schema_migrations`.

use crate::record::now_ms;
use crate::store::StoreError;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Applied in ascending order; recorded once applied.
    pub version: i64,
    /// File name without the `.sql`.
    pub name: &'static str,
    /// The SQL (several statements).
    pub sql: &'static str,
}

/// Every migration, in order. Append; never edit an applied one.
pub const MIGRATIONS: [Migration; 4] = [
    Migration { version: 1, name: "0001_telemetry", sql: include_str!("sql/0001_telemetry.sql") },
    Migration { version: 2, name: "0002_dead_letters", sql: include_str!("sql/0002_dead_letters.sql") },
    Migration { version: 3, name: "0003_telemetry_devices", sql: include_str!("sql/0003_telemetry_devices.sql") },
    Migration { version: 4, name: "0004_unique_id", sql: include_str!("sql/0004_unique_id.sql") },
];

const LEDGER_SQL: &str = "CREATE TABLE IF NOT EXISTS iotpipe_schema_migrations (\
                          version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)";

/// Apply the migrations that are missing; returns how many were applied.
pub fn run(conn: &mut Connection, store: &str) -> Result<usize, StoreError> {
    let mut applied = 0;
    for m in MIGRATIONS {
        let context = format!("migration {}", m.name);
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| StoreError::sqlite("begin migration", e))?;
        tx.execute_batch(LEDGER_SQL).map_err(|e| StoreError::sqlite("create iotpipe_schema_migrations", e))?;
        let done = tx
            .query_row("SELECT 1 FROM iotpipe_schema_migrations WHERE version = ?1", [m.version], |_| Ok(()))
            .optional()
            .map_err(|e| StoreError::sqlite("read iotpipe_schema_migrations", e))?;
        if done.is_none() {
            tx.execute_batch(m.sql).map_err(|e| StoreError::sqlite(context.clone(), e))?;
            tx.execute(
                "INSERT INTO iotpipe_schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                (m.version, m.name, now_ms()),
            )
            .map_err(|e| StoreError::sqlite(context.clone(), e))?;
        }
        tx.commit().map_err(|e| StoreError::sqlite(context, e))?;
        if done.is_none() {
            applied += 1;
            tracing::info!(store, migration = m.name, "Applied schema migration.");
        }
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_named_after_their_files() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i64::try_from(i + 1).unwrap());
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
            assert!(!m.sql.trim().is_empty());
        }
    }

    #[test]
    fn migrations_apply_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(run(&mut conn, "test").unwrap(), MIGRATIONS.len());
        assert_eq!(run(&mut conn, "test").unwrap(), 0);
        let versions: Vec<i64> = conn
            .prepare("SELECT version FROM iotpipe_schema_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
    }
}
