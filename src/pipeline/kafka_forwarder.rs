//! Route → Kafka, for `iotpipe bridge`: hands each message to the producer,
//! completes it when Kafka acknowledges it (or its dead letter), sends
//! failed deliveries again after a backoff, and asks for missing topics
//! without waiting for them. Nothing on this loop waits on anything but the
//! producer's own queue, so acks, delivery reports and shutdown are never
//! held up by a topic being created.

use super::journal_stage::Completion;
use super::supervisor::Stop;
use super::PipelineError;
use crate::kafka::{ClientError, Delivery, Failure, Pending, Producer, TopicRequests};
use crate::mqtt::Received;
use crate::record::{headers, DeadLetterReason};
use crate::retry::{Jitter, RetryPolicy};
use crate::route::Router;
use crate::telemetry::MessageMetrics;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Waits before a failed delivery is sent again: from 100 ms, the ceiling
/// doubling with the record's attempts up to 5 s, jittered ([`crate::retry`]).
const DELIVERY_RETRY: RetryPolicy = RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

/// Shortest time between two recreations of the producer.
const RECREATE_PAUSE: Duration = Duration::from_secs(5);

/// Shortest time given to outstanding deliveries once told to stop.
const MIN_FLUSH: Duration = Duration::from_millis(500);

pub struct Forwarder {
    pub router: Router,
    pub producer: Producer,
    /// Delivery reports from the producer's callback.
    pub reports: mpsc::UnboundedReceiver<Delivery>,
    /// Where delivered messages are reported (MQTT acks or the journal).
    pub completion: Arc<dyn Completion>,
    pub metrics: Arc<MessageMetrics>,
    /// Missing topics are asked for here, never waited for.
    pub topics: TopicRequests,
    /// How long outstanding deliveries may take once told to stop.
    pub flush_within: Duration,
    /// When the producer was last recreated.
    pub recreated_at: Option<Instant>,
    /// Sequence numbers delivered by the reports being handled, completed
    /// together (reused).
    pub delivered: Vec<u64>,
}

/// Most delivery reports handled in one turn of the loop: the reports of a
/// produce response arrive together, and completing them together takes the
/// completion's lock once instead of once per message.
const REPORTS_PER_TURN: usize = 512;

/// Most messages routed and handed to the producer in one turn of the loop:
/// what has queued up goes over in one step (one clock read, one hand-over),
/// while delivery reports wait at most this many messages' routing. The
/// journal feed's runs are as long.
const MESSAGES_PER_TURN: usize = super::journal_stage::FEED_RUN;

/// Where the forwarder takes its messages from.
pub enum Upstream {
    /// The MQTT session's channel, a message at a time (direct mode).
    Session(mpsc::Receiver<Received>),
    /// The journal feed's channel, a run of messages at a time (journal mode;
    /// each run at most [`MESSAGES_PER_TURN`]).
    Journal(mpsc::Receiver<Vec<Received>>),
}

impl Upstream {
    /// Wait for messages, then move what is there (up to `limit` from the
    /// session; one run from the journal) into `buf`; 0 once closed and
    /// drained. Cancel-safe: nothing is taken unless it returns.
    async fn recv_into(&mut self, buf: &mut Vec<Received>, limit: usize) -> usize {
        match self {
            Self::Session(rx) => rx.recv_many(buf, limit).await,
            Self::Journal(rx) => match rx.recv().await {
                Some(mut run) => {
                    let n = run.len();
                    buf.append(&mut run);
                    n
                }
                None => 0,
            },
        }
    }
}

/// Failed deliveries waiting for their backoff, soonest first. Holds at most
/// what is in flight (bounded by `mqtt.max_in_flight` or the journal window).
#[derive(Default)]
struct Retries {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    parked: std::collections::HashMap<u64, Box<Pending>>,
    next_id: u64,
    /// Spreads the retries of a burst of failures (all records of an
    /// outage fail together) and of different bridges.
    jitter: Jitter,
}

impl Retries {
    fn push(&mut self, due: Instant, p: Box<Pending>) {
        let id = self.next_id;
        self.next_id += 1;
        self.heap.push(Reverse((due, id)));
        self.parked.insert(id, p);
    }

    fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((due, _))| *due)
    }

    fn pop_due(&mut self, now: Instant) -> Option<Box<Pending>> {
        match self.heap.peek() {
            Some(Reverse((due, _))) if *due <= now => {
                let Reverse((_, id)) = self.heap.pop()?;
                self.parked.remove(&id)
            }
            _ => None,
        }
    }
}

impl Forwarder {
    /// Forward `inbound` until `stop`, then give outstanding deliveries up to
    /// `flush_within`; what Kafka has not acknowledged by then stays unacked
    /// (with the broker, or in the journal) and is sent again next time.
    pub async fn run(mut self, mut inbound: Upstream, mut stop: Stop) -> Result<(), PipelineError> {
        let mut retries = Retries::default();
        let mut upstream_open = true;
        // Waited on for the whole run, not afresh per message.
        let stopped = stop.until_set();
        tokio::pin!(stopped);
        // What one turn takes from `inbound`: taken together, one release of
        // the channel's permits for all (a `try_recv` per message released
        // its own, under the channel's lock), or one run from the journal.
        let mut received = Vec::with_capacity(MESSAGES_PER_TURN);
        loop {
            let retry_at = retries.next_due();
            tokio::select! {
                biased;
                Some(report) = self.reports.recv() => self.handle_reports(report, &mut retries),
                () = sleep_until(retry_at), if retry_at.is_some() => {
                    while let Some(p) = retries.pop_due(Instant::now()) {
                        self.producer.send(p).await;
                    }
                }
                () = &mut stopped => break,
                n = inbound.recv_into(&mut received, MESSAGES_PER_TURN), if upstream_open => {
                    if n == 0 {
                        upstream_open = false; // closed, and nothing left in it
                    } else {
                        self.forward(&mut received).await;
                    }
                }
            }
        }
        self.flush().await;
        Ok(())
    }

    /// Route what one turn received (up to [`MESSAGES_PER_TURN`], in order)
    /// and hand it to the producer together, leaving `received` empty.
    async fn forward(&mut self, received: &mut Vec<Received>) {
        let now = Instant::now();
        if received.len() == 1 {
            if let Some(r) = received.pop() {
                let one = self.route(r, now);
                self.producer.send(one).await;
            }
            return;
        }
        let batch: Vec<_> = received.drain(..).map(|r| self.route(r, now)).collect();
        self.producer.send_many(batch).await;
    }

    fn route(&mut self, r: Received, now: Instant) -> Box<Pending> {
        let out = self.router.route(&r.msg);
        if let Some(reason) = out.reason {
            let detail = out.headers.get(headers::ERROR).unwrap_or("");
            self.metrics.on_dead_letter_routed(reason, &r.msg.topic, detail);
        }
        self.topics.request(&out.topic);
        Box::new(Pending { seq: r.seq, inbound: r.msg, out, received_at: now, attempts: 0 })
    }

