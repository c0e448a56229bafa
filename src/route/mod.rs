//! Routing: from an MQTT topic and payload to a Kafka topic, key, headers
//! and value, or to a dead letter with its reason. Pure: no I/O.

mod config;
mod pattern;
pub(crate) mod payload;
mod scan;
mod template;

pub use config::{PayloadFormat, RouteConfig, Targets};
use pattern::Captures;
pub use pattern::{validate_filter, PatternError, TopicPattern};
pub use template::{check_topic_name, Template, TemplateError};

use crate::record::headers::{self, DeadLetterMeta, RecordMeta};
use crate::record::{DeadLetterReason, Inbound, Outbound, RecordId};
use crate::units::KeyError;
use bytes::Bytes;

/// Field names every template may use besides the pattern's own.
const BUILTIN_FIELDS: [&str; 3] = ["tenant_id", "project_id", "device_id"];

/// Why the routing rules do not compile; each names its config key
/// ([`RouterError::key_error`]), in `[route]` or, for the templates, `[kafka]`.
#[derive(Debug)]
pub enum RouterError {
    Pattern(PatternError),
    MissingNames,
    Template { key: &'static str, source: TemplateError },
    DeadLetterTopic(String),
    Pointer { key: &'static str, value: String },
}

impl RouterError {
    /// The section (`route` or `kafka`) and the key within it, with the message.
    pub fn key_error(&self) -> (&'static str, KeyError) {
        match self {
            Self::Pattern(e) => ("route", KeyError::new("topic_pattern", e.to_string())),
            Self::MissingNames => {
                ("route", KeyError::new("topic_pattern", "must name segments {tenant_id} and {project_id}"))
            }
            Self::Template { key, source } => ("kafka", KeyError::new(*key, source.to_string())),
            Self::DeadLetterTopic(message) => ("kafka", KeyError::new("dead_letter_topic", message.clone())),
            Self::Pointer { key, value } => {
                ("route", KeyError::new(*key, format!("`{value}` is not a JSON pointer (it must start with `/`)")))
            }
        }
    }
}

impl std::fmt::Display for RouterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (section, e) = self.key_error();
        write!(f, "{section}.{}: {}", e.key, e.message)
    }
}

impl std::error::Error for RouterError {}

impl From<PatternError> for RouterError {
    fn from(e: PatternError) -> Self {
        Self::Pattern(e)
    }
}

/// Compiled routing rules.
#[derive(Debug, Clone)]
pub struct Router {
    pattern: TopicPattern,
    /// For each field index (BUILTIN_FIELDS, then extra pattern names): the capture index.
    capture_of_field: Vec<Option<usize>>,
    topic: Template,
    key: Template,
    dead_letter_topic: String,
    dead_letter_max_payload: usize,
    device_pointer: Option<String>,
    time_pointer: Option<String>,
    require_json: bool,
    max_payload: usize,
    format: PayloadFormat,
}

