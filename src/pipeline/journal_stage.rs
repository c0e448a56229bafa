//! The journal between MQTT and what follows it (`[journal]` in a bridge
//! config, always in `iotpipe run`).
//!
//! - [`recover`]: open the journal on a blocking thread while the HTTP
//!   endpoints answer (`/readyz`: "recovering journal");
//! - [`ingest`]: MQTT → journal, in arrival order; a message is acked to the
//!   broker once the fsync that covers it is done.
//! - [`feed`]: journal → the forwarder (Kafka), from the last delivered
//!   record on, holding at most a [`Window`] of records and bytes between
//!   the journal and delivery — however large the backlog on disk, memory
//!   stays bounded.
//! - [`JournalAcks`]: deliveries complete out of order; the journal's
//!   delivered position only moves over a completed prefix, and the window
//!   is freed as it moves.

use super::handoff::{Handoff, Take};
use super::supervisor::Stop;
use crate::health::Health;
use crate::journal::{decode_inbound_shared, Appender, Batch, HurryAt, Journal, JournalConfig, JournalError, Reader};
use crate::mqtt::{AckHandle, Received, Sequencer};
use crate::record::Inbound;
use crate::telemetry::MessageMetrics;
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};

/// Where a delivered message is reported: the MQTT acks (direct mode) or
/// the journal (journal mode).
pub trait Completion: Send + Sync {
    /// Messages delivered together (the reports of one produce response):
    /// one lock and one release for all of them.
    fn complete_many(&self, seqs: &[u64]);
}

impl Completion for AckHandle {
    fn complete_many(&self, seqs: &[u64]) {
        AckHandle::complete_many(self, seqs);
    }
}

/// How long to wait before trying again to append to a full journal.
const FULL_RETRY: Duration = Duration::from_millis(50);

/// Most messages appended as one batch (also bounded by `journal.max_batch`
/// bytes, and by what MQTT has in flight).
const MAX_BATCH_RECORDS: usize = 1024;

/// The handoff between the ingest and the feed of a bridge (`handoff.rs`):
/// two full ingest batches, and at most `journal.max_batch` bytes (what one
/// group commit writes at most).
pub fn handoff(cfg: &JournalConfig) -> Arc<Handoff> {
    let max_bytes = usize::try_from(cfg.max_batch.bytes()).unwrap_or(usize::MAX);
    Arc::new(Handoff::new(2 * MAX_BATCH_RECORDS, max_bytes))
}

/// Messages appended together, with their MQTT sequence numbers (and the
/// messages themselves, each with its size in the journal, when they are
/// handed to the feed after their commit).
struct Appending {
    seqs: Vec<u64>,
    batch: Batch,
    msgs: Vec<(Inbound, usize)>,
}

impl Appending {
    /// The first half stays, the second half is returned.
    fn split(&mut self) -> Appending {
        let at = self.seqs.len() / 2;
        let msgs = if self.msgs.is_empty() { Vec::new() } else { self.msgs.split_off(at) };
        Appending { seqs: self.seqs.split_off(at), batch: self.batch.split_off(at), msgs }
    }
}

/// MQTT → journal. Ends when the session ends and every append is settled;
/// an error means the journal failed (the process exits: what was not acked
/// is redelivered by the broker).
///
/// Whatever has arrived is appended as one batch (one request to the
/// journal's writer, one completion), so the cost per message stays low
/// while the writer's group commit collects batches during each fsync.
/// With a `handoff`, each batch's messages are offered to the feed once
/// committed, in journal order. Once the messages waiting for a commit take
/// half of the MQTT window, the writer is asked to commit without waiting
/// out its commit delay: the broker sends no more until they are acked.
pub async fn ingest(
    mut rx: mpsc::Receiver<Received>,
    appender: Appender,
    acks: AckHandle,
    health: Arc<Health>,
    handoff: Option<Arc<Handoff>>,
) -> Result<(), JournalError> {
    let max_bytes = appender.max_batch_bytes();
    let keep = handoff.is_some();
    // Batches settle in the order they were handed to the writer (its
    // commits are in that order): the handoff gets them in journal order.
    let mut pending: Settling = FuturesOrdered::new();
    // Batches refused for lack of space, oldest first: appended before anything newer.
    let mut waiting: VecDeque<Appending> = VecDeque::new();
    let mut closed = false;
    // What one turn takes from `rx`, taken together (one release of the
    // channel's permits for all, not one per message under its lock).
    let mut received = Vec::new();
    let mut hurry = HurryAt::new(acks.window());
    loop {
        if !waiting.is_empty() {
            hurry.set_window(acks.window());
            match submit(&appender, &mut waiting, &mut pending, &mut hurry)? {
                Some(error) => {
                    if !health.set_journal_full(true) {
                        warn_full(&error);
                    }
                }
                None => {
                    health.set_journal_full(false);
                }
            }
        }
        if closed && waiting.is_empty() && pending.is_empty() {
            return Ok(());
        }
        tokio::select! {
            biased;
            Some((seqs, msgs, res)) = pending.next(), if !pending.is_empty() => {
                let first = res?;
                hurry.settled(seqs.len());
                acks.complete_many(&seqs);
                if let Some(h) = &handoff {
                    h.offer(first, msgs);
                }
            }
            () = tokio::time::sleep(FULL_RETRY), if !waiting.is_empty() => {}
            n = rx.recv_many(&mut received, MAX_BATCH_RECORDS), if waiting.is_empty() && !closed => {
                if n == 0 {
                    closed = true; // closed, and nothing left in it
                } else {
                    batch_up(&mut received, max_bytes, keep, &mut waiting);
                }
            }
        }
    }
}

