//! iotpipe's own Kafka producer (`kafka.producer = "native"`): the bridge's
//! records written as Kafka record batches over the Kafka protocol, without
//! librdkafka, for a topic per tenant/project pair at any number of pairs
//! (docs/topology.md, "The native producer").
//!
//! It keeps the producer contract of the librdkafka one: `acks = all`, an
//! idempotent producer id with per-partition sequence numbers, the same
//! partitioner, every record reported once as delivered or failed (with an
//! error [`super::Failure`] classifies), and what is handed in bounded by
//! the caller. It speaks PLAINTEXT and SSL (rustls), and writes no, lz4 or
//! zstd compression; SASL and the other compressions stay with librdkafka
//! (the config check says so).

mod admin;
mod assignor;
mod batch;
mod bootstrap;
mod codec_error;
mod conn;
mod consumer;
mod engine;
#[cfg(test)]
mod engine_tests;
mod fetch_session;
mod fetcher;
mod group;
mod group_protocol;
mod lz4;
mod protocol;
mod records;

use super::diagnosis::ErrorReporter;
use super::producer::{Delivery, Pending};
use super::{ClientError, KafkaConfig};
use crate::units::KeyError;
use engine::{Cmd, Engine, Settings, Shared};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub use admin::{NativeAdmin, NewTopic};
pub use batch::Compression;
pub use consumer::{validate_properties as validate_consumer_properties, NativeConsumer};

/// Records the handle holds before `send` waits.
const CHANNEL: usize = 1024;
/// A partition's batch, and a request, at most (uncompressed record bytes);
/// under the broker's default `message.max.bytes` (1 MiB).
const BATCH_BYTES: usize = 1_000_000;
const REQUEST_BYTES: usize = 4 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const METADATA_MAX_AGE: Duration = Duration::from_secs(300);

/// The `ssl.*` properties the native producer reads; any other one (inline
/// PEMs, keystores, cipher lists, CRLs, an encrypted key's password) is
/// librdkafka's to honour.
const SSL_READ: [&str; 3] = ["ssl.ca.location", "ssl.certificate.location", "ssl.key.location"];

/// librdkafka producer properties (prefixes): they tune librdkafka's own
/// batching, retries and delivery, so a config that sets one means
/// librdkafka (`kafka.linger`, `kafka.compression` and
/// `kafka.delivery_timeout` are the native producer's).
const LIBRDKAFKA_PRODUCER: [&str; 17] = [
    "queue.buffering.",
    "batch.",
    "linger.ms",
    "compression.",
    "message.",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "retries",
    "retry.",
    "max.in.flight",
    "partitioner",
    "sticky.partitioning",
    "transactional.",
    "delivery.timeout.ms",
    "request.timeout.ms",
];

/// Properties the native producer accepts only with the value that keeps verification on.
const VERIFY_ON: [(&str, &str); 2] =
    [("enable.ssl.certificate.verification", "true"), ("ssl.endpoint.identification.algorithm", "https")];

/// The `[kafka]` settings `producer = "native"` needs; keys relative to `[kafka]`.
pub fn validate(cfg: &KafkaConfig) -> Result<(), KeyError> {
    if Compression::parse(&cfg.compression).is_none() {
        return Err(KeyError::new(
            "compression",
            format!(
                "`{}` is written by producer = \"librdkafka\" only; the native producer writes none, lz4 or zstd",
                cfg.compression
            ),
        ));
    }
    validate_connection(cfg)?;
    if let Some(key) = cfg.properties.keys().find(|k| LIBRDKAFKA_PRODUCER.iter().any(|p| k.starts_with(p))) {
        return Err(KeyError::new(
            format!("properties.{key}"),
            "tunes librdkafka's producer: producer = \"librdkafka\" reads it, the native producer does not",
        ));
    }
    Ok(())
}

