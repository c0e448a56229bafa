//! `iotpipe bridge`: MQTT → route → Kafka, acking each message to the broker
//! only after Kafka acknowledged it (or its dead letter).
//!
//! Tasks: the MQTT session (polls the event loop, registers messages in the
//! ack sequencer), the dispatcher below (routes, produces, handles delivery
//! reports, retries), the Kafka readiness probe and the HTTP server.

use super::journal_stage::{feed, ingest, publish_gauges, spawn_gauges, Completion, JournalAcks};
use crate::config::Config;
use crate::http;
use crate::record::DeadLetterReason;
use crate::route::Router;
use crate::sink::kafka::{classify, Delivery, Failure, Pending, Producer, TopicAdmin};
use crate::source::mqtt::{Received, Source, ACK_RETRY_INTERVAL};
use crate::telemetry::BridgeMetrics;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error(transparent)]
    Route(#[from] crate::route::RouterError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Mqtt(#[from] crate::source::mqtt::OptionsError),
    #[error("http.listen: {0}")]
    Http(std::io::Error),
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
}

/// Records read ahead from the journal towards Kafka.
const FORWARD_QUEUE: usize = 4096;

/// Longest wait before a failed delivery is sent again.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);

pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), BridgeError> {
    let metrics = Arc::new(BridgeMetrics::new(config.http.per_tenant_metrics));
    let router = Router::new(&config)?;
    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let mut producer = Producer::new(&config.kafka, reports_tx)?;
    let mut admin = TopicAdmin::new(&config.kafka)?;
    let source = Source::new(&config.mqtt, metrics.clone())?;
    let acks = source.acks();
    let journal = match &config.journal {
        Some(jc) => Some(open_journal(jc, &metrics)?),
        None => None,
    };

    let (draining_tx, draining_rx) = watch::channel(false);
    if !config.http.listen.is_empty() {
        let ready = {
            let (m, d) = (metrics.clone(), draining_rx.clone());
            move || readiness(&m, *d.borrow())
        };
        http::serve(&config.http.listen, metrics.clone(), ready).await.map_err(BridgeError::Http)?;
    }
    crate::sink::kafka::spawn_probe(&config.kafka, Arc::new(ProbeFlag(metrics.clone())))?;

    let (tx, mqtt_rx) = mpsc::channel::<Received>(usize::from(config.mqtt.max_in_flight).max(16));
    let (stop_tx, stop_rx) = watch::channel(false);
    let session = tokio::spawn(source.run(tx, draining_rx, stop_rx));
    let (fatal_tx, mut fatal) = mpsc::unbounded_channel::<crate::journal::JournalError>();
    // Direct mode: Kafka deliveries ack MQTT. Journal mode: MQTT is acked
    // after the journal fsync, and Kafka deliveries advance the journal.
    let (mut inbound, completion): (mpsc::Receiver<Received>, Arc<dyn Completion>) = match &journal {
        None => (mqtt_rx, Arc::new(acks.clone())),
        Some(j) => {
            let jacks = Arc::new(JournalAcks::new(j.clone()));
            let (ftx, frx) = mpsc::channel(FORWARD_QUEUE);
            tokio::spawn(feed(j.reader_from_ack()?, jacks.clone(), ftx));
            let (appender, a, m) = (j.appender(), acks.clone(), metrics.clone());
            tokio::spawn(async move {
                if let Err(e) = ingest(mqtt_rx, appender, a, m).await {
                    let _ = fatal_tx.send(e);
                }
            });
            (frx, jacks)
        }
    };
    let (retry_tx, mut retries) = mpsc::unbounded_channel::<Box<Pending>>();
    admin.ensure(router.dead_letter_topic()).await;

    let grace = config.bridge.grace_period.get();
    let mut deadline: Option<Instant> = None;
    let mut tick = tokio::time::interval(ACK_RETRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {
                acks.flush();
                if let Some(d) = deadline {
                    // In journal mode what Kafka has not taken yet is safe in the journal.
                    let forwarded = metrics.in_flight.load(Relaxed) <= 0
                        || (journal.is_some() && !metrics.kafka_reachable.load(Relaxed));
                    let idle = forwarded && acks.outstanding() == 0 && (journal.is_some() || inbound.is_empty());
                    if idle || Instant::now() >= d {
                        if !idle {
                            tracing::warn!(in_flight = metrics.in_flight.load(Relaxed), "Grace period over; unacked messages stay with the broker and will be redelivered.");
                        }
                        break;
                    }
                }
            }
            Some(report) = reports.recv() => {
                handle_report(report, &router, &mut producer, completion.as_ref(), &metrics, &retry_tx);
            }
            Some(error) = fatal.recv() => {
                tracing::error!(%error, "Journal failed; exiting (unacked messages stay with the broker).");
                let _ = stop_tx.send(true);
                return Err(error.into());
            }
            () = &mut shutdown, if deadline.is_none() => {
                tracing::info!(in_flight = metrics.in_flight.load(Relaxed), grace = ?grace, "Shutting down: no new messages; finishing those in flight.");
                let _ = draining_tx.send(true);
                deadline = Some(Instant::now() + grace);
            }
            Some(p) = retries.recv() => producer.send(p).await,
            Some(r) = inbound.recv() => {
                let out = router.route(&r.msg);
                if let Some(reason) = out.reason {
                    let detail = out.headers.iter().find(|(k, _)| *k == crate::route::headers::ERROR).map(|(_, v)| v.as_str()).unwrap_or("");
                    metrics.on_dead_letter_routed(reason, &r.msg.topic, detail);
                } else {
                    admin.ensure(&out.topic).await;
                }
                let pending = Box::new(Pending { seq: r.seq, inbound: r.msg, out, received_at: Instant::now(), attempts: 0 });
                producer.send(pending).await;
            }
        }
    }
    let _ = stop_tx.send(true);
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now())).unwrap_or_default();
    let _ = tokio::time::timeout(remaining.max(Duration::from_secs(1)), session).await;
    let flush_for = remaining.max(Duration::from_millis(500));
    // Everything is delivered or given up on by now; blocking the one runtime thread is fine.
    let flushed = producer.flush(flush_for);
    if let Err(error) = flushed {
        tracing::warn!(%error, "Kafka producer flush did not complete.");
    }
    if let Some(j) = &journal {
        if let Err(error) = j.close().await {
            tracing::warn!(%error, "Journal close failed; it is recovered on the next start.");
        }
    }
    tracing::info!(
        received = metrics.received.load(Relaxed),
        delivered = metrics.delivered.load(Relaxed),
        dead_lettered = metrics.dead_lettered_total(),
        left_with_broker = metrics.left_with_broker.load(Relaxed),
        "Bridge stopped."
    );
    Ok(())
}

