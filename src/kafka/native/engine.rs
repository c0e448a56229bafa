//! The native producer's one task: records in, delivery reports out.
//!
//! - **State per partition** is a queue, a sequence number and two flags
//!   (~100 bytes): a topic costs what its name and partitions cost, not a
//!   client's topic object and configuration copy.
//! - **One request per broker at a time, every ready partition in it**: a
//!   broker whose connection is idle gets one produce request carrying a
//!   batch for each partition it leads that has records (after `linger`), so
//!   ten thousand topics with a record each make one request, not ten
//!   thousand.
//! - **At most one batch per partition in flight**, so a partition's order
//!   holds through retries and leader changes; the idempotent producer id
//!   and per-partition sequence numbers let the broker drop a batch it
//!   already has (an answer lost with its connection).
//! - **A batch whose outcome is unknown** (connection lost, timed out, a
//!   retriable error) is sent again as it was, with its sequence number,
//!   until the broker answers; only records never sent expire after
//!   `delivery_timeout` (reported failed; the bridge sends them again).
//! - **A batch the broker refuses** fails each of its records with the
//!   broker's error (the bridge dead-letters what Kafka never takes); a batch
//!   too large for the broker is first split into single records, so only
//!   the record at fault fails.
//! - **Memory** is what the bridge hands in (bounded by its MQTT window or
//!   journal window) plus one encoded request per broker.

// Records stay in the boxes they came in: they go back out as `Delivery`
// (boxed) without moving their ~300 bytes each time a batch is retried.
#![allow(clippy::vec_box)]

use super::batch::{self, Compression, Encoder};
use super::bootstrap::Bootstrap;
use super::conn::{Client, Conn, ConnError};
use super::protocol::{self, PartitionResult};
use crate::kafka::diagnosis::{Diagnosis, ErrorReporter, Step};
use crate::kafka::producer::{Delivery, Pending};
use crate::kafka::ClientError;
use bytes::BytesMut;
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Topics per metadata request.
const METADATA_CHUNK: usize = 1_000;
/// Backoff after a failed connection or request, doubling up to the cap.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Metadata of topics not there yet (being created, electing) is asked for
/// again after this, doubling up to the cap while none appears.
const UNKNOWN_MIN: Duration = Duration::from_millis(250);
const UNKNOWN_MAX: Duration = Duration::from_secs(2);
/// How often queued records are checked against `delivery_timeout`.
const EXPIRY_TICK: Duration = Duration::from_millis(500);

/// What the engine is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bootstrap: Vec<(String, u16)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub client_id: Arc<str>,
    pub compression: Compression,
    pub linger: Duration,
    pub delivery_timeout: Duration,
    pub request_timeout: Duration,
    /// Largest batch for one partition (uncompressed record bytes).
    pub batch_bytes: usize,
    /// Largest produce request (uncompressed record bytes).
    pub request_bytes: usize,
    /// Known topics' metadata is asked for again this often.
    pub metadata_max_age: Duration,
    /// Ask the broker to create a topic it does not know (it must allow it).
    pub auto_create: bool,
}

/// Commands from the [`super::NativeProducer`] handle.
pub enum Cmd {
    Send(Box<Pending>),
    /// Records in the order they are to be sent: one channel operation for
    /// a run of messages the forwarder took together (each record in its
    /// own box, as it travels alone from here on).
    #[allow(clippy::vec_box)]
    SendMany(Vec<Box<Pending>>),
    /// Start over with a new producer id (after a fatal error upstream).
    Reset,
}

/// Shared with the handle.
#[derive(Default)]
pub struct Shared {
    /// Records handed in and not yet reported.
    pub in_flight: AtomicI64,
}

