//! PostgreSQL store: `telemetry` partitioned by UTC day (or a TimescaleDB
//! hypertable), `dead_letters`, the `telemetry_numeric` view; writes a
//! batch by binary `COPY`, or by `INSERT .. ON CONFLICT DO NOTHING` while
//! rows already stored are expected (see `batch` and `method`).

mod batch;
mod connect;
pub mod jobs;
mod method;
pub mod migrate;
pub mod partition;
pub mod timescale;

pub use migrate::Flavor;

use crate::record::now_ms;
use crate::store::time_rule::{duration_ms, effective_time_ms};
use crate::store::{DeadLetterRow, RetentionOutcome, StoreConfig, StoreError, StoreRow, StoreStatus, WriteOutcome};
use batch::{system_time, Method, Prepared, Staged};
use connect::Target;
use method::MethodPolicy;
use std::collections::BTreeSet;
use std::time::Duration;
use time::Date;
use tokio_postgres::Client;

/// Advisory lock key of partition changes ("iotpipe" + 2); per database.
const PARTITION_LOCK: i64 = 0x696f_7470_6970_6502;

/// Bring chunking, retention, compression and the rollup to what `cfg`
/// says, in one transaction under the migration lock: two sinks starting at
/// once would otherwise both remove and both add a policy.
async fn apply_policies(client: &mut Client, cfg: &StoreConfig) -> Result<(), StoreError> {
    let policies = timescale::Policies {
        retention: cfg.retention.get(),
        chunk_interval: cfg.chunk_interval.get().min(cfg.retention.get()),
        compress_after: cfg.compression.then(|| cfg.compress_after.get()),
        rollup_bucket: cfg.rollup.then(|| cfg.rollup_bucket.get()),
    };
    let tx = client.transaction().await.map_err(|e| StoreError::pg("begin", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&migrate::MIGRATION_LOCK])
        .await
        .map_err(|e| StoreError::pg("take the migration lock", e))?;
    let row = tx.query_one(timescale::FOUND_SQL, &[]).await.map_err(|e| StoreError::pg("inspect hypertables", e))?;
    let found = timescale::Found {
        compression_enabled: row.try_get(0).map_err(|e| StoreError::pg("inspect hypertables", e))?,
        dead_letters_hypertable: row.try_get(1).map_err(|e| StoreError::pg("inspect hypertables", e))?,
        rollup_exists: row.try_get(2).map_err(|e| StoreError::pg("inspect hypertables", e))?,
    };
    for sql in timescale::policy_sql(&policies, &found) {
        tx.batch_execute(&sql).await.map_err(|e| StoreError::pg(format!("TimescaleDB setup: {sql}"), e))?;
    }
    tx.commit().await.map_err(|e| StoreError::pg("commit the TimescaleDB setup", e))
}

/// Connect (without creating the database) and read the schema version.
pub async fn inspect(cfg: &StoreConfig, url: &str) -> Result<StoreStatus, StoreError> {
    let target = Target::new(cfg, url)?;
    let describe = target.describe.clone();
    let client = match target.open().await {
        Err(e) if e.sqlstate() == Some("3D000") && cfg.create_database => {
            let detail = format!("database `{}` does not exist yet (created on first start)", target.database);
            return Ok(StoreStatus { describe, detail });
        }
        other => other?,
    };
    let latest = migrate::MIGRATIONS.len();
    let detail = match client.query_one("SELECT coalesce(max(version), 0) FROM iotpipe_schema_migrations", &[]).await {
        Ok(row) => {
            let version: i32 = row.get(0);
            let flavor = migrate::detect(&client).await.map(|f| format!("{f:?}").to_lowercase()).unwrap_or_default();
            format!("schema version {version} of {latest} ({flavor})")
        }
        Err(e) if e.code().map(|c| c.code()) == Some("42P01") => {
            format!("no iotpipe schema yet (version 0 of {latest}; created on first start)")
        }
        Err(e) => return Err(StoreError::pg("read iotpipe_schema_migrations", e)),
    };
    Ok(StoreStatus { describe, detail })
}

/// A PostgreSQL connection with the schema in place.
pub struct PostgresStore {
    /// How to reconnect after the connection is lost.
    target: Target,
    /// The connection; None after it was lost or a write timed out.
    client: Option<Client>,
    /// The batch statements prepared on `client`; None until the first
    /// write on that connection.
    prepared: Option<Prepared>,
    /// Whether the next batch goes by `COPY` or by `INSERT`.
    method: MethodPolicy,
    /// Partitions managed here, or a hypertable.
    flavor: Flavor,
    /// The retention window.
    retention: Duration,
    /// Day partitions made ahead of today.
    partitions_ahead: u32,
    /// Limit on one batch (and on one retention run).
    write_timeout: Duration,
    /// Days whose partition is known to exist, so writes skip the catalog.
    known_days: BTreeSet<Date>,
}

