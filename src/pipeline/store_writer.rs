//! Writing batches to a store: connecting (retrying what may pass, failing
//! on what will not), retries, isolation of rows the store refuses, and the
//! retention task. Shared by `iotpipe sink` and `iotpipe run`.

use crate::health::Health;
use crate::record::DeadLetterReason;
use crate::retry::RetryPolicy;
use crate::store::{DeadLetterRow, Store, StoreConfig, StoreError, StoreRow};
use crate::telemetry::{CommittedRow, StoreMetrics};
use std::future::Future;
use std::time::Duration;

/// First wait before connecting again.
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(500);

/// First wait before writing a batch again.
const WRITE_BACKOFF_MIN: Duration = Duration::from_millis(200);

/// Connect (and migrate). A retryable failure (the database is down or
/// starting) is retried with the jittered backoff of [`crate::retry`], up to
/// `backoff_max`, logged the first time and then every tenth; a permanent
/// one (wrong role, password, database, setting) is returned. `Ok(None)`
/// when `shutdown` came first.
pub async fn connect_store(
    cfg: &StoreConfig,
    backoff_max: Duration,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<Store>, StoreError> {
    let mut backoff = RetryPolicy::new(CONNECT_BACKOFF_MIN, backoff_max.max(CONNECT_BACKOFF_MIN)).backoff();
    loop {
        match Store::connect(cfg).await {
            Ok(s) => return Ok(Some(s)),
            Err(e) if e.is_retryable() => {
                let attempts = backoff.attempts();
                let delay = backoff.next_delay();
                if attempts % 10 == 0 {
                    tracing::warn!(error = %e, retry_in = ?delay, attempts = attempts + 1, "Store not reachable yet; retrying.");
                }
                tokio::select! {
                    () = shutdown.as_mut() => return Ok(None),
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// How many rows a written batch inserted, how many the store already had,
/// and which it refused on their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub inserted: u64,
    pub duplicates: u64,
    /// Ids of the rows the store refused on their own (now `store_rejected`
    /// dead letters): stored, but not as rows.
    pub rejected: Vec<uuid::Uuid>,
    /// The batch's committed write was its second (COPY, then INSERT:
    /// [`crate::store::WriteOutcome::redone_by_insert`]).
    pub redone_by_insert: bool,
}

/// Everything writing needs besides the store.
pub struct WriteContext<'a> {
    pub metrics: &'a StoreMetrics,
    pub health: &'a Health,
    pub backoff_max: Duration,
}

/// Write one batch, retrying retryable errors forever (with the jittered
/// backoff of [`crate::retry`], from 200 ms up to `backoff_max`). A
/// batch the store refuses outright is written row by row; rows it still
/// refuses become dead letters (`store_rejected`).
pub async fn write_until_done(
    store: &mut Store,
    mut rows: Vec<StoreRow>,
    mut dead: Vec<DeadLetterRow>,
    cx: &WriteContext<'_>,
) -> Written {
    let mut backoff = RetryPolicy::new(WRITE_BACKOFF_MIN, cx.backoff_max).backoff();
    let mut totals = Written::default();
    loop {
        match store.write(&rows, &dead).await {
            Ok(o) => {
                cx.health.set_store_reachable(true);
                cx.metrics.on_committed(rows.iter().map(committed), crate::record::now_ms());
                totals.inserted += o.inserted;
                totals.duplicates += o.duplicates;
                totals.redone_by_insert |= o.redone_by_insert;
                return totals;
            }
            Err(e) if e.is_retryable() => {
                let was = cx.health.set_store_reachable(false);
                let delay = backoff.next_delay();
                cx.metrics.on_store_error(&e.to_string(), delay, was);
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, rows = rows.len(), "Store refused the batch; writing row by row.");
                let (ok, refused) = isolate(store, std::mem::take(&mut rows), &mut totals, cx.metrics).await;
                if ok {
                    for (row, error) in refused {
                        totals.rejected.push(row.id);
                        cx.metrics.on_dead_letter(DeadLetterReason::StoreRejected, &row.id.to_string(), &error);
                        dead.push(rejected(row, error));
                    }
                    if dead.is_empty() {
                        return totals;
                    }
                } else {
                    // The store went away while isolating: retry everything left.
                    rows = refused.into_iter().map(|(r, _)| r).collect();
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Write rows one at a time; returns whether the store stayed reachable and
/// the rows it refused (or all remaining rows if it became unreachable).
async fn isolate(
    store: &mut Store,
    rows: Vec<StoreRow>,
    totals: &mut Written,
    metrics: &StoreMetrics,
) -> (bool, Vec<(StoreRow, String)>) {
    let mut refused = Vec::new();
    let mut iter = rows.into_iter();
    while let Some(row) = iter.next() {
        match store.write(std::slice::from_ref(&row), &[]).await {
            Ok(o) => {
                totals.inserted += o.inserted;
                totals.duplicates += o.duplicates;
                metrics.on_committed([committed(&row)], crate::record::now_ms());
            }
            Err(e) if e.is_retryable() => {
                refused.push((row, e.to_string()));
                refused.extend(iter.map(|r| (r, String::new())));
                return (false, refused);
            }
            Err(e) => refused.push((row, e.to_string())),
        }
    }
    (true, refused)
}

/// A committed row, as the metrics see it.
fn committed(r: &StoreRow) -> CommittedRow<'_> {
    CommittedRow {
        received_ms: r.received_ms,
        event_ms: r.event_time_ms,
        tenant_id: &r.tenant_id,
        project_id: &r.project_id,
    }
}

fn rejected(row: StoreRow, error: String) -> DeadLetterRow {
    use crate::record::headers as h;
    DeadLetterRow {
        source: format!("store:{}", row.id),
        received_ms: row.received_ms,
        reason: DeadLetterReason::StoreRejected.as_str().into(),
        error,
        mqtt_topic: Some(row.mqtt_topic),
        headers: vec![
            (h::TENANT_ID.into(), row.tenant_id),
            (h::PROJECT_ID.into(), row.project_id),
            (h::DEVICE_ID.into(), row.device_id),
        ],
        payload: row.payload,
    }
}

/// How often the TimescaleDB job stats are read at most (more often when
/// `store.retention_interval` is shorter).
pub const JOB_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// Drops expired partitions every `store.retention_interval`, on a
/// connection of its own; on TimescaleDB it also reads the state of the
/// policies' jobs every [`JOB_POLL_INTERVAL`] (or retention interval, when
/// shorter) on that connection.
pub async fn retention_task(cfg: StoreConfig, metrics: std::sync::Arc<StoreMetrics>) -> Result<(), StoreError> {
    let every = cfg.retention_interval.get();
    let poll_every = every.min(JOB_POLL_INTERVAL);
    let mut store: Option<Store> = None;
    let mut next_retention = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_retention {
            next_retention = tokio::time::Instant::now() + every;
            run_retention(&cfg, &mut store, &metrics).await;
        }
        if let Some(s) = store.as_mut() {
            poll_timescale_jobs(s, &metrics).await;
        }
        let mut wake = next_retention;
        if metrics.timescale_jobs.enabled() {
            wake = wake.min(tokio::time::Instant::now() + poll_every);
        }
        tokio::time::sleep_until(wake).await;
    }
}

/// One retention run, connecting first when there is no connection; a
/// failure drops the connection (the next run connects again).
async fn run_retention(cfg: &StoreConfig, store: &mut Option<Store>, metrics: &StoreMetrics) {
    if store.is_none() {
        match Store::connect(cfg).await {
            Ok(s) => *store = Some(s),
            Err(error) => {
                metrics.on_retention_failed();
                tracing::warn!(%error, "Retention cannot connect to the store; will try again.");
                return;
            }
        }
    }
    let Some(s) = store.as_mut() else { return };
    match s.enforce_retention().await {
        Ok(o) => {
            metrics.on_retention(o.partitions_dropped.len() as u64, o.rows_deleted + o.dead_letters_deleted);
            if !o.partitions_dropped.is_empty() || o.rows_deleted > 0 {
                tracing::info!(dropped = ?o.partitions_dropped, rows_deleted = o.rows_deleted, "Retention applied.");
            }
        }
        Err(error) => {
            metrics.on_retention_failed();
            tracing::warn!(%error, "Retention run failed; will try again.");
            *store = None;
        }
    }
}

/// Read the state of the TimescaleDB jobs of iotpipe's policies into
/// `metrics` (nothing on other stores). A failure is counted and logged
/// (the first, then every tenth) and changes nothing else: the jobs'
/// gauges keep their last values and the store's reachability is the
/// writers' business.
pub async fn poll_timescale_jobs(store: &mut Store, metrics: &StoreMetrics) {
    match store.timescale_jobs().await {
        Ok(None) => {}
        Ok(Some(jobs)) => {
            let poll = metrics.timescale_jobs.on_jobs(&jobs);
            if poll.new_failures > 0 {
                tracing::warn!(
                    failed_jobs = poll.failed_jobs,
                    new_failures = poll.new_failures,
                    "A TimescaleDB job of iotpipe's policies failed; see timescaledb_information.job_errors."
                );
            }
        }
        Err(error) => {
            let n = metrics.timescale_jobs.on_poll_failed();
            if n % 10 == 1 {
                tracing::warn!(%error, failures = n, "Reading the TimescaleDB job stats failed; will try again.");
            }
        }
    }
}
