//! Metrics of the sink's Kafka consumer: records read and consumer lag.
//! Lag per topic and partition is a series per tenant and project (topics
//! are named after them), so it follows `http.per_tenant_metrics` and is
//! capped at the `LAGGING_SERIES` partitions furthest behind (a member can
//! hold thousands); the sum over the partitions this member holds is always
//! there.

use super::{counter, escape, gauge, gauge_f64};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// At most this many per-partition lag series: the partitions furthest behind.
pub const LAGGING_SERIES: usize = 50;

#[derive(Default)]
pub struct ConsumerMetrics {
    pub records_consumed: AtomicU64,
    per_partition: bool,
    /// Lag summed over the partitions of the last report.
    lag_total: AtomicI64,
    /// (topic, partition, lag) of the partitions furthest behind in the last
    /// report (at most `LAGGING_SERIES`, only with `per_partition`).
    lags: Mutex<Vec<(String, i32, i64)>>,
    /// Kafka timestamp (epoch ms) of the newest record read from the
    /// partition furthest behind in time; 0 when none is behind.
    behind_since_ms: AtomicI64,
    /// Per batch read and not yet committed to the store, in read order:
    /// the Kafka timestamp (epoch ms) of its oldest record.
    pending: Mutex<VecDeque<i64>>,
}

impl ConsumerMetrics {
    pub fn new(per_partition: bool) -> Self {
        Self { per_partition, ..Self::default() }
    }

    /// The lags of the latest report (replaces the previous one):
    /// `(topic, partition, lag)`. Topic names are copied only for the
    /// series kept.
    pub fn set_lags<T: AsRef<str>>(&self, mut lags: Vec<(T, i32, i64)>) {
        let total: i64 = lags.iter().map(|(_, _, l)| (*l).max(0)).sum();
        self.lag_total.store(total, Relaxed);
        if !self.per_partition {
            return;
        }
        lags.retain(|(_, _, l)| *l > 0);
        if lags.len() > LAGGING_SERIES {
            lags.select_nth_unstable_by(LAGGING_SERIES - 1, |a, b| b.2.cmp(&a.2));
            lags.truncate(LAGGING_SERIES);
        }
        let mut kept: Vec<(String, i32, i64)> = lags.iter().map(|(t, p, l)| (t.as_ref().to_owned(), *p, *l)).collect();
        kept.sort();
        if let Ok(mut m) = self.lags.lock() {
            *m = kept;
        }
    }

    /// The newest record read from the partition furthest behind in time
    /// (`None`: caught up, or nothing read yet from a partition behind).
    pub fn set_behind_since(&self, ts_ms: Option<i64>) {
        self.behind_since_ms.store(ts_ms.unwrap_or(0), Relaxed);
    }

    /// A batch was read; `oldest_ms` is its oldest record's timestamp.
    pub fn on_batch_read(&self, oldest_ms: i64) {
        if let Ok(mut p) = self.pending.lock() {
            p.push_back(oldest_ms);
        }
    }

    /// The oldest batch read was committed to the store (batches commit in
    /// read order).
    pub fn on_batch_committed(&self) {
        if let Ok(mut p) = self.pending.lock() {
            p.pop_front();
        }
    }

    /// Seconds the sink is behind: the age of the oldest record read and
    /// not yet committed to the store, or of the newest record read from a
    /// partition with records still unread, whichever is older; 0 when
    /// caught up. Computed when read, so it keeps growing while the sink is
    /// stuck (store down, nothing read or committed).
    pub fn lag_seconds(&self) -> f64 {
        let pending = self.pending.lock().ok().and_then(|p| p.iter().copied().min());
        let behind = Some(self.behind_since_ms.load(Relaxed)).filter(|ms| *ms != 0);
        match pending.into_iter().chain(behind).min() {
            None => 0.0,
            Some(since) => (crate::record::now_ms().saturating_sub(since)).max(0) as f64 / 1000.0,
        }
    }

    pub fn render(&self, o: &mut String) {
        counter(o, "iotpipe_sink_records_consumed_total", "Kafka records read.", self.records_consumed.load(Relaxed));
        gauge(
            o,
            "iotpipe_sink_consumer_lag_records",
            "Records behind the end of the partitions this member holds, summed.",
            self.lag_total.load(Relaxed),
        );
        gauge_f64(
            o,
            "iotpipe_sink_consumer_lag_seconds",
            "Age of the newest record read from the partition furthest behind (0: caught up); the backlog is at least this old.",
            self.lag_seconds(),
        );
        if self.per_partition {
            let lags = self.lags.lock().map(|l| l.clone()).unwrap_or_default();
            let _ = writeln!(o, "# HELP iotpipe_sink_consumer_lag Records behind the end of a partition (the {LAGGING_SERIES} furthest behind).\n# TYPE iotpipe_sink_consumer_lag gauge");
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
        m.set_lags(vec![("iot.a.b", 2, 17), ("iot.c.d", 0, 3)]);
        let mut t = String::new();
        m.render(&mut t);
        assert!(t.contains("iotpipe_sink_consumer_lag_records 20\n"));
        assert!(!t.contains("iotpipe_sink_consumer_lag{"));

        let m = ConsumerMetrics::new(true);
        m.set_lags(vec![("iot.a.b", 2, 17), ("iot.c.d", 0, 3)]);
        m.set_lags(vec![("iot.a.b", 2, 5)]);
        let mut t = String::new();
        m.render(&mut t);
        assert!(t.contains("iotpipe_sink_consumer_lag{topic=\"iot.a.b\",partition=\"2\"} 5\n"));
        assert!(!t.contains("iot.c.d"));
    }

    #[test]
    fn per_partition_series_are_capped_at_the_furthest_behind() {
        let m = ConsumerMetrics::new(true);
        let lags: Vec<_> = (0..10_000).map(|i| (format!("iot.t{i}.p"), 0, i64::from(i))).collect();
        m.set_lags(lags);
        let mut t = String::new();
        m.render(&mut t);
        let series = t.lines().filter(|l| l.starts_with("iotpipe_sink_consumer_lag{")).count();
        assert_eq!(series, LAGGING_SERIES);
        assert!(t.contains("iotpipe_sink_consumer_lag{topic=\"iot.t9999.p\",partition=\"0\"} 9999\n"));
        assert!(!t.contains("topic=\"iot.t9000.p\""), "only the furthest behind");
        assert!(t.contains(&format!("iotpipe_sink_consumer_lag_records {}\n", (0..10_000i64).sum::<i64>())));
    }

    #[test]
    fn lag_in_seconds_is_the_age_of_the_partition_furthest_behind() {
        let m = ConsumerMetrics::new(false);
        let mut t = String::new();
        m.render(&mut t);
        assert!(t.contains("iotpipe_sink_consumer_lag_seconds 0\n"), "{t}");
        m.set_behind_since(Some(crate::record::now_ms() - 90_000));
        let lag = m.lag_seconds();
        assert!((90.0..120.0).contains(&lag), "{lag}");
        m.set_behind_since(None);
        assert_eq!(m.lag_seconds(), 0.0);
        // Read and waiting for the store: as old as its oldest record.
        m.on_batch_read(crate::record::now_ms() - 30_000);
        m.on_batch_read(crate::record::now_ms() - 5_000);
        assert!((30.0..40.0).contains(&m.lag_seconds()), "{}", m.lag_seconds());
        m.on_batch_committed();
        assert!((5.0..15.0).contains(&m.lag_seconds()), "{}", m.lag_seconds());
        m.on_batch_committed();
        assert_eq!(m.lag_seconds(), 0.0);
    }
}
