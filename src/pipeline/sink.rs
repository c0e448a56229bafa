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
use futures::stream::{FuturesOrdered, StreamExt};
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
    /// A task of the pipeline ended unexpectedly; what was not committed is re-read next time.
    #[error("{0}")]
    Stopped(&'static str),
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

    // One connection per writer; the first proves the store works.
    let writers = config.sink.writers.max(1);
    let mut pool = Vec::with_capacity(writers);
    while pool.len() < writers {
        let Some(store) = connect_store(&config, &metrics, &mut shutdown).await else { return Ok(()) };
        pool.push(store);
    }
    metrics.store_reachable.store(true, Relaxed);
    tracing::info!(store = pool[0].describe(), writers = pool.len(), "Store ready.");
    tokio::spawn(retention_task(config.clone(), metrics.clone()));

    let source = Arc::new(KafkaSource::new(&config.kafka, &config.sink, metrics.clone())?);
    let backoff_max = config.sink.retry_backoff_max.get();
    // A reader task collects and decodes batches. Up to `writers` batches are
    // written at once, each on its own connection; `FuturesOrdered` hands the
    // finished writes back in batch order, so offsets are stored strictly in
    // batch order, each after its own commit and every earlier one. The
    // reader runs on its own task because a half-collected batch must never
    // be dropped: its records are already taken from the consumer, and a
    // later batch's offsets would skip them.
    let (batch_tx, mut batches) = tokio::sync::mpsc::channel::<DecodedBatch>(1);
    let reader = tokio::spawn(read_batches(source.clone(), metrics.clone(), batch_tx));
    let mut writing: FuturesOrdered<tokio::task::JoinHandle<Written>> = FuturesOrdered::new();
    let mut next: Option<DecodedBatch> = None;
    let mut failure: Option<&'static str> = None;
    loop {
        if !pool.is_empty() && next.is_some() {
            let (Some(mut st), Some((rows, dead, offsets))) = (pool.pop(), next.take()) else { break };
            let m = metrics.clone();
            writing.push_back(tokio::spawn(async move {
                let started = Instant::now();
                let counts = write_until_done(&mut st, rows, dead, &m, backoff_max).await;
                Written { store: st, counts, offsets, started }
            }));
        }
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            // FuturesOrdered::next and mpsc::Receiver::recv are cancel-safe:
            // nothing is lost when another branch wins.
            Some(done) = writing.next(), if !writing.is_empty() => match done {
                Ok(w) => {
                    metrics.on_batch(w.counts.0, w.counts.1, w.started.elapsed());
                    source.store_offsets(&w.offsets);
                    pool.push(w.store);
                }
                Err(error) => {
                    tracing::error!(%error, "Store writer task failed; stopping (unwritten batches are re-read next time).");
                    writing.clear();
                    failure = Some("a store writer task failed");
                    break;
                }
            },
            batch = batches.recv(), if next.is_none() => match batch {
                Some(b) => next = Some(b),
                None => {
                    tracing::error!("Kafka reader stopped; stopping (unwritten records are re-read next time).");
                    failure = Some("the Kafka reader task stopped");
                    break;
                }
            },
        }
    }
    reader.abort();
    // Shutdown: let the batches being written finish within the grace period,
    // storing offsets in order up to the first that does not.
    let finish = async {
        while let Some(done) = writing.next().await {
            let Ok(w) = done else { break };
            metrics.on_batch(w.counts.0, w.counts.1, w.started.elapsed());
            source.store_offsets(&w.offsets);
        }
    };
    if tokio::time::timeout(config.sink.grace_period.get(), finish).await.is_err() {
        tracing::info!("Batches still being written after the grace period are re-read next time.");
    }
    source.commit_now();
    tracing::info!(
        rows = metrics.rows_written.load(Relaxed),
        duplicates = metrics.rows_duplicate.load(Relaxed),
        "Sink stopped."
    );
    match failure {
        Some(why) => Err(SinkError::Stopped(why)),
        None => Ok(()),
    }
}

/// A read, decoded batch waiting for the store: rows, dead letters, next offsets.
type DecodedBatch = (Vec<StoreRow>, Vec<DeadLetterRow>, Vec<(String, i32, i64)>);

/// A batch committed to the store, handing its connection back.
struct Written {
    store: crate::store::Store,
    counts: (u64, u64),
    offsets: Vec<(String, i32, i64)>,
    started: Instant,
}

struct Flag(Arc<SinkMetrics>);

impl crate::sink::kafka::Reachability for Flag {
    fn set(&self, ok: bool) -> bool {
        self.0.kafka_reachable.swap(ok, Relaxed)
    }
}

/// Collect, count and decode batches until the receiving side goes away.
async fn read_batches(
    source: Arc<KafkaSource>,
    metrics: Arc<SinkMetrics>,
    tx: tokio::sync::mpsc::Sender<DecodedBatch>,
) {
    loop {
        let batch = source.next_batch().await;
        metrics.records_consumed.fetch_add(batch.len() as u64, Relaxed);
        let (rows, dead) = split(&batch, &metrics);
        if tx.send((rows, dead, KafkaSource::next_offsets(&batch))).await.is_err() {
            return;
        }
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
