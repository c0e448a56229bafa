//! Metrics of writing to the store (`sink` and `run`): rows, duplicates,
//! batches, errors, retention and dead letters by reason. The names carry
//! `sink_` for history; `run` writes through the same code and reports them too.

use super::pairs::{PairSeries, DEFAULT_PAIR_SERIES};
use super::{clock, counter, escape, gauge, Histogram};
use crate::record::DeadLetterReason;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Most (tenant, project) series of `iotpipe_sink_freshness_seconds`; past
/// it the pairs stored least recently are dropped first.
pub const MAX_FRESHNESS_SERIES: usize = DEFAULT_PAIR_SERIES;

/// A committed row, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct CommittedRow<'a> {
    /// When the bridge (or `run`) received the message, epoch ms.
    pub received_ms: i64,
    /// The device's event time, when the payload has one, epoch ms.
    pub event_ms: Option<i64>,
    pub tenant_id: &'a str,
    pub project_id: &'a str,
}

#[derive(Default)]
pub struct StoreMetrics {
    pub rows_written: AtomicU64,
    /// Rows the store already had (replays after a crash or rebalance).
    pub rows_duplicate: AtomicU64,
    pub batches: AtomicU64,
    /// Batches written twice: COPY first, then INSERT (PostgreSQL).
    pub batches_redone: AtomicU64,
    pub store_errors: AtomicU64,
    pub retention_runs: AtomicU64,
    pub retention_failures: AtomicU64,
    /// Unix time of the last successful retention run (0: none yet).
    pub retention_last_success: AtomicU64,
    pub retention_partitions_dropped: AtomicU64,
    pub retention_rows_deleted: AtomicU64,
    pub batch_latency: Histogram,
    /// From the bridge's receipt of a message (`received_at`) to the commit
    /// of its row: the pipeline's end-to-end latency.
    pub end_to_end: Histogram,
    /// From the device's event time (when the payload has one) to the commit.
    pub end_to_end_event: Histogram,
    /// Per tenant/project: when a row of the pair was last committed (ms on
    /// `clock::now_ms`), capped at `MAX_FRESHNESS_SERIES`.
    freshness: Mutex<PairSeries<u64>>,
    /// TimescaleDB job health; shown only on a TimescaleDB store.
    pub timescale_jobs: super::TimescaleJobMetrics,
    dead_lettered: [AtomicU64; DeadLetterReason::ALL.len()],
}

