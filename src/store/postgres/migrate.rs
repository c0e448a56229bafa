//! Versioned schema migrations: SQL files embedded in the binary, applied in
//! order, each in its own transaction under an advisory lock (so sinks that
//! start together take turns) and recorded in `iotpipe_schema_migrations`.

use super::timescale;
use crate::store::{StoreError, TimescaleMode};
use tokio_postgres::{Client, Transaction};

/// Advisory lock key of migrations ("iotpipe" + 1); per database.
pub const MIGRATION_LOCK: i64 = 0x696f_7470_6970_6501;

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Applied in ascending order; recorded once applied.
    pub version: i32,
    /// File name without the `.sql`.
    pub name: &'static str,
    /// The SQL (several statements).
    pub sql: &'static str,
    /// The variant for a TimescaleDB hypertable, when it differs.
    pub hypertable_sql: Option<&'static str>,
}

/// Every migration, in order. Append; never edit an applied one.
pub const MIGRATIONS: [Migration; 4] = [
    Migration {
        version: 1,
        name: "0001_telemetry",
        sql: include_str!("sql/0001_telemetry.sql"),
        hypertable_sql: Some(include_str!("sql/0001_telemetry.hypertable.sql")),
    },
    Migration {
        version: 2,
        name: "0002_dead_letters",
        sql: include_str!("sql/0002_dead_letters.sql"),
        hypertable_sql: Some(include_str!("sql/0002_dead_letters.hypertable.sql")),
    },
    Migration {
        version: 3,
        name: "0003_telemetry_numeric",
        sql: include_str!("sql/0003_telemetry_numeric.sql"),
        hypertable_sql: None,
    },
    Migration {
        version: 4,
        name: "0004_numeric_fields",
        sql: include_str!("sql/0004_numeric_fields.sql"),
        hypertable_sql: None,
    },
];

const LEDGER_SQL: &str = "CREATE TABLE IF NOT EXISTS iotpipe_schema_migrations (\
                          version integer PRIMARY KEY, name text NOT NULL, \
                          applied_at timestamptz NOT NULL DEFAULT now())";

/// How `telemetry` is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Declarative partitions, one per UTC day, managed by iotpipe.
    Partitioned,
    /// A TimescaleDB hypertable with daily chunks.
    Hypertable,
}

