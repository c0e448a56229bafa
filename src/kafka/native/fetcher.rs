//! The native consumer's reads: the partitions the group task assigned,
//! grouped by leader, one fetch per broker at a time carrying all of that
//! broker's partitions, started after the partition that last returned
//! records so that a busy partition does not keep the others waiting. Where
//! a partition has no committed offset, it starts at the earliest one
//! (`auto.offset.reset = earliest`), as it does when its offset has expired.
//!
//! Where the broker speaks Fetch v7, each broker's fetches run in a fetch
//! session (`fetch_session.rs`): after the first, full fetch, a fetch names
//! only the partitions whose offset moved, and the broker answers only for
//! partitions with news, choosing their order itself (Kafka puts the
//! partitions that just returned records last). Without sessions (Tansu,
//! older brokers) every fetch names every partition, in the rotating order
//! above.
//!
//! A batch that cannot be decoded (an old message format, an unknown
//! compression, a corrupt batch that stays corrupt) stops its partition
//! there with an error: nothing after it is read, nothing is skipped.

use super::bootstrap::Bootstrap;
use super::conn::{Conn, ConnError};
use super::consumer::{Assignment, Chunk, Settings, Shared};
use super::fetch_session::{Session, FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH};
use super::group_protocol as gp;
use super::protocol;
use super::records::{BatchError, Decoder};
use crate::kafka::diagnosis::ErrorReporter;
use crate::record::headers::ReadHeaders;
use crate::record::{DurableRecord, Position};
use crate::telemetry::ConsumerMetrics;
use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A corrupt batch (CRC) is fetched again this many times before its
/// partition stops.
const CRC_RETRIES: u32 = 5;
/// How often the lag of each partition goes to the metrics.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// Topics per metadata request.
const METADATA_CHUNK: usize = 1_000;
/// `read_committed`.
const READ_COMMITTED: i8 = 1;
/// Offsets for `auto.offset.reset = earliest`.
const EARLIEST: i64 = -2;

// Kafka error codes the fetcher acts on.
const NONE: i16 = 0;
const OFFSET_OUT_OF_RANGE: i16 = 1;
/// Errors after which the partition's leader is looked up again.
const LEADER_ERRORS: [i16; 8] = [3, 5, 6, 9, 56, 74, 75, 13];

/// One assigned partition.
struct Part {
    topic: Arc<str>,
    partition: i32,
    /// The next offset to fetch; -1 until known.
    position: i64,
    leader: i32,
    high_watermark: i64,
    /// Kafka timestamp of the newest record read.
    newest_ts: Option<i64>,
    /// Not fetched before this (after an error).
    retry_at: Option<Instant>,
    crc_failures: u32,
    /// The partition stopped at a batch it cannot decode.
    stopped: bool,
    /// (broker, fetch offset) where a broker's fetch session holds this
    /// partition.
    session: Option<(i32, i64)>,
}

impl Part {
    /// Whether broker `id` is to read it now.
    fn ready(&self, id: i32, now: Instant) -> bool {
        self.leader == id && !self.stopped && self.retry_at.is_none_or(|at| at <= now)
    }
}

/// What a broker job returns: the broker, its connection if still usable, and the outcome.
type JobResult = (i32, Option<Conn>, Result<Job, ConnError>);
type JobFuture = Pin<Box<dyn Future<Output = JobResult> + Send>>;

/// A broker's answer, with the partitions (indices into `parts`) it was about.
enum Job {
    /// A new connection, before any request on it.
    Connected,
    Offsets {
        epoch: u64,
        asked: Vec<usize>,
        body: Bytes,
    },
    Fetch {
        epoch: u64,
        sent: FetchSent,
        body: Bytes,
    },
}

/// A request on its way: what its answer will be about.
enum Pending {
    Offsets(Vec<usize>),
    Fetch(FetchSent),
}

/// What a fetch request said: its version and session, the partitions it
/// named (indices into `parts`) with their fetch offsets, and those it asked
/// the session to forget.
struct FetchSent {
    version: i16,
    session: gp::SessionRef,
    read: Vec<(usize, i64)>,
    forget: Vec<usize>,
}

struct Broker {
    host: String,
    port: u16,
    idle: Option<Conn>,
    busy: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Index into `parts` after the last partition that returned records.
    next_start: usize,
    session: Session,
}