/// Appends on their way to the journal: each resolves, after the fsync,
/// with its messages' MQTT sequence numbers, the messages if kept, and its
/// first journal sequence number.
type Settling =
    FuturesOrdered<Pin<Box<dyn Future<Output = (Vec<u64>, Vec<(Inbound, usize)>, Result<u64, JournalError>)> + Send>>>;

/// Hand the waiting batches to the journal, oldest first, into `pending`.
/// A batch refused for lack of space is halved until a part fits; what does
/// not fit stays waiting, in order. Returns the space error that stopped
/// it; any other error is the journal's failure. Asks the writer to hurry
/// when `hurry` says so.
fn submit(
    appender: &Appender,
    waiting: &mut VecDeque<Appending>,
    pending: &mut Settling,
    hurry: &mut HurryAt,
) -> Result<Option<JournalError>, JournalError> {
    while let Some(a) = waiting.pop_front() {
        match appender.enqueue_batch(a.batch) {
            Ok(f) => {
                if hurry.submitted(a.seqs.len()) {
                    appender.hurry();
                }
                let (seqs, msgs) = (a.seqs, a.msgs);
                pending.push_back(Box::pin(async move { (seqs, msgs, f.await) }));
            }
            Err((error @ (JournalError::Full { .. } | JournalError::NoSpace { .. }), batch)) => {
                let mut a = Appending { seqs: a.seqs, batch, msgs: a.msgs };
                if a.seqs.len() > 1 {
                    let rest = a.split();
                    waiting.push_front(rest);
                    waiting.push_front(a);
                    continue;
                }
                waiting.push_front(a);
                return Ok(Some(error));
            }
            Err((error, _)) => return Err(error),
        }
    }
    Ok(None)
}

/// `received` (emptied) encoded for the journal as batches of up to
/// `max_bytes` of payload (a batch closes once it holds that much) and
/// [`MAX_BATCH_RECORDS`] messages, in order, onto `waiting` (the messages
/// kept beside when `keep`).
fn batch_up(received: &mut Vec<Received>, max_bytes: usize, keep: bool, waiting: &mut VecDeque<Appending>) {
    let mut left = received.len();
    let mut current: Option<Appending> = None;
    for r in received.drain(..) {
        let a = current.get_or_insert_with(|| {
            let records = left.min(MAX_BATCH_RECORDS);
            // Room for `records` messages like this one, so the buffer seldom grows.
            let each = crate::journal::encoded_len(&r.msg);
            Appending {
                seqs: Vec::with_capacity(records),
                batch: Batch::with_capacity(records, each.saturating_mul(records).min(max_bytes.saturating_add(each))),
                msgs: Vec::with_capacity(if keep { records } else { 0 }),
            }
        });
        left -= 1;
        a.seqs.push(r.seq);
        let before = a.batch.payload_bytes();
        a.batch.push_with(|out| crate::journal::encode_inbound_into(&r.msg, out));
        if keep {
            a.msgs.push((r.msg, a.batch.payload_bytes() - before));
        }
        if a.seqs.len() >= MAX_BATCH_RECORDS || a.batch.payload_bytes() >= max_bytes {
            waiting.extend(current.take());
        }
    }
    waiting.extend(current);
}