struct Part {
    topic: Arc<str>,
    partition: i32,
    /// Records not sent yet, in arrival order.
    queue: VecDeque<Box<Pending>>,
    /// A batch whose outcome is unknown, to send again exactly as it was
    /// before anything else.
    resend: Vec<Box<Pending>>,
    /// Its sequence number while the broker may have it (`None` once the
    /// producer id changed: it takes the next number of the new id).
    resend_seq: Option<i32>,
    /// Records of a batch too large for the broker: sent one per batch,
    /// after `resend` and before `queue`.
    solo: VecDeque<Box<Pending>>,
    next_seq: i32,
    busy: bool,
    queued: bool,
}

impl Part {
    fn has_work(&self) -> bool {
        !self.resend.is_empty() || !self.solo.is_empty() || !self.queue.is_empty()
    }
}

struct Topic {
    parts: Vec<usize>,
    leaders: Vec<i32>,
}

struct Broker {
    host: String,
    port: u16,
    conn: Option<Conn>,
    busy: bool,
    ready: VecDeque<usize>,
    /// When the oldest partition in `ready` got there.
    ready_since: Option<Instant>,
    ready_bytes: usize,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// A batch in a request, by partition.
struct Sent {
    part: usize,
    records: Vec<Box<Pending>>,
    seq: i32,
    /// The producer id and epoch it was written under.
    producer: (i64, i16),
}

enum Done {
    Produce { node: i32, conn: Option<Conn>, result: Result<Vec<PartitionResult>, ConnError> },
    Metadata { control: Bootstrap, result: Result<protocol::Metadata, ConnError>, asked: Vec<Arc<str>> },
    ProducerId { control: Bootstrap, result: Result<(i16, i64, i16), ConnError> },
}

type Work = Pin<Box<dyn Future<Output = Done> + Send>>;

pub struct Engine {
    s: Settings,
    rx: mpsc::Receiver<Cmd>,
    reports: mpsc::UnboundedSender<Delivery>,
    shared: Arc<Shared>,
    errors: Arc<ErrorReporter>,
    parts: Vec<Part>,
    topics: HashMap<Arc<str>, Topic>,
    /// Records of topics without metadata yet, with when they came.
    waiting: HashMap<Arc<str>, VecDeque<Box<Pending>>>,
    wanted: HashSet<Arc<str>>,
    brokers: HashMap<i32, Broker>,
    in_flight: HashMap<i32, Vec<Sent>>,
    /// The connection for metadata and producer ids; `None` while a
    /// request on it is in flight.
    control: Option<Bootstrap>,
    control_retry_at: Option<Instant>,
    control_backoff: Duration,
    unknown_backoff: Duration,
    producer: Option<(i64, i16)>,
    work: FuturesUnordered<Work>,
    encoder: Encoder,
    next_expiry: Instant,
    next_refresh: Instant,
    /// The loop's clock, read once per turn.
    now: Instant,
    /// Send what is queued without waiting for `linger` (the handle is gone).
    flushing: bool,
    /// Brokers to send to this turn (kept to reuse its allocation).
    due: Vec<i32>,
    rng: rand::rngs::StdRng,
}

fn error(code: C) -> ClientError {
    ClientError::from(KafkaError::MessageProduction(code))
}

/// A broker error code as the error a failed delivery carries.
fn broker_error(code: i16) -> C {
    match code {
        2 => C::InvalidMessage,
        10 => C::MessageSizeTooLarge,
        17 => C::InvalidTopic,
        18 => C::MessageBatchTooLarge,
        21 => C::InvalidRequiredAcks,
        29 => C::TopicAuthorizationFailed,
        31 => C::ClusterAuthorizationFailed,
        43 => C::UnsupportedForMessageFormat,
        44 => C::PolicyViolation,
        87 => C::InvalidRecord,
        _ => C::Unknown,
    }
}

/// What a partition's answer calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    /// Send the same batch again (it may be written; the sequence says).
    Again,
    /// The producer id or sequence is no longer valid: new id, then again.
    NewProducerId,
    /// Too large as a batch: again, one record at a time.
    Split,
    /// Never taken: each record fails with this error.
    Refused(C),
}

