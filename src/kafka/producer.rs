//! The Kafka producer: librdkafka with `enable.idempotence`, `acks=all`
//! (the default), or the native one (`kafka.producer = "native"`,
//! [`super::native`]); both report every record back over one channel as
//! [`Delivery`], with a failure as a [`ClientError`]. With librdkafka, a
//! record carries its pipeline state as the delivery opaque, and the
//! delivery callback hands it back.

use super::diagnosis::ErrorReporter;
use super::{ClientError, KafkaConfig};
use crate::record::{Inbound, Outbound};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A message on its way to Kafka.
#[derive(Debug)]
pub struct Pending {
    /// Place in the MQTT ack order.
    pub seq: u64,
    /// The message as received (kept to dead-letter it if Kafka rejects it).
    pub inbound: Inbound,
    pub out: Outbound,
    pub received_at: Instant,
    pub attempts: u32,
}

/// The outcome of one send.
#[derive(Debug)]
pub enum Delivery {
    Delivered(Box<Pending>),
    Failed(Box<Pending>, ClientError),
}

pub struct Context {
    reports: mpsc::UnboundedSender<Delivery>,
    errors: Arc<ErrorReporter>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.errors.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(&error, reason);
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Pending>;
    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        let report = match result {
            Ok(_) => Delivery::Delivered(pending),
            Err((e, _)) => Delivery::Failed(pending, e.clone().into()),
        };
        // The receiver is gone only when the bridge is exiting.
        let _ = self.reports.send(report);
    }
}

/// The producer's librdkafka settings; every `kafka.properties` entry wins.
fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = super::common_config(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &cfg.compression)
        .set("linger.ms", cfg.linger.get().as_millis().to_string())
        .set("message.timeout.ms", cfg.delivery_timeout.get().as_millis().max(1).to_string())
        .set("queue.buffering.max.messages", "100000")
        .set("queue.buffering.max.kbytes", "16384")
        .set("batch.num.messages", "10000")
        .set("statistics.interval.ms", "0")
        // With the topic creator on, a topic the broker created on a
        // metadata request would get the broker's defaults, not
        // `kafka.partitions` and `kafka.retention` (the native producer
        // asks alike).
        .set("allow.auto.create.topics", if cfg.create_topics { "false" } else { "true" });
    super::client::apply(&mut c, &cfg.properties, |_| true);
    c
}

/// The producer the bridge sends through.
pub struct Producer {
    backend: Backend,
}

enum Backend {
    Librdkafka(Librdkafka),
    Native(super::native::NativeProducer),
}

impl Producer {
    pub fn new(cfg: &KafkaConfig, reports: mpsc::UnboundedSender<Delivery>) -> Result<Self, ClientError> {
        let chosen = cfg.chosen_producer();
        tracing::info!(producer = ?chosen, configured = ?cfg.producer, "Kafka producer.");
        let backend = match chosen {
            super::ProducerKind::Native => Backend::Native(super::native::NativeProducer::new(cfg, reports)?),
            _ => Backend::Librdkafka(Librdkafka::new(cfg, reports)?),
        };
        Ok(Self { backend })
    }

    /// The native producer's task, once: the caller runs it under its
    /// supervisor (librdkafka runs its own threads: `None`).
    pub fn take_task(&mut self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        match &mut self.backend {
            Backend::Librdkafka(_) => None,
            Backend::Native(n) => n.take_engine(),
        }
    }

    /// Hand one record over; waits (asynchronously) while the producer is full.
    pub async fn send(&self, pending: Box<Pending>) {
        match &self.backend {
            Backend::Librdkafka(p) => p.send(pending).await,
            Backend::Native(n) => n.send(pending).await,
        }
    }

    /// Hand records over in their order (to the native producer in one
    /// step); waits while the producer's queue is full.
    // Each record stays in its own box: it travels alone from here on
    // (the engine's queues, delivery reports, retries).
    #[allow(clippy::vec_box)]
    pub async fn send_many(&self, pendings: Vec<Box<Pending>>) {
        match &self.backend {
            Backend::Librdkafka(p) => {
                for pending in pendings {
                    p.send(pending).await;
                }
            }
            Backend::Native(n) => n.send_many(pendings).await,
        }
    }

    /// The idempotent producer's fatal error, if any (the native producer
    /// starts over with a new producer id by itself).
    pub fn fatal_error(&self) -> Option<String> {
        match &self.backend {
            Backend::Librdkafka(p) => p.fatal_error(),
            Backend::Native(_) => None,
        }
    }

    /// Start over after a fatal error; what the old producer still held
    /// comes back as failed deliveries and is sent again (librdkafka), or is
    /// sent again under a new producer id (native).
    pub fn recreate(&mut self) -> Result<(), ClientError> {
        match &mut self.backend {
            Backend::Librdkafka(p) => p.recreate(),
            Backend::Native(n) => {
                n.recreate();
                Ok(())
            }
        }
    }

    /// Records handed over and not yet reported.
    pub fn in_flight(&self) -> i32 {
        match &self.backend {
            Backend::Librdkafka(p) => p.inner.in_flight_count(),
            Backend::Native(n) => n.in_flight(),
        }
    }
}

/// The librdkafka producer, recreated in place after a fatal error.
struct Librdkafka {
    inner: ThreadedProducer<Context>,
    cfg: ClientConfig,
    reports: mpsc::UnboundedSender<Delivery>,
    errors: Arc<ErrorReporter>,
}

/// Wait between attempts when librdkafka's queue is full.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(2);

impl Librdkafka {
    fn new(cfg: &KafkaConfig, reports: mpsc::UnboundedSender<Delivery>) -> Result<Self, ClientError> {
        let cc = producer_config(cfg);
        let errors = Arc::new(ErrorReporter::new("producer"));
        let inner = cc.create_with_context(Context { reports: reports.clone(), errors: errors.clone() })?;
        Ok(Self { inner, cfg: cc, reports, errors })
    }

    /// Hand one record to librdkafka; waits (asynchronously) while its queue is full.
    async fn send(&self, mut pending: Box<Pending>) {
        loop {
            let topic = pending.out.topic.clone();
            let key = pending.out.key.clone();
            let value = pending.out.value.clone();
            let mut headers = OwnedHeaders::new_with_capacity(pending.out.headers.len());
            for (k, v) in pending.out.headers.iter() {
                headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
            }
            let ts = pending.out.timestamp_ms;
            let mut record =
                BaseRecord::with_opaque_to(&topic, pending).payload(&value[..]).headers(headers).timestamp(ts);
            if let Some(k) = key.as_deref() {
                record = record.key(k);
            }
            match self.inner.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                    pending = rec.delivery_opaque;
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((e, rec)) => {
                    // Not enqueued: report it like a failed delivery so the
                    // caller's retry / dead-letter logic applies.
                    let _ = self.reports.send(Delivery::Failed(rec.delivery_opaque, e.into()));
                    return;
                }
            }
        }
    }

    fn fatal_error(&self) -> Option<String> {
        self.inner.client().fatal_error().map(|(code, msg)| format!("{code:?}: {msg}"))
    }

    /// Replace a producer that hit a fatal error.
    fn recreate(&mut self) -> Result<(), ClientError> {
        let fresh: ThreadedProducer<Context> =
            self.cfg.create_with_context(Context { reports: self.reports.clone(), errors: self.errors.clone() })?;
        let old = std::mem::replace(&mut self.inner, fresh);
        old.purge(rdkafka::producer::PurgeConfig::default().queue().inflight());
        drop(old);
        Ok(())
    }
}
