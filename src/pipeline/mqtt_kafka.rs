//! `iotpipe bridge`: MQTT → route → Kafka, acking each message to the broker
//! only after Kafka acknowledged it (or its dead letter) — or, with
//! `[journal]`, after the journal's fsync, forwarding the journal to Kafka.
//!
//! Tasks (see [`super::supervisor`]): `mqtt-session`, `kafka-forwarder`,
//! in journal mode `journal-ingest` and `journal-reader`; in the
//! background `http`, `kafka-probe`, `topic-creator`, `journal-gauges`.
//! In journal mode the journal is recovered first ([`start_up`]), with the
//! background tasks already running; the MQTT session starts after it.

use super::ingress::Ingress;
use super::journal_stage::{self, Completion, JournalAcks, Window};
use super::kafka_forwarder::{Forwarder, Upstream};
use super::supervisor::{serve_http, start_up, supervise, Plan, Signals, Tasks};
use super::{BridgeSettings, PipelineError};
use crate::health::{Health, Parts};
use crate::kafka::{run_probe, run_topic_creator, Producer, TopicAdmin, TopicRequests};
use crate::telemetry::{Exposition, MessageMetrics, ProcessInfo};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::mpsc;

pub async fn run(config: BridgeSettings, shutdown: impl Future<Output = ()>) -> Result<(), PipelineError> {
    let journal_mode = config.journal.is_some();
    let health = Health::new(Parts { mqtt: true, kafka: true, journal: journal_mode, store: false });
    let metrics = Arc::new(MessageMetrics::new(config.http.per_tenant_metrics));
    let exposition = Arc::new(Exposition {
        command: "bridge",
        health: health.clone(),
        messages: Some(metrics.clone()),
        store: None,
        consumer: None,
        process: ProcessInfo::default(),
    });
    let router = crate::route::Router::new(&config.route, &config.targets)?;
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let mut producer = Producer::new(&config.kafka, reports_tx)?;
    let library = config.kafka.bridge_library();
    let admin = TopicAdmin::new(&config.kafka, library)?;

    // HTTP and the Kafka side first: /healthz answers, and /readyz says
    // "recovering journal", while recovery reads the journal. MQTT is
    // connected only once the journal is open.
    let mut tasks = Tasks::new();
    let signals = Signals::default();
    serve_http(&mut tasks, &config.http.listen, exposition, health.clone(), axum::Router::new()).await?;
    tasks.background("kafka-probe", run_probe(config.kafka.clone(), library, health.clone()));
    if let Some(task) = producer.take_task() {
        // Background: it runs until the end, so the forwarder's last
        // deliveries still go out while it drains.
        tasks.background("kafka-producer", async move {
            task.await;
            Ok::<(), PipelineError>(())
        });
    }
    let (mut topics, topic_rx) = TopicRequests::channel();
    topics.request(router.dead_letter_topic());
    tasks.background("topic-creator", async move {
        run_topic_creator(admin, topic_rx).await;
        Ok::<(), PipelineError>(())
    });
    tokio::pin!(shutdown);
    let journal = match &config.journal {
        Some(jc) => {
            let recovery = journal_stage::recover(jc, &metrics, &health);
            match start_up(&mut tasks, &mut shutdown, "journal recovery", recovery).await? {
                Some(j) => Some(j),
                None => return Ok(()),
            }
        }
        None => None,
    };

    let ingress = Ingress::start(&config.mqtt, metrics.clone(), health.clone(), &mut tasks, &signals)?;
    let acks = ingress.acks.clone();
    // Direct mode: Kafka deliveries ack MQTT. Journal mode: MQTT is acked
    // after the journal fsync, and Kafka deliveries advance the journal.
    let (inbound, completion): (_, Arc<dyn Completion>) = match (&journal, &config.journal) {
        (Some(j), Some(jc)) => {
            let window = Arc::new(Window::new(jc));
            let jacks = Arc::new(JournalAcks::new(j.clone(), window.clone()));
            // Runs of up to FEED_RUN records: room for the whole window in runs of one.
            let (tx, rx) = mpsc::channel(jc.forward_max_records.min(4096));
            let handoff = journal_stage::handoff(jc);
            tasks.finishing(
                "journal-ingest",
                journal_stage::ingest(
                    ingress.messages,
                    j.appender(),
                    acks.clone(),
                    health.clone(),
                    Some(handoff.clone()),
                ),
            );
            let reader = j.reader_from_ack()?;
            tasks.finishing(
                "journal-reader",
                journal_stage::feed(
                    reader,
                    handoff,
                    jacks.clone(),
                    window.clone(),
                    tx,
                    metrics.clone(),
                    signals.stop(),
                ),
            );
            tasks.background("journal-gauges", journal_stage::gauges(j.clone(), Some(window), metrics.clone()));
            (Upstream::Journal(rx), jacks)
        }
        _ => (Upstream::Session(ingress.messages), Arc::new(acks.clone())),
    };
    let forwarder = Forwarder {
        router,
        producer,
        reports,
        completion,
        metrics: metrics.clone(),
        topics,
        flush_within: config.bridge.grace_period.get(),
        recreated_at: None,
        delivered: Vec::new(),
    };
    tasks.finishing("kafka-forwarder", forwarder.run(inbound, signals.stop()));

    let plan = Plan {
        grace: config.bridge.grace_period.get(),
        // Direct mode: everything received is in Kafka and acked. Journal
        // mode: everything received is journaled and acked; what Kafka has
        // not taken yet is safe in the journal once Kafka is away.
        drained: || {
            let forwarded = metrics.in_flight.load(Relaxed) <= 0 || (journal_mode && !health.kafka_reachable());
            forwarded && acks.outstanding() == 0 && acks.settled()
        },
        tick: || acks.flush(),
    };
    let result = supervise(&mut tasks, &signals, &health, shutdown, plan).await;
    if let Some(j) = &journal {
        if let Err(error) = j.close().await {
            tracing::warn!(%error, "Journal close failed; it is recovered on the next start.");
        }
    }
    if metrics.in_flight.load(Relaxed) > 0 && !journal_mode {
        tracing::warn!(
            in_flight = metrics.in_flight.load(Relaxed),
            "Unacked messages stay with the broker and will be redelivered."
        );
    }
    tracing::info!(
        received = metrics.received.load(Relaxed),
        delivered = metrics.delivered.load(Relaxed),
        dead_lettered = metrics.dead_lettered_total(),
        left_with_broker = metrics.left_with_broker.load(Relaxed),
        "Bridge stopped."
    );
    result
}
