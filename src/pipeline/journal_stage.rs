//! The journal between MQTT and the rest of the pipeline (`[journal]` in a
//! bridge config, always in `iotpipe run`).
//!
//! `ingest`: MQTT → journal, in arrival order; a message is acked to the
//! broker once the fsync that covers it is done. `feed`: journal → the
//! forwarder (Kafka or the store), from the last delivered record on.
//! `JournalAcks`: deliveries complete out of order; the journal's delivered
//! position only moves over a completed prefix.

use crate::journal::{decode_inbound_shared, Appender, Journal, JournalError, Reader};
use crate::record::Inbound;
use crate::source::mqtt::{AckHandle, Received, Sequencer};
use crate::telemetry::BridgeMetrics;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

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

/// MQTT → journal. Returns an error when the journal fails (the process
/// should exit: what was not acked is redelivered by the broker).
pub async fn ingest(
    mut rx: mpsc::Receiver<Received>,
    appender: Appender,
    acks: AckHandle,
    metrics: Arc<BridgeMetrics>,
) -> Result<(), JournalError> {
    let full = &metrics.journal_full;
    let mut pending = FuturesUnordered::new();
    let mut waiting: Option<(u64, Bytes)> = None;
    let mut closed = false;
    loop {
        if let Some((seq, payload)) = waiting.take() {
            match appender.enqueue(payload.clone()) {
                Ok(f) => {
                    full.store(false, Relaxed);
                    pending.push(async move { (seq, f.await) });
                }
                Err(JournalError::Full { used, max }) => {
                    if !full.swap(true, Relaxed) {
                        tracing::warn!(used, max, "Journal full: not acking MQTT until the forwarder frees space.");
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

/// Completes journal records in any order; acks the journal over the completed prefix.
pub struct JournalAcks {
    journal: Arc<Journal>,
    seq: Mutex<Sequencer<u64>>,
}

impl JournalAcks {
    pub fn new(journal: Arc<Journal>) -> Self {
        Self { journal, seq: Mutex::new(Sequencer::new()) }
    }

    /// Register journal record `jseq` (in journal order); returns the pipeline's sequence number.
    pub fn register(&self, jseq: u64) -> u64 {
        self.seq.lock().unwrap_or_else(|p| p.into_inner()).push(0, Some(jseq))
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
        if let Some(last) = ready.last() {
            if let Err(error) = self.journal.ack(*last) {
                tracing::error!(%error, seq = last, "Could not record the journal's delivered position.");
            }
        }
    }
}

/// Journal → forwarder: every record from the delivered position on, with
/// the sequence number `acks` gave it. Ends when the journal closes.
pub async fn feed(mut reader: Reader, acks: Arc<JournalAcks>, tx: mpsc::Sender<Received>) {
    loop {
        let (jseq, bytes) = match reader.next().await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(%error, "Journal read failed; forwarding stops.");
                return;
            }
        };
        let msg = decode_inbound_shared(&bytes).unwrap_or_else(|error| {
            // Checksummed but not decodable (a newer format?): forwarded as a
            // message that will be dead-lettered, never dropped.
            tracing::error!(%error, jseq, "Journal record not decodable; dead-lettering it.");
            Inbound {
                topic: String::new(),
                payload: bytes.clone(),
                received_ms: crate::record::now_ms(),
                redelivered: false,
            }
        });
        let seq = acks.register(jseq);
        if tx.send(Received { seq, msg }).await.is_err() {
            return;
        }
    }
}

/// How often the journal gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_millis(100);

/// Refresh the journal gauges on their own task, so they stay current even
/// while the forwarding loop waits (on a topic creation, for example).
/// Stops once the journal is dropped.
pub fn spawn_gauges(journal: &Arc<Journal>, metrics: Arc<BridgeMetrics>) {
    let weak = Arc::downgrade(journal);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(GAUGE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(journal) = weak.upgrade() else { return };
            publish_gauges(&journal, &metrics);
        }
    });
}

/// Journal gauges for metrics and /readyz.
pub fn publish_gauges(journal: &Journal, metrics: &BridgeMetrics) {
    metrics.journal_depth.store(i64::try_from(journal.depth()).unwrap_or(i64::MAX), Relaxed);
    metrics.journal_bytes.store(i64::try_from(journal.used_bytes()).unwrap_or(i64::MAX), Relaxed);
    metrics.journal_fsyncs.store(journal.fsyncs(), Relaxed);
}
