//! iotpipe's own Kafka consumer (`kafka.consumer = "native"`): the sink's
//! consumer group without librdkafka, for thousands of per-pair topics in a
//! bounded amount of memory (docs/topology.md, "The native consumer").
//!
//! It keeps the consumer contract of the librdkafka one: a member of the
//! sink's consumer group (the classic group protocol, the `roundrobin`
//! assignor, eager rebalances), offsets committed only for records the
//! store has committed, stored offsets committed before partitions are
//! given up and at shutdown, `auto.offset.reset = earliest`, and
//! `read_committed` isolation.
//!
//! - **Two tasks**: the group task ([`super::group`]) keeps the membership
//!   (join, sync, heartbeats, offset commits, subscription changes) on its
//!   own connection to the group coordinator; the fetcher
//!   ([`super::fetcher`]) reads the assigned partitions, one fetch per
//!   broker at a time carrying every partition that broker leads.
//! - **Memory** is the state per assigned partition (~150 bytes), one fetch
//!   response per broker (`FETCH_MAX_BYTES`), and the records decoded and
//!   not yet taken by the sink (`QUEUE_BYTES`): not a function of the number
//!   of topics.
//! - **A rebalance** drops the records queued for the sink (the new owner,
//!   or this member again, reads them from the committed offset; the store
//!   deduplicates what was written twice).

use super::fetcher::Fetcher;
use super::group::Group;
use super::{creation, key_error};
use crate::kafka::diagnosis::ErrorReporter;
use crate::kafka::{ClientError, ConsumerSettings, KafkaConfig, NextOffset};
use crate::record::DurableRecord;
use crate::telemetry::ConsumerMetrics;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

/// Records decoded and waiting for the sink, at most (then fetching pauses):
/// librdkafka's `queued.max.messages.kbytes` as the sink set it.
const QUEUE_BYTES: usize = 1 << 20;
/// One fetch response at most, and one partition's share of it.
const FETCH_MAX_BYTES: i32 = 1 << 20;
const PARTITION_MAX_BYTES: i32 = 1 << 20;
/// How long the broker holds a fetch for lack of data (as the sink sets
/// librdkafka's `fetch.wait.max.ms`).
const FETCH_MAX_WAIT: Duration = Duration::from_millis(100);
/// A batch larger than this once decompressed is refused (the partition
/// stops there, with an error).
const MAX_DECOMPRESSED: usize = 16 << 20;
/// librdkafka's defaults for the same settings.
const SESSION_TIMEOUT: Duration = Duration::from_secs(45);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the subscription is matched against the cluster's topics (as
/// the sink sets `topic.metadata.refresh.interval.ms`), and leaders refreshed.
const METADATA_INTERVAL: Duration = Duration::from_secs(10);
/// How long `commit_now` waits for the group task.
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(15);
/// Per record, what a queued record costs besides its payload and headers.
const RECORD_OVERHEAD: usize = 96;

/// The consumer properties (`sink.properties`) the native consumer reads;
/// any other one is librdkafka's (the config check says so).
pub const NATIVE_CONSUMER_PROPERTIES: [&str; 3] = ["session.timeout.ms", "heartbeat.interval.ms", "client.id"];

/// What both tasks are configured with.
pub struct Settings {
    pub bootstrap: Vec<(String, u16)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub client_id: Arc<str>,
    pub group: String,
    pub subscription: Subscription,
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub rebalance_timeout: Duration,
    pub commit_interval: Duration,
    pub metadata_interval: Duration,
    pub request_timeout: Duration,
    pub fetch_max_wait: Duration,
    pub fetch_max_bytes: i32,
    pub partition_max_bytes: i32,
    pub queue_bytes: usize,
    pub max_decompressed: usize,
}

impl Settings {
    /// A connection to one of the bootstrap brokers, opened when first used
    /// (the group's and the fetcher's metadata requests).
    pub fn bootstrap_conn(&self) -> super::bootstrap::Bootstrap {
        super::bootstrap::Bootstrap::new(
            self.bootstrap.clone(),
            super::conn::Client::Consumer,
            self.tls.clone(),
            self.client_id.clone(),
            self.request_timeout,
        )
    }
}

