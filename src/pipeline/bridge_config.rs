//! `iotpipe bridge`'s configuration: its own section, `[bridge]` (shutdown),
//! and [`BridgeSettings`], every section the bridge pipeline reads.

use crate::http::HttpConfig;
use crate::journal::JournalConfig;
use crate::kafka::KafkaConfig;
use crate::mqtt::MqttConfig;
use crate::route::{RouteConfig, Targets};
use crate::units::{HumanDuration, KeyError};
use serde::Deserialize;
use std::time::Duration;

/// The `[bridge]` section.
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

impl BridgeConfig {
    /// Keys are relative to `[bridge]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.grace_period.get() > Duration::from_secs(3600) {
            return Err(KeyError::new("grace_period", "must be at most 1h"));
        }
        Ok(())
    }
}

/// What `iotpipe bridge` reads: `[mqtt]`, `[route]`, `[kafka]` (with the
/// routing targets taken from it), `[bridge]`, `[http]` and, in journal
/// mode, `[journal]`.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    pub mqtt: MqttConfig,
    pub route: RouteConfig,
    /// Where routed records go (`kafka.topic`, `kafka.key`, the dead-letter topic).
    pub targets: Targets,
    pub kafka: KafkaConfig,
    pub bridge: BridgeConfig,
    pub http: HttpConfig,
    /// `Some`: journal mode (MQTT acked after the journal's fsync).
    pub journal: Option<JournalConfig>,
}