impl PostgresStore {
    /// Connect (creating the database if allowed), migrate, and create
    /// today's partition and those ahead (or set the TimescaleDB retention policy).
    pub async fn connect(cfg: &StoreConfig, url: &str) -> Result<Self, StoreError> {
        let target = Target::new(cfg, url)?;
        let mut client = target.open_creating(cfg.create_database).await?;
        let write_timeout = cfg.write_timeout.get();
        let setup = async {
            let flavor = migrate::run(&mut client, &target.describe, cfg.timescaledb).await?;
            let mut known_days = BTreeSet::new();
            match flavor {
                Flavor::Partitioned => {
                    let days = partition::days_ahead(now_ms(), cfg.partitions_ahead);
                    ensure_partitions(&mut client, &mut known_days, &days).await?;
                }
                Flavor::Hypertable => apply_policies(&mut client, cfg).await?,
            }
            Ok::<_, StoreError>((flavor, known_days))
        };
        let (flavor, known_days) = tokio::time::timeout(write_timeout, setup)
            .await
            .map_err(|_| StoreError::Timeout { what: "postgres schema setup", after: write_timeout })??;
        tracing::info!(store = %target.describe, ?flavor, "Store ready.");
        Ok(Self {
            target,
            client: Some(client),
            prepared: None,
            method: MethodPolicy::default(),
            flavor,
            retention: cfg.retention.get(),
            partitions_ahead: cfg.partitions_ahead,
            write_timeout,
            known_days,
        })
    }