/// Topic names, and regexes (entries starting with `^`).
#[derive(Debug)]
pub struct Subscription {
    pub names: Vec<String>,
    pub patterns: Vec<regex_lite::Regex>,
}

impl Subscription {
    pub fn parse(topics: &[String]) -> Result<Self, String> {
        let mut names = Vec::new();
        let mut patterns = Vec::new();
        for t in topics {
            if t.starts_with('^') {
                patterns.push(regex_lite::Regex::new(t).map_err(|e| format!("`{t}` is not a regex: {e}"))?);
            } else {
                names.push(t.clone());
            }
        }
        names.sort();
        names.dedup();
        Ok(Self { names, patterns })
    }

    /// Whether a topic of the cluster is subscribed to (internal topics never are).
    pub fn matches(&self, topic: &str) -> bool {
        !topic.starts_with("__")
            && (self.names.binary_search_by(|n| n.as_str().cmp(topic)).is_ok()
                || self.patterns.iter().any(|p| p.is_match(topic)))
    }

    pub fn has_patterns(&self) -> bool {
        !self.patterns.is_empty()
    }
}

/// Decoded records of one partition, waiting for the sink.
pub struct Chunk {
    /// The assignment they were fetched under.
    pub epoch: u64,
    pub records: VecDeque<DurableRecord>,
}

/// What the group task gives the fetcher: the partitions to read and where
/// to start (the committed offset, or -1 for `auto.offset.reset`).
#[derive(Debug, Default)]
pub struct Assignment {
    pub epoch: u64,
    pub partitions: Vec<(Arc<str>, i32, i64)>,
}

/// State shared by the handle and the two tasks.
pub struct Shared {
    pub queue: Mutex<VecDeque<Chunk>>,
    pub queued_bytes: AtomicUsize,
    /// Records were queued.
    pub arrived: Notify,
    /// The queue went below its budget.
    pub room: Notify,
    /// The current assignment's epoch: queued chunks of an older one are dropped.
    pub epoch: AtomicU64,
    /// Next offsets the store has committed, per partition, not yet sent to Kafka.
    pub stored: Mutex<HashMap<(Arc<str>, i32), i64>>,
    pub assigned: AtomicUsize,
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    fn new() -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            queued_bytes: AtomicUsize::new(0),
            arrived: Notify::new(),
            room: Notify::new(),
            epoch: AtomicU64::new(0),
            stored: Mutex::new(HashMap::new()),
            assigned: AtomicUsize::new(0),
        }
    }

    /// What one queued record counts against the budget.
    pub fn cost(r: &DurableRecord) -> usize {
        r.payload.len() + r.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + RECORD_OVERHEAD
    }

    fn release(&self, bytes: usize, budget: usize) {
        let before = self.queued_bytes.fetch_sub(bytes, Relaxed);
        if before >= budget && before - bytes < budget {
            self.room.notify_one();
        }
    }
}

/// The sink's handle; the tasks run under the sink's supervisor.
pub struct NativeConsumer {
    shared: Arc<Shared>,
    max_rows: usize,
    max_bytes: usize,
    max_wait: Duration,
    queue_bytes: usize,
    metrics: Arc<ConsumerMetrics>,
    final_commit: mpsc::Sender<oneshot::Sender<()>>,
    task: Mutex<Option<Box<(Group, Fetcher)>>>,
}

