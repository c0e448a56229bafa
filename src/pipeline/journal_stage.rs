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

use super::supervisor::Stop;
use crate::health::Health;
use crate::journal::{decode_inbound_shared, Appender, Journal, JournalConfig, JournalError, Reader};
use crate::mqtt::{AckHandle, Received, Sequencer};
use crate::record::Inbound;
use crate::telemetry::MessageMetrics;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// Where a delivered message is reported: the MQTT acks (direct mode) or
/// the journal (journal mode).
pub trait Completion: Send + Sync {
    fn complete(&self, seq: u64);
}

impl Completion for AckHandle {
    fn complete(&self, seq: u64) {
        AckHandle::complete(self, seq);
    }
}

/// How long to wait before trying again to append to a full journal.
const FULL_RETRY: Duration = Duration::from_millis(50);

/// MQTT → journal. Ends when the session ends and every append is settled;
/// an error means the journal failed (the process exits: what was not acked
/// is redelivered by the broker).
pub async fn ingest(
    mut rx: mpsc::Receiver<Received>,
    appender: Appender,
    acks: AckHandle,
    health: Arc<Health>,
) -> Result<(), JournalError> {
    let mut pending = FuturesUnordered::new();
    let mut waiting: Option<(u64, Bytes)> = None;
    let mut closed = false;
    loop {
        if let Some((seq, payload)) = waiting.take() {
            match appender.enqueue(payload.clone()) {
                Ok(f) => {
                    health.set_journal_full(false);
                    pending.push(async move { (seq, f.await) });
                }
                Err(JournalError::Full { used, max }) => {
                    if !health.set_journal_full(true) {
                        tracing::warn!(used, max, "Journal full: not acking MQTT until the forwarder frees space.");
                    }
                    waiting = Some((seq, payload));
                }
                Err(JournalError::NoSpace { path, available, reserve }) => {
                    if !health.set_journal_full(true) {
                        tracing::warn!(
                            path = %path.display(),
                            available,
                            reserve,
                            "Journal's filesystem nearly full: not acking MQTT until space frees."
                        );
                    }
                    waiting = Some((seq, payload));
                }
                Err(e) => return Err(e),
            }
        }
        if closed && waiting.is_none() && pending.is_empty() {
            return Ok(());
        }
        tokio::select! {
            biased;
            Some((seq, res)) = pending.next(), if !pending.is_empty() => {
                res?;
                acks.complete(seq);
            }
            () = tokio::time::sleep(FULL_RETRY), if waiting.is_some() => {}
            r = rx.recv(), if waiting.is_none() && !closed => match r {
                Some(r) => waiting = Some((r.seq, Bytes::from(crate::journal::encode_inbound(&r.msg)))),
                None => closed = true,
            },
        }
    }
}

/// The most records and payload bytes read from the journal and not yet
/// delivered (`journal.forward_max_records`, `journal.forward_max_bytes`).
pub struct Window {
    records: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_records: usize,
    max_bytes: u32,
}

/// One record's share of the window; dropping it gives the share back.
pub struct Held {
    _record: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

impl Window {
    pub fn new(cfg: &JournalConfig) -> Self {
        let max_bytes = u32::try_from(cfg.forward_max_bytes.bytes()).unwrap_or(u32::MAX);
        Self {
            records: Arc::new(Semaphore::new(cfg.forward_max_records)),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_records: cfg.forward_max_records,
            max_bytes,
        }
    }

    /// (records, bytes) held now.
    pub fn in_use(&self) -> (usize, usize) {
        (
            self.max_records.saturating_sub(self.records.available_permits()),
            (self.max_bytes as usize).saturating_sub(self.bytes.available_permits()),
        )
    }

    async fn admit_record(&self) -> Option<OwnedSemaphorePermit> {
        self.records.clone().acquire_owned().await.ok()
    }

    /// A record larger than the whole window is admitted on its own.
    async fn admit_bytes(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let cost = u32::try_from(len).unwrap_or(u32::MAX).clamp(1, self.max_bytes.max(1));
        self.bytes.clone().acquire_many_owned(cost).await.ok()
    }
}

/// Completes journal records in any order; acks the journal over the
/// completed prefix and frees their share of the window.
pub struct JournalAcks {
    journal: Arc<Journal>,
    seq: Mutex<Sequencer<(u64, Held)>>,
}

impl JournalAcks {
    pub fn new(journal: Arc<Journal>) -> Self {
        Self { journal, seq: Mutex::new(Sequencer::new()) }
    }