pub struct Fetcher {
    s: Arc<Settings>,
    shared: Arc<Shared>,
    metrics: Arc<ConsumerMetrics>,
    errors: Arc<ErrorReporter>,
    assignment: watch::Receiver<Arc<Assignment>>,
    epoch: u64,
    parts: Vec<Part>,
    /// Topic → (partition, index into `parts`): looked up by a borrowed
    /// name, where an answer is not in the order asked.
    index: HashMap<Arc<str>, Vec<(i32, usize)>>,
    brokers: HashMap<i32, Broker>,
    /// For metadata.
    meta: Bootstrap,
    metadata_due: Option<Instant>,
    meta_backoff: Duration,
    decoder: Decoder,
}

impl Fetcher {
    pub fn new(
        s: Arc<Settings>,
        shared: Arc<Shared>,
        metrics: Arc<ConsumerMetrics>,
        errors: Arc<ErrorReporter>,
        assignment: watch::Receiver<Arc<Assignment>>,
    ) -> Self {
        let meta = s.bootstrap_conn();
        Self {
            s,
            shared,
            metrics,
            errors,
            assignment,
            epoch: 0,
            parts: Vec::new(),
            index: HashMap::new(),
            brokers: HashMap::new(),
            meta,
            metadata_due: None,
            meta_backoff: BACKOFF_MIN,
            decoder: Decoder::default(),
        }
    }