/// The `sink.properties` the native consumer reads, checked; keys relative to `[sink]`.
pub fn validate_properties(props: &std::collections::BTreeMap<String, String>) -> Result<(), crate::units::KeyError> {
    use crate::units::KeyError;
    if let Some(key) = props.keys().find(|k| !NATIVE_CONSUMER_PROPERTIES.contains(&k.as_str())) {
        return Err(KeyError::new(
            format!("properties.{key}"),
            format!(
                "is read by kafka.consumer = \"librdkafka\" only; the native consumer reads {}",
                NATIVE_CONSUMER_PROPERTIES.join(", ")
            ),
        ));
    }
    for key in ["session.timeout.ms", "heartbeat.interval.ms"] {
        if let Some(v) = props.get(key) {
            if v.trim().parse::<u64>().map_or(true, |ms| ms == 0) {
                return Err(KeyError::new(format!("properties.{key}"), "is not a number of milliseconds above 0"));
            }
        }
    }
    Ok(())
}

fn millis(props: &std::collections::BTreeMap<String, String>, key: &str, default: Duration) -> Duration {
    props
        .get(key)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(default, Duration::from_millis)
}

impl NativeConsumer {
    pub fn new(
        kafka: &KafkaConfig,
        settings: &ConsumerSettings,
        metrics: Arc<ConsumerMetrics>,
    ) -> Result<Self, ClientError> {
        let props = &settings.properties;
        let own_id = props.get("client.id").map(|s| s.trim()).filter(|s| !s.is_empty());
        let super::Endpoints { bootstrap, tls, client_id } = super::Endpoints::of(kafka, own_id)?;
        validate_properties(props).map_err(|e| key_error("sink", e))?;
        let s = Arc::new(Settings {
            bootstrap,
            tls,
            client_id,
            group: settings.group_id.clone(),
            subscription: Subscription::parse(&settings.topics).map_err(creation)?,
            session_timeout: millis(props, "session.timeout.ms", SESSION_TIMEOUT),
            heartbeat_interval: millis(props, "heartbeat.interval.ms", HEARTBEAT_INTERVAL),
            rebalance_timeout: settings.max_poll_interval,
            commit_interval: COMMIT_INTERVAL,
            metadata_interval: METADATA_INTERVAL,
            request_timeout: REQUEST_TIMEOUT,
            fetch_max_wait: FETCH_MAX_WAIT,
            fetch_max_bytes: FETCH_MAX_BYTES,
            partition_max_bytes: PARTITION_MAX_BYTES,
            queue_bytes: QUEUE_BYTES,
            max_decompressed: MAX_DECOMPRESSED,
        });
        let shared = Arc::new(Shared::new());
        let errors = Arc::new(ErrorReporter::new("consumer"));
        let (assign_tx, assign_rx) = watch::channel(Arc::new(Assignment::default()));
        let (final_commit, commits) = mpsc::channel(1);
        let group = Group::new(s.clone(), shared.clone(), errors.clone(), assign_tx, commits);
        let fetcher = Fetcher::new(s.clone(), shared.clone(), metrics.clone(), errors, assign_rx);
        tracing::info!(topics = ?settings.topics, group_id = settings.group_id, "Native Kafka consumer subscribing.");
        Ok(Self {
            shared,
            max_rows: settings.max_rows.max(1),
            max_bytes: settings.max_bytes,
            max_wait: settings.max_wait,
            queue_bytes: s.queue_bytes,
            metrics,
            final_commit,
            task: Mutex::new(Some(Box::new((group, fetcher)))),
        })
    }

    /// The consumer's tasks, once: run them under the sink's supervisor.
    pub fn take_task(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let (group, fetcher) = *self.task.lock().ok()?.take()?;
        Some(async move {
            tokio::join!(group.run(), fetcher.run());
        })
    }

    /// Move queued records into `out` up to the batch bounds; whether any moved.
    fn take_into(&self, out: &mut Vec<DurableRecord>, bytes: &mut usize) -> bool {
        let Ok(mut queue) = self.shared.queue.lock() else { return false };
        let epoch = self.shared.epoch.load(Relaxed);
        let mut moved = false;
        let mut released = 0;
        while let Some(front) = queue.front_mut() {
            if front.epoch != epoch {
                released += front.records.iter().map(Shared::cost).sum::<usize>();
                queue.pop_front();
                continue;
            }
            while out.len() < self.max_rows && *bytes < self.max_bytes {
                let Some(r) = front.records.pop_front() else { break };
                released += Shared::cost(&r);
                *bytes += r.payload.len();
                out.push(r);
                moved = true;
            }
            if front.records.is_empty() {
                queue.pop_front();
            } else {
                break;
            }
        }
        drop(queue);
        if released > 0 {
            self.shared.release(released, self.queue_bytes);
        }
        moved
    }