impl StoreMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// One batch committed: `redone` when it was written a second time by
    /// INSERT after its COPY failed.
    pub fn on_batch(&self, written: u64, duplicates: u64, redone: bool, took: Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.batches_redone.fetch_add(u64::from(redone), Relaxed);
        self.rows_written.fetch_add(written, Relaxed);
        self.rows_duplicate.fetch_add(duplicates, Relaxed);
        self.batch_latency.observe(took);
    }

    /// Rows committed at `committed_ms` (epoch ms): their end-to-end
    /// latency (a clock behind the producer's counts as 0, not as negative)
    /// and the freshness of their tenant/project.
    pub fn on_committed<'a>(&self, rows: impl IntoIterator<Item = CommittedRow<'a>>, committed_ms: i64) {
        let since = |ms: i64| Duration::from_millis(u64::try_from(committed_ms.saturating_sub(ms)).unwrap_or(0));
        let now = clock::now_ms();
        let mut fresh = self.freshness.lock().ok();
        let mut last: Option<(&str, &str)> = None;
        for row in rows {
            self.end_to_end.observe(since(row.received_ms));
            if let Some(event) = row.event_ms {
                self.end_to_end_event.observe(since(event));
            }
            // Rows of a batch come in runs of one pair: touch each run once.
            if last != Some((row.tenant_id, row.project_id)) {
                if let Some(f) = fresh.as_mut() {
                    f.touch(row.tenant_id, row.project_id, |at| *at = now);
                }
                last = Some((row.tenant_id, row.project_id));
            }
        }
    }

    /// A record goes to the dead-letter table. Logged: the first of each
    /// reason, then one in a thousand.
    pub fn on_dead_letter(&self, reason: DeadLetterReason, source: &str, detail: &str) {
        let n = self.dead_lettered[reason.index()].fetch_add(1, Relaxed) + 1;
        if n == 1 || n % 1000 == 0 {
            tracing::warn!(reason = reason.as_str(), source, detail, count = n, "Dead-lettering record.");
        }
    }

    pub fn dead_lettered(&self, reason: DeadLetterReason) -> u64 {
        self.dead_lettered[reason.index()].load(Relaxed)
    }

    /// A store write failed and is retried. Logged when the store was
    /// reachable until now, then every fiftieth time.
    pub fn on_store_error(&self, error: &str, retry_in: Duration, was_reachable: bool) {
        let n = self.store_errors.fetch_add(1, Relaxed);
        if was_reachable || n % 50 == 0 {
            tracing::warn!(
                error,
                ?retry_in,
                "Store write failed; retrying the batch (nothing is acknowledged meanwhile)."
            );
        }
    }

    pub fn on_retention(&self, partitions_dropped: u64, rows_deleted: u64) {
        self.retention_runs.fetch_add(1, Relaxed);
        self.retention_partitions_dropped.fetch_add(partitions_dropped, Relaxed);
        self.retention_rows_deleted.fetch_add(rows_deleted, Relaxed);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.retention_last_success.store(now.as_secs(), Relaxed);
    }

    pub fn on_retention_failed(&self) {
        self.retention_runs.fetch_add(1, Relaxed);
        self.retention_failures.fetch_add(1, Relaxed);
    }

    fn render_freshness(&self, o: &mut String) {
        let Ok(f) = self.freshness.lock() else { return };
        let now = clock::now_ms();
        let _ = writeln!(
            o,
            "# HELP iotpipe_sink_freshness_seconds Seconds since a row of the tenant/project was last committed (the {MAX_FRESHNESS_SERIES} pairs stored most recently).\n# TYPE iotpipe_sink_freshness_seconds gauge"
        );
        for (t, p, at) in f.sorted() {
            let _ = writeln!(
                o,
                "iotpipe_sink_freshness_seconds{{tenant_id=\"{}\",project_id=\"{}\"}} {}",
                escape(t),
                escape(p),
                now.saturating_sub(*at) as f64 / 1000.0
            );
        }
        counter(
            o,
            "iotpipe_sink_freshness_evicted_total",
            "Tenant/project pairs dropped from iotpipe_sink_freshness_seconds to stay at its cap (stored least recently first).",
            f.evicted(),
        );
    }

    pub fn render(&self, o: &mut String) {
        self.render_freshness(o);
        counter(o, "iotpipe_sink_rows_written_total", "Rows inserted into the store.", self.rows_written.load(Relaxed));
        counter(
            o,
            "iotpipe_sink_rows_duplicate_total",
            "Rows skipped because the store already had them.",
            self.rows_duplicate.load(Relaxed),
        );
        counter(o, "iotpipe_sink_batches_total", "Batches committed to the store.", self.batches.load(Relaxed));
        counter(
            o,
            "iotpipe_sink_batches_redone_total",
            "Batches whose binary COPY into PostgreSQL failed (a row already stored, or COPY refused) and that were \
             written again by INSERT .. ON CONFLICT DO NOTHING.",
            self.batches_redone.load(Relaxed),
        );
        counter(
            o,
            "iotpipe_sink_store_errors_total",
            "Failed store writes (each retried).",
            self.store_errors.load(Relaxed),
        );
        counter(o, "iotpipe_sink_retention_runs_total", "Retention runs.", self.retention_runs.load(Relaxed));
        counter(
            o,
            "iotpipe_sink_retention_failures_total",
            "Retention runs that failed (tried again next interval).",
            self.retention_failures.load(Relaxed),
        );
        gauge(
            o,
            "iotpipe_sink_retention_last_success_timestamp_seconds",
            "Unix time of the last successful retention run (0 before the first).",
            i64::try_from(self.retention_last_success.load(Relaxed)).unwrap_or(i64::MAX),
        );
        counter(
            o,
            "iotpipe_sink_retention_partitions_dropped_total",
            "Partitions dropped by retention.",
            self.retention_partitions_dropped.load(Relaxed),
        );
        counter(
            o,
            "iotpipe_sink_retention_rows_deleted_total",
            "Rows deleted by retention.",
            self.retention_rows_deleted.load(Relaxed),
        );
        let _ = writeln!(o, "# HELP iotpipe_sink_dead_lettered_total Records stored as dead letters, by reason.\n# TYPE iotpipe_sink_dead_lettered_total counter");
        for r in DeadLetterReason::ALL {
            let _ =
                writeln!(o, "iotpipe_sink_dead_lettered_total{{reason=\"{}\"}} {}", r.as_str(), self.dead_lettered(r));
        }
        self.batch_latency.render(o, "iotpipe_sink_batch_seconds", "Time to write and commit one batch to the store.");
        self.end_to_end.render(
            o,
            "iotpipe_sink_end_to_end_seconds",
            "From the bridge's receipt of a message (received_at) to the commit of its row.",
        );
        self.end_to_end_event.render(
            o,
            "iotpipe_sink_event_to_store_seconds",
            "From the device's event time (payloads that carry one) to the commit of its row.",
        );
        self.timescale_jobs.render(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_store_metrics_with_a_fixed_reason_set() {
        let m = StoreMetrics::new();
        m.on_batch(10, 2, true, Duration::from_millis(4));
        m.on_dead_letter(DeadLetterReason::MissingTenant, "kafka:t/0@1", "x");
        m.on_dead_letter(DeadLetterReason::parse("anything at all"), "kafka:t/0@2", "x");
        m.on_retention(1, 5);
        let mut t = String::new();
        m.render(&mut t);
        assert!(t.contains("iotpipe_sink_rows_written_total 10\n"));
        assert!(t.contains("iotpipe_sink_batches_redone_total 1\n"));
        assert!(t.contains("iotpipe_sink_rows_duplicate_total 2\n"));
        assert!(t.contains("iotpipe_sink_dead_lettered_total{reason=\"missing_tenant\"} 1\n"));
        assert!(t.contains("iotpipe_sink_dead_lettered_total{reason=\"other\"} 1\n"));
        assert!(!t.contains("anything at all"));
        let reason_series = t.lines().filter(|l| l.starts_with("iotpipe_sink_dead_lettered_total{")).count();
        assert_eq!(reason_series, DeadLetterReason::ALL.len());
        assert!(t.contains("iotpipe_sink_retention_runs_total 1\n"));
        assert!(t.contains("iotpipe_sink_batch_seconds_count 1\n"));
    }

    #[test]
    fn end_to_end_latency_is_observed_per_committed_row() {
        let m = StoreMetrics::new();
        // Received 300 ms and 40 s before the commit; one row has an event
        // time 2 s back, one a clock ahead of the committer's.
        let row = |received_ms, event_ms| CommittedRow { received_ms, event_ms, tenant_id: "acme", project_id: "p1" };
        m.on_committed([row(9_700, Some(8_000)), row(-30_000, None), row(10_500, Some(10_200))], 10_000);
        let mut t = String::new();
        m.render(&mut t);
        assert!(t.contains("iotpipe_sink_end_to_end_seconds_count 3\n"), "{t}");
        assert!(t.contains("iotpipe_sink_end_to_end_seconds_bucket{le=\"0.00025\"} 1\n"), "ahead counts as 0");
        assert!(t.contains("iotpipe_sink_end_to_end_seconds_bucket{le=\"0.5\"} 2\n"));
        assert!(t.contains("iotpipe_sink_end_to_end_seconds_bucket{le=\"30\"} 2\n"));
        assert!(t.contains("iotpipe_sink_end_to_end_seconds_bucket{le=\"60\"} 3\n"));
        assert!(t.contains("iotpipe_sink_event_to_store_seconds_count 2\n"), "rows without an event time are left out");
        assert!(t.contains("iotpipe_sink_event_to_store_seconds_bucket{le=\"2.5\"} 2\n"));
    }

    #[test]
    fn freshness_is_per_pair_and_bounded() {
        let m = StoreMetrics::new();
        for i in 0..(MAX_FRESHNESS_SERIES + 10) {
            let tenant = format!("t{i}");
            let row = CommittedRow { received_ms: 0, event_ms: None, tenant_id: &tenant, project_id: "p" };
            m.on_committed([row, row], 1);
        }
        let mut t = String::new();
        m.render(&mut t);
        let series: Vec<&str> = t.lines().filter(|l| l.starts_with("iotpipe_sink_freshness_seconds{")).collect();
        assert!(series.len() <= MAX_FRESHNESS_SERIES, "{}", series.len());
        let newest =
            format!("iotpipe_sink_freshness_seconds{{tenant_id=\"t{}\",project_id=\"p\"}} ", MAX_FRESHNESS_SERIES + 9);
        let line = series.iter().find(|l| l.starts_with(&newest)).expect("the newest pair is kept");
        let age: f64 = line[newest.len()..].parse().expect("a number");
        assert!((0.0..60.0).contains(&age), "{line}");
        assert!(!t.contains("tenant_id=\"t0\""), "the pair stored least recently went first");
        assert!(
            t.contains(&format!("iotpipe_sink_freshness_evicted_total {}\n", MAX_FRESHNESS_SERIES + 10 - series.len()))
        );
    }
}
