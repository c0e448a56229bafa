//! `iotpipe sink`: Kafka → store. Offsets are stored only after the batch's
//! database transaction committed, so a crash re-reads at most the batches
//! in flight, and the store's `(time, id)` key makes the re-read harmless.

use super::store_writer::{connect_store, retention_task, write_until_done};
use crate::config::Config;
use crate::http;
use crate::record::now_ms;
use crate::source::kafka::{decode, Decoded, KafkaRecord, KafkaSource};
use crate::store::{DeadLetterRow, StoreError, StoreRow};
use crate::telemetry::SinkMetrics;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Source(#[from] crate::source::kafka::SourceError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("http.listen: {0}")]
    Http(std::io::Error),
}

pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), SinkError> {
    let metrics = Arc::new(SinkMetrics::new());
    tokio::pin!(shutdown);
    if !config.http.listen.is_empty() {
        let m = metrics.clone();
        let ready = move || {
            let mut why = Vec::new();
            if !m.kafka_reachable.load(Relaxed) {
                why.push("Kafka not reachable");
            }
            if !m.store_reachable.load(Relaxed) {
                why.push("store not reachable");
            }
            if why.is_empty() {
                Ok(())
            } else {
                Err(why.join("; "))
            }
        };
        http::serve(&config.http.listen, metrics.clone(), ready).await.map_err(SinkError::Http)?;
    }
    crate::sink::kafka::spawn_probe(&config.kafka, Arc::new(Flag(metrics.clone())))?;

    let Some(mut store) = connect_store(&config, &metrics, &mut shutdown).await else { return Ok(()) };
    metrics.store_reachable.store(true, Relaxed);
    tracing::info!(store = store.describe(), "Store ready.");
    tokio::spawn(retention_task(config.clone(), metrics.clone()));

    let source = KafkaSource::new(&config.kafka, &config.sink, metrics.clone())?;
    let backoff_max = config.sink.retry_backoff_max.get();
    loop {
        let batch = tokio::select! {
            biased;
            () = &mut shutdown => break,
            b = source.next_batch() => b,
        };
        metrics.records_consumed.fetch_add(batch.len() as u64, Relaxed);
        let (rows, dead) = split(&batch, &metrics);
        let started = Instant::now();
        let written = tokio::select! {
            biased;
            () = &mut shutdown => {
                tracing::info!("Shutting down during a store retry; the batch's offsets stay uncommitted.");
                break;
            }
            w = write_until_done(&mut store, rows, dead, &metrics, backoff_max) => w,
        };
        metrics.on_batch(written.0, written.1, started.elapsed());
        source.store_offsets(&batch);
    }
    source.commit_now();
    tracing::info!(
        rows = metrics.rows_written.load(Relaxed),
        duplicates = metrics.rows_duplicate.load(Relaxed),
        "Sink stopped."
    );
    Ok(())
}

struct Flag(Arc<SinkMetrics>);

impl crate::sink::kafka::Reachability for Flag {
    fn set(&self, ok: bool) -> bool {
        self.0.kafka_reachable.swap(ok, Relaxed)
    }
}

fn split(batch: &[KafkaRecord], metrics: &SinkMetrics) -> (Vec<StoreRow>, Vec<DeadLetterRow>) {
    let now = now_ms();
    let mut rows = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    for r in batch {
        match decode(r, now) {
            Decoded::Row(row) => rows.push(row),
            Decoded::Dead(d) => {
                metrics.on_dead_letter(&d.reason, &d.source, &d.error);
                dead.push(d);
            }
        }
    }
    (rows, dead)
}