fn outcome(code: i16, records: usize) -> Outcome {
    match code {
        // 46: the broker already has this batch (its answer was lost).
        0 | 46 => Outcome::Written,
        10 | 18 if records > 1 => Outcome::Split,
        2 | 10 | 17 | 18 | 21 | 29 | 31 | 43 | 44 | 87 => Outcome::Refused(broker_error(code)),
        // Out of order sequence, invalid epoch, unknown producer id, fenced.
        45 | 47 | 59 | 90 => Outcome::NewProducerId,
        _ => Outcome::Again,
    }
}

impl Engine {
    pub fn new(
        s: Settings,
        rx: mpsc::Receiver<Cmd>,
        reports: mpsc::UnboundedSender<Delivery>,
        shared: Arc<Shared>,
        errors: Arc<ErrorReporter>,
    ) -> Self {
        let now = Instant::now();
        let control = Bootstrap::new(
            s.bootstrap.clone(),
            Client::Producer,
            s.tls.clone(),
            s.client_id.clone(),
            s.request_timeout,
        );
        Self {
            next_refresh: now + s.metadata_max_age,
            s,
            rx,
            reports,
            shared,
            errors,
            parts: Vec::new(),
            topics: HashMap::new(),
            waiting: HashMap::new(),
            wanted: HashSet::new(),
            brokers: HashMap::new(),
            in_flight: HashMap::new(),
            control: Some(control),
            control_retry_at: None,
            control_backoff: BACKOFF_MIN,
            unknown_backoff: UNKNOWN_MIN,
            producer: None,
            work: FuturesUnordered::new(),
            encoder: Encoder::default(),
            next_expiry: now + EXPIRY_TICK,
            now,
            flushing: false,
            due: Vec::new(),
            rng: rand::SeedableRng::from_entropy(),
        }
    }

    /// Run until the handle is dropped and everything handed in is reported.
    pub async fn run(mut self) {
        let mut open = true;
        // One timer for the whole run, moved when the next deadline moves
        // (a new one per turn cost a timer-wheel insert and removal each).
        let timer = tokio::time::sleep_until(Instant::now() + self.s.metadata_max_age);
        tokio::pin!(timer);
        loop {
            let now = Instant::now();
            self.now = now;
            if now >= self.next_expiry {
                self.expire(now);
                self.next_expiry = now + EXPIRY_TICK;
            }
            if now >= self.next_refresh {
                self.wanted.extend(self.topics.keys().cloned());
                self.next_refresh = now + self.s.metadata_max_age;
            }
            self.dispatch(now);
            if !open && self.work.is_empty() && self.shared.in_flight.load(Relaxed) <= 0 {
                return;
            }
            let wake = self.next_wake(now);
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                biased;
                Some(done) = self.work.next(), if !self.work.is_empty() => self.complete(done),
                cmd = self.rx.recv(), if open => match cmd {
                    Some(cmd) => {
                        self.command(cmd);
                        // Take what else is there without going round the loop.
                        while let Ok(cmd) = self.rx.try_recv() {
                            self.command(cmd);
                        }
                    }
                    None => {
                        open = false;
                        // The handle is gone: send what is queued without waiting for `linger`.
                        self.flushing = true;
                    }
                },
                () = &mut timer => {}
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Send(p) => self.enqueue(p),
            Cmd::SendMany(ps) => ps.into_iter().for_each(|p| self.enqueue(p)),
            Cmd::Reset => self.producer = None,
        }
    }

