//! Typed configuration: one TOML file, every key overridable from the
//! environment (`IOTPIPE_SECTION__KEY`), validated once at start-up.

mod load;
mod units;
pub mod validate;

pub use load::{load, load_str, load_with_defaults, ConfigError};
pub use units::{ByteSize, HumanDuration};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The documented example printed by `iotpipe config`.
pub const EXAMPLE: &str = include_str!("example.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where messages come from.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// How tenant, project, device and event time are extracted, and what is rejected.
    #[serde(default)]
    pub route: RouteConfig,
    /// Where messages go.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Health, readiness and metrics endpoints.
    #[serde(default)]
    pub http: HttpConfig,
    /// Shutdown behaviour of the bridge.
    #[serde(default)]
    pub bridge: BridgeConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// `iotpipe sink`: the consumer group.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Where `iotpipe sink` and `iotpipe run` store telemetry.
    #[serde(default)]
    pub store: crate::store::StoreConfig,
    /// Local journal; in a bridge config it switches the bridge to journal mode.
    #[serde(default)]
    pub journal: Option<crate::journal::JournalConfig>,
}

/// MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttVersion {
    #[default]
    V5,
    V311,
}

impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = load::lenient_opt_string(d)?.unwrap_or_default();
        match v.as_str() {
            "5" | "5.0" | "v5" => Ok(Self::V5),
            "3.1.1" | "311" | "4" | "v3.1.1" => Ok(Self::V311),
            other => Err(serde::de::Error::custom(format!("version must be \"5\" or \"3.1.1\", not `{other}`"))),
        }
    }
}

/// MQTT quality of service of the subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Qos {
    AtMostOnce,
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

impl Qos {
    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
    pub fn level(self) -> u8 {
        match self {
            Self::AtMostOnce => 0,
            Self::AtLeastOnce => 1,
            Self::ExactlyOnce => 2,
        }
    }
}

impl<'de> Deserialize<'de> for Qos {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(d)?;
        Qos::from_level(n).ok_or_else(|| serde::de::Error::custom(format!("qos must be 0, 1 or 2, not {n}")))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Stable client id; the persistent session is keyed by it. Default: `iotpipe-<hostname>`.
    #[serde(deserialize_with = "load::lenient_opt_string")]
    pub client_id: Option<String>,
    /// Topic filters to subscribe to.
    pub topics: Vec<String>,
    /// QoS of the subscriptions (0, 1 or 2).
    pub qos: Qos,
    /// Shared subscription group: subscribes to `$share/{group}/{filter}`.
    pub shared_group: Option<String>,
    /// "5" (default) or "3.1.1".
    pub version: MqttVersion,
    #[serde(deserialize_with = "load::lenient_opt_string")]
    pub username: Option<String>,
    #[serde(deserialize_with = "load::lenient_opt_string")]
    pub password: Option<String>,
    /// File holding the password (trailing newline stripped).
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle for `mqtts://`; the system roots are used when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub keep_alive: HumanDuration,
    /// How long the broker keeps the session while the bridge is away (MQTT 5).
    pub session_expiry: HumanDuration,
    /// Unacknowledged messages the broker may have outstanding to the bridge
    /// (MQTT 5 receive maximum; with 3.1.1 the broker's own limit applies).
    pub max_in_flight: u16,
    pub reconnect_backoff_min: HumanDuration,
    pub reconnect_backoff_max: HumanDuration,
    pub connect_timeout: HumanDuration,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: None,
            topics: vec!["mtic/msg/client/realtime/#".into()],
            qos: Qos::AtLeastOnce,
            shared_group: None,
            version: MqttVersion::V5,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            keep_alive: HumanDuration::secs(30),
            session_expiry: HumanDuration::secs(7 * 86400),
            max_in_flight: 1000,
            reconnect_backoff_min: HumanDuration::millis(200),
            reconnect_backoff_max: HumanDuration::secs(30),
            connect_timeout: HumanDuration::secs(10),
        }
    }
}

