//! The session's connection options from the config: the broker's
//! address, persistent session, credentials, TLS, flow control.

use super::wire::ConnectFields;
use super::{parse_mqtt_url, MqttConfig, MqttVersion};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error("{key}: cannot read {path}: {source}")]
    File { key: &'static str, path: String, source: std::io::Error },
    #[error("mqtt TLS: {0}")]
    Tls(String),
}

/// Where and how the session connects: the broker's address, TLS, and
/// what CONNECT carries.
pub struct ConnectSpec {
    pub version: MqttVersion,
    pub host: String,
    pub port: u16,
    /// rustls client config for `mqtts://`; `None` for plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub fields: ConnectFields,
    /// How long the TCP connect, the TLS handshake and the CONNACK may take together.
    pub connect_timeout: Duration,
}

/// The session's options from the config. `clean` is for one-off probes
/// (`iotpipe check`); the bridge always resumes a persistent session.
pub fn spec(cfg: &MqttConfig, client_id: &str, clean: bool) -> Result<ConnectSpec, OptionsError> {
    let url = parse_mqtt_url(&cfg.url).map_err(OptionsError::Url)?;
    let tls = if url.tls { Some(tls(cfg)?) } else { None };
    let credentials = cfg.username.as_ref().map(|u| (u.clone(), cfg.password.clone().unwrap_or_default()));
    Ok(ConnectSpec {
        version: cfg.version,
        host: url.host,
        port: url.port,
        tls,
        fields: ConnectFields {
            client_id: client_id.to_string(),
            keep_alive: cfg.keep_alive.get(),
            clean,
            session_expiry: (!clean).then(|| cfg.session_expiry.get()),
            receive_maximum: cfg.max_in_flight,
            credentials,
        },
        connect_timeout: cfg.connect_timeout.get(),
    })
}

/// rustls client config: the CA file if given, else the system roots; a
/// client certificate for mutual TLS if given.
fn tls(cfg: &MqttConfig) -> Result<Arc<rustls::ClientConfig>, OptionsError> {
    install_crypto_provider();
    let roots = crate::tls::root_store("mqtt.ca_file", cfg.ca_file.as_deref()).map_err(|e| match e {
        crate::tls::RootsError::Read { path, source } => OptionsError::File { key: "mqtt.ca_file", path, source },
        other => OptionsError::Tls(other.to_string()),
    })?;
    let client = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert), Some(key)) => Some(crate::tls::ClientCert {
            cert_key: "mqtt.client_cert_file",
            cert,
            key_key: "mqtt.client_key_file",
            key,
        }),
        _ => None,
    };
    let config = crate::tls::client_config(roots, client).map_err(|e| match e {
        crate::tls::ClientCertError::Read { key, path, source } => OptionsError::File { key, path, source },
        crate::tls::ClientCertError::Invalid(m) => OptionsError::Tls(m),
    })?;
    Ok(Arc::new(config))
}

pub use crate::tls::install_crypto_provider;
