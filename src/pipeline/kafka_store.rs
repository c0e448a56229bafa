//! `iotpipe sink`: Kafka → store. Offsets are stored only after the batch's
//! database transaction committed, so a crash re-reads at most the batches
//! in flight, and the store's `(time, id)` key makes the re-read harmless.
//!
//! Tasks (see [`super::supervisor`]): `kafka-reader` collects and decodes
//! batches; `store-writer` writes up to `sink.writers` of them at once and
//! stores their offsets strictly in batch order; in the background `http`,
//! `kafka-probe` and `retention`.

use super::decode::{decode, Decoded};
use super::store_writer::{connect_store, retention_task, write_until_done, WriteContext, Written};
use super::supervisor::{serve_http, supervise, Drain, Plan, Signals, Stop, Tasks};
use super::{PipelineError, SinkSettings};
use crate::health::{Health, Parts};
use crate::kafka::{run_probe, GroupConsumer, NextOffset};
use crate::record::{now_ms, DurableRecord};
use crate::store::{DeadLetterRow, Store, StoreRow};
use crate::telemetry::{ConsumerMetrics, Exposition, ProcessInfo, StoreMetrics};
use futures::stream::{FuturesOrdered, StreamExt};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub async fn run(config: SinkSettings, shutdown: impl Future<Output = ()>) -> Result<(), PipelineError> {
    let health = Health::new(Parts { kafka: true, store: true, ..Parts::default() });
    let store_metrics = Arc::new(StoreMetrics::new());
    let consumer_metrics = Arc::new(ConsumerMetrics::new(config.http.per_tenant_metrics));
    let exposition = Arc::new(Exposition {
        command: "sink",
        health: health.clone(),
        messages: None,
        store: Some(store_metrics.clone()),
        consumer: Some(consumer_metrics.clone()),
        process: ProcessInfo::default(),
    });
    let mut tasks = Tasks::new();
    let signals = Signals::default();
    serve_http(&mut tasks, &config.http.listen, exposition, health.clone(), axum::Router::new()).await?;
    let library = config.kafka.sink_library(&config.sink.properties);
    tasks.background("kafka-probe", run_probe(config.kafka.clone(), library, health.clone()));

    // One connection per writer; the first proves the store works.
    tokio::pin!(shutdown);
    let backoff_max = config.sink.retry_backoff_max.get();
    let mut pool = Vec::with_capacity(config.sink.writers);
    while pool.len() < config.sink.writers.max(1) {
        match connect_store(&config.store, backoff_max, &mut shutdown).await? {
            Some(store) => pool.push(store),
            None => return Ok(()),
        }
    }
    health.set_store_reachable(true);
    tracing::info!(store = pool[0].describe(), writers = pool.len(), "Store ready.");
    tasks.background("retention", retention_task(config.store.clone(), store_metrics.clone()));

    let consumer = Arc::new(GroupConsumer::new(&config.kafka, &config.sink.consumer(), consumer_metrics.clone())?);
    tasks.background("consumer-lag", consumer.clone().report_lag_forever());
    if let Some(task) = consumer.take_task() {
        // Background: it runs until the end, so the writer's final commit
        // still reaches Kafka while the sink drains.
        tasks.background("kafka-consumer", async move {
            task.await;
            Ok::<(), PipelineError>(())
        });
    }
    let (batch_tx, batches) = mpsc::channel::<DecodedBatch>(1);
    tasks.finishing(
        "kafka-reader",
        read_batches(consumer.clone(), consumer_metrics, store_metrics.clone(), batch_tx, signals.drain()),
    );
    let writer = BatchWriter { consumer, pool, metrics: store_metrics, health: health.clone(), backoff_max };
    tasks.finishing("store-writer", writer.run(batches, signals.drain(), signals.stop()));
    // Draining ends when the writer has committed what it was writing.
    let plan = Plan { grace: config.sink.grace_period.get(), drained: || false, tick: || {} };
    let result = supervise(&mut tasks, &signals, &health, shutdown, plan).await;
    tracing::info!("Sink stopped.");
    result
}

/// A read, decoded batch waiting for the store.
struct DecodedBatch {
    rows: Vec<StoreRow>,
    dead: Vec<DeadLetterRow>,
    /// What to store once the batch is committed.
    offsets: Vec<NextOffset>,
}

/// A batch committed to the store, handing its connection back.
struct Committed {
    store: Store,
    written: Written,
    offsets: Vec<NextOffset>,
    started: Instant,
}

/// Writes batches on a pool of connections, several at once; hands the
/// finished writes back in batch order (`FuturesOrdered`), so offsets are
/// stored strictly in batch order, each after its own commit and every
/// earlier one.
struct BatchWriter {
    consumer: Arc<GroupConsumer>,
    pool: Vec<Store>,
    metrics: Arc<StoreMetrics>,
    health: Arc<Health>,
    backoff_max: Duration,
}