/// Forwarding format of the Kafka record value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// The MQTT payload byte for byte; metadata in headers.
    #[default]
    Raw,
    /// A JSON object: tenant_id, project_id, device_id, mqtt_topic, id, timestamp, payload.
    Envelope,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    /// Topic pattern with named segments, `+` and a trailing `#`.
    pub topic_pattern: String,
    /// JSON pointer to the device id in the payload (e.g. `/deviceId`).
    pub device_id: Option<String>,
    /// JSON pointer to the event time (epoch ms, epoch s or RFC 3339).
    pub event_time: Option<String>,
    /// Dead-letter payloads that are not JSON.
    pub require_json: bool,
    /// Payloads larger than this are dead-lettered.
    pub max_payload_size: ByteSize,
    pub format: PayloadFormat,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            topic_pattern: "mtic/msg/client/realtime/{tenant_id}/{project_id}/#".into(),
            device_id: None,
            event_time: None,
            require_json: true,
            max_payload_size: ByteSize::mib(1),
            format: PayloadFormat::Raw,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Topic template over `{tenant_id}`, `{project_id}`, `{device_id}` and pattern fields.
    pub topic: String,
    /// Key template.
    pub key: String,
    pub dead_letter_topic: String,
    /// Dead-lettered payloads larger than this are truncated (headers say so).
    pub dead_letter_max_payload: ByteSize,
    /// none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// Create missing topics with `partitions`, `replication_factor`, `retention`.
    pub create_topics: bool,
    pub partitions: i32,
    /// -1 uses the broker's default.
    pub replication_factor: i32,
    pub retention: HumanDuration,
    /// How long librdkafka tries one send before the bridge re-sends it itself.
    pub delivery_timeout: HumanDuration,
    pub linger: HumanDuration,
    /// Any librdkafka property, passed through verbatim (wins over the keys above).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "iot.{tenant_id}.{project_id}".into(),
            key: "{tenant_id}/{project_id}/{device_id}".into(),
            dead_letter_topic: "iot-dead-letters".into(),
            dead_letter_max_payload: ByteSize::kib(512),
            compression: "lz4".into(),
            create_topics: true,
            partitions: 3,
            replication_factor: -1,
            retention: HumanDuration::secs(3 * 86400),
            delivery_timeout: HumanDuration::secs(60),
            linger: HumanDuration::millis(20),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of /healthz, /readyz and /metrics; empty disables the server.
    pub listen: String,
    /// Count messages per tenant and project (`iotpipe_tenant_messages_total`).
    pub per_tenant_metrics: bool,
    /// Bearer token required by the dashboard API (`/api/`); set it when
    /// `listen` is not a loopback address.
    #[serde(deserialize_with = "load::lenient_opt_string")]
    pub token: Option<String>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:8080".into(), per_tenant_metrics: false, token: None, token_file: None }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// On SIGTERM: time allowed to finish, ack and flush what is in flight.
    pub grace_period: HumanDuration,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self { grace_period: HumanDuration::secs(25) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Topic names, or regexes when they start with `^` (e.g. `^iot\\..+`).
    pub topics: Vec<String>,
    /// Topics whose records are the bridge's dead letters: stored in the dead-letter table.
    pub dead_letter_topics: Vec<String>,
    pub group_id: String,
    /// A batch ends at this many records …
    pub batch_max_rows: usize,
    /// … or this many payload bytes …
    pub batch_max_bytes: ByteSize,
    /// … or this long after its first record.
    pub batch_max_wait: HumanDuration,
    /// Batches written at the same time, each on its own database connection
    /// (offsets are still stored strictly in batch order).
    pub writers: usize,
    /// Longest wait between store retries.
    pub retry_backoff_max: HumanDuration,
    /// librdkafka `max.poll.interval.ms`: how long a store outage may last
    /// before this member leaves the group (its records are then re-read elsewhere).
    pub max_poll_interval: HumanDuration,
    /// Extra librdkafka consumer properties, verbatim.
    pub properties: BTreeMap<String, String>,
    /// On SIGTERM: time to finish the current batch and commit.
    pub grace_period: HumanDuration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            topics: vec!["^iot\\..+".into()],
            dead_letter_topics: vec!["iot-dead-letters".into()],
            group_id: "iotpipe-sink".into(),
            batch_max_rows: 2000,
            batch_max_bytes: ByteSize::mib(4),
            batch_max_wait: HumanDuration::millis(500),
            writers: 2,
            retry_backoff_max: HumanDuration::secs(10),
            max_poll_interval: HumanDuration::secs(1800),
            properties: BTreeMap::new(),
            grace_period: HumanDuration::secs(25),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `iotpipe=debug`; `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

impl MqttConfig {
    /// The client id in use: configured, or derived from the host name.
    pub fn effective_client_id(&self) -> String {
        match &self.client_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => {
                let host = gethostname::gethostname().to_string_lossy().into_owned();
                let host: String =
                    host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
                format!("iotpipe-{}", if host.is_empty() { "bridge" } else { &host })
            }
        }
    }
}
