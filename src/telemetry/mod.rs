//! Every metric, and the log events that go with them, in one place.
//!
//! Names follow Prometheus conventions: `iotpipe_*`, counters end in
//! `_total`, durations in `_seconds`. Labels take values from fixed sets
//! (dead-letter reasons); per-tenant series only behind
//! `http.per_tenant_metrics`, and capped. A command exposes only the series
//! of the parts it has ([`Exposition`]): `run` has no Kafka gauges.

mod consumer;
mod logging;
mod messages;
mod pairs;
mod process;
mod store;
mod timescale;

pub use consumer::ConsumerMetrics;
#[cfg(test)]
pub use logging::tests::passing as log_events_passing;
pub use logging::{
    init as init_logging, init_dropping as init_logging_dropping, message as log_message, LogConfig, LogFormat,
};
pub use messages::{MessageMetrics, MessageSeries, MAX_TENANT_SERIES};
pub use process::ProcessInfo;
pub use store::{CommittedRow, StoreMetrics, MAX_FRESHNESS_SERIES};
pub use timescale::{JobPoll, TimescaleJobMetrics};

use crate::health::Health;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// What `/metrics` shows for the running command.
pub struct Exposition {
    /// `bridge`, `sink`, `run` or `demo` (the `command` label of `iotpipe_build_info`).
    pub command: &'static str,
    /// The state gauges (connected, subscribed, reachable, full) come from here.
    pub health: Arc<Health>,
    /// The message path from MQTT (bridge, run).
    pub messages: Option<Arc<MessageMetrics>>,
    /// Writing to the store (sink, run).
    pub store: Option<Arc<StoreMetrics>>,
    /// The Kafka consumer group (sink).
    pub consumer: Option<Arc<ConsumerMetrics>>,
    pub process: ProcessInfo,
}

impl Exposition {
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(8192);
        let parts = self.health.parts();
        let _ = writeln!(
            o,
            "# HELP iotpipe_build_info The running command and version.\n# TYPE iotpipe_build_info gauge\niotpipe_build_info{{command=\"{}\",version=\"{}\"}} 1",
            self.command,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(m) = &self.messages {
            m.render(&mut o, MessageSeries { kafka: parts.kafka, store: parts.store, journal: parts.journal });
        }
        if parts.mqtt {
            gauge(
                &mut o,
                "iotpipe_mqtt_connected",
                "1 while connected to the MQTT broker.",
                self.health.mqtt_connected().into(),
            );
            gauge(
                &mut o,
                "iotpipe_mqtt_subscribed",
                "1 once the subscriptions are in place.",
                self.health.mqtt_subscribed().into(),
            );
        }
        if parts.kafka {
            let name = if self.consumer.is_some() { "iotpipe_sink_kafka_reachable" } else { "iotpipe_kafka_reachable" };
            gauge(&mut o, name, "1 while Kafka answers metadata requests.", self.health.kafka_reachable().into());
        }
        if parts.journal {
            gauge(
                &mut o,
                "iotpipe_journal_full",
                "1 while the journal refuses appends.",
                self.health.journal_full().into(),
            );
        }
        if let Some(c) = &self.consumer {
            c.render(&mut o);
        }
        if let Some(s) = &self.store {
            s.render(&mut o);
        }
        if parts.store {
            gauge(
                &mut o,
                "iotpipe_sink_store_reachable",
                "1 while the store accepts writes.",
                self.health.store_reachable().into(),
            );
        }
        self.process.render(&mut o);
        o
    }
}

/// Upper bounds of the latency histograms, seconds.
pub const LATENCY_BUCKETS: [f64; 22] = [
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Estimated quantile (0..1) in seconds, interpolated within a bucket; `None` before any observation.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count.load(Relaxed);
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let (mut seen, mut lower) = (0.0, 0.0);
        for (upper, n) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            let n = n.load(Relaxed) as f64;
            if seen + n >= rank && n > 0.0 {
                return Some(lower + (upper - lower) * ((rank - seen) / n));
            }
            seen += n;
            lower = *upper;
        }
        Some(lower)
    }

    pub(crate) fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

pub(crate) fn counter(o: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

pub(crate) fn counter_f64(o: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

pub(crate) fn gauge(o: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

pub(crate) fn gauge_f64(o: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

/// Milliseconds on a monotonic clock that starts at its first use: for
/// "seconds since" gauges, which must not jump with the wall clock.
pub(crate) mod clock {
    use std::sync::OnceLock;
    use std::time::Instant;

    static START: OnceLock<Instant> = OnceLock::new();

    pub fn now_ms() -> u64 {
        let start = *START.get_or_init(Instant::now);
        u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Parts;

    fn exposition(command: &'static str, parts: Parts) -> Exposition {
        Exposition {
            command,
            health: Health::new(parts),
            messages: (parts.mqtt).then(|| Arc::new(MessageMetrics::new(false))),
            store: parts.store.then(|| Arc::new(StoreMetrics::new())),
            consumer: (parts.kafka && !parts.mqtt).then(|| Arc::new(ConsumerMetrics::new(false))),
            process: ProcessInfo::default(),
        }
    }

    #[test]
    fn each_command_shows_only_its_own_series() {
        let run = exposition("run", Parts { mqtt: true, store: true, journal: true, kafka: false }).render();
        assert!(!run.contains("kafka_reachable"), "run has no Kafka:\n{run}");
        assert!(!run.contains("iotpipe_kafka_retries_total"));
        assert!(!run.contains("iotpipe_sink_records_consumed_total"));
        assert!(run.contains("iotpipe_journal_full 0\n"));
        assert!(run.contains("iotpipe_sink_rows_written_total 0\n"));
        assert!(run.contains("iotpipe_build_info{command=\"run\""));
        assert!(run.contains("iotpipe_messages_stored_total 0\n"));
        assert!(!run.contains("iotpipe_messages_delivered_total"), "run delivers nothing to Kafka");

        let bridge = exposition("bridge", Parts { mqtt: true, kafka: true, ..Parts::default() }).render();
        assert!(bridge.contains("iotpipe_kafka_reachable 0\n"));
        assert!(!bridge.contains("iotpipe_sink_"), "{bridge}");
        assert!(!bridge.contains("iotpipe_journal_"));
        assert!(bridge.contains("iotpipe_messages_delivered_total 0\n"));
        assert!(!bridge.contains("iotpipe_messages_stored_total"));

        let sink = exposition("sink", Parts { kafka: true, store: true, ..Parts::default() }).render();
        assert!(sink.contains("iotpipe_sink_kafka_reachable 0\n"));
        assert!(!sink.contains("iotpipe_kafka_reachable"));
        assert!(!sink.contains("iotpipe_messages_received_total"));
        assert!(!sink.contains("iotpipe_mqtt_connected"));
        assert!(!sink.contains("iotpipe_sink_timescale_"), "no TimescaleDB series before the store is known to be one");
    }
}
