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
    /// Serve the dashboard API of `iotpipe run` on a `listen` address that
    /// is not loopback without a token (refused unless this is set).
    pub api_without_token: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            per_tenant_metrics: false,
            token: None,
            token_file: None,
            api_without_token: false,
        }
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

    /// `iotpipe run` serves the dashboard API on `listen`: an address other
    /// machines can reach needs a token, unless `api_without_token` says
    /// that anyone who reaches it may read the data.
    pub fn check_api_exposure(&self) -> Result<(), KeyError> {
        if self.token.is_some() || self.api_without_token {
            return Ok(());
        }
        match self.listen.parse::<std::net::SocketAddr>() {
            Ok(addr) if !addr.ip().is_loopback() => Err(KeyError::new(
                "token",
                format!(
                    "the dashboard API would listen on {} (not loopback) without a token: set token_file (or token), \
                     or api_without_token = true to let anyone who can reach it read the data",
                    self.listen
                ),
            )),
            _ => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn http(listen: &str, token: Option<&str>, api_without_token: bool) -> HttpConfig {
        HttpConfig { listen: listen.into(), token: token.map(String::from), api_without_token, ..HttpConfig::default() }
    }

    #[test]
    fn the_api_beyond_loopback_needs_a_token_or_a_yes() {
        assert_eq!(http("127.0.0.1:8080", None, false).check_api_exposure(), Ok(()));
        assert_eq!(http("[::1]:8080", None, false).check_api_exposure(), Ok(()));
        assert_eq!(http("", None, false).check_api_exposure(), Ok(()));
        for listen in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080"] {
            let e = http(listen, None, false).check_api_exposure().unwrap_err();
            assert_eq!(e.key, "token", "{listen}");
            assert!(e.to_string().contains("api_without_token"), "{e}");
            assert_eq!(http(listen, Some("t"), false).check_api_exposure(), Ok(()));
            assert_eq!(http(listen, None, true).check_api_exposure(), Ok(()));
        }
    }
}
