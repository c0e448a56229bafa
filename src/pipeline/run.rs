//! `iotpipe run`: MQTT → journal → store on one machine, no Kafka, with the
//! dashboard. The broker gets its PUBACK after the journal fsync; the
//! journal's delivered position moves after the store commit, so a crash
//! anywhere replays from the journal and the store's `(time, id)` key keeps
//! one row per message.

use super::bridge::open_journal;
use super::journal_stage::ingest;
use super::store_writer::{connect_store, retention_task, write_until_done};
use crate::config::Config;
use crate::http;
use crate::journal::{decode_inbound_shared, Journal, Reader};
use crate::record::{now_ms, DeadLetterReason};
use crate::route::Router;
use crate::source::kafka::{decode_from, Decoded, KafkaRecord};
use crate::source::mqtt::{Received, Source, ACK_RETRY_INTERVAL};
use crate::store::{DeadLetterRow, StoreRow};
use crate::telemetry::{BridgeMetrics, Render, SinkMetrics};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Route(#[from] crate::route::RouterError),
    #[error(transparent)]
    Mqtt(#[from] crate::source::mqtt::OptionsError),
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
    #[error("store: {0}")]
    Store(String),
    #[error("http.listen: {0}")]
    Http(std::io::Error),
}

/// Extra HTTP routes (dashboard and API) built once the store is open.
pub type ExtraRoutes = Box<dyn FnOnce(&crate::store::Store, Arc<RunMetrics>) -> axum::Router + Send>;

/// Both halves of `iotpipe run`'s metrics on one /metrics page.
pub struct RunMetrics {
    pub bridge: Arc<BridgeMetrics>,
    pub store: Arc<SinkMetrics>,
    pub started: Instant,
}

impl Render for RunMetrics {
    fn render(&self) -> String {
        let mut s = self.bridge.render();
        s.push_str(&self.store.render());
        s
    }
}

pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    extra: Option<ExtraRoutes>,
) -> Result<(), RunError> {
    let metrics = Arc::new(RunMetrics {
        bridge: Arc::new(BridgeMetrics::new(config.http.per_tenant_metrics)),
        store: Arc::new(SinkMetrics::new()),
        started: Instant::now(),
    });
    let bm = metrics.bridge.clone();
    let router = Router::new(&config)?;
    let jc = config.journal.clone().unwrap_or_default();
    let journal = open_journal(&jc, &bm)?;
    tokio::pin!(shutdown);
    let Some(store) = connect_store(&config, &metrics.store, &mut shutdown).await else {
        return Err(RunError::Store(format!("could not open {}", config.store.url)));
    };
    metrics.store.store_reachable.store(true, Relaxed);
    tracing::info!(store = store.describe(), journal = %jc.path.display(), "Store and journal ready.");

    let (draining_tx, draining_rx) = watch::channel(false);
    if !config.http.listen.is_empty() {
        let routes = extra.map(|f| f(&store, metrics.clone())).unwrap_or_default();
        let ready = {
            let (m, d) = (metrics.clone(), draining_rx.clone());
            move || readiness(&m, *d.borrow())
        };
        http::serve_with(&config.http.listen, metrics.clone(), ready, routes).await.map_err(RunError::Http)?;
    }
    tokio::spawn(retention_task(config.clone(), metrics.store.clone()));

    let source = Source::new(&config.mqtt, bm.clone())?;
    let acks = source.acks();
    let (tx, mqtt_rx) = mpsc::channel::<Received>(usize::from(config.mqtt.max_in_flight).max(16));
    let (stop_tx, stop_rx) = watch::channel(false);
    let session = tokio::spawn(source.run(tx, draining_rx, stop_rx));
    let ingest_task = tokio::spawn(ingest(mqtt_rx, journal.appender(), acks.clone(), bm.clone()));
    let forwarder = tokio::spawn(forward(
        journal.reader_from_ack()?,
        journal.clone(),
        store,
        router,
        metrics.clone(),
        config.sink.batch_max_rows.max(1),
        config.sink.retry_backoff_max.get(),
    ));

    let grace = config.bridge.grace_period.get();
    let mut tick = tokio::time::interval(ACK_RETRY_INTERVAL);
    let mut deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            () = &mut shutdown, if deadline.is_none() => {
                tracing::info!("Shutting down: no new messages; journaling those received.");
                let _ = draining_tx.send(true);
                deadline = Some(Instant::now() + grace);
            }
            _ = tick.tick() => {
                acks.flush();
                if ingest_task.is_finished() && deadline.is_none() {
                    tracing::error!("Journal failed; exiting (unacked messages stay with the broker).");
                    break;
                }
                if let Some(d) = deadline {
                    if acks.outstanding() == 0 || Instant::now() >= d {
                        break;
                    }
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), session).await;
    // Give the forwarder a moment to store what is journaled; the rest is replayed next time.
    let until = deadline.unwrap_or_else(Instant::now).max(Instant::now() + Duration::from_millis(500));
    while journal.depth() > 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    journal.close().await?;
    let _ = tokio::time::timeout(Duration::from_secs(5), forwarder).await;
    tracing::info!(
        received = bm.received.load(Relaxed),
        stored = bm.delivered.load(Relaxed),
        dead_lettered = bm.dead_lettered_total(),
        "Stopped."
    );
    match ingest_task.is_finished() && deadline.is_none() {
        true => Err(RunError::Store("journal failed".into())),
        false => Ok(()),
    }
}