impl BatchWriter {
    /// Write until `drain` (then finish the writes in flight, storing their
    /// offsets in order) or until `stop` (then store what is committed and
    /// leave the rest to be re-read); commit the stored offsets at the end.
    async fn run(
        mut self,
        mut batches: mpsc::Receiver<DecodedBatch>,
        mut drain: Drain,
        mut stop: Stop,
    ) -> Result<(), PipelineError> {
        let mut writing: FuturesOrdered<tokio::task::JoinHandle<Committed>> = FuturesOrdered::new();
        // The same writes, to abort what is left when told to stop.
        let mut aborts: std::collections::VecDeque<tokio::task::AbortHandle> = Default::default();
        let mut next: Option<DecodedBatch> = None;
        let mut draining = false;
        let mut failure = None;
        loop {
            if !draining && next.is_some() && !self.pool.is_empty() {
                if let (Some(store), Some(batch)) = (self.pool.pop(), next.take()) {
                    let write = tokio::spawn(write_one(store, batch, self.context()));
                    aborts.push_back(write.abort_handle());
                    writing.push_back(write);
                }
            }
            if draining && writing.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                () = stop.until_set() => break,
                // FuturesOrdered::next and mpsc::Receiver::recv are cancel-safe:
                // nothing is lost when another branch wins.
                Some(done) = writing.next(), if !writing.is_empty() => match done {
                    Ok(c) => {
                        aborts.pop_front();
                        self.metrics.on_batch(
                            c.written.inserted,
                            c.written.duplicates,
                            c.written.redone_by_insert,
                            c.started.elapsed(),
                        );
                        self.consumer.store_offsets(&c.offsets);
                        self.pool.push(c.store);
                    }
                    Err(error) => {
                        failure = Some(PipelineError::Panicked { message: format!("writing a batch: {error}") });
                        break;
                    }
                },
                () = drain.until_set(), if !draining => draining = true,
                batch = batches.recv(), if next.is_none() && !draining => match batch {
                    Some(b) => next = Some(b),
                    // The reader ended; the supervisor reports why.
                    None => draining = true,
                },
            }
        }
        // Writes not finished by now roll back; their records are re-read next time.
        for write in aborts {
            write.abort();
        }
        writing.clear();
        self.consumer.commit_now().await;
        tracing::info!(
            rows = self.metrics.rows_written.load(Relaxed),
            duplicates = self.metrics.rows_duplicate.load(Relaxed),
            "Store writer stopped; uncommitted batches are re-read next time."
        );
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn context(&self) -> WriterArgs {
        WriterArgs { metrics: self.metrics.clone(), health: self.health.clone(), backoff_max: self.backoff_max }
    }
}

/// What a spawned write needs (owned, to move into the task).
struct WriterArgs {
    metrics: Arc<StoreMetrics>,
    health: Arc<Health>,
    backoff_max: Duration,
}

async fn write_one(mut store: Store, batch: DecodedBatch, args: WriterArgs) -> Committed {
    let started = Instant::now();
    let cx = WriteContext { metrics: &args.metrics, health: &args.health, backoff_max: args.backoff_max };
    let written = write_until_done(&mut store, batch.rows, batch.dead, &cx).await;
    Committed { store, written, offsets: batch.offsets, started }
}

/// Collect, count and decode batches until `drain` or the writer is gone.
/// The reader runs on its own task because a half-collected batch must never
/// be dropped: its records are already taken from the consumer, and a later
/// batch's offsets would skip them.
async fn read_batches(
    consumer: Arc<GroupConsumer>,
    consumer_metrics: Arc<ConsumerMetrics>,
    store_metrics: Arc<StoreMetrics>,
    tx: mpsc::Sender<DecodedBatch>,
    mut drain: Drain,
) -> Result<(), PipelineError> {
    loop {
        let batch = tokio::select! {
            b = consumer.next_batch() => b,
            () = drain.until_set() => return Ok(()),
        };
        consumer_metrics.records_consumed.fetch_add(batch.len() as u64, Relaxed);
        let decoded = split(&batch, &store_metrics);
        tokio::select! {
            sent = tx.send(decoded) => if sent.is_err() { return Ok(()) },
            () = drain.until_set() => return Ok(()),
        }
    }
}

fn split(batch: &[DurableRecord], metrics: &StoreMetrics) -> DecodedBatch {
    let now = now_ms();
    let mut rows = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    for r in batch {
        match decode(r, now) {
            Decoded::Row(row) => rows.push(row),
            Decoded::Dead(d, reason) => {
                metrics.on_dead_letter(reason, &d.source, &d.error);
                dead.push(d);
            }
        }
    }
    DecodedBatch { rows, dead, offsets: GroupConsumer::next_offsets(batch) }
}