    /// When the loop must look again without being woken. A retry time
    /// already past counts as none: its broker was just dispatched to, or
    /// has a request in flight whose answer wakes the loop (counting it made
    /// the loop spin while a hung broker held a request until its timeout).
    fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self.next_expiry.min(self.next_refresh);
        let linger = if self.flushing { Duration::ZERO } else { self.s.linger };
        for b in self.brokers.values() {
            match b.retry_at {
                Some(at) if at > now => wake = wake.min(at),
                _ => {
                    if let (false, Some(since)) = (b.busy, b.ready_since) {
                        wake = wake.min(since + linger);
                    }
                }
            }
        }
        if let Some(at) = self.control_retry_at.filter(|at| *at > now) {
            wake = wake.min(at);
        }
        wake.max(now)
    }

    fn report(&self, d: Delivery) {
        self.shared.in_flight.fetch_sub(1, Relaxed);
        // The receiver is gone only when the bridge is exiting.
        let _ = self.reports.send(d);
    }

    fn problem(&self, e: &ConnError) {
        self.errors.report(e.diagnosis());
    }

    fn enqueue(&mut self, p: Box<Pending>) {
        let size = batch::record_size(&p.out);
        if size > self.s.batch_bytes {
            self.report(Delivery::Failed(p, error(C::MessageSizeTooLarge)));
            return;
        }
        let Some(topic) = self.topics.get(p.out.topic.as_str()) else {
            let name: Arc<str> = Arc::from(p.out.topic.as_str());
            self.wanted.insert(name.clone());
            self.waiting.entry(name).or_default().push_back(p);
            return;
        };
        let n = topic.parts.len();
        let rng = &mut self.rng;
        let i = batch::partition_for(p.out.key.as_deref(), n, || rand::Rng::gen::<usize>(rng));
        let idx = topic.parts[i];
        let leader = topic.leaders[i];
        self.parts[idx].queue.push_back(p);
        self.make_ready(idx, leader, size);
    }

    /// Put a partition with work on its leader's ready list.
    fn make_ready(&mut self, idx: usize, leader: i32, size: usize) {
        let part = &mut self.parts[idx];
        if let Some(b) = self.brokers.get_mut(&leader) {
            b.ready_bytes += size;
            if !part.queued && !part.busy {
                part.queued = true;
                b.ready.push_back(idx);
                b.ready_since.get_or_insert(self.now);
            }
        }
    }

    /// A partition's number is its place in its topic's `parts` and `leaders`.
    fn leader_of(&self, idx: usize) -> Option<i32> {
        let part = &self.parts[idx];
        let topic = self.topics.get(&part.topic)?;
        topic.leaders.get(usize::try_from(part.partition).ok()?).copied().filter(|&l| l >= 0)
    }

    /// Fail what waited longer than `delivery_timeout` without being sent.
    fn expire(&mut self, now: Instant) {
        let limit = self.s.delivery_timeout;
        let old = |p: &Pending| now.into_std().saturating_duration_since(p.received_at) >= limit;
        let mut expired = Vec::new();
        for q in self.waiting.values_mut() {
            while q.front().is_some_and(|p| old(p)) {
                expired.extend(q.pop_front());
            }
        }
        self.waiting.retain(|_, q| !q.is_empty());
        for part in &mut self.parts {
            while part.queue.front().is_some_and(|p| old(p)) {
                expired.extend(part.queue.pop_front());
            }
        }
        for p in expired {
            let code = if self.topics.contains_key(p.out.topic.as_str()) {
                C::MessageTimedOut
            } else {
                C::UnknownTopicOrPartition
            };
            self.report(Delivery::Failed(p, error(code)));
        }
    }

    fn dispatch(&mut self, now: Instant) {
        self.dispatch_control(now);
        if self.producer.is_none() {
            return;
        }
        let linger = if self.flushing { Duration::ZERO } else { self.s.linger };
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        due.extend(
            self.brokers
                .iter()
                .filter(|(_, b)| {
                    !b.busy
                        && b.retry_at.is_none_or(|at| at <= now)
                        && b.ready_since
                            .is_some_and(|since| since + linger <= now || b.ready_bytes >= self.s.batch_bytes)
                })
                .map(|(&n, _)| n),
        );
        for &node in &due {
            self.send_to(node);
        }
        self.due = due;
    }

    fn dispatch_control(&mut self, now: Instant) {
        if self.control.is_none() || self.control_retry_at.is_some_and(|at| at > now) {
            return;
        }
        self.control_retry_at = None;
        if self.producer.is_none() {
            let Some(mut control) = self.control.take() else { return };
            self.work.push(Box::pin(async move {
                let result = control
                    .call(
                        |c| protocol::init_producer_id_request(c.client_id(), c.versions.init_producer_id),
                        |b, v| protocol::init_producer_id_response(b, v.init_producer_id),
                    )
                    .await;
                Done::ProducerId { control, result }
            }));
        } else if !self.wanted.is_empty() {
            let Some(mut control) = self.control.take() else { return };
            let asked: Vec<Arc<str>> = {
                let mut v: Vec<Arc<str>> = self.wanted.iter().take(METADATA_CHUNK).cloned().collect();
                v.sort_unstable();
                v
            };
            for t in &asked {
                self.wanted.remove(t);
            }
            let auto_create = self.s.auto_create;
            self.work.push(Box::pin(async move {
                let names: Vec<&str> = asked.iter().map(|t| &**t).collect();
                let result = control
                    .call(
                        |c| protocol::metadata_request(c.client_id(), &names, auto_create),
                        |b, _| protocol::metadata_response(b),
                    )
                    .await;
                Done::Metadata { control, result, asked }
            }));
        }
    }

    /// One produce request to `node` with a batch for each ready partition.
    fn send_to(&mut self, node: i32) {
        let Some((pid, epoch)) = self.producer else { return };
        let Some(b) = self.brokers.get_mut(&node) else { return };
        let mut ready = std::mem::take(&mut b.ready);
        b.ready_since = None;
        b.ready_bytes = 0;
        let mut chosen: Vec<Sent> = Vec::new();
        let mut total = 0usize;
        while let Some(idx) = ready.pop_front() {
            self.parts[idx].queued = false;
            if self.parts[idx].busy || !self.parts[idx].has_work() || self.leader_of(idx) != Some(node) {
                continue;
            }
            if total >= self.s.request_bytes {
                // Next request: back on the list.
                self.parts[idx].queued = true;
                if let Some(b) = self.brokers.get_mut(&node) {
                    b.ready.push_back(idx);
                    b.ready_since.get_or_insert(self.now);
                }
                continue;
            }
            let part = &mut self.parts[idx];
            let (records, seq) = if !part.resend.is_empty() {
                (std::mem::take(&mut part.resend), part.resend_seq.take().unwrap_or(part.next_seq))
            } else if let Some(p) = part.solo.pop_front() {
                (vec![p], part.next_seq)
            } else {
                let mut records = Vec::new();
                let mut bytes = 0;
                while let Some(p) = part.queue.front() {
                    let size = batch::record_size(&p.out);
                    if !records.is_empty() && bytes + size > self.s.batch_bytes {
                        break;
                    }
                    bytes += size;
                    records.extend(part.queue.pop_front());
                }
                (records, part.next_seq)
            };
            part.busy = true;
            total += records.iter().map(|p| batch::record_size(&p.out)).sum::<usize>();
            chosen.push(Sent { part: idx, records, seq, producer: (pid, epoch) });
        }
        if chosen.is_empty() {
            return;
        }
        // Topics together, as the request groups partitions under their topic.
        chosen.sort_by(|a, b| self.parts[a.part].topic.cmp(&self.parts[b.part].topic));
        let Some(b) = self.brokers.get_mut(&node) else { return };
        let conn = b.conn.take();
        let (host, port) = (b.host.clone(), b.port);
        b.busy = true;
        let request = self.encode(&chosen, pid, epoch);
        self.in_flight.insert(node, chosen);
        let (tls, client_id, timeout) = (self.s.tls.clone(), self.s.client_id.clone(), self.s.request_timeout);
        self.work.push(Box::pin(async move {
            let mut conn = match open_or(conn, host, port, tls, client_id, timeout).await {
                Ok(c) => c,
                Err(e) => return Done::Produce { node, conn: None, result: Err(e) },
            };
            let mut request = match request {
                Ok(r) => r,
                Err(e) => return Done::Produce { node, conn: Some(conn), result: Err(e) },
            };
            let version = conn.versions.produce;
            protocol::set_version(&mut request, version);
            let result = match conn.call(&mut request).await {
                Ok(body) => protocol::produce_response(&body, version).map_err(|e| conn.malformed(e)),
                Err(e) => Err(e),
            };
            let conn = result.is_ok().then_some(conn);
            Done::Produce { node, conn, result }
        }));
    }

    /// The produce request for `chosen` (the version is set once the
    /// connection it goes out on has agreed one, the correlation id as it goes out).
    fn encode(&mut self, chosen: &[Sent], pid: i64, epoch: i16) -> Result<BytesMut, ConnError> {
        let size: usize = chosen.iter().flat_map(|s| s.records.iter()).map(|p| batch::record_size(&p.out)).sum();
        let mut req = protocol::Request::new(protocol::API_PRODUCE, 0, &self.s.client_id, size + 64);
        req.null_string();
        req.i16(-1);
        // The broker gives up before we do, so its answer (a timeout) arrives.
        let broker_timeout = self.s.request_timeout.saturating_sub(self.s.request_timeout / 6);
        req.i32(i32::try_from(broker_timeout.as_millis()).unwrap_or(i32::MAX));
        let mut groups: Vec<(&str, std::ops::Range<usize>)> = Vec::new();
        for (i, s) in chosen.iter().enumerate() {
            let t = &*self.parts[s.part].topic;
            match groups.last_mut() {
                Some((name, r)) if *name == t => r.end = i + 1,
                _ => groups.push((t, i..i + 1)),
            }
        }
        req.len(groups.len());
        for (name, range) in groups {
            req.string(name);
            req.len(range.len());
            for s in &chosen[range] {
                req.i32(self.parts[s.part].partition);
                let producer = batch::Producer { id: pid, epoch, base_sequence: s.seq };
                let enc = &mut self.encoder;
                let compression = self.s.compression;
                req.nested(|buf: &mut BytesMut| {
                    enc.encode(buf, s.records.iter().map(|p| &p.out), compression, producer)
                })
                .map_err(|e| ConnError::Io { addr: "(encoding)".into(), source: e })?;
            }
        }
        Ok(req.finish())
    }

    fn complete(&mut self, done: Done) {
        match done {
            Done::Produce { node, conn, result } => self.produced(node, conn, result),
            Done::Metadata { control, result, asked } => {
                self.control = Some(control);
                match result {
                    Ok(m) => {
                        self.control_backoff = BACKOFF_MIN;
                        self.apply_metadata(m, &asked);
                    }
                    Err(e) => {
                        self.problem(&e);
                        self.wanted.extend(asked);
                        self.control_failed();
                    }
                }
            }
            Done::ProducerId { control, result } => {
                self.control = Some(control);
                match result {
                    Ok((0, id, epoch)) => {
                        self.control_backoff = BACKOFF_MIN;
                        self.producer = Some((id, epoch));
                        for part in &mut self.parts {
                            part.next_seq = 0;
                            part.resend_seq = None;
                        }
                        self.errors.clear();
                    }
                    Ok((code, _, _)) => {
                        self.errors.report(Diagnosis {
                            step: Step::Other,
                            detail: format!("the broker refused a producer id (error code {code})"),
                        });
                        self.control_failed();
                    }
                    Err(e) => {
                        self.problem(&e);
                        self.control_failed();
                    }
                }
            }
        }
    }

    fn control_failed(&mut self) {
        self.control_retry_at = Some(Instant::now() + self.control_backoff);
        self.control_backoff = (self.control_backoff * 2).min(BACKOFF_MAX);
    }

    fn apply_metadata(&mut self, m: protocol::Metadata, asked: &[Arc<str>]) {
        for b in m.brokers {
            let port = u16::try_from(b.port).unwrap_or(0);
            let entry = self.brokers.entry(b.node_id).or_insert_with(|| Broker {
                host: b.host.clone(),
                port,
                conn: None,
                busy: false,
                ready: VecDeque::new(),
                ready_since: None,
                ready_bytes: 0,
                retry_at: None,
                backoff: BACKOFF_MIN,
            });
            if entry.host != b.host || entry.port != port {
                entry.host = b.host;
                entry.port = port;
                entry.conn = None;
            }
        }
        let now = Instant::now();
        let mut answered: HashSet<Arc<str>> = HashSet::new();
        let mut learned = false;
        for t in m.topics {
            let Some(name) = asked.iter().find(|a| ***a == *t.name).cloned() else { continue };
            answered.insert(name.clone());
            let usable = t.error == 0 && !t.partitions.is_empty();
            if !usable {
                if t.error != 3 && t.error != 5 {
                    self.errors.report(Diagnosis {
                        step: Step::Other,
                        detail: format!("metadata of topic {name}: error code {}", t.error),
                    });
                }
                self.wanted.insert(name);
                continue;
            }
            let leaders: Vec<i32> =
                t.partitions.iter().map(|&(_, err, leader)| if err == 0 || err == 9 { leader } else { -1 }).collect();
            if leaders.iter().any(|&l| l < 0) {
                self.wanted.insert(name.clone());
            }
            learned |= !self.topics.contains_key(&name);
            let parts = match self.topics.remove(&name) {
                Some(mut old) => {
                    while old.parts.len() < t.partitions.len() {
                        old.parts.push(self.new_part(&name, old.parts.len()));
                    }
                    old.parts
                }
                None => (0..t.partitions.len()).map(|i| self.new_part(&name, i)).collect(),
            };
            self.topics.insert(name.clone(), Topic { parts: parts.clone(), leaders });
            for idx in parts {
                if self.parts[idx].has_work() && !self.parts[idx].busy {
                    self.parts[idx].queued = false;
                    if let Some(l) = self.leader_of(idx) {
                        self.make_ready(idx, l, 0);
                    }
                }
            }
            if let Some(q) = self.waiting.remove(&name) {
                for p in q {
                    self.enqueue(p);
                }
            }
        }
        for a in asked {
            if !answered.contains(a) {
                self.wanted.insert(a.clone());
            }
        }
        if !self.wanted.is_empty() {
            // Topics still being created or electing: ask again shortly.
            self.unknown_backoff = if learned { UNKNOWN_MIN } else { (self.unknown_backoff * 2).min(UNKNOWN_MAX) };
            self.control_retry_at = Some(now + self.unknown_backoff);
        }
    }

    fn new_part(&mut self, topic: &Arc<str>, partition: usize) -> usize {
        self.parts.push(Part {
            topic: topic.clone(),
            partition: i32::try_from(partition).unwrap_or(i32::MAX),
            queue: VecDeque::new(),
            resend: Vec::new(),
            resend_seq: None,
            solo: VecDeque::new(),
            next_seq: 0,
            busy: false,
            queued: false,
        });
        self.parts.len() - 1
    }

    fn produced(&mut self, node: i32, conn: Option<Conn>, result: Result<Vec<PartitionResult>, ConnError>) {
        let sent = self.in_flight.remove(&node).unwrap_or_default();
        if let Some(b) = self.brokers.get_mut(&node) {
            b.busy = false;
            b.conn = conn;
        }
        let results = match result {
            Ok(r) => {
                if let Some(b) = self.brokers.get_mut(&node) {
                    b.backoff = BACKOFF_MIN;
                    b.retry_at = None;
                }
                r
            }
            Err(e) => {
                self.problem(&e);
                if let Some(b) = self.brokers.get_mut(&node) {
                    b.retry_at = Some(Instant::now() + b.backoff);
                    b.backoff = (b.backoff * 2).min(BACKOFF_MAX);
                }
                Vec::new()
            }
        };
        let mut new_id = false;
        let codes: HashMap<(&str, i32), i16> =
            results.iter().map(|r| ((r.topic.as_str(), r.partition), r.error)).collect();
        for s in sent {
            let part = &self.parts[s.part];
            let code = codes.get(&(&*part.topic, part.partition)).copied().unwrap_or(-1);
            let n = s.records.len();
            let outcome = if results.is_empty() { Outcome::Again } else { outcome(code, n) };
            let part = &mut self.parts[s.part];
            part.busy = false;
            match outcome {
                Outcome::Written => {
                    // Under a producer id since replaced, the sequence
                    // started over: this batch does not move it.
                    if self.producer == Some(s.producer) {
                        part.next_seq = part.next_seq.wrapping_add(i32::try_from(n).unwrap_or(0)) & i32::MAX;
                    }
                    for p in s.records {
                        self.report(Delivery::Delivered(p));
                    }
                }
                Outcome::Again | Outcome::NewProducerId => {
                    // Nothing else of this partition went out meanwhile (one
                    // batch in flight), so `resend` is empty. Its number
                    // holds only under the id it was written with.
                    part.resend = s.records;
                    part.resend_seq = (self.producer == Some(s.producer)).then_some(s.seq);
                    if outcome == Outcome::NewProducerId {
                        new_id = true;
                    } else {
                        let topic = part.topic.clone();
                        self.wanted.insert(topic);
                    }
                }
                Outcome::Split => {
                    for p in s.records.into_iter().rev() {
                        part.solo.push_front(p);
                    }
                }
                Outcome::Refused(code) => {
                    for p in s.records {
                        self.report(Delivery::Failed(p, error(code)));
                    }
                }
            }
            if self.parts[s.part].has_work() {
                if let Some(l) = self.leader_of(s.part) {
                    self.make_ready(s.part, l, 0);
                }
            }
        }
        if new_id {
            self.producer = None;
        }
    }
}

