//! Every metric, and the log events that go with them, in one place.
//!
//! Names follow Prometheus conventions: `iotpipe_*`, counters end in
//! `_total`, durations in `_seconds`. No per-device labels; per-tenant
//! counters only behind `http.per_tenant_metrics`.

mod bridge;
mod sink;

pub use bridge::BridgeMetrics;
pub use sink::SinkMetrics;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Anything `/metrics` can render.
pub trait Render: Send + Sync {
    fn render(&self) -> String;
}

impl Render for BridgeMetrics {
    fn render(&self) -> String {
        BridgeMetrics::render(self)
    }
}

impl Render for SinkMetrics {
    fn render(&self) -> String {
        SinkMetrics::render(self)
    }
}

/// Upper bounds of the delivery latency histogram, seconds.
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

pub(crate) fn gauge(o: &mut String, name: &str, help: &str, v: i64) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