    pub async fn run(mut self) {
        let mut jobs: FuturesUnordered<JobFuture> = FuturesUnordered::new();
        let mut lag = tokio::time::interval(LAG_INTERVAL);
        lag.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.assignment.has_changed().unwrap_or(false) {
                let a = self.assignment.borrow_and_update().clone();
                self.reassign(&a);
            }
            if self.metadata_due.is_some_and(|at| at <= Instant::now()) {
                self.refresh_metadata().await;
            }
            let full = self.shared.queued_bytes.load(Relaxed) >= self.s.queue_bytes;
            if !full {
                self.start_jobs(&mut jobs);
            }
            let wake = self.next_wake();
            tokio::select! {
                changed = self.assignment.changed() => match changed {
                    Ok(()) => {
                        let a = self.assignment.borrow_and_update().clone();
                        self.reassign(&a);
                    }
                    // The group task is gone: the consumer is shutting down.
                    Err(_) => std::future::pending::<()>().await,
                },
                Some((id, conn, result)) = jobs.next(), if !jobs.is_empty() => self.finish(id, conn, result),
                () = self.shared.room.notified(), if full => {}
                () = tokio::time::sleep_until(wake) => {}
                _ = lag.tick() => self.report_lag(),
            }
        }
    }

    fn reassign(&mut self, a: &Assignment) {
        self.epoch = a.epoch;
        self.parts = a
            .partitions
            .iter()
            .map(|(topic, partition, start)| Part {
                topic: topic.clone(),
                partition: *partition,
                position: *start,
                leader: -1,
                high_watermark: -1,
                newest_ts: None,
                retry_at: None,
                crc_failures: 0,
                stopped: false,
                session: None,
            })
            .collect();
        self.index.clear();
        for (i, p) in self.parts.iter().enumerate() {
            self.index.entry(p.topic.clone()).or_default().push((p.partition, i));
        }
        for b in self.brokers.values_mut() {
            b.next_start = 0;
            b.session.restart();
        }
        self.metadata_due = (!self.parts.is_empty()).then(Instant::now);
    }

    /// When the loop must look again without being woken: the earliest
    /// metadata refresh or retry still ahead (one already past has been
    /// acted on, or waits for a job in flight, which wakes the loop itself).
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let ahead = self
            .metadata_due
            .into_iter()
            .chain(self.brokers.values().filter_map(|b| b.retry_at))
            .chain(self.parts.iter().filter_map(|p| p.retry_at))
            .filter(|at| *at > now);
        ahead.fold(now + Duration::from_secs(1), Instant::min)
    }

    fn problem(&self, e: &ConnError) {
        self.errors.report(e.diagnosis());
    }

    /// Leaders of the assigned partitions, and the brokers' addresses.
    async fn refresh_metadata(&mut self) {
        let mut topics: Vec<Arc<str>> = self.parts.iter().map(|p| p.topic.clone()).collect();
        topics.dedup();
        let mut leaders: HashMap<(String, i32), i32> = HashMap::new();
        for chunk in topics.chunks(METADATA_CHUNK) {
            let names: Vec<&str> = chunk.iter().map(|t| &**t).collect();
            let md = self
                .meta
                .call(
                    |c| protocol::metadata_request(c.client_id(), &names, false),
                    |b, _| protocol::metadata_response(b),
                )
                .await;
            match md {
                Ok(md) => {
                    for b in md.brokers {
                        let Ok(port) = u16::try_from(b.port) else { continue };
                        let e = self.brokers.entry(b.node_id).or_insert_with(|| Broker {
                            host: b.host.clone(),
                            port,
                            idle: None,
                            busy: false,
                            retry_at: None,
                            backoff: BACKOFF_MIN,
                            next_start: 0,
                            session: Session::default(),
                        });
                        if e.host != b.host || e.port != port {
                            e.host = b.host;
                            e.port = port;
                            e.idle = None;
                            e.session.clear();
                        }
                    }
                    for t in md.topics {
                        for (p, error, leader) in t.partitions {
                            if error == NONE || leader >= 0 {
                                leaders.insert((t.name.clone(), p), leader);
                            }
                        }
                    }
                }
                Err(e) => {
                    self.problem(&e);
                    self.metadata_due = Some(Instant::now() + self.meta_backoff);
                    self.meta_backoff = (self.meta_backoff * 2).min(BACKOFF_MAX);
                    return;
                }
            }
        }
        let mut unknown = 0;
        for p in &mut self.parts {
            p.leader = leaders.get(&(p.topic.to_string(), p.partition)).copied().unwrap_or(-1);
            if p.leader < 0 {
                unknown += 1;
            }
        }
        self.meta_backoff = BACKOFF_MIN;
        self.metadata_due = if unknown > 0 {
            tracing::debug!(partitions = unknown, "Partitions without a leader; asking again.");
            Some(Instant::now() + Duration::from_millis(500))
        } else {
            Some(Instant::now() + self.s.metadata_interval)
        };
    }

    /// A job for every idle broker that has partitions to look up or read:
    /// first a connection, on which the Fetch version is agreed.
    fn start_jobs(&mut self, jobs: &mut FuturesUnordered<JobFuture>) {
        let now = Instant::now();
        let ids: Vec<i32> = self.brokers.keys().copied().collect();
        for id in ids {
            let Some(b) = self.brokers.get(&id) else { continue };
            if b.busy || b.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            let ready = |p: &Part| p.ready(id, now);
            if !self.parts.iter().any(ready) {
                continue;
            }
            let Some(conn) = &b.idle else {
                self.start(jobs, id, None);
                continue;
            };
            let unknown: Vec<usize> =
                (0..self.parts.len()).filter(|&i| ready(&self.parts[i]) && self.parts[i].position < 0).collect();
            let (req, job) = if !unknown.is_empty() {
                let mut by_topic: Vec<(&str, Vec<i32>)> = Vec::new();
                for &i in &unknown {
                    let p = &self.parts[i];
                    match by_topic.last_mut() {
                        Some((t, ps)) if *t == &*p.topic => ps.push(p.partition),
                        _ => by_topic.push((&p.topic, vec![p.partition])),
                    }
                }
                let req = gp::list_offsets_request(&self.s.client_id, EARLIEST, &by_topic);
                (req, Pending::Offsets(unknown))
            } else {
                let sent = self.plan_fetch(id, conn.versions.fetch, b, now);
                let read: Vec<(&str, i32, i64)> = sent
                    .read
                    .iter()
                    .map(|&(i, offset)| (&*self.parts[i].topic, self.parts[i].partition, offset))
                    .collect();
                let forget: Vec<(&str, i32)> =
                    sent.forget.iter().map(|&i| (&*self.parts[i].topic, self.parts[i].partition)).collect();
                let params = gp::FetchParams {
                    max_wait_ms: i32::try_from(self.s.fetch_max_wait.as_millis()).unwrap_or(i32::MAX),
                    min_bytes: 1,
                    max_bytes: self.s.fetch_max_bytes,
                    isolation_level: READ_COMMITTED,
                    partition_max_bytes: self.s.partition_max_bytes,
                };
                let list = gp::FetchList { read: &read, forget: &forget };
                (gp::fetch_request(&self.s.client_id, sent.version, &params, sent.session, &list), Pending::Fetch(sent))
            };
            self.start(jobs, id, Some((req, job)));
        }
    }

    /// What broker `id`'s next fetch names. Without a session: every ready
    /// partition, starting after the one that last returned records. In a
    /// session: the ready partitions the session does not hold at their
    /// position, and the ones it holds that are no longer to be read (led
    /// elsewhere, stopped, waiting to retry, offset unknown).
    fn plan_fetch(&self, id: i32, version: i16, b: &Broker, now: Instant) -> FetchSent {
        let ready = |p: &Part| p.ready(id, now);
        let session = if version >= gp::FETCH_SESSION_VERSION { b.session.next() } else { gp::SessionRef::default() };
        let (mut read, mut forget) = (Vec::new(), Vec::new());
        if version >= gp::FETCH_SESSION_VERSION && b.session.incremental() {
            for (i, p) in self.parts.iter().enumerate() {
                let held = p.session.filter(|&(broker, _)| broker == id);
                if ready(p) && p.position >= 0 {
                    if held.map(|(_, offset)| offset) != Some(p.position) {
                        read.push((i, p.position));
                    }
                } else if held.is_some() {
                    forget.push(i);
                }
            }
        } else {
            let n = self.parts.len();
            let start = b.next_start.min(n);
            read = (start..n)
                .chain(0..start)
                .filter(|&i| ready(&self.parts[i]) && self.parts[i].position >= 0)
                .map(|i| (i, self.parts[i].position))
                .collect();
        }
        FetchSent { version, session, read, forget }
    }

    /// Run one request on broker `id`'s connection, or open one.
    fn start(&mut self, jobs: &mut FuturesUnordered<JobFuture>, id: i32, request: Option<(BytesMut, Pending)>) {
        let Some(b) = self.brokers.get_mut(&id) else { return };
        b.busy = true;
        let conn = b.idle.take();
        let (host, port) = (b.host.clone(), b.port);
        let (tls, client_id, timeout) = (self.s.tls.clone(), self.s.client_id.clone(), self.s.request_timeout);
        // A fetch waits up to max_wait at the broker: allow for it.
        let call_timeout = timeout + self.s.fetch_max_wait;
        let epoch = self.epoch;
        jobs.push(Box::pin(async move {
            let (Some(mut conn), Some((mut req, pending))) = (conn, request) else {
                return match Conn::open_consumer(&host, port, tls.as_ref(), client_id, timeout).await {
                    Ok(c) => (id, Some(c), Ok(Job::Connected)),
                    Err(e) => (id, None, Err(e)),
                };
            };
            match conn.call_within(&mut req, call_timeout).await {
                Ok(body) => {
                    let job = match pending {
                        Pending::Offsets(asked) => Job::Offsets { epoch, asked, body },
                        Pending::Fetch(sent) => Job::Fetch { epoch, sent, body },
                    };
                    (id, Some(conn), Ok(job))
                }
                Err(e) => (id, None, Err(e)),
            }
        }));
    }

    fn finish(&mut self, id: i32, conn: Option<Conn>, result: Result<Job, ConnError>) {
        let Some(b) = self.brokers.get_mut(&id) else { return };
        b.busy = false;
        match result {
            Ok(job) => {
                b.idle = conn;
                b.retry_at = None;
                b.backoff = BACKOFF_MIN;
                self.errors.clear();
                match job {
                    Job::Connected => {}
                    Job::Offsets { epoch, asked, body } if epoch == self.epoch => self.offsets(&asked, &body),
                    Job::Fetch { epoch, sent, body } if epoch == self.epoch => self.fetched(id, &sent, &body),
                    Job::Offsets { .. } => {}
                    Job::Fetch { sent, body, .. } => {
                        // Read for an assignment since replaced. A session
                        // it opened is closed by the next full fetch.
                        // Only the answer's header is read: the session id.
                        if sent.session.epoch == 0 {
                            if let Ok(head) = gp::fetch_header(&body, sent.version) {
                                if head.session_id != 0 {
                                    b.session.close_later(head.session_id);
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => {
                b.idle = None;
                b.retry_at = Some(Instant::now() + b.backoff);
                b.backoff = (b.backoff * 2).min(BACKOFF_MAX);
                self.problem(&e);
                self.metadata_due = Some(Instant::now());
                // Whether the broker took the last request is unknown.
                self.restart_session(id);
            }
        }
    }

    fn offsets(&mut self, asked: &[usize], body: &[u8]) {
        let answers = match gp::list_offsets_response(body) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "ListOffsets answer does not parse; asking again.");
                self.delay(asked.iter().copied());
                return;
            }
        };
        let mut started = 0usize;
        for (topic, partition, error, offset) in answers {
            let Some(i) = self.find(&topic, partition) else { continue };
            if error == NONE && offset >= 0 {
                self.parts[i].position = offset;
                started += 1;
                tracing::debug!(topic = &*topic, partition, offset, "No committed offset: starting at the earliest.");
            } else {
                self.leader_error(i, error);
            }
        }
        if started > 0 {
            tracing::info!(partitions = started, "Partitions without a committed offset start at the earliest.");
        }
    }

    /// Broker `id`'s next fetch is a full one, in a new session.
    fn restart_session(&mut self, id: i32) {
        if let Some(b) = self.brokers.get_mut(&id) {
            b.session.restart();
        }
        self.drop_holds(id);
    }

    /// No partition is held by broker `id`'s session any more.
    fn drop_holds(&mut self, id: i32) {
        for p in &mut self.parts {
            if p.session.is_some_and(|(broker, _)| broker == id) {
                p.session = None;
            }
        }
    }

    /// The broker took a fetch without error: what its session holds now.
    fn settle_session(&mut self, id: i32, sent: &FetchSent, answered_id: i32) {
        let Some(b) = self.brokers.get_mut(&id) else { return };
        b.session.answered(sent.session, answered_id);
        let after = b.session;
        if sent.session.epoch == 0 {
            // A full fetch: a new session, if any, holds what it named.
            self.drop_holds(id);
        }
        if !after.incremental() {
            return;
        }
        for &(i, offset) in &sent.read {
            if let Some(p) = self.parts.get_mut(i) {
                p.session = Some((id, offset));
            }
        }
        for &i in &sent.forget {
            if let Some(p) = self.parts.get_mut(i) {
                if p.session.is_some_and(|(broker, _)| broker == id) {
                    p.session = None;
                }
            }
        }
    }

    /// The index into `parts` of a topic's partition.
    fn find(&self, topic: &str, partition: i32) -> Option<usize> {
        let ps = self.index.get(topic)?;
        ps.iter().find(|(p, _)| *p == partition).map(|&(_, i)| i)
    }

    /// The index into `parts` of the `k`th partition of an answer to a
    /// request for `asked`: brokers answer in the order asked, so that is
    /// checked first, and the map is the fallback.
    fn answered(&self, asked: &[(usize, i64)], k: usize, topic: &str, partition: i32) -> Option<usize> {
        match asked.get(k).and_then(|&(i, _)| Some((i, self.parts.get(i)?))) {
            Some((i, p)) if p.partition == partition && &*p.topic == topic => Some(i),
            _ => self.find(topic, partition),
        }
    }

    fn delay(&mut self, asked: impl IntoIterator<Item = usize>) {
        let at = Instant::now() + BACKOFF_MIN * 5;
        for i in asked {
            if let Some(p) = self.parts.get_mut(i) {
                p.retry_at = Some(at);
            }
        }
    }

    fn leader_error(&mut self, i: usize, error: i16) {
        let Some(p) = self.parts.get_mut(i) else { return };
        if LEADER_ERRORS.contains(&error) {
            p.leader = -1;
            self.metadata_due = Some(Instant::now());
        } else {
            tracing::warn!(topic = &*p.topic, partition = p.partition, error, "Kafka refused a read; trying again.");
            p.retry_at = Some(Instant::now() + BACKOFF_MAX);
        }
    }

    fn fetched(&mut self, broker: i32, sent: &FetchSent, body: &Bytes) {
        let answer = match gp::fetch_response(body, sent.version) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "Fetch answer does not parse; asking again.");
                self.restart_session(broker);
                self.delay(sent.read.iter().map(|&(i, _)| i));
                return;
            }
        };
        match answer.error {
            NONE => self.settle_session(broker, sent, answer.session_id),
            FETCH_SESSION_ID_NOT_FOUND | INVALID_FETCH_SESSION_EPOCH => {
                tracing::debug!(broker, error = answer.error, "Fetch session lost; the next fetch is a full one.");
                self.restart_session(broker);
                return;
            }
            e => {
                tracing::warn!(broker, error = e, "Kafka refused a fetch; asking again.");
                self.restart_session(broker);
                self.delay(sent.read.iter().map(|&(i, _)| i));
                return;
            }
        }
        // An incremental answer is in the broker's order, not the order asked.
        let asked: &[(usize, i64)] = if sent.session.epoch > 0 { &[] } else { &sent.read };
        let mut chunks = Vec::new();
        let mut queued = 0usize;
        let mut last_with_records = None;
        for (k, fp) in answer.partitions.into_iter().enumerate() {
            let Some(i) = self.answered(asked, k, &fp.topic, fp.partition) else { continue };
            match fp.error {
                NONE => {}
                OFFSET_OUT_OF_RANGE => {
                    let p = &mut self.parts[i];
                    tracing::warn!(
                        topic = &*p.topic,
                        partition = p.partition,
                        offset = p.position,
                        "Offset out of range (records expired before they were read): starting at the earliest."
                    );
                    p.position = -1;
                    continue;
                }
                e => {
                    self.leader_error(i, e);
                    continue;
                }
            }
            let p = &mut self.parts[i];
            p.high_watermark = fp.high_watermark;
            if fp.records.is_empty() {
                continue;
            }
            let mut records = VecDeque::new();
            let mut newest = None::<i64>;
            let (topic, partition) = (p.topic.clone(), p.partition);
            let decoded = self.decoder.decode(&fp.records, p.position, &fp.aborted, self.s.max_decompressed, |r| {
                let headers = {
                    let bytes = r.headers.iter().map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len)).sum();
                    let mut h = ReadHeaders::with_capacity(r.headers.len(), bytes);
                    for (k, v) in r.headers.iter() {
                        h.push_lossy(&String::from_utf8_lossy(k), v.unwrap_or_default());
                    }
                    h
                };
                newest = Some(newest.map_or(r.timestamp_ms, |n| n.max(r.timestamp_ms)));
                let rec = DurableRecord {
                    position: Position::Kafka { topic: topic.clone(), partition, offset: r.offset },
                    timestamp_ms: Some(r.timestamp_ms),
                    headers,
                    payload: Bytes::copy_from_slice(r.value.unwrap_or_default()),
                };
                queued += Shared::cost(&rec);
                records.push_back(rec);
            });
            let p = &mut self.parts[i];
            match decoded {
                Ok(d) => {
                    p.position = d.next_offset;
                    p.crc_failures = 0;
                }
                Err(e) => {
                    // What came before the bad batch is delivered; the
                    // partition goes on from there.
                    if let Some(last) = records.back() {
                        if let Position::Kafka { offset, .. } = last.position {
                            p.position = offset + 1;
                        }
                    }
                    Self::bad_batch(p, &e);
                }
            }
            if let Some(ts) = newest {
                p.newest_ts = Some(p.newest_ts.map_or(ts, |n| n.max(ts)));
            }
            if !records.is_empty() {
                last_with_records = Some(i);
                chunks.push(Chunk { epoch: self.epoch, records });
            }
        }
        if let (Some(i), Some(b)) = (last_with_records, self.brokers.get_mut(&broker)) {
            b.next_start = i + 1;
        }
        if chunks.is_empty() {
            return;
        }
        self.shared.queued_bytes.fetch_add(queued, Relaxed);
        if let Ok(mut q) = self.shared.queue.lock() {
            q.extend(chunks);
        }
        self.shared.arrived.notify_one();
    }

    fn bad_batch(p: &mut Part, e: &BatchError) {
        if matches!(e, BatchError::Crc { .. }) && p.crc_failures < CRC_RETRIES {
            p.crc_failures += 1;
            tracing::warn!(topic = &*p.topic, partition = p.partition, error = %e, "Corrupt batch; fetching it again.");
            p.retry_at = Some(Instant::now() + BACKOFF_MIN * 10);
            return;
        }
        p.stopped = true;
        tracing::error!(
            topic = &*p.topic,
            partition = p.partition,
            offset = p.position,
            error = %e,
            "This partition is not read past a batch the consumer cannot decode; nothing after it is skipped. \
             Restart the sink after fixing the topic, or read it with consumer = \"librdkafka\"."
        );
    }

    /// Lag per partition (high watermark minus position), and how old the
    /// oldest unread backlog is at least.
    fn report_lag(&self) {
        let mut lags = Vec::with_capacity(self.parts.len());
        let mut oldest_behind = None::<i64>;
        for p in &self.parts {
            if p.high_watermark < 0 || p.position < 0 {
                continue;
            }
            let lag = (p.high_watermark - p.position).max(0);
            if lag > 0 {
                if let Some(ts) = p.newest_ts {
                    oldest_behind = Some(oldest_behind.map_or(ts, |o| o.min(ts)));
                }
            }
            lags.push((&*p.topic, p.partition, lag));
        }
        self.metrics.set_lags(lags);
        self.metrics.set_behind_since(oldest_behind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::native::consumer::Subscription;

    fn fetcher() -> Fetcher {
        let s = Arc::new(Settings {
            bootstrap: vec![("127.0.0.1".into(), 9092)],
            tls: None,
            client_id: Arc::from("test"),
            group: "g".into(),
            subscription: Subscription { names: vec!["t".into()], patterns: Vec::new() },
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            rebalance_timeout: Duration::from_secs(60),
            commit_interval: Duration::from_secs(1),
            metadata_interval: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            fetch_max_wait: Duration::from_millis(100),
            fetch_max_bytes: 1 << 20,
            partition_max_bytes: 1 << 20,
            queue_bytes: 1 << 20,
            max_decompressed: 16 << 20,
        });
        let (_tx, rx) = watch::channel(Arc::new(Assignment::default()));
        Fetcher::new(
            s,
            Arc::new(Shared::default()),
            Arc::new(ConsumerMetrics::new(false)),
            Arc::new(ErrorReporter::new("consumer")),
            rx,
        )
    }

    fn broker(retry_at: Option<Instant>) -> Broker {
        Broker {
            host: "h".into(),
            port: 1,
            idle: None,
            busy: true,
            retry_at,
            backoff: BACKOFF_MIN,
            next_start: 0,
            session: Session::default(),
        }
    }

    #[test]
    fn answers_map_to_partitions_in_the_order_asked_or_by_name() {
        let mut f = fetcher();
        let partitions = vec![(Arc::from("a"), 0, 5), (Arc::from("a"), 1, 5), (Arc::from("b"), 0, 5)];
        f.reassign(&Assignment { epoch: 1, partitions });
        let asked = [(2, 5), (0, 5), (1, 5)];
        // In the order asked.
        assert_eq!(f.answered(&asked, 0, "b", 0), Some(2));
        assert_eq!(f.answered(&asked, 1, "a", 0), Some(0));
        assert_eq!(f.answered(&asked, 2, "a", 1), Some(1));
        // Out of order, or past the end of what was asked: found by name.
        assert_eq!(f.answered(&asked, 0, "a", 1), Some(1));
        assert_eq!(f.answered(&asked, 1, "b", 0), Some(2));
        assert_eq!(f.answered(&asked, 7, "a", 0), Some(0));
        assert_eq!(f.answered(&[(99, 0)], 0, "a", 1), Some(1), "an index past the partitions");
        // Not assigned.
        assert_eq!(f.answered(&asked, 0, "b", 1), None);
        assert_eq!(f.answered(&asked, 0, "c", 0), None);
        // A new assignment replaces the index.
        f.reassign(&Assignment { epoch: 2, partitions: vec![(Arc::from("c"), 3, 0)] });
        assert_eq!(f.answered(&[], 0, "c", 3), Some(0));
        assert_eq!(f.answered(&[], 0, "a", 0), None);
    }

    /// What a plan names: (partition indices read with offsets, indices forgotten, session).
    fn plan(f: &Fetcher, version: i16) -> (Vec<(usize, i64)>, Vec<usize>, gp::SessionRef, FetchSent) {
        let sent = f.plan_fetch(1, version, &f.brokers[&1], Instant::now());
        (sent.read.clone(), sent.forget.clone(), sent.session, sent)
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_names_only_partitions_that_moved_and_forgets_the_ones_not_read() {
        let mut f = fetcher();
        let partitions = vec![(Arc::from("a"), 0, 5), (Arc::from("a"), 1, 5), (Arc::from("b"), 0, 5)];
        f.reassign(&Assignment { epoch: 1, partitions });
        f.brokers.insert(1, broker(None));
        for p in &mut f.parts {
            p.leader = 1;
        }
        // The first fetch is full and asks for a session.
        let (read, forget, session, sent) = plan(&f, 7);
        assert_eq!((read, forget, session), (vec![(0, 5), (1, 5), (2, 5)], vec![], gp::SessionRef { id: 0, epoch: 0 }));
        f.settle_session(1, &sent, 55);
        assert!(f.parts.iter().all(|p| p.session == Some((1, 5))));
        // Nothing moved: an incremental fetch that names nothing.
        let (read, forget, session, sent) = plan(&f, 7);
        assert_eq!((read, forget, session), (vec![], vec![], gp::SessionRef { id: 55, epoch: 1 }));
        f.settle_session(1, &sent, 55);
        // One partition read on, one waiting to retry, one now led elsewhere.
        f.parts[0].position = 9;
        f.parts[1].retry_at = Some(Instant::now() + Duration::from_secs(1));
        let (read, forget, session, sent) = plan(&f, 7);
        assert_eq!((read, forget, session), (vec![(0, 9)], vec![1], gp::SessionRef { id: 55, epoch: 2 }));
        f.settle_session(1, &sent, 55);
        assert_eq!(f.parts.iter().map(|p| p.session).collect::<Vec<_>>(), [Some((1, 9)), None, Some((1, 5))]);
        f.parts[2].leader = 2;
        tokio::time::advance(Duration::from_secs(2)).await;
        let (read, forget, session, sent) = plan(&f, 7);
        assert_eq!((read, forget, session), (vec![(1, 5)], vec![2], gp::SessionRef { id: 55, epoch: 3 }));
        f.settle_session(1, &sent, 55);
        assert_eq!(f.parts.iter().map(|p| p.session).collect::<Vec<_>>(), [Some((1, 9)), Some((1, 5)), None]);
        // A lost session: the next fetch is full and closes the old one.
        f.restart_session(1);
        assert!(f.parts.iter().all(|p| p.session.is_none()));
        let (read, _, session, sent) = plan(&f, 7);
        assert_eq!((read, session), (vec![(0, 9), (1, 5)], gp::SessionRef { id: 55, epoch: 0 }));
        // The broker keeps no session: every fetch stays full.
        f.settle_session(1, &sent, 0);
        let (read, _, session, _) = plan(&f, 7);
        assert_eq!((read, session), (vec![(0, 9), (1, 5)], gp::SessionRef { id: 0, epoch: 0 }));
        assert!(f.parts.iter().all(|p| p.session.is_none()));
        // Before v7 there are no sessions at all.
        f.brokers.get_mut(&1).unwrap().session.answered(gp::SessionRef::default(), 60);
        let (read, forget, session, _) = plan(&f, 4);
        assert_eq!((read, forget, session), (vec![(0, 9), (1, 5)], vec![], gp::SessionRef::default()));
        // A new assignment: a full fetch again.
        f.reassign(&Assignment { epoch: 2, partitions: vec![(Arc::from("c"), 0, 1)] });
        f.parts[0].leader = 1;
        let (read, _, session, _) = plan(&f, 7);
        assert_eq!((read, session), (vec![(0, 1)], gp::SessionRef { id: 60, epoch: 0 }));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_already_due_do_not_make_the_loop_spin() {
        let mut f = fetcher();
        f.reassign(&Assignment { epoch: 1, partitions: vec![(Arc::from("t"), 0, 5)] });
        f.metadata_due = Some(Instant::now() + Duration::from_secs(10));
        // A broker whose retry time passed while its job is in flight, and a
        // partition whose retry time passed: neither is a reason to wake now.
        f.brokers.insert(1, broker(Some(Instant::now())));
        f.parts[0].retry_at = Some(Instant::now());
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(f.next_wake(), Instant::now() + Duration::from_secs(1));
        // One still ahead is.
        f.parts[0].retry_at = Some(Instant::now() + Duration::from_millis(300));
        assert_eq!(f.next_wake(), Instant::now() + Duration::from_millis(300));
        f.brokers.insert(2, broker(Some(Instant::now() + Duration::from_millis(100))));
        assert_eq!(f.next_wake(), Instant::now() + Duration::from_millis(100));
    }
}