/// `conn`, or a new connection.
async fn open_or(
    conn: Option<Conn>,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: Arc<str>,
    timeout: Duration,
) -> Result<Conn, ConnError> {
    match conn {
        Some(c) => Ok(c),
        None => Conn::open(&host, port, tls.as_ref(), client_id, timeout).await,
    }
}

#[cfg(test)]
mod wake_tests {
    use super::*;

    fn engine() -> Engine {
        let settings = Settings {
            bootstrap: vec![("127.0.0.1".to_string(), 9)],
            tls: None,
            client_id: Arc::from("test"),
            compression: Compression::None,
            linger: Duration::from_millis(10),
            delivery_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            batch_bytes: 1_000_000,
            request_bytes: 4 << 20,
            metadata_max_age: Duration::from_secs(300),
            auto_create: false,
        };
        let (_tx, rx) = mpsc::channel(1);
        let (rtx, _reports) = mpsc::unbounded_channel();
        Engine::new(settings, rx, rtx, Arc::new(Shared::default()), Arc::new(ErrorReporter::new("test")))
    }

    fn broker(busy: bool, retry_at: Option<Instant>) -> Broker {
        Broker {
            host: "h".into(),
            port: 1,
            conn: None,
            busy,
            ready: VecDeque::new(),
            ready_since: None,
            ready_bytes: 0,
            retry_at,
            backoff: BACKOFF_MIN,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_after_a_retry_time_passed_does_not_make_the_loop_spin() {
        let mut e = engine();
        let start = Instant::now();
        e.next_expiry = start + Duration::from_secs(1);
        e.next_refresh = start + Duration::from_secs(300);
        e.brokers.insert(1, broker(true, Some(start)));
        e.control = None; // a request in flight
        e.control_retry_at = Some(start);
        tokio::time::advance(Duration::from_millis(50)).await;
        let now = Instant::now();
        assert_eq!(e.next_wake(now), start + Duration::from_secs(1), "the next expiry check, not now");
        e.brokers.insert(2, broker(false, Some(now + Duration::from_millis(200))));
        assert_eq!(e.next_wake(now), now + Duration::from_millis(200), "a retry still ahead");
    }
}