fn readiness(m: &RunMetrics, draining: bool) -> Result<(), String> {
    let mut why = Vec::new();
    if draining {
        why.push("shutting down");
    }
    if !m.bridge.mqtt_connected.load(Relaxed) {
        why.push("MQTT not connected");
    } else if !m.bridge.mqtt_subscribed.load(Relaxed) {
        why.push("MQTT not subscribed");
    }
    if !m.store.store_reachable.load(Relaxed) {
        why.push("store not reachable");
    }
    if m.bridge.journal_full.load(Relaxed) {
        why.push("journal full (MQTT acks paused)");
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

/// Journal → store, in batches of what is available (up to `max_rows`).
async fn forward(
    mut reader: Reader,
    journal: Arc<Journal>,
    mut store: crate::store::Store,
    router: Router,
    metrics: Arc<RunMetrics>,
    max_rows: usize,
    backoff_max: Duration,
) {
    loop {
        let first = match reader.next().await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(error) => {
                tracing::error!(%error, "Journal read failed; storing stops.");
                return;
            }
        };
        let mut batch = vec![first];
        while batch.len() < max_rows {
            match reader.try_next() {
                Ok(Some(r)) => batch.push(r),
                _ => break,
            }
        }
        let now = now_ms();
        let mut rows: Vec<StoreRow> = Vec::with_capacity(batch.len());
        let mut dead: Vec<DeadLetterRow> = Vec::new();
        let mut done: Vec<(Option<DeadLetterReason>, String, String, i64)> = Vec::with_capacity(batch.len());
        for (jseq, bytes) in &batch {
            let (rec, reason, received_ms) = to_record(&router, *jseq, bytes, now);
            match decode_from(&rec, &format!("journal:{jseq}"), now) {
                Decoded::Row(row) => {
                    done.push((reason, row.tenant_id.clone(), row.project_id.clone(), received_ms));
                    rows.push(row);
                }
                Decoded::Dead(d) => {
                    metrics.store.on_dead_letter(&d.reason, &d.source, &d.error);
                    done.push((
                        Some(reason.unwrap_or(DeadLetterReason::TopicMismatch)),
                        String::new(),
                        String::new(),
                        received_ms,
                    ));
                    dead.push(d);
                }
            }
        }
        let started = Instant::now();
        let (inserted, duplicates) = write_until_done(&mut store, rows, dead, &metrics.store, backoff_max).await;
        metrics.store.on_batch(inserted, duplicates, started.elapsed());
        if let Some((last, _)) = batch.last() {
            if let Err(error) = journal.ack(*last) {
                tracing::error!(%error, "Could not record the journal's delivered position.");
            }
        }
        let now = now_ms();
        for (reason, tenant, project, received_ms) in done {
            let latency = Duration::from_millis(u64::try_from(now - received_ms).unwrap_or(0));
            metrics.bridge.on_delivered(reason, &tenant, &project, latency);
        }
    }
}

/// A journal record as the sink sees a Kafka record: routed, with the
/// bridge's headers, so `iotpipe run` stores exactly what `bridge` + `sink` would.
fn to_record(
    router: &Router,
    jseq: u64,
    bytes: &bytes::Bytes,
    now: i64,
) -> (KafkaRecord, Option<DeadLetterReason>, i64) {
    let inbound = decode_inbound_shared(bytes).unwrap_or_else(|error| {
        tracing::error!(%error, jseq, "Journal record not decodable; dead-lettering it.");
        crate::record::Inbound { topic: String::new(), payload: bytes.clone(), received_ms: now, redelivered: false }
    });
    let out = router.route(&inbound);
    let rec = KafkaRecord {
        topic: out.topic,
        partition: 0,
        offset: i64::try_from(jseq).unwrap_or(i64::MAX),
        timestamp_ms: Some(out.timestamp_ms),
        headers: out.headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        payload: out.value,
    };
    (rec, out.reason, inbound.received_ms)
}
