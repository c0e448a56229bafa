//! What went wrong talking to Kafka, in the user's terms: the TCP
//! connection, the TLS handshake, or authentication. librdkafka reports
//! connection problems through its error and log callbacks and keeps
//! retrying; every client context of iotpipe hands them to one
//! [`ErrorReporter`], which logs each distinct problem at WARN (again at most
//! every [`REPEAT`]) and remembers the last one for the probe and `iotpipe check`.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The same problem is logged again after this long.
const REPEAT: Duration = Duration::from_secs(30);

/// The step of connecting to a broker that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Name resolution or the TCP connection.
    Tcp,
    /// The TLS handshake (certificates, protocol mismatch).
    Tls,
    /// SASL authentication.
    Auth,
    /// Anything else the client reported.
    Other,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP connection",
            Self::Tls => "TLS handshake",
            Self::Auth => "authentication",
            Self::Other => "Kafka client",
        }
    }
}

/// One problem, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    pub step: Step,
    pub detail: String,
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.step.as_str(), self.detail)
    }
}

/// Classify one librdkafka report (error code, if any, and its text).
pub fn diagnose(code: Option<C>, reason: &str) -> Diagnosis {
    let lower = reason.to_ascii_lowercase();
    let step = match code {
        Some(C::SSL) => Step::Tls,
        Some(C::Authentication | C::SaslAuthenticationFailed) => Step::Auth,
        _ if lower.contains("ssl handshake") || lower.contains("certificate") || lower.contains("ssl_") => Step::Tls,
        // A plaintext client talking to a TLS listener, or the other way round.
        _ if lower.contains("security.protocol") => Step::Tls,
        _ if lower.contains("sasl") || lower.contains("authentication") => Step::Auth,
        Some(C::Resolve | C::BrokerTransportFailure | C::AllBrokersDown | C::MessageTimedOut) => Step::Tcp,
        _ if lower.contains("connect to") || lower.contains("connection refused") || lower.contains("resolve") => {
            Step::Tcp
        }
        _ => Step::Other,
    };
    Diagnosis { step, detail: without_thread(reason.trim()).to_string() }
}

/// `N/N brokers are down` says nothing the per-broker reports did not.
fn is_summary(code: Option<C>, reason: &str) -> bool {
    code == Some(C::AllBrokersDown) || reason.contains("brokers are down")
}

/// librdkafka's log lines start with the thread name (`[thrd:…]: `).
fn without_thread(reason: &str) -> &str {
    match reason.strip_prefix("[thrd:").and_then(|r| r.split_once("]: ")) {
        Some((_, rest)) => rest,
        None => reason,
    }
}

#[derive(Default)]
struct State {
    last: Option<Diagnosis>,
    /// The step last logged, and when: one problem, reported on every
    /// reconnect (and through both callbacks, in alternating wordings), is
    /// one line per [`REPEAT`].
    logged: Option<(Step, Instant)>,
}

/// Shared by the contexts of one client: logs each distinct problem and
/// keeps the last one.
pub struct ErrorReporter {
    client: &'static str,
    state: Mutex<State>,
}

impl ErrorReporter {
    pub fn new(client: &'static str) -> Self {
        Self { client, state: Mutex::new(State::default()) }
    }

    /// From `ClientContext::error`.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if is_summary(code, reason) {
            tracing::debug!(client = self.client, reason, "librdkafka: all brokers are down.");
            return;
        }
        self.report(diagnose(code, reason));
    }

    /// From `ClientContext::log`: warnings and errors are reported, the rest
    /// goes to the debug log.
    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                if !is_summary(None, message) {
                    self.report(diagnose(None, message));
                }
            }
            _ => tracing::debug!(client = self.client, facility, message, "librdkafka."),
        }
    }

    pub(super) fn report(&self, d: Diagnosis) {
        let Ok(mut s) = self.state.lock() else { return };
        let due = match &s.logged {
            Some((step, at)) => *step != d.step || at.elapsed() >= REPEAT,
            None => true,
        };
        if due {
            tracing::warn!(client = self.client, "Kafka: {d}.");
            s.logged = Some((d.step, Instant::now()));
        }
        s.last = Some(d);
    }

    /// The last problem reported, if any.
    pub fn last(&self) -> Option<Diagnosis> {
        self.state.lock().ok().and_then(|s| s.last.clone())
    }

    /// Forget the last problem (before a fresh attempt).
    pub fn clear(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.last = None;
        }
    }
}

/// The context of the clients that need nothing but the reporting (the
/// admin client and the probe).
pub struct Reporting {
    pub errors: std::sync::Arc<ErrorReporter>,
}

impl Reporting {
    pub fn new(client: &'static str) -> Self {
        Self { errors: std::sync::Arc::new(ErrorReporter::new(client)) }
    }
}

impl rdkafka::ClientContext for Reporting {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.errors.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.errors.error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Reporting {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_reports_are_put_in_steps() {
        let tls = "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (after 4ms in state SSL_HANDSHAKE)";
        assert_eq!(diagnose(Some(C::SSL), tls).step, Step::Tls);
        assert_eq!(diagnose(None, tls).step, Step::Tls);
        let auth = "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512";
        assert_eq!(diagnose(Some(C::Authentication), auth).step, Step::Auth);
        assert_eq!(diagnose(None, auth).step, Step::Auth);
        let tcp = "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused (after 0ms in state CONNECT)";
        assert_eq!(diagnose(Some(C::BrokerTransportFailure), tcp).step, Step::Tcp);
        let mismatch = "127.0.0.1:9093/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10";
        assert_eq!(diagnose(Some(C::BrokerTransportFailure), mismatch).step, Step::Tls);
        let d = diagnose(Some(C::SSL), tls);
        assert!(d.to_string().starts_with("TLS handshake failed: ssl://"), "{d}");
    }

    #[test]
    fn the_summary_does_not_hide_the_cause() {
        let r = ErrorReporter::new("test");
        r.error(&KafkaError::Global(C::SSL), "SSL handshake failed: certificate verify failed");
        r.error(&KafkaError::Global(C::AllBrokersDown), "1/1 brokers are down");
        assert_eq!(r.last().map(|d| d.step), Some(Step::Tls));
        r.clear();
        assert_eq!(r.last(), None);
    }

    #[test]
    fn the_thread_name_is_dropped() {
        let d = diagnose(None, "[thrd:ssl://h:1/bootstrap]: ssl://h:1/bootstrap: SSL handshake failed: x");
        assert_eq!(d.detail, "ssl://h:1/bootstrap: SSL handshake failed: x");
    }
}
