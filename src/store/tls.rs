//! rustls client configuration for the store connections (ring provider).

use super::StoreError;
use crate::tls::{install_crypto_provider, root_store, RootsError};
use std::path::Path;

/// A client config trusting the certificates in `ca_file`, or the system
/// roots when there is none. The server certificate is always verified.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, StoreError> {
    install_crypto_provider();
    let roots = root_store("store.ca_file", ca_file).map_err(|e| match e {
        RootsError::Read { path, source } => StoreError::File { key: "ca_file", path, source },
        other => StoreError::Tls(other.to_string()),
    })?;
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}