    /// Write one batch in one transaction; see [`crate::store::Store::write`].
    pub async fn write(&mut self, rows: &[StoreRow], dead: &[DeadLetterRow]) -> Result<WriteOutcome, StoreError> {
        if rows.is_empty() && dead.is_empty() {
            return Ok(WriteOutcome::default());
        }
        let now = now_ms();
        let mut staged: Vec<Staged<'_>> = rows
            .iter()
            .map(|row| Staged { row, time_ms: effective_time_ms(row.time_ms, row.received_ms, now, self.retention) })
            .collect();
        // In primary-key order, the INSERT walks the indexes in order: measurably faster.
        staged.sort_unstable_by_key(|s| (s.time_ms, s.row.id));
        let new_days: Vec<Date> = match self.flavor {
            Flavor::Hypertable => Vec::new(),
            Flavor::Partitioned => staged
                .iter()
                .filter_map(|s| partition::day_of_ms(s.time_ms))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|d| !self.known_days.contains(d))
                .filter(|d| partition::may_create(*d, now, self.retention, self.partitions_ahead))
                .collect(),
        };
        let mut client = self.take_client().await?;
        let known_days = &mut self.known_days;
        let prepared = self.prepared.take();
        let method = self.method.next();
        let work = async {
            if !new_days.is_empty() {
                ensure_partitions(&mut client, known_days, &new_days).await?;
            }
            let prepared = match prepared {
                Some(p) => p,
                None => batch::prepare(&client).await?,
            };
            let first = batch::write_batch(&mut client, &prepared, &staged, dead, method).await;
            let outcome = match first {
                // COPY met a row already stored, or was refused outright
                // (not a lost connection, not a timeout): the same batch by INSERT.
                Err(e) if method == Method::Copy && !e.is_retryable() && e.sqlstate().is_some() => {
                    let again = batch::write_batch(&mut client, &prepared, &staged, dead, Method::Insert).await?;
                    Fallback::After(e, again)
                }
                other => Fallback::None(other?),
            };
            Ok((outcome, prepared))
        };
        let result = tokio::time::timeout(self.write_timeout, work).await;
        let (outcome, prepared) = self.finish(client, result, "postgres write")?;
        // Kept only with the connection it was prepared on (a failed write
        // prepares it again, on whichever connection comes next).
        if self.client.is_some() {
            self.prepared = Some(prepared);
        }
        let redone_by_insert = matches!(outcome, Fallback::After(..));
        let written = match outcome {
            Fallback::None(w) => {
                self.method.written(method);
                w
            }
            Fallback::After(e, w) => {
                if e.sqlstate() == Some(batch::UNIQUE_VIOLATION) {
                    self.method.conflict();
                    tracing::debug!(
                        store = %self.target.describe,
                        "A batch held rows already stored: written by INSERT .. ON CONFLICT DO NOTHING, as are the next {}.",
                        method::INSERT_AFTER_CONFLICT
                    );
                } else if !self.method.copy_refused() {
                    self.method.refuse_copy();
                    tracing::warn!(
                        store = %self.target.describe,
                        error = %e,
                        "COPY into telemetry failed where INSERT worked: batches are written by INSERT from now on."
                    );
                }
                self.method.written(Method::Insert);
                w
            }
        };
        Ok(WriteOutcome {
            inserted: written.rows,
            duplicates: rows.len() as u64 - written.rows,
            rejected: 0,
            dead_letters_inserted: written.dead_letters,
            dead_letters_duplicates: dead.len() as u64 - written.dead_letters,
            redone_by_insert,
        })
    }

    /// Drop expired day partitions (or chunks), delete expired rows from the
    /// default partition and `dead_letters`, create the partitions ahead.
    pub async fn enforce_retention(&mut self) -> Result<RetentionOutcome, StoreError> {
        let now = now_ms();
        let cutoff = system_time(now.saturating_sub(duration_ms(self.retention)));
        let (flavor, retention, ahead) = (self.flavor, self.retention, self.partitions_ahead);
        let mut client = self.take_client().await?;
        let known_days = &mut self.known_days;
        let work = async {
            let mut out = RetentionOutcome::default();
            let tx = client.transaction().await.map_err(|e| StoreError::pg("begin retention", e))?;
            match flavor {
                Flavor::Partitioned => {
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
                        .await
                        .map_err(|e| StoreError::pg("take the partition lock", e))?;
                    for table in list_partitions(&tx).await? {
                        let expired =
                            partition::parse_name(&table).is_some_and(|d| partition::is_expired(d, now, retention));
                        if let (true, Some(sql)) = (expired, partition::drop_sql(&table)) {
                            tx.batch_execute(&sql).await.map_err(|e| StoreError::pg(format!("drop {table}"), e))?;
                            out.partitions_dropped.push(table);
                        }
                    }
                    out.rows_deleted = tx
                        .execute("DELETE FROM telemetry_default WHERE time < $1", &[&cutoff])
                        .await
                        .map_err(|e| StoreError::pg("delete expired rows", e))?;
                }
                Flavor::Hypertable => {
                    for row in tx
                        .query(&timescale::drop_chunks_sql("telemetry", retention), &[])
                        .await
                        .map_err(|e| StoreError::pg("drop chunks", e))?
                    {
                        out.partitions_dropped.push(row.try_get(0).map_err(|e| StoreError::pg("drop chunks", e))?);
                    }
                }
            }
            // A dead-letter hypertable (TimescaleDB) loses whole chunks to its
            // policy; the DELETE then finds little, and catches the rest.
            out.dead_letters_deleted = tx
                .execute("DELETE FROM dead_letters WHERE received_at < $1", &[&cutoff])
                .await
                .map_err(|e| StoreError::pg("delete expired dead letters", e))?;
            tx.commit().await.map_err(|e| StoreError::pg("commit retention", e))?;
            if flavor == Flavor::Partitioned {
                for day in &out.partitions_dropped {
                    if let Some(d) = partition::parse_name(day) {
                        known_days.remove(&d);
                    }
                }
                out.partitions_created =
                    ensure_partitions(&mut client, known_days, &partition::days_ahead(now, ahead)).await?;
            }
            Ok(out)
        };
        let result = tokio::time::timeout(self.write_timeout, work).await;
        let out = self.finish(client, result, "postgres retention")?;
        if !out.partitions_dropped.is_empty() || out.rows_deleted > 0 || out.dead_letters_deleted > 0 {
            tracing::info!(
                store = %self.target.describe,
                dropped = ?out.partitions_dropped,
                rows_deleted = out.rows_deleted,
                dead_letters_deleted = out.dead_letters_deleted,
                "Removed expired data."
            );
        }
        Ok(out)
    }

    /// `SELECT 1`, reconnecting first if the connection was lost.
    pub async fn ping(&mut self) -> Result<(), StoreError> {
        let client = self.take_client().await?;
        let result = tokio::time::timeout(self.write_timeout, async {
            client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| StoreError::pg("ping", e))
        })
        .await;
        self.finish(client, result, "postgres ping")
    }

    /// The state of the TimescaleDB jobs of iotpipe's policies
    /// ([`jobs::JOBS_SQL`]); `None` on day partitions (no TimescaleDB). A
    /// read only: a failure leaves the store as usable as before (a lost
    /// connection is opened again by the next operation).
    pub async fn timescale_jobs(&mut self) -> Result<Option<Vec<jobs::JobState>>, StoreError> {
        if self.flavor != Flavor::Hypertable {
            return Ok(None);
        }
        let client = self.take_client().await?;
        let result = tokio::time::timeout(self.write_timeout, async {
            let rows =
                client.query(jobs::JOBS_SQL, &[]).await.map_err(|e| StoreError::pg("read TimescaleDB job stats", e))?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let read = |e| StoreError::pg("read TimescaleDB job stats", e);
                let (id, proc_name, failed, failures): (i32, String, bool, i64) = (
                    r.try_get(0).map_err(read)?,
                    r.try_get(1).map_err(read)?,
                    r.try_get(2).map_err(read)?,
                    r.try_get(3).map_err(read)?,
                );
                out.extend(jobs::job_state(id, &proc_name, failed, failures));
            }
            Ok(out)
        })
        .await;
        self.finish(client, result, "postgres job stats").map(Some)
    }

    /// `postgres host:port/database`.
    pub fn describe(&self) -> String {
        self.target.describe.clone()
    }

    /// How `telemetry` is stored in this database.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The open connection, or a new one when it was lost.
    async fn take_client(&mut self) -> Result<Client, StoreError> {
        match self.client.take() {
            Some(c) if !c.is_closed() => Ok(c),
            _ => {
                self.prepared = None;
                let client = self.target.open().await?;
                tracing::info!(store = %self.target.describe, "Reconnected to PostgreSQL.");
                Ok(client)
            }
        }
    }

    /// Keep the connection unless it broke or the operation timed out
    /// (then its state is unknown: dropping it rolls the transaction back).
    fn finish<T>(
        &mut self,
        client: Client,
        result: Result<Result<T, StoreError>, tokio::time::error::Elapsed>,
        what: &'static str,
    ) -> Result<T, StoreError> {
        match result {
            Ok(Ok(v)) => {
                self.client = Some(client);
                Ok(v)
            }
            Ok(Err(e)) => {
                if !client.is_closed() && !e.is_retryable() {
                    self.client = Some(client);
                }
                Err(e)
            }
            Err(_) => Err(StoreError::Timeout { what, after: self.write_timeout }),
        }
    }
}

