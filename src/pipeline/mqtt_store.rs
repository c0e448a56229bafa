//! `iotpipe run` (and `iotpipe demo`): MQTT → journal → store on one
//! machine, no Kafka, with the dashboard. The broker gets its PUBACK after
//! the journal fsync; the journal's delivered position moves after the store
//! commit, so a crash anywhere replays from the journal and the store's
//! `(time, id)` key keeps one row per message.
//!
//! Tasks (see [`super::supervisor`]): `mqtt-session`, `journal-ingest`,
//! `journal-store` (journal → store in batches); in the background `http`,
//! `retention`, `journal-gauges`, and those of the caller (the demo's
//! `demo-fleet`, `demo-malformed`). The journal is recovered first
//! ([`start_up`]) with `http` already serving; then the store connects and
//! the dashboard is mounted; the MQTT session starts last.

use super::decode::{decode, Decoded};
use super::ingress::Ingress;
use super::journal_stage;
use super::store_writer::{connect_store, retention_task, write_until_done, WriteContext};
use super::supervisor::{serve_http, start_up, supervise, Plan, Signals, Stop, Tasks};
use super::{PipelineError, RunSettings};
use crate::health::{Health, Parts};
use crate::http::ui::{ExtraRoutes, UiState};
use crate::http::LateRoutes;
use crate::journal::{Journal, JournalError, Reader};
use crate::record::{now_ms, DeadLetterReason, DurableRecord, Position};
use crate::route::Router;
use crate::store::{DeadLetterRow, Store, StoreRow};
use crate::telemetry::{Exposition, MessageMetrics, ProcessInfo, StoreMetrics};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `tasks`: the caller's own tasks (the demo's fleet), supervised with the
/// pipeline's; empty for `iotpipe run`.
pub async fn run(
    config: RunSettings,
    shutdown: impl Future<Output = ()>,
    extra: Option<ExtraRoutes>,
    mut tasks: Tasks,
) -> Result<(), PipelineError> {
    let health = Health::new(Parts { mqtt: true, store: true, journal: true, kafka: false });
    let metrics = Arc::new(MessageMetrics::new(config.http.per_tenant_metrics));
    let store_metrics = Arc::new(StoreMetrics::new());
    let router = Router::new(&config.route, &config.targets)?;
    let jc = config.journal.clone();

    // HTTP first: /healthz answers, and /readyz says "recovering journal"
    // (then "store not reachable"), while the journal recovers and the store
    // connects; the dashboard is mounted once the store is open. MQTT is
    // connected only once both are.
    let signals = Signals::default();
    let dashboard = LateRoutes::default();
    if !config.http.listen.is_empty() {
        let exposition = Arc::new(Exposition {
            command: "run",
            health: health.clone(),
            messages: Some(metrics.clone()),
            store: Some(store_metrics.clone()),
            consumer: None,
            process: ProcessInfo::default(),
        });
        serve_http(&mut tasks, &config.http.listen, exposition, health.clone(), dashboard.router()).await?;
    }
    tokio::pin!(shutdown);
    let recovery = journal_stage::recover(&jc, &metrics, &health);
    let Some(journal) = start_up(&mut tasks, &mut shutdown, "journal recovery", recovery).await? else {
        return Ok(());
    };
    let backoff_max = config.run.retry_backoff_max.get();
    let Some(store) = connect_store(&config.store, backoff_max, &mut shutdown).await? else {
        journal.close().await?;
        return Ok(());
    };
    health.set_store_reachable(true);
    tracing::info!(store = store.describe(), journal = %jc.path.display(), "Store and journal ready.");
    if let Some(extra) = extra {
        let ui = UiState { health: health.clone(), messages: metrics.clone(), started: Instant::now() };
        dashboard.set(extra(&store, ui));
    }
    tasks.background("retention", retention_task(config.store.clone(), store_metrics.clone()));
    tasks.background("journal-gauges", journal_stage::gauges(journal.clone(), None, metrics.clone()));

    let ingress = Ingress::start(&config.mqtt, metrics.clone(), health.clone(), &mut tasks, &signals)?;
    let acks = ingress.acks.clone();
    tasks.finishing(
        "journal-ingest",
        journal_stage::ingest(ingress.messages, journal.appender(), acks.clone(), health.clone(), None),
    );
    let forward = JournalToStore {
        journal: journal.clone(),
        store,
        router,
        metrics: metrics.clone(),
        store_metrics,
        health: health.clone(),
        max_rows: config.run.batch_max_rows.max(1),
        backoff_max,
    };
    tasks.finishing("journal-store", forward.run(journal.reader_from_ack()?, signals.stop()));

    let plan = Plan {
        grace: config.run.grace_period.get(),
        // Everything received is journaled, acked and stored.
        drained: || acks.outstanding() == 0 && acks.settled() && journal.depth() == 0,
        tick: || acks.flush(),
    };
    let result = supervise(&mut tasks, &signals, &health, shutdown, plan).await;
    if let Err(error) = journal.close().await {
        tracing::warn!(%error, "Journal close failed; it is recovered on the next start.");
    }
    tracing::info!(
        received = metrics.received.load(Relaxed),
        stored = metrics.stored.load(Relaxed),
        dead_lettered = metrics.dead_lettered_total(),
        journaled_not_stored = journal.depth(),
        "Stopped."
    );
    result
}

