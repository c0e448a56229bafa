//! The configuration file: one TOML file, every key overridable from the
//! environment (`IOTPIPE_SECTION__KEY`), validated once at start-up.
//!
//! This module only assembles: each section's type, defaults, validation and
//! secrets belong to the component that uses it (`mqtt`, `route`, `kafka`,
//! `store`, `journal`, `http`, `telemetry`; `[bridge]`, `[sink]` and `[run]`
//! beside their pipelines). None of them imports this module back; `cli` and
//! `demo` load the file and hand each pipeline its settings
//! ([`Config::into_bridge`], [`Config::into_sink`], [`Config::into_run`]).

mod command;
mod load;
pub mod validate;

pub use crate::units::{ByteSize, HumanDuration};
pub use command::Command;
pub use load::{load, load_str, load_str_for, ConfigError};

pub use crate::http::HttpConfig;
pub use crate::journal::JournalConfig;
pub use crate::kafka::KafkaConfig;
pub use crate::mqtt::{MqttConfig, MqttVersion, Qos};
pub use crate::route::{PayloadFormat, RouteConfig};
pub use crate::store::StoreConfig;
pub use crate::telemetry::{LogConfig, LogFormat};

use crate::pipeline::{BridgeConfig, RunConfig, SinkConfig};
use serde::Deserialize;

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
    /// `iotpipe bridge`: shutdown.
    #[serde(default)]
    pub bridge: BridgeConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// `iotpipe sink`: the consumer group, batches, writers, store retries, shutdown.
    #[serde(default)]
    pub sink: SinkConfig,
    /// `iotpipe run`: batches, store retries, shutdown.
    #[serde(default)]
    pub run: RunConfig,
    /// Where `iotpipe sink` and `iotpipe run` store telemetry.
    #[serde(default)]
    pub store: StoreConfig,
    /// Local journal; in a bridge config it switches the bridge to journal mode.
    #[serde(default)]
    pub journal: Option<JournalConfig>,
}

impl Config {
    /// Where routed records go, from the `[kafka]` templates.
    pub fn route_targets(&self) -> crate::route::Targets {
        crate::route::Targets {
            topic: self.kafka.topic.clone(),
            key: self.kafka.key.clone(),
            dead_letter_topic: self.kafka.dead_letter_topic.clone(),
            dead_letter_max_payload: self.kafka.dead_letter_max_payload,
        }
    }

    /// The compiled routing rules (`[route]` and the `[kafka]` templates).
    pub fn router(&self) -> Result<crate::route::Router, crate::route::RouterError> {
        crate::route::Router::new(&self.route, &self.route_targets())
    }
}
