//! The trust roots of every rustls client (MQTT, PostgreSQL, InfluxDB): one
//! loader, so that a CA file means the same thing everywhere.

use rustls::RootCertStore;
use std::path::Path;

/// Why the roots could not be loaded; each client maps it to its own error
/// with its own config key.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// `<key>: <what is wrong with a certificate>`.
    #[error("{0}")]
    Certificate(String),
    /// `<key> <path> holds no certificate`.
    #[error("{0}")]
    Empty(String),
}

/// The certificates in `ca_file` (`key` names it in errors, e.g.
/// `mqtt.ca_file`), or the system roots when there is none. A system root
/// that rustls refuses is skipped; a CA file must hold only valid
/// certificates, and at least one.
pub fn root_store(key: &str, ca_file: Option<&Path>) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|source| RootsError::Read { path: path.display().to_string(), source })?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| RootsError::Certificate(format!("{key}: {e}")))?;
                roots.add(cert).map_err(|e| RootsError::Certificate(format!("{key}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(RootsError::Empty(format!("{key} {} holds no certificate", path.display())));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(roots)
}

/// A client certificate for mutual TLS: the files and the config keys naming them.
pub struct ClientCert<'a> {
    pub cert_key: &'static str,
    pub cert: &'a Path,
    pub key_key: &'static str,
    pub key: &'a Path,
}

/// A client certificate that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientCertError {
    #[error("cannot read {path}: {source}")]
    Read { key: &'static str, path: String, source: std::io::Error },
    /// `<key>: <what is wrong>`.
    #[error("{0}")]
    Invalid(String),
}

/// A rustls client config over `roots`, presenting `client` when given.
pub fn client_config(
    roots: RootCertStore,
    client: Option<ClientCert<'_>>,
) -> Result<rustls::ClientConfig, ClientCertError> {
    install_crypto_provider();
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let Some(c) = client else { return Ok(builder.with_no_client_auth()) };
    let read = |key: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| ClientCertError::Read { key, path: path.display().to_string(), source })
    };
    let cert_pem = read(c.cert_key, c.cert)?;
    let key_pem = read(c.key_key, c.key)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut cert_pem.as_slice()).collect();
    let certs = certs.map_err(|e| ClientCertError::Invalid(format!("{}: {e}", c.cert_key)))?;
    let private_key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| ClientCertError::Invalid(format!("{}: {e}", c.key_key)))?
        .ok_or_else(|| ClientCertError::Invalid(format!("{} holds no private key", c.key_key)))?;
    builder
        .with_client_auth_cert(certs, private_key)
        .map_err(|e| ClientCertError::Invalid(format!("{} / {} ({}): {e}", c.cert_key, c.key_key, c.key.display())))
}

/// rustls needs one process-wide crypto provider; ring is compiled in.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_and_a_missing_one_is_a_read_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = root_store("mqtt.ca_file", Some(&empty)).expect_err("no certificate");
        assert!(matches!(err, RootsError::Empty(_)));
        assert!(err.to_string().starts_with("mqtt.ca_file ") && err.to_string().ends_with("holds no certificate"));
        let err = root_store("store.ca_file", Some(&dir.path().join("missing.pem"))).expect_err("missing");
        assert!(matches!(err, RootsError::Read { .. }), "{err}");
    }

    #[test]
    fn without_a_ca_file_the_system_roots_are_used() {
        // Debian's ca-certificates is installed wherever iotpipe is built.
        let roots = root_store("mqtt.ca_file", None).expect("system roots");
        assert!(!roots.is_empty());
    }
}