    /// Register journal record `jseq` (in journal order); returns the pipeline's sequence number.
    fn register(&self, jseq: u64, held: Held) -> u64 {
        self.seq.lock().unwrap_or_else(|p| p.into_inner()).push(0, Some((jseq, held)))
    }
}

impl Completion for JournalAcks {
    fn complete(&self, seq: u64) {
        let mut ready = Vec::new();
        {
            let mut s = self.seq.lock().unwrap_or_else(|p| p.into_inner());
            s.complete(seq);
            s.drain_ready(0, &mut ready);
        }
        if let Some((last, _)) = ready.last() {
            if let Err(error) = self.journal.ack(*last) {
                tracing::error!(%error, seq = last, "Could not record the journal's delivered position.");
            }
        }
        // `ready` drops here: its records' share of the window is free again.
    }
}

/// Journal → forwarder: every record from the delivered position on, with
/// the sequence number `acks` gave it, never more than `window` at a time.
/// Ends when told to stop, or when the forwarder is gone; a read error ends
/// it with the error.
pub async fn feed(
    mut reader: Reader,
    acks: Arc<JournalAcks>,
    window: Arc<Window>,
    tx: mpsc::Sender<Received>,
    mut stop: Stop,
) -> Result<(), JournalError> {
    loop {
        let record = tokio::select! {
            p = window.admit_record() => p,
            () = stop.until_set() => return Ok(()),
        };
        let next = tokio::select! {
            r = reader.next() => r?,
            () = stop.until_set() => return Ok(()),
        };
        let Some((jseq, bytes)) = next else { return Ok(()) };
        let share = tokio::select! {
            p = window.admit_bytes(bytes.len()) => p,
            () = stop.until_set() => return Ok(()),
        };
        let (Some(record), Some(share)) = (record, share) else { return Ok(()) };
        let msg = journaled_message(jseq, &bytes);
        let seq = acks.register(jseq, Held { _record: record, _bytes: share });
        tokio::select! {
            sent = tx.send(Received { seq, msg }) => if sent.is_err() { return Ok(()) },
            () = stop.until_set() => return Ok(()),
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

    fn inbound(n: u64) -> Bytes {
        let msg = Inbound {
            topic: format!("mtic/msg/client/realtime/t/p/{n}"),
            payload: Bytes::from(vec![b'x'; 200]),
            received_ms: 1,
            redelivered: false,
        };
        Bytes::from(crate::journal::encode_inbound(&msg))
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
        let (journal, _) = Journal::open(cfg.clone()).unwrap();
        let journal = Arc::new(journal);
        let appender = journal.appender();
        for n in 0..1000 {
            appender.append(inbound(n)).await.unwrap();
        }
        let window = Arc::new(Window::new(&cfg));
        let acks = Arc::new(JournalAcks::new(journal.clone()));
        let (tx, mut rx) = mpsc::channel(10_000);
        let signals = crate::shutdown::Signals::default();
        let feeder =
            tokio::spawn(feed(journal.reader_from_ack().unwrap(), acks.clone(), window.clone(), tx, signals.stop()));
        let mut got = Vec::new();
        while got.len() < 100 {
            got.push(rx.recv().await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(rx.try_recv().is_err(), "nothing beyond the window is read");
        assert_eq!(window.in_use().0, 100);
        // Completing a later record first frees nothing; the head frees the prefix.
        acks.complete(got[1].seq);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err(), "the head of the line holds the window");
        acks.complete(got[0].seq);
        let more = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(more.seq, 100);
        assert_eq!(journal.acked_seq(), Some(1));
        signals.set_stop();
        assert!(feeder.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_record_larger_than_the_byte_window_passes_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig { forward_max_bytes: ByteSize::kib(1), ..JournalConfig::at(dir.path()) };
        let window = Window::new(&cfg);
        let big = window.admit_bytes(10_000).await.unwrap();
        assert_eq!(window.in_use().1, 1024);
        drop(big);
        assert_eq!(window.in_use().1, 0);
    }
}