/// A batch's result: written as first tried, or by `INSERT` after the
/// `COPY` failed with the error kept here.
enum Fallback {
    None(batch::Written),
    After(StoreError, batch::Written),
}

/// Names of the tables attached to `telemetry`.
async fn list_partitions(client: &impl tokio_postgres::GenericClient) -> Result<Vec<String>, StoreError> {
    let rows = client.query(partition::LIST_SQL, &[]).await.map_err(|e| StoreError::pg("list partitions", e))?;
    rows.iter().map(|r| r.try_get(0).map_err(|e| StoreError::pg("list partitions", e))).collect()
}

/// Create the partitions of `days` that do not exist yet, under the
/// partition lock, in their own transaction (before the batch's, so the
/// exclusive lock on `telemetry` is held briefly). Rows of such a day that
/// sit in the default partition are moved into the new partition.
async fn ensure_partitions(
    client: &mut Client,
    known: &mut BTreeSet<Date>,
    days: &[Date],
) -> Result<Vec<String>, StoreError> {
    if days.iter().all(|d| known.contains(d)) {
        return Ok(Vec::new());
    }
    let tx = client.transaction().await.map_err(|e| StoreError::pg("begin partition creation", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .await
        .map_err(|e| StoreError::pg("take the partition lock", e))?;
    let existing: BTreeSet<Date> =
        list_partitions(&tx).await?.iter().filter_map(|t| partition::parse_name(t)).collect();
    let mut created = Vec::new();
    for &day in days.iter().filter(|d| !existing.contains(d)) {
        let (Some(table), Some(probe), Some(create)) =
            (partition::name(day), partition::default_has_rows_sql(day), partition::create_sql(day))
        else {
            continue;
        };
        let stray: bool = tx
            .query_one(&probe, &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| StoreError::pg(format!("inspect telemetry_default for {table}"), e))?;
        if stray {
            let Some(statements) = partition::create_moving_sql(day) else { continue };
            for sql in statements {
                tx.batch_execute(&sql).await.map_err(|e| StoreError::pg(format!("create {table}"), e))?;
            }
            tracing::warn!(partition = %table, "Moved rows from telemetry_default into a new partition.");
        } else {
            tx.batch_execute(&create).await.map_err(|e| StoreError::pg(format!("create {table}"), e))?;
        }
        created.push(table);
    }
    tx.commit().await.map_err(|e| StoreError::pg("commit partition creation", e))?;
    known.extend(existing);
    known.extend(days.iter().filter(|d| partition::name(**d).is_some()));
    if !created.is_empty() {
        tracing::debug!(partitions = ?created, "Created partitions.");
    }
    Ok(created)
}