/// What the native producer and consumer both need of `[kafka]`: a broker
/// list, plaintext or ssl with verification on, and only the `ssl.*`
/// properties they read; keys relative to `[kafka]`.
pub fn validate_connection(cfg: &KafkaConfig) -> Result<(), KeyError> {
    let proto = super::protocol(&cfg.properties);
    if super::uses_sasl(&proto) {
        return Err(KeyError::new(
            "properties.security.protocol",
            format!("`{proto}`: SASL needs librdkafka; the native Kafka clients speak plaintext and ssl"),
        ));
    }
    for (key, on) in VERIFY_ON {
        if cfg.properties.get(key).is_some_and(|v| !v.trim().eq_ignore_ascii_case(on)) {
            return Err(KeyError::new(
                format!("properties.{key}"),
                "the native Kafka clients always verify the broker's certificate and name",
            ));
        }
    }
    let verify_keys = VERIFY_ON.map(|(k, _)| k);
    if let Some(key) = cfg
        .properties
        .keys()
        .find(|k| k.starts_with("ssl.") && !SSL_READ.contains(&k.as_str()) && !verify_keys.contains(&k.as_str()))
    {
        return Err(KeyError::new(
            format!("properties.{key}"),
            "is read by librdkafka only; the native Kafka clients read ssl.ca.location, ssl.certificate.location and ssl.key.location",
        ));
    }
    bootstrap(&cfg.brokers).map(|_| ()).map_err(|e| KeyError::new("brokers", e))
}

/// `host:port` pairs from `brokers` (a `scheme://` prefix is allowed, the
/// port defaults to 9092).
fn bootstrap(brokers: &str) -> Result<Vec<(String, u16)>, String> {
    let mut out = Vec::new();
    for b in brokers.split(',').map(str::trim).filter(|b| !b.is_empty()) {
        let b = b.rsplit_once("://").map_or(b, |(_, rest)| rest);
        let (host, port) = match b.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') => {
                (h, p.parse::<u16>().map_err(|_| format!("`{b}`: the port is not a number from 1 to 65535"))?)
            }
            _ => (b, 9092),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(format!("`{b}` is not host:port"));
        }
        out.push((host.to_string(), port));
    }
    if out.is_empty() {
        return Err("names no broker".into());
    }
    Ok(out)
}

fn property<'a>(props: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    props.get(key).map(String::as_str).map(str::trim).filter(|v| !v.is_empty())
}

fn tls(props: &BTreeMap<String, String>) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if !super::uses_tls(&super::protocol(props)) {
        return Ok(None);
    }
    let key = |k: &str| format!("kafka.properties.{k}");
    let ca = property(props, "ssl.ca.location").filter(|v| *v != "probe").map(Path::new);
    let roots = crate::tls::root_store("kafka.properties.ssl.ca.location", ca).map_err(|e| e.to_string())?;
    let client = match (property(props, "ssl.certificate.location"), property(props, "ssl.key.location")) {
        (Some(cert), Some(k)) => Some(crate::tls::ClientCert {
            cert_key: "kafka.properties.ssl.certificate.location",
            cert: Path::new(cert),
            key_key: "kafka.properties.ssl.key.location",
            key: Path::new(k),
        }),
        (None, None) => None,
        _ => return Err(format!("{} and {} go together", key("ssl.certificate.location"), key("ssl.key.location"))),
    };
    Ok(Some(Arc::new(crate::tls::client_config(roots, client).map_err(|e| e.to_string())?)))
}

/// The handle the bridge sends through; the engine runs as its own task.
pub struct NativeProducer {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    reports: mpsc::UnboundedSender<Delivery>,
    /// Taken once by the caller (a lock only so the handle can be shared).
    engine: std::sync::Mutex<Option<Box<Engine>>>,
}

fn creation(e: impl std::fmt::Display) -> ClientError {
    ClientError::from(KafkaError::ClientCreation(e.to_string()))
}

/// A config key's error as a client's creation error, the key named with
/// its section (`kafka.brokers: names no broker`).
fn key_error(section: &str, e: KeyError) -> ClientError {
    creation(format!("{section}.{}: {}", e.key, e.message))
}

/// Where and as whom every native client connects, from `[kafka]`: the
/// bootstrap brokers, TLS, and the client id.
struct Endpoints {
    bootstrap: Vec<(String, u16)>,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: Arc<str>,
}