fn warn_full(error: &JournalError) {
    match error {
        JournalError::Full { used, max } => {
            tracing::warn!(used, max, "Journal full: not acking MQTT until the forwarder frees space.");
        }
        JournalError::NoSpace { path, available, reserve } => {
            tracing::warn!(
                path = %path.display(),
                available,
                reserve,
                "Journal's filesystem nearly full: not acking MQTT until space frees."
            );
        }
        _ => {}
    }
}

/// The most records and payload bytes read from the journal and not yet
/// delivered (`journal.forward_max_records`, `journal.forward_max_bytes`).
///
/// Only the feed admits records (one task); deliveries release them from
/// any thread, a completed prefix at a time.
pub struct Window {
    records: AtomicUsize,
    bytes: AtomicUsize,
    max_records: usize,
    max_bytes: usize,
    /// Woken when records are released.
    freed: Notify,
}

/// One record's share of the window, held until its delivery completes.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    bytes: u32,
}

impl Window {
    pub fn new(cfg: &JournalConfig) -> Self {
        let max_bytes = usize::try_from(cfg.forward_max_bytes.bytes()).unwrap_or(usize::MAX).min(u32::MAX as usize);
        Self {
            records: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_records: cfg.forward_max_records,
            max_bytes,
            freed: Notify::new(),
        }
    }

    /// (records, bytes) held now.
    pub fn in_use(&self) -> (usize, usize) {
        (self.records.load(Acquire), self.bytes.load(Acquire))
    }

    /// The share of a record of `len` bytes: a record larger than the
    /// whole window is admitted on its own.
    fn share(&self, len: usize) -> Held {
        Held { bytes: u32::try_from(len.clamp(1, self.max_bytes.max(1))).unwrap_or(u32::MAX) }
    }

    fn room_for_record(&self) -> bool {
        self.records.load(Acquire) < self.max_records
    }

    fn room_for_bytes(&self, share: Held) -> bool {
        self.bytes.load(Acquire).saturating_add(share.bytes as usize) <= self.max_bytes
    }

    /// Wait until `room` holds (only the admitting task waits).
    async fn wait_until(&self, room: impl Fn(&Self) -> bool) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if room(self) {
                return;
            }
            freed.await;
        }
    }

    /// Hold one record's share; call once there is room.
    fn hold(&self, share: Held) {
        self.records.fetch_add(1, AcqRel);
        self.bytes.fetch_add(share.bytes as usize, AcqRel);
    }

    /// Give back the shares of `records` records, `bytes` in all.
    fn release(&self, records: usize, bytes: usize) {
        if records == 0 {
            return;
        }
        self.records.fetch_sub(records, AcqRel);
        self.bytes.fetch_sub(bytes, AcqRel);
        self.freed.notify_one();
    }
}

/// Completes journal records in any order; acks the journal over the
/// completed prefix and frees their share of the window.
pub struct JournalAcks {
    journal: Arc<Journal>,
    window: Arc<Window>,
    state: Mutex<AckState>,
}

struct AckState {
    seq: Sequencer<(u64, Held)>,
    /// Reused for each completed prefix.
    ready: Vec<(u64, Held)>,
}

impl JournalAcks {
    pub fn new(journal: Arc<Journal>, window: Arc<Window>) -> Self {
        Self { journal, window, state: Mutex::new(AckState { seq: Sequencer::new(), ready: Vec::new() }) }
    }

    /// Register journal records `jseq`.. (in journal order), one per share
    /// in `held`, under one lock; returns the pipeline's sequence number of
    /// the first (the others follow it, one by one).
    fn register_run(&self, jseq: u64, held: &[Held]) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut first = None;
        for (i, &h) in held.iter().enumerate() {
            let seq = s.seq.push(0, Some((jseq + i as u64, h)));
            first.get_or_insert(seq);
        }
        first.unwrap_or_default()
    }
}

impl Completion for JournalAcks {
    fn complete_many(&self, seqs: &[u64]) {
        let (last, records, bytes) = {
            let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let s = &mut *guard;
            for &seq in seqs {
                s.seq.complete(seq);
            }
            s.seq.drain_ready(0, &mut s.ready);
            let last = s.ready.last().map(|(jseq, _)| *jseq);
            let bytes = s.ready.iter().map(|(_, h)| h.bytes as usize).sum::<usize>();
            let records = s.ready.len();
            s.ready.clear();
            (last, records, bytes)
        };
        if let Some(last) = last {
            if let Err(error) = self.journal.ack(last) {
                tracing::error!(%error, seq = last, "Could not record the journal's delivered position.");
            }
        }
        // The completed prefix's share of the window is free again.
        self.window.release(records, bytes);
    }
}