/// Apply what is missing; returns how `telemetry` is stored.
pub async fn run(client: &mut Client, store: &str, mode: TimescaleMode) -> Result<Flavor, StoreError> {
    check_loaded(client).await?;
    // Decided once (by the first migration with a hypertable variant) and
    // kept for the others: an existing telemetry table decides by its kind.
    let mut hypertable: Option<bool> = None;
    for m in MIGRATIONS {
        let mut tx = client.transaction().await.map_err(|e| StoreError::pg("begin migration", e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| StoreError::pg("take the migration lock", e))?;
        tx.batch_execute(LEDGER_SQL).await.map_err(|e| StoreError::pg("create iotpipe_schema_migrations", e))?;
        let applied = tx
            .query_opt("SELECT 1 FROM iotpipe_schema_migrations WHERE version = $1", &[&m.version])
            .await
            .map_err(|e| StoreError::pg("read iotpipe_schema_migrations", e))?;
        if applied.is_some() {
            tx.commit().await.map_err(|e| StoreError::pg("end migration", e))?;
            continue;
        }
        let sql = match m.hypertable_sql {
            Some(h) => {
                let hyper = match hypertable {
                    Some(known) => known,
                    None => match existing_flavor(&tx).await? {
                        Some(f) => f == Flavor::Hypertable,
                        None => use_hypertable(&mut tx, store, mode).await?,
                    },
                };
                hypertable = Some(hyper);
                if hyper {
                    h
                } else {
                    m.sql
                }
            }
            None => m.sql,
        };
        let context = format!("migration {}", m.name);
        tx.batch_execute(sql).await.map_err(|e| StoreError::pg(context.clone(), e))?;
        tx.execute("INSERT INTO iotpipe_schema_migrations (version, name) VALUES ($1, $2)", &[&m.version, &m.name])
            .await
            .map_err(|e| StoreError::pg(context.clone(), e))?;
        tx.commit().await.map_err(|e| StoreError::pg(context, e))?;
        tracing::info!(store, migration = m.name, "Applied schema migration.");
    }
    let flavor = detect(client).await?;
    if flavor == Flavor::Partitioned && mode == TimescaleMode::On {
        return Err(StoreError::config(
            "timescaledb",
            "is \"on\" but telemetry in this database is already partitioned by day (created without \
             TimescaleDB); iotpipe does not convert an existing table: use a new database, or move the data \
             yourself, or set store.timescaledb = \"auto\"",
        ));
    }
    Ok(flavor)
}

/// How `telemetry` is stored, if it exists yet (inside the migration transaction).
async fn existing_flavor(tx: &Transaction<'_>) -> Result<Option<Flavor>, StoreError> {
    let row = tx
        .query_opt("SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass('telemetry')", &[])
        .await
        .map_err(|e| StoreError::pg("inspect table telemetry", e))?;
    let kind: Option<String> = match row {
        Some(r) => r.try_get(0).map_err(|e| StoreError::pg("inspect table telemetry", e))?,
        None => None,
    };
    Ok(match kind.as_deref() {
        Some("p") => Some(Flavor::Partitioned),
        Some(_) => Some(Flavor::Hypertable),
        None => None,
    })
}

/// On a fresh schema: TimescaleDB if the extension is installed, or is
/// available, preloaded and can be created; otherwise plain partitions.
/// `store.timescaledb = "on"` turns every "otherwise" into an error.
///
/// The preload is checked first because `CREATE EXTENSION` on a server that
/// does not preload the library ends the connection (FATAL "extension
/// timescaledb must be preloaded"), which would hide the reason behind a
/// lost connection and a retry loop.
async fn use_hypertable(tx: &mut Transaction<'_>, store: &str, mode: TimescaleMode) -> Result<bool, StoreError> {
    let refuse = |why: &str| {
        StoreError::config(
            "timescaledb",
            format!("is \"on\" but {why}; set store.timescaledb = \"auto\" to use daily partitions instead"),
        )
    };
    if mode == TimescaleMode::Off {
        return Ok(false);
    }
    if query_bool(tx, timescale::INSTALLED_SQL).await? {
        return Ok(true);
    }
    if !query_bool(tx, timescale::AVAILABLE_SQL).await? {
        return match mode {
            TimescaleMode::On => Err(refuse("the server does not offer the timescaledb extension")),
            _ => Ok(false),
        };
    }
    let preload: String = tx
        .query_one(timescale::PRELOAD_SQL, &[])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| StoreError::pg("read shared_preload_libraries", e))?;
    if !timescale::preloads_timescaledb(&preload) {
        let why = "the server has the timescaledb extension but does not preload it: add timescaledb to \
                   shared_preload_libraries in postgresql.conf and restart PostgreSQL";
        if mode == TimescaleMode::On {
            return Err(refuse(why));
        }
        tracing::warn!(
            store,
            shared_preload_libraries = preload,
            "TimescaleDB not used: {why}. Using daily partitions."
        );
        return Ok(false);
    }
    let sp = tx.savepoint("timescaledb").await.map_err(|e| StoreError::pg("savepoint", e))?;
    match sp.batch_execute(timescale::CREATE_EXTENSION_SQL).await {
        Ok(()) => {
            sp.commit().await.map_err(|e| StoreError::pg("create extension timescaledb", e))?;
            tracing::info!(store, "TimescaleDB available: telemetry becomes a hypertable.");
            Ok(true)
        }
        Err(e) => {
            let error = StoreError::pg("create extension timescaledb", e);
            sp.rollback().await.map_err(|e| StoreError::pg("rollback savepoint", e))?;
            if mode == TimescaleMode::On {
                return Err(refuse(&error.to_string()));
            }
            tracing::warn!(store, %error, "TimescaleDB is available but cannot be created; using daily partitions.");
            Ok(false)
        }
    }
}

