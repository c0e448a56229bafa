//! Metrics of the sink's Kafka consumer: records read and consumer lag.
//! Lag per topic and partition is a series per tenant and project (topics
//! are named after them), so it follows `http.per_tenant_metrics`; the sum
//! over the partitions this member holds is always there.

use super::{counter, escape, gauge};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Default)]
pub struct ConsumerMetrics {
    pub records_consumed: AtomicU64,
    per_partition: bool,
    /// (topic, partition, lag) of the partitions in the last statistics report.
    lags: Mutex<Vec<(String, i32, i64)>>,
}

impl ConsumerMetrics {
    pub fn new(per_partition: bool) -> Self {
        Self { per_partition, ..Self::default() }
    }

    /// The lags of the latest statistics report (replaces the previous one).
    pub fn set_lags(&self, mut lags: Vec<(String, i32, i64)>) {
        lags.sort();
        if let Ok(mut m) = self.lags.lock() {
            *m = lags;
        }
    }

    pub fn render(&self, o: &mut String) {
        counter(o, "iotpipe_sink_records_consumed_total", "Kafka records read.", self.records_consumed.load(Relaxed));
        let lags = self.lags.lock().map(|l| l.clone()).unwrap_or_default();
        gauge(
            o,
            "iotpipe_sink_consumer_lag_records",
            "Records behind the end of the partitions this member holds, summed.",
            lags.iter().map(|(_, _, l)| *l).sum(),
        );
        if self.per_partition {
            let _ = writeln!(o, "# HELP iotpipe_sink_consumer_lag Records behind the end of each partition.\n# TYPE iotpipe_sink_consumer_lag gauge");
            for (t, p, lag) in &lags {
                let _ = writeln!(o, "iotpipe_sink_consumer_lag{{topic=\"{}\",partition=\"{p}\"}} {lag}", escape(t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_per_partition_only_behind_the_switch_and_revoked_partitions_vanish() {
        let m = ConsumerMetrics::new(false);
        m.set_lags(vec![("iot.a.b".into(), 2, 17), ("iot.c.d".into(), 0, 3)]);
        let mut t = String::new();
        m.render(&mut t);
        assert!(t.contains("iotpipe_sink_consumer_lag_records 20\n"));
        assert!(!t.contains("iotpipe_sink_consumer_lag{"));

        let m = ConsumerMetrics::new(true);
        m.set_lags(vec![("iot.a.b".into(), 2, 17), ("iot.c.d".into(), 0, 3)]);
        m.set_lags(vec![("iot.a.b".into(), 2, 5)]);
        let mut t = String::new();
        m.render(&mut t);
        assert!(t.contains("iotpipe_sink_consumer_lag{topic=\"iot.a.b\",partition=\"2\"} 5\n"));
        assert!(!t.contains("iot.c.d"));
    }
}