    /// Keep completing deliveries until the producer holds none or the time is up.
    async fn flush(&mut self) {
        let until = Instant::now() + self.flush_within.max(MIN_FLUSH);
        let mut discard = Retries::default();
        while self.producer.in_flight() > 0 && Instant::now() < until {
            tokio::select! {
                Some(report) = self.reports.recv() => self.handle_reports(report, &mut discard),
                () = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
        let left = self.producer.in_flight();
        if left > 0 || !discard.parked.is_empty() {
            tracing::warn!(
                unacknowledged = left,
                failed = discard.parked.len(),
                "Stopping with deliveries Kafka has not acknowledged; they stay unacked and are sent again next time."
            );
        }
    }

    /// Replace a stuck producer, at most once per `RECREATE_PAUSE` (every
    /// record it held fails with the same error; one new producer is enough).
    /// What the old one still held comes back as failed deliveries and is
    /// sent again.
    fn recreate_producer(&mut self, error: &ClientError) {
        if self.recreated_at.is_some_and(|at| at.elapsed() < RECREATE_PAUSE) {
            return;
        }
        self.recreated_at = Some(Instant::now());
        let reason = self.producer.fatal_error().unwrap_or_else(|| error.to_string());
        tracing::error!(error = reason, "Kafka producer is stuck; recreating it.");
        self.metrics.kafka_producer_restarts.fetch_add(1, Relaxed);
        if let Err(e) = self.producer.recreate() {
            tracing::error!(%e, "Could not recreate the Kafka producer.");
        }
    }

    /// `first` and the reports already queued behind it (up to
    /// [`REPORTS_PER_TURN`]); the delivered ones completed together.
    fn handle_reports(&mut self, first: Delivery, retries: &mut Retries) {
        let mut delivered = std::mem::take(&mut self.delivered);
        // One clock read for the turn: the reports arrived together.
        let now = Instant::now();
        self.handle_report(first, now, retries, &mut delivered);
        for _ in 1..REPORTS_PER_TURN {
            match self.reports.try_recv() {
                Ok(report) => self.handle_report(report, now, retries, &mut delivered),
                Err(_) => break,
            }
        }
        if !delivered.is_empty() {
            self.metrics.progressed();
            self.completion.complete_many(&delivered);
            delivered.clear();
        }
        self.delivered = delivered;
    }

    /// One report: a delivery is counted and its sequence number added to
    /// `delivered` (the caller completes it); a failure is dead-lettered or
    /// retried.
    fn handle_report(&mut self, report: Delivery, now: Instant, retries: &mut Retries, delivered: &mut Vec<u64>) {
        match report {
            Delivery::Delivered(p) => {
                let latency = now.saturating_duration_since(p.received_at);
                self.metrics.on_delivered(p.out.reason, p.out.tenant_id(), p.out.project_id(), latency);
                delivered.push(p.seq);
            }
            Delivery::Failed(mut p, error) => match error.failure() {
                Failure::Reject if p.out.reason.is_none() => {
                    tracing::warn!(topic = p.out.topic, %error, "Kafka rejected the message; dead-lettering it.");
                    p.out = self.router.dead_letter(&p.inbound, DeadLetterReason::KafkaRejected, error.to_string());
                    retries.push(now, p);
                }
                kind => {
                    if kind == Failure::Fatal {
                        self.recreate_producer(&error);
                    } else if kind == Failure::Reject {
                        tracing::error!(topic = p.out.topic, %error, "Kafka rejected a dead letter; retrying it (it is never dropped).");
                    }
                    self.metrics.on_kafka_retry(&p.out.topic, &error.to_string());
                    let backoff = DELIVERY_RETRY.delay(p.attempts, &mut retries.jitter);
                    p.attempts = p.attempts.saturating_add(1);
                    retries.push(now + backoff, p);
                }
            },
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Inbound, Outbound, RecordId};
    use bytes::Bytes;

    fn pending(seq: u64) -> Box<Pending> {
        Box::new(Pending {
            seq,
            inbound: Inbound { topic: "t".into(), payload: Bytes::new(), received_ms: 0, redelivered: false },
            out: Outbound {
                id: RecordId::derive(None, 0, "t", b""),
                topic: "t".into(),
                key: None,
                value: Bytes::new(),
                headers: Default::default(),
                timestamp_ms: 0,
                reason: None,
            },
            received_at: Instant::now(),
            attempts: 0,
        })
    }

    #[test]
    fn retries_come_back_soonest_first_and_only_when_due() {
        let mut r = Retries::default();
        let now = Instant::now();
        r.push(now + Duration::from_millis(200), pending(1));
        r.push(now + Duration::from_millis(100), pending(2));
        r.push(now, pending(3));
        assert_eq!(r.pop_due(now).map(|p| p.seq), Some(3));
        assert!(r.pop_due(now).is_none(), "the others are not due yet");
        assert_eq!(r.next_due(), Some(now + Duration::from_millis(100)));
        let later = now + Duration::from_secs(1);
        assert_eq!(r.pop_due(later).map(|p| p.seq), Some(2));
        assert_eq!(r.pop_due(later).map(|p| p.seq), Some(1));
        assert!(r.parked.is_empty());
    }
}