    /// The next batch: waits for a first record, then collects until the
    /// row, byte or time bound.
    pub async fn next_batch(&self) -> Vec<DurableRecord> {
        let mut out = Vec::new();
        let mut bytes = 0;
        loop {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.take_into(&mut out, &mut bytes) {
                break;
            }
            arrived.await;
        }
        let deadline = Instant::now() + self.max_wait;
        while out.len() < self.max_rows && bytes < self.max_bytes {
            let arrived = self.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.take_into(&mut out, &mut bytes) {
                continue;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                break;
            }
        }
        let oldest = out.iter().filter_map(|r| r.timestamp_ms).min();
        self.metrics.on_batch_read(oldest.unwrap_or_else(crate::record::now_ms));
        out
    }

    /// Mark a batch as processed: its offsets are committed with the next
    /// commit (or before a rebalance, or at shutdown). Partitions no longer
    /// assigned by then are skipped; their new owner re-reads those records.
    pub fn store_offsets(&self, offsets: &[NextOffset]) {
        self.metrics.on_batch_committed();
        let Ok(mut stored) = self.shared.stored.lock() else { return };
        for o in offsets {
            let e = stored.entry((Arc::from(o.topic.as_str()), o.partition)).or_insert(o.offset);
            *e = (*e).max(o.offset);
        }
    }

    /// Commit stored offsets now and leave the group (shutdown).
    pub async fn commit_now(&self) {
        let (tx, rx) = oneshot::channel();
        if self.final_commit.send(tx).await.is_err() {
            tracing::warn!("Final offset commit not made (the consumer had stopped); records will be re-read.");
            return;
        }
        match tokio::time::timeout(FINAL_COMMIT_WAIT, rx).await {
            Ok(Ok(())) => {}
            _ => tracing::warn!("Final offset commit did not finish in time; records will be re-read."),
        }
    }