impl Router {
    pub fn new(route: &RouteConfig, targets: &Targets) -> Result<Self, RouterError> {
        let pattern = TopicPattern::parse(&route.topic_pattern)?;
        let names = pattern.names();
        if !names.iter().any(|n| n == "tenant_id") || !names.iter().any(|n| n == "project_id") {
            return Err(RouterError::MissingNames);
        }
        let mut fields: Vec<&str> = BUILTIN_FIELDS.to_vec();
        fields.extend(names.iter().map(String::as_str).filter(|n| !BUILTIN_FIELDS.contains(n)));
        let capture_of_field = fields.iter().map(|f| names.iter().position(|n| n == f)).collect();
        let topic = Template::parse(&targets.topic, &fields)
            .map_err(|source| RouterError::Template { key: "topic", source })?;
        let key =
            Template::parse(&targets.key, &fields).map_err(|source| RouterError::Template { key: "key", source })?;
        check_topic_name(&targets.dead_letter_topic).map_err(RouterError::DeadLetterTopic)?;
        let pointer = |key: &'static str, v: &Option<String>| -> Result<Option<String>, RouterError> {
            match v.as_deref() {
                None | Some("") => Ok(None),
                Some(p) if p.starts_with('/') => Ok(Some(p.to_string())),
                Some(p) => Err(RouterError::Pointer { key, value: p.to_string() }),
            }
        };
        Ok(Self {
            capture_of_field,
            topic,
            key,
            dead_letter_topic: targets.dead_letter_topic.clone(),
            dead_letter_max_payload: usize::try_from(targets.dead_letter_max_payload.bytes()).unwrap_or(usize::MAX),
            device_pointer: pointer("device_id", &route.device_id)?,
            time_pointer: pointer("event_time", &route.event_time)?,
            require_json: route.require_json,
            max_payload: usize::try_from(route.max_payload_size.bytes()).unwrap_or(usize::MAX),
            format: route.format,
            pattern,
        })
    }

    pub fn dead_letter_topic(&self) -> &str {
        &self.dead_letter_topic
    }

    /// Route one message. Never fails: what cannot be routed becomes a dead letter.
    pub fn route(&self, msg: &Inbound) -> Outbound {
        if msg.payload.len() > self.max_payload {
            let detail = format!("payload is {} bytes; the limit is {}", msg.payload.len(), self.max_payload);
            return self.dead_letter(msg, DeadLetterReason::Oversize, detail);
        }
        if msg.payload.is_empty() {
            return self.dead_letter(msg, DeadLetterReason::EmptyPayload, "payload is empty".into());
        }
        let Some(captures) = self.pattern.captures(&msg.topic) else {
            return self.dead_letter(
                msg,
                DeadLetterReason::TopicMismatch,
                "topic does not match route.topic_pattern".into(),
            );
        };
        let needs_doc = self.device_pointer.is_some() || self.time_pointer.is_some();
        // The values at the device and event-time pointers, found in the
        // same pass that validates the document.
        let mut found = [None, None];
        if self.require_json || needs_doc {
            match std::str::from_utf8(&msg.payload) {
                Err(e) if self.require_json => {
                    return self.dead_letter(msg, DeadLetterReason::InvalidUtf8, format!("payload is not UTF-8: {e}"));
                }
                Err(_) => {}
                Ok(text) => {
                    match payload::parse_and_find(text, [self.device_pointer.as_deref(), self.time_pointer.as_deref()])
                    {
                        Ok(f) => found = f,
                        Err(e) if self.require_json => {
                            return self.dead_letter(
                                msg,
                                DeadLetterReason::InvalidJson,
                                format!("payload is not JSON: {e}"),
                            );
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        let captured = |field: usize| self.capture_of_field[field].map(|c| captures[c]).unwrap_or("");
        let device_id: std::borrow::Cow<'_, str> = match found[0].and_then(payload::device_id_of) {
            Some(d) => d,
            None => captured(2).into(),
        };
        let event_ms = found[1].and_then(payload::event_time_of);
        let values: Captures<'_> =
            (0..self.capture_of_field.len()).map(|i| if i == 2 { device_id.as_ref() } else { captured(i) }).collect();
        let topic = match self.topic.render_topic(&values) {
            Ok(t) => t,
            Err(e) => return self.dead_letter(msg, DeadLetterReason::InvalidTopicName, e),
        };
        let key = self.key.render(&values);
        let id = RecordId::derive(event_ms, msg.received_ms, &msg.topic, &msg.payload);
        let (tenant_id, project_id) = (values[0], values[1]);
        let value = match self.format {
            PayloadFormat::Raw => msg.payload.clone(),
            PayloadFormat::Envelope => envelope(tenant_id, project_id, &device_id, msg, id, event_ms),
        };
        let hdrs = headers::encode_record(&RecordMeta {
            tenant_id,
            project_id,
            device_id: &device_id,
            mqtt_topic: &msg.topic,
            id,
            received_ms: msg.received_ms,
            event_ms,
        });
        Outbound {
            id,
            topic,
            key: Some(key),
            value,
            headers: hdrs,
            timestamp_ms: event_ms.unwrap_or(msg.received_ms),
            reason: None,
        }
    }

    /// A dead letter for `msg`: the original payload bytes (truncated past
    /// `kafka.dead_letter_max_payload`, with headers saying so) and the reason.
    pub fn dead_letter(&self, msg: &Inbound, reason: DeadLetterReason, detail: String) -> Outbound {
        let id = RecordId::derive(None, msg.received_ms, &msg.topic, &msg.payload);
        let truncated = msg.payload.len() > self.dead_letter_max_payload;
        let hdrs = headers::encode_dead_letter(&DeadLetterMeta {
            reason,
            detail: &detail,
            mqtt_topic: &msg.topic,
            id,
            received_ms: msg.received_ms,
            truncated_from: truncated.then_some(msg.payload.len()),
        });
        let value = if truncated { msg.payload.slice(..self.dead_letter_max_payload) } else { msg.payload.clone() };
        Outbound {
            id,
            topic: self.dead_letter_topic.clone(),
            key: Some(msg.topic.clone()),
            value,
            headers: hdrs,
            timestamp_ms: msg.received_ms,
            reason: Some(reason),
        }
    }
}

/// The `envelope` format: what the replaced service's consumers read.
fn envelope(
    tenant_id: &str,
    project_id: &str,
    device_id: &str,
    msg: &Inbound,
    id: RecordId,
    event_ms: Option<i64>,
) -> Bytes {
    let payload: serde_json::Value = serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&msg.payload).into_owned()));
    let obj = serde_json::json!({
        "id": id.to_hyphenated(),
        "tenant_id": tenant_id,
        "project_id": project_id,
        "device_id": device_id,
        "mqtt_topic": msg.topic,
        "timestamp": event_ms.unwrap_or(msg.received_ms),
        "received_at": msg.received_ms,
        "payload": payload,
    });
    Bytes::from(serde_json::to_vec(&obj).unwrap_or_default())
}

#[cfg(test)]
mod tests;
