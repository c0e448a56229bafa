//! The `[log]` section and the log subscriber: text or JSON lines on stderr.

use crate::units::KeyError;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// tracing filter, e.g. `info` or `iotpipe=debug`; `RUST_LOG` wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

impl LogConfig {
    /// Keys are relative to `[log]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        if tracing_subscriber::EnvFilter::try_new(&self.level).is_err() {
            return Err(KeyError::new(
                "level",
                format!("`{}` is not a log filter such as `info` or `iotpipe=debug`", self.level),
            ));
        }
        Ok(())
    }
}

/// Install the process's log subscriber (once; later calls do nothing).
pub fn init(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},tokio_postgres=warn")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