    pub fn assigned(&self) -> usize {
        self.shared.assigned.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::headers::ReadHeaders;
    use crate::record::Position;
    use bytes::Bytes;
    use std::collections::BTreeMap;

    fn record(topic: &str, offset: i64, payload: usize) -> DurableRecord {
        DurableRecord {
            position: Position::Kafka { topic: Arc::from(topic), partition: 0, offset },
            timestamp_ms: Some(offset),
            headers: ReadHeaders::default(),
            payload: Bytes::from(vec![b'x'; payload]),
        }
    }

    fn consumer(max_rows: usize, max_bytes: usize) -> NativeConsumer {
        let (final_commit, _) = mpsc::channel(1);
        NativeConsumer {
            shared: Arc::new(Shared::new()),
            max_rows,
            max_bytes,
            max_wait: Duration::from_millis(20),
            queue_bytes: 1_000,
            metrics: Arc::new(ConsumerMetrics::new(false)),
            final_commit,
            task: Mutex::new(None),
        }
    }

    fn queue(c: &NativeConsumer, epoch: u64, records: Vec<DurableRecord>) {
        let cost: usize = records.iter().map(Shared::cost).sum();
        c.shared.queued_bytes.fetch_add(cost, Relaxed);
        c.shared.queue.lock().unwrap().push_back(Chunk { epoch, records: records.into() });
    }

    fn offsets(batch: &[DurableRecord]) -> Vec<i64> {
        batch
            .iter()
            .map(|r| match r.position {
                Position::Kafka { offset, .. } => offset,
                Position::Journal { .. } => -1,
            })
            .collect()
    }

    #[test]
    fn regexes_and_names_match_topics_but_never_internal_ones() {
        let s =
            Subscription::parse(&["^iot\\..+".into(), "iot-dead-letters".into(), "iot-dead-letters".into()]).unwrap();
        assert!(s.matches("iot.telemetry") && s.matches("iot.t1.p2") && s.matches("iot-dead-letters"));
        assert!(!s.matches("iotx") && !s.matches("other") && !s.matches("__consumer_offsets"));
        assert_eq!(s.names, ["iot-dead-letters"]);
        assert!(s.has_patterns());
        assert!(Subscription::parse(&["^iot\\.(".into()]).unwrap_err().contains("not a regex"));
    }

    #[test]
    fn only_the_properties_it_reads_are_accepted() {
        let mut p = BTreeMap::new();
        p.insert("session.timeout.ms".to_string(), "6000".to_string());
        p.insert("heartbeat.interval.ms".to_string(), "500".to_string());
        assert_eq!(validate_properties(&p), Ok(()));
        p.insert("fetch.max.bytes".to_string(), "1".to_string());
        assert_eq!(validate_properties(&p).unwrap_err().key, "properties.fetch.max.bytes");
        p.remove("fetch.max.bytes");
        p.insert("session.timeout.ms".to_string(), "soon".to_string());
        assert_eq!(validate_properties(&p).unwrap_err().key, "properties.session.timeout.ms");
        assert_eq!(millis(&p, "heartbeat.interval.ms", Duration::ZERO), Duration::from_millis(500));
        assert_eq!(millis(&p, "session.timeout.ms", Duration::from_secs(45)), Duration::from_secs(45));
    }

    #[tokio::test]
    async fn batches_follow_the_row_bound_across_chunks_and_release_the_budget() {
        let c = consumer(3, 1 << 20);
        c.shared.epoch.store(1, Relaxed);
        queue(&c, 1, vec![record("a", 0, 10), record("a", 1, 10)]);
        queue(&c, 1, vec![record("b", 5, 10), record("b", 6, 10)]);
        let first = c.next_batch().await;
        assert_eq!(offsets(&first), [0, 1, 5], "three rows, across two chunks, in order");
        let second = c.next_batch().await;
        assert_eq!(offsets(&second), [6], "the rest of the split chunk, after max_wait");
        assert_eq!(c.shared.queued_bytes.load(Relaxed), 0, "every queued byte released");
        assert!(c.shared.queue.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn records_of_an_earlier_assignment_are_dropped_not_stored() {
        let c = consumer(100, 1 << 20);
        c.shared.epoch.store(2, Relaxed);
        queue(&c, 1, vec![record("a", 0, 10), record("a", 1, 10)]);
        queue(&c, 2, vec![record("a", 7, 10)]);
        let batch = c.next_batch().await;
        assert_eq!(offsets(&batch), [7]);
        assert_eq!(c.shared.queued_bytes.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn a_batch_ends_at_its_byte_bound_and_the_fetcher_is_woken_below_the_budget() {
        let c = consumer(100, 25);
        c.shared.epoch.store(1, Relaxed);
        queue(&c, 1, vec![record("a", 0, 20), record("a", 1, 20), record("a", 2, 20)]);
        let batch = c.next_batch().await;
        assert_eq!(offsets(&batch), [0, 1], "the bound is reached by the second record");
        // The queue was over its 1,000-byte budget and went under it: the
        // fetcher's wait on `room` returns at once.
        c.shared.queued_bytes.fetch_add(2_000, Relaxed);
        c.shared.release(2_000, c.queue_bytes);
        tokio::time::timeout(Duration::from_millis(100), c.shared.room.notified()).await.expect("room notified");
    }

    #[test]
    fn stored_offsets_only_move_forward() {
        let c = consumer(10, 10);
        let at = |o| NextOffset { topic: "a".into(), partition: 0, offset: o };
        c.store_offsets(&[at(5)]);
        c.store_offsets(&[at(3)]);
        c.store_offsets(&[at(9)]);
        let stored = c.shared.stored.lock().unwrap();
        assert_eq!(stored.get(&(Arc::from("a"), 0)), Some(&9));
    }
}
