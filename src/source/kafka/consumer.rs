//! The consumer: batches bounded by rows, bytes and time; offsets stored
//! after the database commit (`enable.auto.offset.store=false`) and
//! committed by librdkafka, synchronously before partitions are revoked.

use super::decode::KafkaRecord;
use crate::config::{KafkaConfig, SinkConfig};
use crate::telemetry::SinkMetrics;
use bytes::Bytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
}

pub struct Context {
    metrics: Arc<SinkMetrics>,
}

impl ClientContext for Context {
    fn stats(&self, stats: Statistics) {
        for (name, topic) in &stats.topics {
            for (id, p) in &topic.partitions {
                if *id >= 0 && p.consumer_lag >= 0 {
                    self.metrics.set_lag(name, *id, p.consumer_lag);
                }
                if *id >= 0 && p.consumer_lag > 0 {
                    tracing::debug!(
                        topic = name,
                        partition = id,
                        lag = p.consumer_lag,
                        fetch_state = p.fetch_state,
                        fetchq = p.fetchq_cnt,
                        next = p.next_offset,
                        app = p.app_offset,
                        stored = p.stored_offset,
                        committed = p.committed_offset,
                        hi = p.hi_offset,
                        "Partition behind."
                    );
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "librdkafka reported an error.");
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Whatever was written to the store is committed before another
            // member takes the partitions; what was not is re-read there
            // (and deduplicated by the store).
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => tracing::warn!(%error, "Commit before revoke failed; records will be re-read."),
            }
            tracing::info!(partitions = tpl.count(), "Partitions revoked.");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "Partitions assigned.");
        }
    }
}

/// Longest wait on the consumer queue before polling it afresh.
const RECV_SLICE: Duration = Duration::from_millis(250);

pub struct KafkaSource {
    consumer: StreamConsumer<Context>,
    max_rows: usize,
    max_bytes: usize,
    max_wait: Duration,
}

impl KafkaSource {
    pub fn new(kafka: &KafkaConfig, sink: &SinkConfig, metrics: Arc<SinkMetrics>) -> Result<Self, SourceError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &kafka.brokers)
            .set("group.id", &sink.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("max.poll.interval.ms", sink.max_poll_interval.get().as_millis().to_string())
            .set("statistics.interval.ms", "5000")
            // Bounded prefetch: librdkafka's default queue (64 MiB) alone
            // would break the 64 MiB memory budget. 1 MiB of prefetch, and
            // fetching again 5 ms (not the default 1 s) after the queue had
            // room, keeps the store busy at a peak RSS near 46 MiB
            // (BENCHMARKS.md; 4 MiB cost ~40 MiB more for no gain).
            .set("queued.max.messages.kbytes", "1024")
            .set("fetch.max.bytes", "1048576")
            .set("max.partition.fetch.bytes", "1048576")
            .set("fetch.queue.backoff.ms", "5")
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set("log.connection.close", "false");
        for (k, v) in &kafka.properties {
            if is_common_property(k) {
                c.set(k, v);
            }
        }
        for (k, v) in &sink.properties {
            c.set(k, v);
        }
        let consumer: StreamConsumer<Context> = c.create_with_context(Context { metrics })?;
        let mut topics: Vec<&str> = sink.topics.iter().map(String::as_str).collect();
        topics.extend(sink.dead_letter_topics.iter().map(String::as_str));
        consumer.subscribe(&topics)?;
        tracing::info!(?topics, group_id = sink.group_id, "Subscribed to Kafka.");
        Ok(Self {
            consumer,
            max_rows: sink.batch_max_rows.max(1),
            max_bytes: usize::try_from(sink.batch_max_bytes.bytes()).unwrap_or(usize::MAX),
            max_wait: sink.batch_max_wait.get(),
        })
    }

    /// The next batch: waits for a first record, then collects until the
    /// row, byte or time bound.
    pub async fn next_batch(&self) -> Vec<KafkaRecord> {
        let mut errors = 0u64;
        let first = loop {
            // The stream's wake-up is edge-triggered and can be lost when
            // librdkafka serves an internal event (statistics, rebalance)
            // ahead of a message (rust-rdkafka issue #665): the consumer
            // would then sleep with records queued until the crate's
            // fallback wake-up at half of max.poll.interval.ms. A fresh
            // recv() polls the queue first, so waiting in short slices
            // bounds that stall to one slice.
            let Ok(received) = tokio::time::timeout(RECV_SLICE, self.consumer.recv()).await else { continue };
            match received {
                Ok(m) => break detach(&m),
                // Consumer errors (a subscribed topic that does not exist yet,
                // a broker going away) are reported by librdkafka and retried
                // by it; they are not fatal to the sink.
                Err(e) => {
                    if errors % 100 == 0 {
                        tracing::warn!(error = %e, "Kafka consumer error; still consuming.");
                    }
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let mut bytes = first.payload.len();
        let mut batch = vec![first];
        let deadline = Instant::now() + self.max_wait;
        while batch.len() < self.max_rows && bytes < self.max_bytes {
            match tokio::time::timeout_at(deadline.into(), self.consumer.recv()).await {
                Err(_) => break,
                Ok(Ok(m)) => {
                    let r = detach(&m);
                    bytes += r.payload.len();
                    batch.push(r);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error.");
                    break;
                }
            }
        }
        batch
    }

    /// The next offset to read for each partition in `batch`.
    pub fn next_offsets(batch: &[KafkaRecord]) -> Vec<(String, i32, i64)> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for r in batch {
            let e = next.entry((r.topic.as_str(), r.partition)).or_insert(r.offset + 1);
            *e = (*e).max(r.offset + 1);
        }
        next.into_iter().map(|((t, p), o)| (t.to_string(), p, o)).collect()
    }

    /// Mark a batch as processed: its offsets are committed with the next
    /// auto-commit (or before a revoke). Partitions revoked in the meantime
    /// are skipped; their new owner re-reads those records.
    pub fn store_offsets(&self, offsets: &[(String, i32, i64)]) {
        for (topic, partition, offset) in offsets {
            let mut tpl = TopicPartitionList::new();
            if tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)).is_ok() {
                if let Err(error) = self.consumer.store_offsets(&tpl) {
                    tracing::debug!(topic, partition, %error, "Offset not stored (partition no longer assigned).");
                }
            }
        }
    }

    /// Commit stored offsets now (shutdown).
    pub fn commit_now(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("Committed consumer offsets."),
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "Final offset commit failed; records will be re-read."),
        }
    }

    /// Whether the group coordinator gave this member partitions.
    pub fn assigned(&self) -> usize {
        self.consumer.assignment().map(|a| a.count()).unwrap_or(0)
    }
}

/// Security and client settings from `[kafka.properties]` that a consumer shares with the producer.
fn is_common_property(k: &str) -> bool {
    k.starts_with("security.")
        || k.starts_with("sasl.")
        || k.starts_with("ssl.")
        || k == "client.id"
        || k.starts_with("socket.")
}

fn detach<M: Message>(m: &M) -> KafkaRecord {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|hd| (hd.key.to_string(), String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned()))
                .collect()
        })
        .unwrap_or_default();
    KafkaRecord {
        topic: m.topic().to_string(),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        headers,
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
    }
}