fn handle_report(
    report: Delivery,
    router: &Router,
    producer: &mut Producer,
    acks: &dyn Completion,
    metrics: &BridgeMetrics,
    retry_tx: &mpsc::UnboundedSender<Box<Pending>>,
) {
    match report {
        Delivery::Delivered(p) => {
            metrics.on_delivered(p.out.reason, &p.out.tenant_id, &p.out.project_id, p.received_at.elapsed());
            acks.complete(p.seq);
        }
        Delivery::Failed(mut p, error) => match classify(&error) {
            Failure::Reject if p.out.reason.is_none() => {
                tracing::warn!(topic = p.out.topic, %error, "Kafka rejected the message; dead-lettering it.");
                p.out = router.dead_letter(&p.inbound, DeadLetterReason::KafkaRejected, error.to_string());
                let _ = retry_tx.send(p);
            }
            kind => {
                if kind == Failure::Fatal {
                    if let Some(fatal) = producer.fatal_error() {
                        tracing::error!(error = fatal, "Kafka producer hit a fatal error; recreating it.");
                        metrics.kafka_producer_restarts.fetch_add(1, Relaxed);
                        if let Err(e) = producer.recreate() {
                            tracing::error!(%e, "Could not recreate the Kafka producer.");
                        }
                    }
                } else if kind == Failure::Reject {
                    tracing::error!(topic = p.out.topic, %error, "Kafka rejected a dead letter; retrying it (it is never dropped).");
                }
                metrics.on_kafka_retry(&p.out.topic, &error.to_string());
                p.attempts = p.attempts.saturating_add(1);
                let backoff =
                    (Duration::from_millis(50) * 2u32.saturating_pow(p.attempts.min(8))).min(MAX_RETRY_BACKOFF);
                let tx = retry_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(backoff).await;
                    let _ = tx.send(p);
                });
            }
        },
    }
}

fn readiness(m: &BridgeMetrics, draining: bool) -> Result<(), String> {
    let mut why = Vec::new();
    if draining {
        why.push("shutting down");
    }
    if !m.mqtt_connected.load(Relaxed) {
        why.push("MQTT not connected");
    } else if !m.mqtt_subscribed.load(Relaxed) {
        why.push("MQTT not subscribed");
    }
    if !m.kafka_reachable.load(Relaxed) {
        why.push("Kafka not reachable");
    }
    if m.journal_full.load(Relaxed) {
        why.push("journal full (MQTT acks paused)");
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

/// Where the Kafka probe reports.
struct ProbeFlag(Arc<BridgeMetrics>);

impl crate::sink::kafka::Reachability for ProbeFlag {
    fn set(&self, ok: bool) -> bool {
        self.0.kafka_reachable.swap(ok, Relaxed)
    }
}

/// Open the journal, report what recovery found, count the replay.
pub(super) fn open_journal(
    cfg: &crate::journal::JournalConfig,
    metrics: &Arc<BridgeMetrics>,
) -> Result<Arc<crate::journal::Journal>, crate::journal::JournalError> {
    let (journal, rec) = crate::journal::Journal::open(cfg.clone())?;
    tracing::info!(
        path = %cfg.path.display(),
        undelivered = rec.undelivered,
        truncated_bytes = rec.truncated_bytes,
        "Journal open."
    );
    metrics.journal_replayed.store(rec.undelivered, Relaxed);
    metrics.in_flight.fetch_add(i64::try_from(rec.undelivered).unwrap_or(i64::MAX), Relaxed);
    publish_gauges(&journal, metrics);
    let journal = Arc::new(journal);
    spawn_gauges(&journal, metrics.clone());
    Ok(journal)
}
