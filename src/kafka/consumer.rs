//! The sink's consumer group: batches bounded by rows, bytes and time;
//! offsets stored after the database commit and committed afterwards,
//! and before partitions are given up. Two clients keep that contract
//! (`kafka.consumer`): librdkafka's (`enable.auto.offset.store=false`,
//! committed by librdkafka, synchronously before partitions are revoked),
//! here, and iotpipe's own ([`super::native::NativeConsumer`]). Records leave
//! as [`DurableRecord`]s positioned by topic, partition and offset;
//! librdkafka's messages stay here.

use super::diagnosis::ErrorReporter;
use super::{ClientError, KafkaConfig};
use crate::record::headers::ReadHeaders;
use crate::record::{DurableRecord, Position};
use crate::telemetry::ConsumerMetrics;
use bytes::Bytes;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The next offset to read in one partition: what is stored once a batch is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextOffset {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What the consumer needs from `[sink]`.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Topic names, or regexes when they start with `^`.
    pub topics: Vec<String>,
    pub group_id: String,
    /// A batch ends at this many records, payload bytes, or this long after its first record.
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
    /// librdkafka `max.poll.interval.ms`.
    pub max_poll_interval: Duration,
    /// Extra consumer properties, verbatim (win over everything else).
    pub properties: BTreeMap<String, String>,
}

pub struct Context {
    metrics: Arc<ConsumerMetrics>,
    errors: ErrorReporter,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.errors.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(&error, reason);
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

/// How often the consumer lag is computed for the metrics.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// A member of the sink's consumer group, through the configured client.
pub enum GroupConsumer {
    Librdkafka(Librdkafka),
    Native(super::native::NativeConsumer),
}

impl GroupConsumer {
    pub fn new(
        kafka: &KafkaConfig,
        settings: &ConsumerSettings,
        metrics: Arc<ConsumerMetrics>,
    ) -> Result<Self, ClientError> {
        let chosen = kafka.chosen_consumer(&settings.properties);
        tracing::info!(configured = ?kafka.consumer, consumer = ?chosen, "Kafka consumer.");
        Ok(match chosen {
            super::ConsumerKind::Native => Self::Native(super::native::NativeConsumer::new(kafka, settings, metrics)?),
            _ => Self::Librdkafka(Librdkafka::new(kafka, settings, metrics)?),
        })
    }

    /// The native consumer's tasks, once: the caller runs them under its
    /// supervisor (librdkafka runs its own threads: `None`).
    pub fn take_task(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        match self {
            Self::Librdkafka(_) => None,
            Self::Native(n) => n.take_task(),
        }
    }

    /// Report the lag every few seconds (librdkafka; the native consumer's
    /// reader reports it itself).
    pub async fn report_lag_forever(self: Arc<Self>) -> Result<(), ClientError> {
        match &*self {
            Self::Librdkafka(c) => c.report_lag_forever().await,
            Self::Native(_) => std::future::pending().await,
        }
    }

    /// The next batch: waits for a first record, then collects until the
    /// row, byte or time bound.
    pub async fn next_batch(&self) -> Vec<DurableRecord> {
        match self {
            Self::Librdkafka(c) => c.next_batch().await,
            Self::Native(n) => n.next_batch().await,
        }
    }

    /// The next offset to read for each partition in `batch` (records not
    /// read from Kafka have none).
    pub fn next_offsets(batch: &[DurableRecord]) -> Vec<NextOffset> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for (topic, partition, offset) in batch.iter().filter_map(kafka_position) {
            let e = next.entry((topic, partition)).or_insert(offset + 1);
            *e = (*e).max(offset + 1);
        }
        next.into_iter().map(|((t, p), o)| NextOffset { topic: t.to_string(), partition: p, offset: o }).collect()
    }

    /// Mark a batch as processed: its offsets are committed with the next
    /// commit (or before a revoke). Partitions revoked in the meantime are
    /// skipped; their new owner re-reads those records.
    pub fn store_offsets(&self, offsets: &[NextOffset]) {
        match self {
            Self::Librdkafka(c) => c.store_offsets(offsets),
            Self::Native(n) => n.store_offsets(offsets),
        }
    }

    /// Commit stored offsets now (shutdown).
    pub async fn commit_now(&self) {
        match self {
            Self::Librdkafka(c) => c.commit_now(),
            Self::Native(n) => n.commit_now().await,
        }
    }

    /// How many partitions the group coordinator gave this member.
    pub fn assigned(&self) -> usize {
        match self {
            Self::Librdkafka(c) => c.assigned(),
            Self::Native(n) => n.assigned(),
        }
    }
}

/// librdkafka's consumer.
pub struct Librdkafka {
    consumer: StreamConsumer<Context>,
    max_rows: usize,
    max_bytes: usize,
    max_wait: Duration,
    /// Per assigned partition, the Kafka timestamp (epoch ms) of the newest
    /// record read: the age of the backlog behind it is at least its age.
    read_ts: std::sync::Mutex<HashMap<(String, i32), i64>>,
}

