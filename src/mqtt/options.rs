//! Building rumqttc options (3.1.1 and 5) from the config: persistent
//! session, credentials, TLS, flow control.

use super::{parse_mqtt_url, MqttConfig};
use rumqttc::{TlsConfiguration, Transport};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("mqtt.url: {0}")]
    Url(String),
    #[error("{key}: cannot read {path}: {source}")]
    File { key: &'static str, path: String, source: std::io::Error },
    #[error("mqtt TLS: {0}")]
    Tls(String),
}

/// Largest MQTT packet the bridge accepts: the protocol maximum, so that an
/// oversize message reaches the bridge and is dead-lettered instead of being
/// discarded by the broker.
pub const MAX_INCOMING_PACKET: usize = 268_435_455;

pub fn v5(cfg: &MqttConfig, client_id: &str, clean: bool) -> Result<rumqttc::v5::MqttOptions, OptionsError> {
    let url = parse_mqtt_url(&cfg.url).map_err(OptionsError::Url)?;
    let mut o = rumqttc::v5::MqttOptions::new(client_id, url.host, url.port);
    o.set_keep_alive(cfg.keep_alive.get());
    o.set_clean_start(clean);
    if !clean {
        o.set_session_expiry_interval(Some(u32::try_from(cfg.session_expiry.get().as_secs()).unwrap_or(u32::MAX)));
    }
    o.set_receive_maximum(Some(cfg.max_in_flight));
    o.set_max_packet_size(Some(MAX_INCOMING_PACKET as u32));
    o.set_manual_acks(true);
    o.set_connection_timeout(cfg.connect_timeout.get().as_secs().max(1));
    o.set_request_channel_capacity(usize::from(cfg.max_in_flight) * 2 + 64);
    o.set_outgoing_inflight_upper_limit(1000);
    if let Some(user) = &cfg.username {
        o.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
    }
    if url.tls {
        o.set_transport(Transport::Tls(tls(cfg)?));
    }
    Ok(o)
}

pub fn v311(cfg: &MqttConfig, client_id: &str, clean: bool) -> Result<rumqttc::MqttOptions, OptionsError> {
    let url = parse_mqtt_url(&cfg.url).map_err(OptionsError::Url)?;
    let mut o = rumqttc::MqttOptions::new(client_id, url.host, url.port);
    o.set_keep_alive(cfg.keep_alive.get());
    o.set_clean_session(clean);
    o.set_max_packet_size(MAX_INCOMING_PACKET, MAX_INCOMING_PACKET);
    o.set_manual_acks(true);
    o.set_request_channel_capacity(usize::from(cfg.max_in_flight) * 2 + 64);
    o.set_inflight(1000);
    if let Some(user) = &cfg.username {
        o.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
    }
    if url.tls {
        o.set_transport(Transport::Tls(tls(cfg)?));
    }
    Ok(o)
}

fn read(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, OptionsError> {
    std::fs::read(path).map_err(|source| OptionsError::File { key, path: path.display().to_string(), source })
}

/// rustls client config: the CA file if given, else the system roots; a
/// client certificate for mutual TLS if given.
fn tls(cfg: &MqttConfig) -> Result<TlsConfiguration, OptionsError> {
    install_crypto_provider();
    let roots = crate::tls::root_store("mqtt.ca_file", cfg.ca_file.as_deref()).map_err(|e| match e {
        crate::tls::RootsError::Read { path, source } => OptionsError::File { key: "mqtt.ca_file", path, source },
        other => OptionsError::Tls(other.to_string()),
    })?;
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert), Some(key)) => {
            let cert_pem = read("mqtt.client_cert_file", cert)?;
            let key_pem = read("mqtt.client_key_file", key)?;
            let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut cert_pem.as_slice()).collect();
            let certs = certs.map_err(|e| OptionsError::Tls(format!("mqtt.client_cert_file: {e}")))?;
            let private_key = rustls_pemfile::private_key(&mut key_pem.as_slice())
                .map_err(|e| OptionsError::Tls(format!("mqtt.client_key_file: {e}")))?
                .ok_or_else(|| OptionsError::Tls("mqtt.client_key_file holds no private key".into()))?;
            builder.with_client_auth_cert(certs, private_key).map_err(|e| {
                OptionsError::Tls(format!("mqtt.client_cert_file / mqtt.client_key_file ({}): {e}", key.display()))
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

pub use crate::tls::install_crypto_provider;
