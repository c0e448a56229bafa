//! The `[http]` section: where `/healthz`, `/readyz`, `/metrics` (and, for
//! `run`, the dashboard and its API) listen, and the API token.

use crate::units::{lenient_opt_string, KeyError};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of /healthz, /readyz and /metrics; empty disables the server.
    pub listen: String,
    /// Count messages per tenant and project (`iotpipe_tenant_messages_total`)
    /// and report consumer lag per topic and partition.
    pub per_tenant_metrics: bool,
    /// Bearer token required by the dashboard API (`/api/`); set it when
    /// `listen` is not a loopback address.
    #[serde(deserialize_with = "lenient_opt_string")]
    pub token: Option<String>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:8080".into(), per_tenant_metrics: false, token: None, token_file: None }
    }
}

impl HttpConfig {
    /// Check the keys that need more than a type; keys are relative to `[http]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        if !self.listen.is_empty() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(KeyError::new("listen", format!("`{}` is not an address like 127.0.0.1:8080", self.listen)));
        }
        Ok(())
    }

    /// Read `token_file` into `token`; an empty token means none.
    pub fn resolve_secrets(&mut self) -> Result<(), KeyError> {
        if let Some(path) = &self.token_file {
            let secret = std::fs::read_to_string(path)
                .map_err(|e| KeyError::new("token_file", format!("cannot read {}: {e}", path.display())))?;
            self.token = Some(secret.trim().to_string());
        }
        if self.token.as_deref().is_some_and(str::is_empty) {
            self.token = None;
        }
        Ok(())
    }
}