async fn query_bool(tx: &Transaction<'_>, sql: &str) -> Result<bool, StoreError> {
    let row = tx.query_one(sql, &[]).await.map_err(|e| StoreError::pg("inspect extensions", e))?;
    row.try_get(0).map_err(|e| StoreError::pg("inspect extensions", e))
}

/// The extension exists in this database but the server does not load the
/// library: reading and writing the hypertable now would lose rows.
pub async fn check_loaded(client: &Client) -> Result<(), StoreError> {
    let installed = client
        .query_one(timescale::INSTALLED_SQL, &[])
        .await
        .and_then(|r| r.try_get::<_, bool>(0))
        .map_err(|e| StoreError::pg("inspect extensions", e))?;
    if !installed {
        return Ok(());
    }
    let loaded = client
        .query_one(timescale::LOADED_SQL, &[])
        .await
        .and_then(|r| r.try_get::<_, bool>(0))
        .map_err(|e| StoreError::pg("inspect the timescaledb library", e))?;
    if loaded {
        Ok(())
    } else {
        Err(StoreError::config(
            "url",
            "the database has the timescaledb extension but the server does not preload the library: add \
             timescaledb to shared_preload_libraries in postgresql.conf and restart PostgreSQL (without it, \
             compressed rows are invisible and new rows are lost to the hypertable)",
        ))
    }
}

/// How the existing `telemetry` table is stored.
pub async fn detect(client: &Client) -> Result<Flavor, StoreError> {
    let row = client
        .query_opt("SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass('telemetry')", &[])
        .await
        .map_err(|e| StoreError::pg("inspect table telemetry", e))?;
    let kind: Option<String> = match row {
        Some(r) => r.try_get(0).map_err(|e| StoreError::pg("inspect table telemetry", e))?,
        None => None,
    };
    match kind.as_deref() {
        Some("p") => Ok(Flavor::Partitioned),
        Some("r") => {
            let installed = client
                .query_one(timescale::INSTALLED_SQL, &[])
                .await
                .and_then(|r| r.try_get::<_, bool>(0))
                .map_err(|e| StoreError::pg("inspect extensions", e))?;
            let hyper = installed
                && client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables \
                         WHERE hypertable_name = 'telemetry')",
                        &[],
                    )
                    .await
                    .and_then(|r| r.try_get::<_, bool>(0))
                    .map_err(|e| StoreError::pg("inspect hypertables", e))?;
            if hyper {
                Ok(Flavor::Hypertable)
            } else {
                Err(StoreError::config(
                    "url",
                    "table telemetry exists but is neither partitioned nor a TimescaleDB hypertable",
                ))
            }
        }
        _ => Err(StoreError::config("url", "table telemetry is missing after the migrations")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_and_named_after_their_files() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i32::try_from(i + 1).unwrap());
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
            assert!(!m.sql.trim().is_empty());
        }
    }

    #[test]
    fn the_schema_has_the_promised_shape() {
        let t = MIGRATIONS[0].sql;
        assert!(t.contains("PARTITION BY RANGE (time)"));
        assert!(t.contains("PRIMARY KEY (time, id)"));
        assert!(t.contains("raw         bytea       NOT NULL"));
        assert!(t.contains("payload     jsonb       NULL"));
        assert!(t.contains("PARTITION OF telemetry DEFAULT"));
        assert!(t.contains("(tenant_id, project_id, device_id, time DESC)"));
        assert!(MIGRATIONS[1].sql.contains("source      text        PRIMARY KEY"));
        assert!(MIGRATIONS[2].sql.contains("CREATE OR REPLACE VIEW telemetry_numeric"));
        assert!(MIGRATIONS[3].sql.contains("CROSS JOIN LATERAL iotpipe_numeric_fields(t.payload)"));
        let dead_hyper = MIGRATIONS[1].hypertable_sql.unwrap_or("");
        assert!(dead_hyper.contains("PRIMARY KEY (received_at, source)"));
        assert!(dead_hyper.contains("create_hypertable('dead_letters', 'received_at'"));
    }
}
