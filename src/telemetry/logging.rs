//! The `[log]` section and the log subscriber: text or JSON lines on stderr.

use crate::units::KeyError;
use serde::Deserialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

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
    init_dropping(level, format, |_| false);
}

/// [`init`], and events for which `drop` is true are not logged (the
/// demo's known noise from a third-party crate; see `demo::broker`).
pub fn init_dropping(level: &str, format: LogFormat, drop: fn(&Event<'_>) -> bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},tokio_postgres=warn")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.finish().with(Dropping(drop)).try_init(),
        LogFormat::Json => builder.json().finish().with(Dropping(drop)).try_init(),
    };
}

/// Keeps the events its function says to drop from every other layer.
pub struct Dropping(pub fn(&Event<'_>) -> bool);

impl<S: Subscriber> Layer<S> for Dropping {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        !(self.0)(event)
    }
}

/// An event's `message` field, formatted (empty if it has none).
pub fn message(event: &Event<'_>) -> String {
    let mut message = Message(String::new());
    event.record(&mut message);
    message.0
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);

    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _event: &Event<'_>, _ctx: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many of the events `emit` logs pass a subscriber dropping what `drop` says.
    pub fn passing(drop: fn(&Event<'_>) -> bool, emit: &dyn Fn()) -> usize {
        let seen = Arc::new(AtomicUsize::new(0));
        let dispatch =
            tracing::Dispatch::new(tracing_subscriber::registry().with(Dropping(drop)).with(Count(seen.clone())));
        tracing::dispatcher::with_default(&dispatch, emit);
        seen.load(Ordering::Relaxed)
    }

    #[test]
    fn dropped_events_reach_no_layer_and_their_message_is_readable() {
        fn drop_secrets(event: &Event<'_>) -> bool {
            message(event).contains("secret")
        }
        assert_eq!(passing(drop_secrets, &|| tracing::error!("a secret {}", 1)), 0);
        assert_eq!(
            passing(drop_secrets, &|| tracing::error!(detail = "secret", "plain")),
            1,
            "only the message counts"
        );
        assert_eq!(passing(drop_secrets, &|| tracing::info!("plain {}", 2)), 1);
    }
}