impl Endpoints {
    /// `[kafka]`'s connection, validated (an error names its key). The
    /// client id is `client_id` if given (the sink's own `client.id`), else
    /// `kafka.properties.client.id`, else "iotpipe".
    fn of(cfg: &KafkaConfig, client_id: Option<&str>) -> Result<Self, ClientError> {
        validate_connection(cfg).map_err(|e| key_error("kafka", e))?;
        Self::validated(cfg, client_id)
    }

    /// As [`Endpoints::of`], for a `[kafka]` that has passed
    /// [`validate_connection`] already (the producer's [`validate`] runs it).
    fn validated(cfg: &KafkaConfig, client_id: Option<&str>) -> Result<Self, ClientError> {
        let client_id = client_id.or_else(|| property(&cfg.properties, "client.id")).unwrap_or("iotpipe");
        Ok(Self {
            bootstrap: bootstrap(&cfg.brokers).map_err(creation)?,
            tls: tls(&cfg.properties).map_err(creation)?,
            client_id: Arc::from(client_id),
        })
    }
}

impl NativeProducer {
    pub fn new(cfg: &KafkaConfig, reports: mpsc::UnboundedSender<Delivery>) -> Result<Self, ClientError> {
        validate(cfg).map_err(|e| key_error("kafka", e))?;
        let Endpoints { bootstrap, tls, client_id } = Endpoints::validated(cfg, None)?;
        let settings = Settings {
            bootstrap,
            tls,
            client_id,
            compression: Compression::parse(&cfg.compression).unwrap_or(Compression::None),
            linger: cfg.linger.get(),
            delivery_timeout: cfg.delivery_timeout.get(),
            request_timeout: REQUEST_TIMEOUT,
            batch_bytes: BATCH_BYTES,
            request_bytes: REQUEST_BYTES,
            metadata_max_age: METADATA_MAX_AGE,
            auto_create: !cfg.create_topics,
        };
        let (tx, rx) = mpsc::channel(CHANNEL);
        let shared = Arc::new(Shared::default());
        let errors = Arc::new(ErrorReporter::new("producer"));
        let engine = Engine::new(settings, rx, reports.clone(), shared.clone(), errors);
        Ok(Self { tx, shared, reports, engine: std::sync::Mutex::new(Some(Box::new(engine))) })
    }

    /// The task that does the work: run it under the pipeline's supervisor.
    pub fn take_engine(&mut self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        self.engine.lock().ok()?.take().map(|e| e.run())
    }

    /// Hand one record over; waits while the engine's channel is full.
    pub async fn send(&self, pending: Box<Pending>) {
        self.shared.in_flight.fetch_add(1, Relaxed);
        if let Err(mpsc::error::SendError(cmd)) = self.tx.send(Cmd::Send(pending)).await {
            self.refused(cmd);
        }
    }

    /// Hand records over in their order, in one channel operation; waits
    /// while the engine's channel is full.
    // Each record stays in its own box: it travels alone from here on
    // (the engine's queues, delivery reports, retries).
    #[allow(clippy::vec_box)]
    pub async fn send_many(&self, pendings: Vec<Box<Pending>>) {
        let n = i64::try_from(pendings.len()).unwrap_or(i64::MAX);
        self.shared.in_flight.fetch_add(n, Relaxed);
        if let Err(mpsc::error::SendError(cmd)) = self.tx.send(Cmd::SendMany(pendings)).await {
            self.refused(cmd);
        }
    }

    /// The engine is gone: what `cmd` held comes back as failed deliveries.
    fn refused(&self, cmd: Cmd) {
        let pendings = match cmd {
            Cmd::Send(p) => vec![p],
            Cmd::SendMany(ps) => ps,
            Cmd::Reset => Vec::new(),
        };
        for p in pendings {
            self.shared.in_flight.fetch_sub(1, Relaxed);
            let _ =
                self.reports.send(Delivery::Failed(p, ClientError::from(KafkaError::MessageProduction(C::PurgeQueue))));
        }
    }