impl Librdkafka {
    fn new(
        kafka: &KafkaConfig,
        settings: &ConsumerSettings,
        metrics: Arc<ConsumerMetrics>,
    ) -> Result<Self, ClientError> {
        let mut c: ClientConfig = super::common_config(kafka);
        c.set("group.id", &settings.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("max.poll.interval.ms", settings.max_poll_interval.as_millis().to_string())
            // No statistics: librdkafka's report is a JSON document with an
            // entry per partition, built and parsed every interval, which at
            // thousands of partitions cost tens of MiB (docs/topology.md).
            // Lag is read from the cached watermarks instead (`report_lag`).
            .set("statistics.interval.ms", "0")
            // Bounded prefetch: librdkafka's default queue (64 MiB) alone
            // would break the 64 MiB memory budget. 1 MiB of prefetch, and
            // fetching again 5 ms (not the default 1 s) after the queue had
            // room, keeps the store busy at a peak RSS near 46 MiB
            // (BENCHMARKS.md; 4 MiB cost ~40 MiB more for no gain).
            .set("queued.max.messages.kbytes", "1024")
            .set("fetch.max.bytes", "1048576")
            .set("max.partition.fetch.bytes", "1048576")
            .set("fetch.queue.backoff.ms", "5")
            // A fetch the broker holds for lack of data returns after 100 ms,
            // not librdkafka's 500 ms. With 500 ms, records from the Kafka
            // stand-in of the tests reached the sink in bursts about 280 ms
            // apart under a steady 2,000 msg/s, half of the end-to-end p50
            // (BENCHMARKS.md, "End-to-end latency"). The cost: an idle
            // broker connection sends ten small requests a second.
            .set("fetch.wait.max.ms", "100")
            .set("topic.metadata.refresh.interval.ms", "10000");
        super::client::apply(&mut c, &settings.properties, |_| true);
        let consumer: StreamConsumer<Context> =
            c.create_with_context(Context { metrics, errors: ErrorReporter::new("consumer") })?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(?topics, group_id = settings.group_id, "Subscribed to Kafka.");
        Ok(Self {
            consumer,
            max_rows: settings.max_rows.max(1),
            max_bytes: settings.max_bytes,
            max_wait: settings.max_wait,
            read_ts: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Every `LAG_INTERVAL`, the lag of each assigned partition: the high
    /// watermark librdkafka last saw in a fetch answer minus this member's
    /// position. Both are local reads (no request to Kafka); partitions not
    /// fetched yet have no watermark and are left out.
    fn report_lag(&self) {
        let Ok(position) = self.consumer.position() else { return };
        let mut lags = Vec::with_capacity(position.count());
        for e in position.elements() {
            let Offset::Offset(pos) = e.offset() else { continue };
            if let Some(high) = self.cached_high_watermark(e.topic(), e.partition()) {
                lags.push((e.topic().to_string(), e.partition(), (high - pos).max(0)));
            }
        }
        // Lag in time: of the partitions behind, the oldest "newest record
        // read"; the next record there is at most that old. Partitions no
        // longer assigned are forgotten.
        let mut oldest_behind = None::<i64>;
        if let Ok(mut read) = self.read_ts.lock() {
            let elements = position.elements();
            let assigned: std::collections::HashSet<(&str, i32)> =
                elements.iter().map(|e| (e.topic(), e.partition())).collect();
            read.retain(|(t, p), _| assigned.contains(&(t.as_str(), *p)));
            for (t, p, lag) in &lags {
                if *lag > 0 {
                    if let Some(ts) = read.get(&(t.clone(), *p)) {
                        oldest_behind = Some(oldest_behind.map_or(*ts, |o| o.min(*ts)));
                    }
                }
            }
        }
        let metrics = &self.consumer.context().metrics;
        metrics.set_lags(lags);
        metrics.set_behind_since(oldest_behind);
    }

    /// Report the lag every `LAG_INTERVAL`, on its own task: the reader
    /// stops reading while the store is down, and the lag must go on
    /// growing in the metrics meanwhile.
    async fn report_lag_forever(&self) -> Result<(), ClientError> {
        let mut tick = tokio::time::interval(LAG_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.report_lag();
        }
    }

    /// Remember the newest record timestamp read per partition (`report_lag`).
    fn note_read(&self, batch: &[DurableRecord]) {
        let oldest = batch.iter().filter_map(|r| r.timestamp_ms).min();
        self.consumer.context().metrics.on_batch_read(oldest.unwrap_or_else(crate::record::now_ms));
        let Ok(mut read) = self.read_ts.lock() else { return };
        let mut last: Option<(&str, i32)> = None;
        for r in batch.iter().rev() {
            let (Some(ts), Some((topic, partition, _))) = (r.timestamp_ms, kafka_position(r)) else { continue };
            // The newest of each partition run is its last record: one
            // lookup per run.
            if last == Some((topic, partition)) {
                continue;
            }
            last = Some((topic, partition));
            let e = read.entry((topic.to_string(), partition)).or_insert(ts);
            *e = (*e).max(ts);
        }
    }

    /// The high watermark librdkafka last saw for a partition in a fetch
    /// answer (`rd_kafka_get_watermark_offsets`: a local read, unlike the
    /// crate's `fetch_watermarks`, which asks the broker); `None` before the
    /// first fetch.
    fn cached_high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let topic = std::ffi::CString::new(topic).ok()?;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client pointer is valid while `self.consumer` lives;
        // the topic is a NUL-terminated string that outlives the call;
        // librdkafka only writes the two offsets, under its partition lock.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
    }

    /// The next batch: waits for a first record, then collects until the
    /// row, byte or time bound.
    async fn next_batch(&self) -> Vec<DurableRecord> {
        let mut errors = 0u64;
        let mut topics = TopicNames::default();
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
                Ok(m) => break detach(&m, &mut topics),
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
                    let r = detach(&m, &mut topics);
                    bytes += r.payload.len();
                    batch.push(r);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error.");
                    break;
                }
            }
        }
        self.note_read(&batch);
        batch
    }

