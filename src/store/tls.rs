//! rustls client configuration for the store connections (ring provider).

use super::StoreError;
use std::path::Path;

/// A client config trusting the certificates in `ca_file`, or the system
/// roots when there is none. The server certificate is always verified.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, StoreError> {
    crate::mqtt::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| StoreError::File {
                key: "ca_file",
                path: path.display().to_string(),
                source,
            })?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| StoreError::Tls(format!("store.ca_file: {e}")))?;
                roots.add(cert).map_err(|e| StoreError::Tls(format!("store.ca_file: {e}")))?;
            }
            if roots.is_empty() {
                return Err(StoreError::Tls(format!("store.ca_file {} holds no certificate", path.display())));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}