    /// Start over with a new producer id.
    pub fn recreate(&self) {
        let _ = self.tx.try_send(Cmd::Reset);
    }

    pub fn in_flight(&self) -> i32 {
        i32::try_from(self.shared.in_flight.load(Relaxed).max(0)).unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_lists() {
        assert_eq!(bootstrap("127.0.0.1:9092").unwrap(), vec![("127.0.0.1".to_string(), 9092)]);
        assert_eq!(
            bootstrap(" a:1, PLAINTEXT://b:2 ,c").unwrap(),
            vec![("a".to_string(), 1), ("b".to_string(), 2), ("c".to_string(), 9092)]
        );
        assert_eq!(bootstrap("[::1]:9093").unwrap(), vec![("::1".to_string(), 9093)]);
        assert!(bootstrap("a:port").is_err());
        assert!(bootstrap(" , ").is_err());
        assert!(bootstrap("a:0").is_err());
    }

    #[test]
    fn what_the_native_producer_cannot_do_is_a_config_error() {
        let ok = KafkaConfig::default();
        assert_eq!(validate(&ok), Ok(()));
        let gzip = KafkaConfig { compression: "gzip".into(), ..KafkaConfig::default() };
        assert_eq!(validate(&gzip).unwrap_err().key, "compression");
        let mut sasl = KafkaConfig::default();
        sasl.properties.insert("security.protocol".into(), "SASL_SSL".into());
        assert_eq!(validate(&sasl).unwrap_err().key, "properties.security.protocol");
        let mut noverify = KafkaConfig::default();
        noverify.properties.insert("enable.ssl.certificate.verification".into(), "false".into());
        assert_eq!(validate(&noverify).unwrap_err().key, "properties.enable.ssl.certificate.verification");
        noverify.properties.insert("enable.ssl.certificate.verification".into(), "true".into());
        assert_eq!(validate(&noverify), Ok(()));
        let mut tuned = KafkaConfig::default();
        tuned.properties.insert("linger.ms".into(), "5".into());
        assert_eq!(validate(&tuned).unwrap_err().key, "properties.linger.ms");
        tuned.properties.clear();
        tuned.properties.insert("session.timeout.ms".into(), "6000".into());
        assert_eq!(validate(&tuned), Ok(()), "a consumer group setting is not the producer's");
        let mut inline = KafkaConfig::default();
        inline.properties.insert("ssl.ca.pem".into(), "-----BEGIN CERTIFICATE-----".into());
        assert_eq!(validate(&inline).unwrap_err().key, "properties.ssl.ca.pem");
        assert_eq!(
            KafkaConfig { producer: crate::kafka::ProducerKind::Auto, ..inline }.chosen_producer(),
            crate::kafka::ProducerKind::Librdkafka
        );
        let mut half = KafkaConfig::default();
        half.properties.insert("security.protocol".into(), "ssl".into());
        half.properties.insert("ssl.certificate.location".into(), "/x.pem".into());
        assert!(tls(&half.properties).unwrap_err().contains("go together"));
    }

    #[test]
    fn start_up_errors_name_the_key_with_its_section() {
        let message = |e: Option<ClientError>| e.expect("refused").to_string();
        let (reports, _) = mpsc::unbounded_channel();
        let gzip = KafkaConfig { compression: "gzip".into(), ..KafkaConfig::default() };
        let e = message(NativeProducer::new(&gzip, reports.clone()).err());
        assert!(e.contains("kafka.compression: `gzip` is written by"), "{e}");
        let nowhere = KafkaConfig { brokers: " , ".into(), ..KafkaConfig::default() };
        let e = message(NativeProducer::new(&nowhere, reports).err());
        assert!(e.contains("kafka.brokers: names no broker"), "{e}");
        let e = message(Endpoints::of(&nowhere, None).err());
        assert!(e.contains("kafka.brokers: names no broker"), "{e}");
        let e = key_error("sink", KeyError::new("properties.fetch.max.bytes", "is read by")).to_string();
        assert!(e.contains("sink.properties.fetch.max.bytes: is read by"), "{e}");
    }
}
