//! TimescaleDB job health (`sink` and `run` on a TimescaleDB store): the
//! background jobs of iotpipe's policies, by kind (`compression`,
//! `retention`, `refresh`; a fixed label set), polled from
//! `timescaledb_information.job_stats`. Shown only once the store turned
//! out to be TimescaleDB.

use super::counter;
use crate::store::postgres::jobs::{JobKind, JobState};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

const KINDS: usize = JobKind::ALL.len();

#[derive(Default)]
struct State {
    /// The store is TimescaleDB: the series are shown.
    enabled: bool,
    polls: u64,
    poll_failures: u64,
    /// Per kind, as of the last successful poll.
    jobs: [u64; KINDS],
    failed: [u64; KINDS],
    /// Failed runs seen, per kind: the increases of each job's
    /// `total_failures` (a job replaced at a restart starts again at 0, so
    /// this never goes down).
    failures: [u64; KINDS],
    /// `total_failures` per job id at the last poll (the current jobs only).
    seen: HashMap<i32, u64>,
}

/// What a poll found new.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobPoll {
    /// Jobs whose last run failed.
    pub failed_jobs: u64,
    /// Failed runs since the previous poll.
    pub new_failures: u64,
}

#[derive(Default)]
pub struct TimescaleJobMetrics {
    state: Mutex<State>,
}

impl TimescaleJobMetrics {
    /// A successful poll: the jobs as they are now.
    pub fn on_jobs(&self, jobs: &[JobState]) -> JobPoll {
        let Ok(mut s) = self.state.lock() else { return JobPoll::default() };
        s.enabled = true;
        s.polls += 1;
        s.jobs = [0; KINDS];
        s.failed = [0; KINDS];
        let mut poll = JobPoll::default();
        let mut seen = HashMap::with_capacity(jobs.len());
        for j in jobs {
            let k = j.kind.index();
            s.jobs[k] += 1;
            if j.last_run_failed {
                s.failed[k] += 1;
                poll.failed_jobs += 1;
            }
            let before = s.seen.get(&j.job_id).copied().unwrap_or(0);
            let new = j.total_failures.saturating_sub(before);
            s.failures[k] += new;
            poll.new_failures += new;
            seen.insert(j.job_id, j.total_failures.max(before));
        }
        s.seen = seen;
        poll
    }

    /// A poll failed (the store is TimescaleDB, the query did not answer);
    /// returns how many have failed so far.
    pub fn on_poll_failed(&self) -> u64 {
        let Ok(mut s) = self.state.lock() else { return 0 };
        s.enabled = true;
        s.polls += 1;
        s.poll_failures += 1;
        s.poll_failures
    }

    /// Whether the store is TimescaleDB (a poll happened).
    pub fn enabled(&self) -> bool {
        self.state.lock().map(|s| s.enabled).unwrap_or(false)
    }

    pub fn render(&self, o: &mut String) {
        let Ok(s) = self.state.lock() else { return };
        if !s.enabled {
            return;
        }
        let per_kind = |o: &mut String, name: &str, kind: &str, help: &str, v: &[u64; KINDS]| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for k in JobKind::ALL {
                let _ = writeln!(o, "{name}{{kind=\"{}\"}} {}", k.as_str(), v[k.index()]);
            }
        };
        per_kind(
            o,
            "iotpipe_sink_timescale_jobs",
            "gauge",
            "TimescaleDB background jobs of iotpipe's policies, by kind (last poll).",
            &s.jobs,
        );
        per_kind(
            o,
            "iotpipe_sink_timescale_jobs_failed",
            "gauge",
            "TimescaleDB jobs of iotpipe's policies whose last run failed, by kind (timescaledb_information.job_stats).",
            &s.failed,
        );
        per_kind(
            o,
            "iotpipe_sink_timescale_job_failures_total",
            "counter",
            "Failed runs of TimescaleDB jobs of iotpipe's policies seen by this process, by kind.",
            &s.failures,
        );
        counter(o, "iotpipe_sink_timescale_job_polls_total", "Reads of the TimescaleDB job stats.", s.polls);
        counter(
            o,
            "iotpipe_sink_timescale_job_poll_failures_total",
            "Reads of the TimescaleDB job stats that failed (the job gauges keep their last values).",
            s.poll_failures,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(job_id: i32, kind: JobKind, last_run_failed: bool, total_failures: u64) -> JobState {
        JobState { job_id, kind, last_run_failed, total_failures }
    }

    fn rendered(m: &TimescaleJobMetrics) -> String {
        let mut t = String::new();
        m.render(&mut t);
        t
    }

    #[test]
    fn nothing_is_shown_before_the_store_is_known_to_be_timescaledb() {
        let m = TimescaleJobMetrics::default();
        assert_eq!(rendered(&m), "");
        assert!(!m.enabled());
        assert_eq!(m.on_poll_failed(), 1);
        let t = rendered(&m);
        assert!(t.contains("iotpipe_sink_timescale_job_poll_failures_total 1\n"), "{t}");
        assert!(t.contains("iotpipe_sink_timescale_jobs_failed{kind=\"retention\"} 0\n"));
    }

    #[test]
    fn failed_jobs_are_a_gauge_and_failures_a_counter_that_survives_replaced_jobs() {
        let m = TimescaleJobMetrics::default();
        let ok = [
            job(1000, JobKind::Retention, false, 0),
            job(1001, JobKind::Retention, false, 0),
            job(1002, JobKind::Compression, false, 2),
        ];
        assert_eq!(m.on_jobs(&ok), JobPoll { failed_jobs: 0, new_failures: 2 });
        let t = rendered(&m);
        assert!(t.contains("iotpipe_sink_timescale_jobs{kind=\"retention\"} 2\n"), "{t}");
        assert!(t.contains("iotpipe_sink_timescale_jobs{kind=\"refresh\"} 0\n"));
        assert!(t.contains("iotpipe_sink_timescale_job_failures_total{kind=\"compression\"} 2\n"));
        assert_eq!(t.lines().filter(|l| l.starts_with("iotpipe_sink_timescale_jobs_failed{")).count(), 3);

        let failing = [job(1000, JobKind::Retention, true, 1), job(1001, JobKind::Retention, false, 0)];
        assert_eq!(m.on_jobs(&failing), JobPoll { failed_jobs: 1, new_failures: 1 });
        assert_eq!(m.on_jobs(&failing), JobPoll { failed_jobs: 1, new_failures: 0 }, "the same failure once");
        let t = rendered(&m);
        assert!(t.contains("iotpipe_sink_timescale_jobs_failed{kind=\"retention\"} 1\n"), "{t}");
        assert!(t.contains("iotpipe_sink_timescale_job_failures_total{kind=\"retention\"} 1\n"));
        assert!(t.contains("iotpipe_sink_timescale_jobs{kind=\"compression\"} 0\n"), "job 1002 is gone");

        // A restart replaced the policies: new ids, no history; the counter keeps its count.
        m.on_jobs(&[job(1010, JobKind::Retention, false, 0)]);
        let t = rendered(&m);
        assert!(t.contains("iotpipe_sink_timescale_jobs_failed{kind=\"retention\"} 0\n"));
        assert!(t.contains("iotpipe_sink_timescale_job_failures_total{kind=\"retention\"} 1\n"));
        assert!(t.contains("iotpipe_sink_timescale_job_polls_total 4\n"));
    }
}
