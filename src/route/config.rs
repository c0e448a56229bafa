//! The `[route]` section (how tenant, project, device and event time are
//! extracted, what is rejected) and the Kafka-side targets routing renders
//! (`kafka.topic`, `kafka.key`, `kafka.dead_letter_topic`).

use crate::units::ByteSize;
use serde::Deserialize;

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

/// Where routed records go: the templates and the dead-letter topic (from `[kafka]`).
#[derive(Debug, Clone)]
pub struct Targets {
    /// Topic template over `{tenant_id}`, `{project_id}`, `{device_id}` and pattern fields.
    pub topic: String,
    /// Key template.
    pub key: String,
    pub dead_letter_topic: String,
    /// Dead-lettered payloads larger than this are truncated (headers say so).
    pub dead_letter_max_payload: ByteSize,
}
