//! The `[mqtt]` section: broker, subscriptions, session, credentials and
//! TLS; its validation. Owned by the MQTT source.

use crate::route::validate_filter;
use crate::units::{lenient_opt_string, HumanDuration, KeyError};
use serde::Deserialize;
use std::path::PathBuf;

/// MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MqttVersion {
    #[default]
    V5,
    V311,
}

impl<'de> Deserialize<'de> for MqttVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = lenient_opt_string(d)?.unwrap_or_default();
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

/// Where messages come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Stable client id; the persistent session is keyed by it. Default: `iotpipe-<hostname>`.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub client_id: Option<String>,
    /// Topic filters to subscribe to.
    pub topics: Vec<String>,
    /// QoS of the subscriptions (0, 1 or 2).
    pub qos: Qos,
    /// Shared subscription group: subscribes to `$share/{group}/{filter}`.
    pub shared_group: Option<String>,
    /// On shutdown, UNSUBSCRIBE from the shared group before draining, so
    /// the broker stops routing this member's share to its offline session.
    /// Only with `shared_group`; off by default (see docs/bridge.md: with it
    /// on, a group whose members all stop at once receives nothing meanwhile).
    pub leave_group_on_shutdown: bool,
    /// "5" (default) or "3.1.1".
    pub version: MqttVersion,
    #[serde(deserialize_with = "lenient_opt_string")]
    pub username: Option<String>,
    #[serde(deserialize_with = "lenient_opt_string")]
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
    /// (MQTT 5 receive maximum), and the most the session holds unacked with
    /// either version: past it, it stops reading until acks go out.
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
            leave_group_on_shutdown: false,
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

impl MqttConfig {
    /// Check the keys that need more than a type; keys are relative to `[mqtt]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        parse_mqtt_url(&self.url).map_err(|m| KeyError::new("url", m))?;
        if self.topics.is_empty() {
            return Err(KeyError::new("topics", "at least one topic filter is needed"));
        }
        for t in &self.topics {
            validate_filter(t).map_err(|m| KeyError::new("topics", m))?;
        }
        if let Some(g) = &self.shared_group {
            if g.is_empty() || g.contains(['/', '+', '#']) {
                return Err(KeyError::new(
                    "shared_group",
                    format!("`{g}` must be non-empty and contain no `/`, `+` or `#`"),
                ));
            }
        }
        if self.leave_group_on_shutdown && self.shared_group.is_none() {
            return Err(KeyError::new(
                "leave_group_on_shutdown",
                "needs mqtt.shared_group: without a group, unsubscribing on shutdown would drop what is \
                 published while the bridge is away",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(KeyError::new("max_in_flight", "must be at least 1"));
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(KeyError::new("client_cert_file", "client_cert_file and client_key_file go together"));
        }
        if self.keep_alive.get().as_secs() < 5 {
            return Err(KeyError::new("keep_alive", "must be at least 5s"));
        }
        if self.reconnect_backoff_min > self.reconnect_backoff_max {
            return Err(KeyError::new("reconnect_backoff_min", "is larger than mqtt.reconnect_backoff_max"));
        }
        if self.connect_timeout.get().is_zero() {
            return Err(KeyError::new("connect_timeout", "must be more than 0s"));
        }
        Ok(())
    }

    /// Read `password_file` into `password`.
    pub fn resolve_secrets(&mut self) -> Result<(), KeyError> {
        if let Some(path) = &self.password_file {
            let secret = std::fs::read_to_string(path)
                .map_err(|e| KeyError::new("password_file", format!("cannot read {}: {e}", path.display())))?;
            self.password = Some(secret.trim_end_matches(['\n', '\r']).to_string());
        }
        Ok(())
    }

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

/// An MQTT broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

pub fn parse_mqtt_url(url: &str) -> Result<MqttUrl, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("`{url}` needs a scheme: mqtt:// or mqtts://"))?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(format!("scheme `{other}` is not supported; use mqtt:// or mqtts://")),
    };
    let hostport = rest.split(['/', '?']).next().unwrap_or("");
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| format!("`{p}` is not a port number"))?)
        }
        _ => (hostport, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok(MqttUrl { tls, host: host.to_string(), port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls() {
        assert_eq!(parse_mqtt_url("mqtt://h:1884").unwrap(), MqttUrl { tls: false, host: "h".into(), port: 1884 });
        assert_eq!(parse_mqtt_url("mqtts://h").unwrap().port, 8883);
        assert_eq!(parse_mqtt_url("mqtt://[::1]:1883").unwrap().host, "::1");
        assert!(parse_mqtt_url("h:1883").is_err());
        assert!(parse_mqtt_url("mqtt://:1883").is_err());
        assert!(parse_mqtt_url("mqtt://h:99999").is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let ok = MqttConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = MqttConfig { max_in_flight: 0, ..MqttConfig::default() };
        assert_eq!(bad.validate().unwrap_err().key, "max_in_flight");
        let bad = MqttConfig { connect_timeout: HumanDuration::secs(0), ..MqttConfig::default() };
        assert_eq!(bad.validate().unwrap_err().key, "connect_timeout");
        let bad = MqttConfig { leave_group_on_shutdown: true, ..MqttConfig::default() };
        assert_eq!(bad.validate().unwrap_err().key, "leave_group_on_shutdown");
        let ok = MqttConfig { leave_group_on_shutdown: true, shared_group: Some("g".into()), ..MqttConfig::default() };
        assert_eq!(ok.validate(), Ok(()));
    }
}