/// Journal → store, in batches of what is available (up to `max_rows`).
struct JournalToStore {
    journal: Arc<Journal>,
    store: Store,
    router: Router,
    metrics: Arc<MessageMetrics>,
    store_metrics: Arc<StoreMetrics>,
    health: Arc<Health>,
    max_rows: usize,
    backoff_max: Duration,
}

/// A stored (or dead-lettered) record, for the message metrics.
struct Done {
    /// The row's id; `None` for a dead letter.
    id: Option<uuid::Uuid>,
    reason: Option<DeadLetterReason>,
    tenant_id: String,
    project_id: String,
    received_ms: i64,
}

impl JournalToStore {
    /// Store batches until `stop` (a batch being written is finished first);
    /// a journal read error ends it with the error.
    async fn run(mut self, mut reader: Reader, mut stop: Stop) -> Result<(), JournalError> {
        loop {
            let first = tokio::select! {
                biased;
                () = stop.until_set() => return Ok(()),
                r = reader.next() => match r? {
                    Some(r) => r,
                    None => return Ok(()),
                },
            };
            let mut batch = vec![first];
            while batch.len() < self.max_rows {
                match reader.try_next()? {
                    Some(r) => batch.push(r),
                    None => break,
                }
            }
            self.store_batch(&batch).await;
        }
    }

    async fn store_batch(&mut self, batch: &[(u64, bytes::Bytes)]) {
        let now = now_ms();
        let mut rows: Vec<StoreRow> = Vec::with_capacity(batch.len());
        let mut dead: Vec<DeadLetterRow> = Vec::new();
        let mut done: Vec<Done> = Vec::with_capacity(batch.len());
        for (jseq, bytes) in batch {
            let (rec, received_ms) = to_record(&self.router, *jseq, bytes);
            match decode(&rec, now) {
                Decoded::Row(row) => {
                    done.push(Done {
                        id: Some(row.id),
                        reason: None,
                        tenant_id: row.tenant_id.clone(),
                        project_id: row.project_id.clone(),
                        received_ms,
                    });
                    rows.push(row);
                }
                Decoded::Dead(d, reason) => {
                    self.store_metrics.on_dead_letter(reason, &d.source, &d.error);
                    done.push(Done {
                        id: None,
                        reason: Some(reason),
                        tenant_id: String::new(),
                        project_id: String::new(),
                        received_ms,
                    });
                    dead.push(d);
                }
            }
        }
        let started = Instant::now();
        let cx = WriteContext { metrics: &self.store_metrics, health: &self.health, backoff_max: self.backoff_max };
        let written = write_until_done(&mut self.store, rows, dead, &cx).await;
        self.store_metrics.on_batch(written.inserted, written.duplicates, written.redone_by_insert, started.elapsed());
        if let Some((last, _)) = batch.last() {
            if let Err(error) = self.journal.ack(*last) {
                tracing::error!(%error, "Could not record the journal's delivered position.");
            }
        }
        let now = now_ms();
        let progressed = !done.is_empty();
        for d in done {
            let latency = Duration::from_millis(u64::try_from(now - d.received_ms).unwrap_or(0));
            // A row the store refused on its own is stored as a dead letter.
            let refused = d.id.is_some_and(|id| written.rejected.contains(&id));
            let reason = if refused { Some(DeadLetterReason::StoreRejected) } else { d.reason };
            self.metrics.on_stored(reason, &d.tenant_id, &d.project_id, latency);
        }
        if progressed {
            self.metrics.progressed();
        }
    }
}

/// A journal record, routed: the bridge's headers and payload, positioned
/// at its journal sequence number, so `iotpipe run` stores exactly what
/// `bridge` + `sink` would. Returns it with the message's receive time.
fn to_record(router: &Router, jseq: u64, bytes: &bytes::Bytes) -> (DurableRecord, i64) {
    let inbound = journal_stage::journaled_message(jseq, bytes);
    let out = router.route(&inbound);
    let rec = DurableRecord {
        position: Position::Journal { seq: jseq },
        timestamp_ms: Some(out.timestamp_ms),
        headers: (&out.headers).into(),
        payload: out.value,
    };
    (rec, inbound.received_ms)
}