/// Records the feed passes on between two yields to the runtime.
const FEED_YIELD_EVERY: u32 = 256;

/// Most records the feed takes from the handoff at once (one lock), and
/// passes on to the forwarder at once (one message on the channel).
pub const FEED_RUN: usize = 64;

/// Pass on what the feed has gathered (`out`, emptied), as one run; false
/// when the forwarder is gone or the feed is told to stop meanwhile.
async fn pass_on(tx: &mpsc::Sender<Vec<Received>>, out: &mut Vec<Received>, stop: &mut Stop) -> bool {
    if out.is_empty() {
        return true;
    }
    let run = std::mem::replace(out, Vec::with_capacity(FEED_RUN));
    match tx.try_send(run) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(run)) => tokio::select! {
            sent = tx.send(run) => sent.is_ok(),
            () = stop.until_set() => false,
        },
    }
}

/// Journal → forwarder: every record from the delivered position on, with
/// the sequence number `acks` gave it, never more than `window` at a time.
/// Records the ingest has just committed come from `handoff` while the feed
/// keeps up, the others from the journal (see `handoff.rs`).
/// Ends when told to stop, or when the forwarder is gone; a read error ends
/// it with the error. Each step waits only when it cannot go on at once.
/// Records go to the forwarder in runs of up to [`FEED_RUN`], each run sent
/// before the feed waits for anything (the window the run holds is freed
/// only once the forwarder has it).
/// Counts, in `metrics`, the records taken from memory and read from the journal.
pub async fn feed(
    mut reader: Reader,
    handoff: Arc<Handoff>,
    acks: Arc<JournalAcks>,
    window: Arc<Window>,
    tx: mpsc::Sender<Vec<Received>>,
    metrics: Arc<MessageMetrics>,
    mut stop: Stop,
) -> Result<(), JournalError> {
    let mut since_yield = 0u32;
    // The record to pass on next, and whether it is taken from the handoff.
    let mut next = reader.position();
    let mut in_memory = false;
    // Records taken from the handoff together and not yet passed on, from
    // `next` on; registered with `acks` when taken (one lock for the run),
    // the first as `run_seq`, the others after it.
    let mut run = VecDeque::with_capacity(FEED_RUN);
    let mut run_seq = 0u64;
    let mut shares = Vec::with_capacity(FEED_RUN);
    // Records admitted to the window and not yet sent to the forwarder.
    let mut out = Vec::with_capacity(FEED_RUN);
    loop {
        since_yield += 1;
        if since_yield == FEED_YIELD_EVERY {
            // The steps below mostly go on without waiting: let other tasks run.
            since_yield = 0;
            if !pass_on(&tx, &mut out, &mut stop).await {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
        if !window.room_for_record() {
            if !pass_on(&tx, &mut out, &mut stop).await {
                return Ok(());
            }
            tokio::select! {
                () = window.wait_until(Window::room_for_record) => {}
                () = stop.until_set() => return Ok(()),
            }
        }
        let (msg, held, registered) = if let Some((msg, size)) = run.pop_front() {
            run_seq += 1;
            (msg, window.share(size), Some(run_seq - 1))
        } else if in_memory {
            match handoff.take(next, FEED_RUN, &mut run) {
                Take::Taken => {
                    metrics.journal_handed_over.fetch_add(run.len() as u64, Relaxed);
                    shares.clear();
                    shares.extend(run.iter().map(|(_, size)| window.share(*size)));
                    run_seq = acks.register_run(next, &shares);
                    continue;
                }
                Take::Empty => {
                    if !pass_on(&tx, &mut out, &mut stop).await {
                        return Ok(());
                    }
                    tokio::select! {
                        () = handoff.wait(next) => {}
                        () = stop.until_set() => return Ok(()),
                    }
                    continue;
                }
                Take::Gap => {
                    reader.skip_to(next)?;
                    in_memory = false;
                    continue;
                }
            }
        } else {
            match reader.try_next()? {
                Some((jseq, bytes)) => {
                    metrics.journal_read.fetch_add(1, Relaxed);
                    (journaled_message(jseq, &bytes), window.share(bytes.len()), None)
                }
                None => {
                    // Every committed record is read: take the next ones
                    // from the handoff as the ingest commits them.
                    handoff.resume(next);
                    in_memory = true;
                    continue;
                }
            }
        };
        let jseq = next;
        next += 1;
        if !window.room_for_bytes(held) {
            if !pass_on(&tx, &mut out, &mut stop).await {
                return Ok(());
            }
            tokio::select! {
                () = window.wait_until(|w| w.room_for_bytes(held)) => {}
                () = stop.until_set() => return Ok(()),
            }
        }
        window.hold(held);
        let seq = match registered {
            Some(seq) => seq,
            None => acks.register_run(jseq, &[held]),
        };
        out.push(Received { seq, msg });
        if out.len() >= FEED_RUN && !pass_on(&tx, &mut out, &mut stop).await {
            return Ok(());
        }
    }
}

/// The message a journal record holds. A record that passed its checksum
/// but does not decode (a newer format?) becomes a message without a topic,
/// its bytes as the payload, received now: routing dead-letters it, so it is
/// never dropped. The one fallback of every journal reader.
pub fn journaled_message(jseq: u64, bytes: &Bytes) -> Inbound {
    decode_inbound_shared(bytes).unwrap_or_else(|error| {
        tracing::error!(%error, jseq, "Journal record not decodable; dead-lettering it.");
        Inbound {
            topic: String::new(),
            payload: bytes.clone(),
            received_ms: crate::record::now_ms(),
            redelivered: false,
        }
    })
}

/// How often the journal gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_millis(100);

/// Refresh the journal gauges on their own task, so they stay current
/// whatever the forwarding path is waiting on.
pub async fn gauges(
    journal: Arc<Journal>,
    window: Option<Arc<Window>>,
    metrics: Arc<MessageMetrics>,
) -> Result<(), JournalError> {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        publish_gauges(&journal, window.as_deref(), &metrics);
    }
}

/// Journal gauges for metrics.
pub fn publish_gauges(journal: &Journal, window: Option<&Window>, metrics: &MessageMetrics) {
    metrics.journal_depth.store(i64::try_from(journal.depth()).unwrap_or(i64::MAX), Relaxed);
    metrics.journal_bytes.store(i64::try_from(journal.used_bytes()).unwrap_or(i64::MAX), Relaxed);
    metrics.journal_fsyncs.store(journal.fsyncs(), Relaxed);
    if let Some(w) = window {
        let (records, bytes) = w.in_use();
        metrics.journal_forward_records.store(i64::try_from(records).unwrap_or(i64::MAX), Relaxed);
        metrics.journal_forward_bytes.store(i64::try_from(bytes).unwrap_or(i64::MAX), Relaxed);
    }
}

/// Open the journal on a blocking thread — recovery reads every undelivered
/// segment, up to `journal.max_size` — so that the runtime goes on serving
/// `/healthz` and `/readyz` ("recovering journal") meanwhile. Reports what
/// recovery found and how long it took, counts the replay, and marks the
/// journal open in `health`.
///
/// Dropping the future (shutdown during recovery) leaves the thread to
/// finish or be stopped with the process: recovery is safe to interrupt at
/// any point, as after a crash, and starts over on the next open.
pub async fn recover(
    cfg: &JournalConfig,
    metrics: &MessageMetrics,
    health: &Health,
) -> Result<Arc<Journal>, super::PipelineError> {
    tracing::info!(path = %cfg.path.display(), "Recovering the journal: reading every undelivered segment.");
    let started = Instant::now();
    let open = cfg.clone();
    let (journal, rec) = tokio::task::spawn_blocking(move || Journal::open(open)).await.map_err(|e| {
        super::PipelineError::Panicked {
            message: format!("recovering the journal {}", if e.is_panic() { "panicked" } else { "was cancelled" }),
        }
    })??;
    let took = started.elapsed();
    let bytes = journal.used_bytes();
    let mib_per_s = bytes as f64 / 1_048_576.0 / took.as_secs_f64().max(1e-6);
    tracing::info!(
        path = %cfg.path.display(),
        undelivered = rec.undelivered,
        segments = rec.segments,
        bytes,
        truncated_bytes = rec.truncated_bytes,
        took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        mib_per_s = (mib_per_s * 10.0).round() / 10.0,
        "Journal recovered."
    );
    metrics.journal_replayed.store(rec.undelivered, Relaxed);
    metrics.add_in_flight(i64::try_from(rec.undelivered).unwrap_or(i64::MAX));
    metrics.journal_limit_bytes.store(i64::try_from(cfg.max_size.bytes()).unwrap_or(i64::MAX), Relaxed);
    publish_gauges(&journal, None, metrics);
    health.set_journal_recovering(false);
    Ok(Arc::new(journal))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::ByteSize;

    fn message(n: u64) -> Inbound {
        Inbound {
            topic: format!("mtic/msg/client/realtime/t/p/{n}"),
            payload: Bytes::from(vec![b'x'; 200]),
            received_ms: i64::try_from(n).unwrap(),
            redelivered: false,
        }
    }

    fn inbound(n: u64) -> Bytes {
        Bytes::from(crate::journal::encode_inbound(&message(n)))
    }

    #[test]
    fn what_one_turn_received_is_batched_in_order_within_both_limits() {
        let one = crate::journal::encoded_len(&message(0));
        // Closes after 3 records' payload: 10 messages make batches of 3, 3, 3, 1.
        let mut received: Vec<Received> = (0..10).map(|n| Received { seq: 100 + n, msg: message(n) }).collect();
        let mut waiting = VecDeque::new();
        batch_up(&mut received, 3 * one, true, &mut waiting);
        assert!(received.is_empty());
        let sizes: Vec<usize> = waiting.iter().map(|a| a.seqs.len()).collect();
        assert_eq!(sizes, [3, 3, 3, 1]);
        let mut n = 0;
        for a in &waiting {
            assert_eq!(a.batch.len(), a.seqs.len());
            assert_eq!(a.msgs.len(), a.seqs.len(), "kept for the handoff");
            for (record, (&seq, (msg, size))) in a.batch.records().zip(a.seqs.iter().zip(&a.msgs)) {
                assert_eq!(seq, 100 + n);
                assert_eq!(msg.received_ms, n as i64);
                assert_eq!((*size, record.len()), (one, one), "its size in the journal");
                assert_eq!(crate::journal::decode_inbound(record).unwrap().received_ms, n as i64);
                n += 1;
            }
        }
        assert_eq!(n, 10);
        // The record limit, and nothing kept without a handoff.
        let mut received: Vec<Received> =
            (0..MAX_BATCH_RECORDS as u64 + 5).map(|n| Received { seq: n, msg: message(n) }).collect();
        let mut waiting = VecDeque::new();
        batch_up(&mut received, usize::MAX, false, &mut waiting);
        let sizes: Vec<usize> = waiting.iter().map(|a| a.seqs.len()).collect();
        assert_eq!(sizes, [MAX_BATCH_RECORDS, 5]);
        assert!(waiting.iter().all(|a| a.msgs.is_empty()));
    }

    /// A journal opened with `cfg`, `records` records appended, and its
    /// window and acks.
    async fn journal_with(
        cfg: &JournalConfig,
        records: u64,
    ) -> (Arc<Journal>, Appender, Arc<Window>, Arc<JournalAcks>) {
        let (journal, _) = Journal::open(cfg.clone()).unwrap();
        let journal = Arc::new(journal);
        let appender = journal.appender();
        // Together, as the ingest appends (one at a time, each waiting for
        // its commit, every append would wait out the commit delay).
        let mut batch = Batch::new();
        for n in 0..records {
            batch.push(&inbound(n));
        }
        if !batch.is_empty() {
            appender.enqueue_batch(batch).map_err(|(e, _)| e).unwrap().await.unwrap();
        }
        let window = Arc::new(Window::new(cfg));
        let acks = Arc::new(JournalAcks::new(journal.clone(), window.clone()));
        (journal, appender, window, acks)
    }

    /// Journal records `from..to`, committed, then offered to `handoff` as
    /// the ingest does, marked (`redelivered`) so that the test can tell
    /// which records the feed took from memory.
    async fn commit_and_offer(appender: &Appender, handoff: &Handoff, range: std::ops::Range<u64>) {
        let mut batch = Batch::new();
        for n in range.clone() {
            batch.push(&inbound(n));
        }
        let first = appender.enqueue_batch(batch).map_err(|(e, _)| e).unwrap().await.unwrap();
        assert_eq!(first, range.start);
        let sized = |n| {
            let m = Inbound { redelivered: true, ..message(n) };
            let size = crate::journal::encoded_len(&m);
            (m, size)
        };
        handoff.offer(first, range.map(sized).collect());
    }

    /// Take what the feed passes on until `upto` records are in `got`
    /// (journal record, taken from memory), completing each; then give the
    /// feed time to read everything committed and wait on the handoff.
    async fn receive(
        rx: &mut mpsc::Receiver<Vec<Received>>,
        acks: &JournalAcks,
        got: &mut Vec<(u64, bool)>,
        upto: u64,
    ) {
        while (got.len() as u64) < upto {
            let run = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
            assert!(!run.is_empty() && run.len() <= FEED_RUN);
            for r in run {
                acks.complete_many(&[r.seq]);
                got.push((r.msg.received_ms as u64, r.msg.redelivered));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    /// The feed reads the backlog from the journal, then takes what is
    /// committed from the handoff; a batch the handoff cannot hold is read
    /// from the journal, and the feed comes back to the handoff once it has
    /// read everything committed. Every record once, in journal order.
    #[tokio::test]
    async fn the_feed_takes_from_memory_while_it_keeps_up_and_reads_gaps_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, appender, window, acks) = journal_with(&JournalConfig::at(dir.path()), 10).await;
        let handoff = Arc::new(Handoff::new(4, 1 << 20));
        let (tx, mut rx) = mpsc::channel(100);
        let signals = crate::shutdown::Signals::default();
        let reader = journal.reader_from_ack().unwrap();
        let metrics = Arc::new(MessageMetrics::default());
        let feeder = tokio::spawn(feed(
            reader,
            handoff.clone(),
            acks.clone(),
            window.clone(),
            tx,
            metrics.clone(),
            signals.stop(),
        ));
        let mut got = Vec::new();
        receive(&mut rx, &acks, &mut got, 10).await;
        commit_and_offer(&appender, &handoff, 10..13).await; // fits
        receive(&mut rx, &acks, &mut got, 13).await;
        commit_and_offer(&appender, &handoff, 13..15).await; // fits
        commit_and_offer(&appender, &handoff, 15..20).await; // 5 > 4: a gap
        commit_and_offer(&appender, &handoff, 20..21).await; // from memory only if the feed has caught up
        receive(&mut rx, &acks, &mut got, 21).await;
        commit_and_offer(&appender, &handoff, 21..23).await; // caught up again
        receive(&mut rx, &acks, &mut got, 23).await;
        let order: Vec<u64> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(order, (0..23).collect::<Vec<u64>>(), "each record once, in journal order");
        let from_memory = |r: std::ops::Range<usize>| got[r].iter().map(|(_, mem)| *mem).collect::<Vec<bool>>();
        assert_eq!(from_memory(0..10), [false; 10], "the backlog from the journal");
        assert_eq!(from_memory(10..15), [true; 5], "what follows, from memory");
        assert_eq!(from_memory(15..20), [false; 5], "the batch the handoff could not hold, from the journal");
        assert_eq!(from_memory(21..23), [true; 2], "from memory again");
        let memory = got.iter().filter(|(_, mem)| *mem).count() as u64;
        assert_eq!(metrics.journal_handed_over.load(Relaxed), memory, "counted");
        assert_eq!(metrics.journal_read.load(Relaxed), 23 - memory, "counted");
        assert_eq!(journal.acked_seq(), Some(22));
        signals.set_stop();
        assert!(feeder.await.unwrap().is_ok());
    }

    /// A backlog far larger than the window: the feed stops at the window
    /// and goes on as deliveries complete, in order, and the journal's
    /// delivered position follows the completed prefix.
    #[tokio::test]
    async fn the_feed_never_holds_more_than_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig {
            forward_max_records: 100,
            forward_max_bytes: ByteSize::mib(1),
            ..JournalConfig::at(dir.path())
        };
        let (journal, _, window, acks) = journal_with(&cfg, 1000).await;
        let (tx, mut rx) = mpsc::channel(10_000);
        let signals = crate::shutdown::Signals::default();
        let feeder = tokio::spawn(feed(
            journal.reader_from_ack().unwrap(),
            handoff(&cfg),
            acks.clone(),
            window.clone(),
            tx,
            Arc::new(MessageMetrics::default()),
            signals.stop(),
        ));
        let mut got = Vec::new();
        while got.len() < 100 {
            got.extend(rx.recv().await.unwrap());
        }
        assert_eq!(got.len(), 100);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "nothing beyond the window is read");
        assert_eq!(window.in_use().0, 100);
        // Completing a later record first frees nothing; the head frees the prefix.
        acks.complete_many(&[got[1].seq]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err(), "the head of the line holds the window");
        acks.complete_many(&[got[0].seq]);
        let more = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(more.iter().map(|r| r.seq).collect::<Vec<_>>(), [100, 101], "the prefix 0, 1 freed: two more");
        assert_eq!(journal.acked_seq(), Some(1));
        signals.set_stop();
        assert!(feeder.await.unwrap().is_ok());
    }

    /// Completions handed over together (one produce response) in any
    /// order: the journal moves over the completed prefix only, and the
    /// window frees exactly that prefix.
    #[tokio::test]
    async fn completing_many_at_once_moves_over_the_completed_prefix_only() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _, window, acks) = journal_with(&JournalConfig::at(dir.path()), 6).await;
        // Registered as a run of 4 and two single records, the way the feed does.
        let held = |n: usize| {
            let shares = vec![window.share(100); n];
            shares.iter().for_each(|&h| window.hold(h));
            shares
        };
        let first = acks.register_run(0, &held(4));
        let mut seqs: Vec<u64> = (first..first + 4).collect();
        seqs.extend((4..6).map(|j| acks.register_run(j, &held(1))));
        assert_eq!(seqs, (seqs[0]..seqs[0] + 6).collect::<Vec<u64>>(), "one after the other");
        // 0 is still out: nothing moves, nothing is freed.
        acks.complete_many(&[seqs[3], seqs[1], seqs[2]]);
        assert_eq!(journal.acked_seq(), None);
        assert_eq!(window.in_use(), (6, 600));
        // 0 and 5 together: 0..=3 is complete, 4 holds the rest.
        acks.complete_many(&[seqs[5], seqs[0]]);
        assert_eq!(journal.acked_seq(), Some(3));
        assert_eq!(window.in_use(), (2, 200));
        acks.complete_many(&[seqs[4], seqs[4]]);
        assert_eq!(journal.acked_seq(), Some(5));
        assert_eq!(window.in_use(), (0, 0));
    }

    /// A batch larger than the free space is halved until parts fit: a
    /// prefix goes to the journal, the rest waits in order.
    #[tokio::test]
    async fn a_batch_that_does_not_fit_is_halved_and_the_rest_waits_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig {
            max_size: ByteSize::kib(8),
            segment_size: ByteSize::kib(4),
            ..JournalConfig::at(dir.path())
        };
        let (journal, _) = Journal::open(cfg).unwrap();
        let appender = journal.appender();
        let mut batch = Batch::new();
        for _ in 0..100 {
            batch.push(&[7u8; 100]);
        }
        let msgs = (0..100).map(|n| (message(n), 0)).collect();
        let mut waiting = VecDeque::from([Appending { seqs: (1000..1100).collect(), batch, msgs }]);
        let mut pending: Settling = FuturesOrdered::new();
        let stopped = submit(&appender, &mut waiting, &mut pending, &mut HurryAt::new(1000)).unwrap();
        assert!(matches!(stopped, Some(JournalError::Full { .. })), "{stopped:?}");
        let mut done = Vec::new();
        // Settled in journal order, each part with its own messages.
        while let Some((seqs, msgs, res)) = pending.next().await {
            assert_eq!(res.unwrap(), done.len() as u64, "journal order");
            let kept: Vec<u64> = msgs.iter().map(|(m, _)| 1000 + m.received_ms as u64).collect();
            assert_eq!(kept, seqs);
            done.extend(seqs);
        }
        let left: Vec<u64> = waiting.iter().flat_map(|a| a.seqs.iter().copied()).collect();
        assert!(done.len() > 30 && !left.is_empty(), "{} appended, {} waiting", done.len(), left.len());
        assert_eq!([done, left.clone()].concat(), (1000..1100).collect::<Vec<u64>>(), "a prefix, then the rest");
        assert_eq!(waiting.front().unwrap().seqs.len(), 1, "halved down to one message");
        assert_eq!(waiting.iter().map(|a| a.batch.len()).sum::<usize>(), left.len());
        assert_eq!(journal.committed_seq().map(|s| s + 1), Some(100 - left.len() as u64));
    }

    #[tokio::test]
    async fn a_record_larger_than_the_byte_window_passes_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig { forward_max_bytes: ByteSize::kib(1), ..JournalConfig::at(dir.path()) };
        let window = Window::new(&cfg);
        let big = window.share(10_000);
        assert!(window.room_for_bytes(big));
        window.hold(big);
        assert_eq!(window.in_use(), (1, 1024));
        assert!(!window.room_for_bytes(window.share(1)), "nothing else fits beside it");
        window.release(1, big.bytes as usize);
        assert_eq!(window.in_use(), (0, 0));
    }
}