    /// Mark a batch as processed: its offsets are committed with the next
    /// auto-commit (or before a revoke). Partitions revoked in the meantime
    /// are skipped; their new owner re-reads those records.
    fn store_offsets(&self, offsets: &[NextOffset]) {
        self.consumer.context().metrics.on_batch_committed();
        for o in offsets {
            let mut tpl = TopicPartitionList::new();
            if tpl.add_partition_offset(&o.topic, o.partition, Offset::Offset(o.offset)).is_ok() {
                if let Err(error) = self.consumer.store_offsets(&tpl) {
                    tracing::debug!(topic = o.topic, partition = o.partition, %error, "Offset not stored (partition no longer assigned).");
                }
            }
        }
    }

    fn commit_now(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("Committed consumer offsets."),
            Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error, "Final offset commit failed; records will be re-read."),
        }
    }

    fn assigned(&self) -> usize {
        self.consumer.assignment().map(|a| a.count()).unwrap_or(0)
    }
}

/// Topic, partition and offset of a record read from Kafka.
fn kafka_position(r: &DurableRecord) -> Option<(&str, i32, i64)> {
    match &r.position {
        Position::Kafka { topic, partition, offset } => Some((topic, *partition, *offset)),
        Position::Journal { .. } => None,
    }
}

/// The topic names of one batch, shared by its records: a batch reads a
/// few topics, so one allocation per topic instead of one per record.
#[derive(Default)]
struct TopicNames(Vec<Arc<str>>);

impl TopicNames {
    /// Most names kept: past that (a batch across many per-pair topics),
    /// the rest are allocated per record, as before.
    const MAX: usize = 32;

    fn get(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.0.iter().find(|t| &***t == topic) {
            return Arc::clone(t);
        }
        let t: Arc<str> = Arc::from(topic);
        if self.0.len() < Self::MAX {
            self.0.push(Arc::clone(&t));
        }
        t
    }
}

/// A consumed message, detached from librdkafka: header values lossily
/// UTF-8, a missing payload empty.
fn detach<M: Message>(m: &M, topics: &mut TopicNames) -> DurableRecord {
    let headers = m
        .headers()
        .map(|h| {
            let bytes = h.iter().map(|hd| hd.key.len() + hd.value.map_or(0, <[u8]>::len)).sum();
            let mut out = ReadHeaders::with_capacity(h.count(), bytes);
            for hd in h.iter() {
                out.push_lossy(hd.key, hd.value.unwrap_or_default());
            }
            out
        })
        .unwrap_or_default();
    DurableRecord {
        position: Position::Kafka { topic: topics.get(m.topic()), partition: m.partition(), offset: m.offset() },
        timestamp_ms: m.timestamp().to_millis(),
        headers,
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(topic: &str, partition: i32, offset: i64) -> DurableRecord {
        DurableRecord {
            position: Position::Kafka { topic: topic.into(), partition, offset },
            timestamp_ms: None,
            headers: ReadHeaders::default(),
            payload: Bytes::new(),
        }
    }

    #[test]
    fn the_next_offset_of_each_partition_follows_its_last_record() {
        let batch = [at("a", 0, 5), at("a", 1, 9), at("a", 0, 6), at("b", 0, 0), at("a", 0, 4)];
        let next = GroupConsumer::next_offsets(&batch);
        let got: Vec<(&str, i32, i64)> = next.iter().map(|o| (o.topic.as_str(), o.partition, o.offset)).collect();
        assert_eq!(got, [("a", 0, 7), ("a", 1, 10), ("b", 0, 1)]);
    }
}
