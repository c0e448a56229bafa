//! Writing batches to a store: retries, isolation of rows the store
//! refuses, and the retention task. Shared by `iotpipe sink` and `iotpipe run`.

use crate::config::Config;
use crate::store::{DeadLetterRow, Store, StoreRow};
use crate::telemetry::SinkMetrics;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Reason given to rows the store refused one by one.
const STORE_REJECTED: &str = "store_rejected";

/// Connect (and migrate), retrying until it works or shutdown.
pub async fn connect_store(
    config: &Config,
    metrics: &SinkMetrics,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<Store> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match Store::connect(&config.store).await {
            Ok(s) => return Some(s),
            Err(e) if e.is_retryable() => {
                metrics.on_store_error(&e.to_string(), backoff);
                tokio::select! {
                    () = shutdown.as_mut() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(config.sink.retry_backoff_max.get());
            }
            Err(e) => {
                tracing::error!(error = %e, "Store setup failed.");
                return None;
            }
        }
    }
}

/// Write one batch, retrying retryable errors forever (with backoff). A
/// batch the store refuses outright is written row by row; rows it still
/// refuses become dead letters. Returns (inserted, duplicates).
pub async fn write_until_done(
    store: &mut Store,
    mut rows: Vec<StoreRow>,
    mut dead: Vec<DeadLetterRow>,
    metrics: &SinkMetrics,
    backoff_max: Duration,
) -> (u64, u64) {
    let mut backoff = Duration::from_millis(200);
    let mut totals = (0, 0);
    loop {
        match store.write(&rows, &dead).await {
            Ok(o) => {
                metrics.store_reachable.store(true, Relaxed);
                totals.0 += o.inserted;
                totals.1 += o.duplicates;
                return totals;
            }
            Err(e) if e.is_retryable() => {
                metrics.on_store_error(&e.to_string(), backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(backoff_max);
            }
            Err(e) => {
                tracing::warn!(error = %e, rows = rows.len(), "Store refused the batch; writing row by row.");
                let (ok, refused) = isolate(store, std::mem::take(&mut rows), &mut totals).await;
                if ok {
                    for (row, error) in refused {
                        metrics.on_dead_letter(STORE_REJECTED, &row.id.to_string(), &error);
                        dead.push(rejected(row, error));
                    }
                    if dead.is_empty() {
                        return totals;
                    }
                } else {
                    // The store went away while isolating: retry everything left.
                    rows = refused.into_iter().map(|(r, _)| r).collect();
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(backoff_max);
            }
        }
    }
}

/// Write rows one at a time; returns whether the store stayed reachable and
/// the rows it refused (or all remaining rows if it became unreachable).
async fn isolate(store: &mut Store, rows: Vec<StoreRow>, totals: &mut (u64, u64)) -> (bool, Vec<(StoreRow, String)>) {
    let mut refused = Vec::new();
    let mut iter = rows.into_iter();
    while let Some(row) = iter.next() {
        match store.write(std::slice::from_ref(&row), &[]).await {
            Ok(o) => {
                totals.0 += o.inserted;
                totals.1 += o.duplicates;
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

fn rejected(row: StoreRow, error: String) -> DeadLetterRow {
    DeadLetterRow {
        source: format!("store:{}", row.id),
        received_ms: row.received_ms,
        reason: STORE_REJECTED.into(),
        error,
        mqtt_topic: Some(row.mqtt_topic),
        headers: vec![
            ("tenant_id".into(), row.tenant_id),
            ("project_id".into(), row.project_id),
            ("device_id".into(), row.device_id),
        ],
        payload: row.payload,
    }
}

/// Drops expired partitions every `store.retention_interval`, on a connection of its own.
pub async fn retention_task(config: Config, metrics: Arc<SinkMetrics>) {
    let mut store: Option<Store> = None;
    loop {
        if store.is_none() {
            store = Store::connect(&config.store).await.ok();
        }
        if let Some(s) = store.as_mut() {
            match s.enforce_retention().await {
                Ok(o) => {
                    metrics.retention_partitions_dropped.fetch_add(o.partitions_dropped.len() as u64, Relaxed);
                    metrics.retention_rows_deleted.fetch_add(o.rows_deleted + o.dead_letters_deleted, Relaxed);
                    if !o.partitions_dropped.is_empty() || o.rows_deleted > 0 {
                        tracing::info!(dropped = ?o.partitions_dropped, rows_deleted = o.rows_deleted, "Retention applied.");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "Retention run failed; will try again.");
                    store = None;
                }
            }
        }
        tokio::time::sleep(config.store.retention_interval.get()).await;
    }
}
