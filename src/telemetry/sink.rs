//! The sink's metrics (Kafka → store) and the log events that go with them.

use super::{counter, escape, gauge, Histogram};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct SinkMetrics {
    pub records_consumed: AtomicU64,
    pub rows_written: AtomicU64,
    /// Rows the store already had (replays after a crash or rebalance).
    pub rows_duplicate: AtomicU64,
    pub batches: AtomicU64,
    pub store_errors: AtomicU64,
    pub retention_partitions_dropped: AtomicU64,
    pub retention_rows_deleted: AtomicU64,
    pub store_reachable: AtomicBool,
    pub kafka_reachable: AtomicBool,
    pub batch_latency: Histogram,
    dead_lettered: Mutex<BTreeMap<String, u64>>,
    lag: Mutex<BTreeMap<(String, i32), i64>>,
}

impl SinkMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn on_batch(&self, written: u64, duplicates: u64, took: Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.rows_written.fetch_add(written, Relaxed);
        self.rows_duplicate.fetch_add(duplicates, Relaxed);
        self.batch_latency.observe(took);
    }

    pub fn on_dead_letter(&self, reason: &str, source: &str, detail: &str) {
        let n = {
            let mut m = self.dead_lettered.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(reason.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        if n == 1 || n % 1000 == 0 {
            tracing::warn!(reason, source, detail, count = n, "Dead-lettering record.");
        }
    }

    pub fn dead_lettered(&self, reason: &str) -> u64 {
        self.dead_lettered.lock().map(|m| m.get(reason).copied().unwrap_or(0)).unwrap_or(0)
    }

    pub fn on_store_error(&self, error: &str, retry_in: Duration) {
        let n = self.store_errors.fetch_add(1, Relaxed);
        let was = self.store_reachable.swap(false, Relaxed);
        if was || n % 50 == 0 {
            tracing::warn!(error, ?retry_in, "Store write failed; retrying the batch (offsets not committed).");
        }
    }

    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        if let Ok(mut m) = self.lag.lock() {
            m.insert((topic.to_string(), partition), lag);
        }
    }

    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        counter(
            &mut o,
            "iotpipe_sink_records_consumed_total",
            "Kafka records read.",
            self.records_consumed.load(Relaxed),
        );
        counter(
            &mut o,
            "iotpipe_sink_rows_written_total",
            "Rows inserted into the store.",
            self.rows_written.load(Relaxed),
        );
        counter(
            &mut o,
            "iotpipe_sink_rows_duplicate_total",
            "Rows skipped because the store already had them.",
            self.rows_duplicate.load(Relaxed),
        );
        counter(&mut o, "iotpipe_sink_batches_total", "Batches committed to the store.", self.batches.load(Relaxed));
        counter(
            &mut o,
            "iotpipe_sink_store_errors_total",
            "Failed store writes (each retried).",
            self.store_errors.load(Relaxed),
        );
        counter(
            &mut o,
            "iotpipe_sink_retention_partitions_dropped_total",
            "Partitions dropped by retention.",
            self.retention_partitions_dropped.load(Relaxed),
        );
        counter(
            &mut o,
            "iotpipe_sink_retention_rows_deleted_total",
            "Rows deleted by retention.",
            self.retention_rows_deleted.load(Relaxed),
        );
        gauge(
            &mut o,
            "iotpipe_sink_store_reachable",
            "1 while the store accepts writes.",
            i64::from(self.store_reachable.load(Relaxed)),
        );
        gauge(
            &mut o,
            "iotpipe_sink_kafka_reachable",
            "1 while Kafka answers metadata requests.",
            i64::from(self.kafka_reachable.load(Relaxed)),
        );
        let _ = writeln!(o, "# HELP iotpipe_sink_dead_lettered_total Records stored as dead letters, by reason.\n# TYPE iotpipe_sink_dead_lettered_total counter");
        if let Ok(m) = self.dead_lettered.lock() {
            for (reason, n) in m.iter() {
                let _ = writeln!(o, "iotpipe_sink_dead_lettered_total{{reason=\"{}\"}} {n}", escape(reason));
            }
        }
        let _ = writeln!(o, "# HELP iotpipe_sink_consumer_lag Records behind the end of each partition.\n# TYPE iotpipe_sink_consumer_lag gauge");
        if let Ok(m) = self.lag.lock() {
            for ((t, p), lag) in m.iter() {
                let _ = writeln!(o, "iotpipe_sink_consumer_lag{{topic=\"{}\",partition=\"{p}\"}} {lag}", escape(t));
            }
        }
        self.batch_latency.render(
            &mut o,
            "iotpipe_sink_batch_seconds",
            "Time to write and commit one batch to the store.",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_sink_metrics() {
        let m = SinkMetrics::new();
        m.on_batch(10, 2, Duration::from_millis(4));
        m.on_dead_letter("missing_tenant", "kafka:t/0@1", "x");
        m.set_lag("iot.a.b", 2, 17);
        let t = m.render();
        assert!(t.contains("iotpipe_sink_rows_written_total 10\n"));
        assert!(t.contains("iotpipe_sink_rows_duplicate_total 2\n"));
        assert!(t.contains("iotpipe_sink_dead_lettered_total{reason=\"missing_tenant\"} 1\n"));
        assert!(t.contains("iotpipe_sink_consumer_lag{topic=\"iot.a.b\",partition=\"2\"} 17\n"));
        assert!(t.contains("iotpipe_sink_batch_seconds_count 1\n"));
    }
}
