//! TimescaleDB job health: the state of the background jobs of the policies
//! iotpipe created (compression, retention, the rollup's refresh), read
//! from `timescaledb_information.jobs` and `job_stats`. The sink polls it
//! and exports it (`iotpipe_sink_timescale_*`, docs/metrics.md), so a job
//! that fails in the database pages someone.

/// What a job does; a fixed, small set (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// `policy_compression` on `telemetry`.
    Compression,
    /// `policy_retention` on `telemetry`, `dead_letters` and the rollup.
    Retention,
    /// `policy_refresh_continuous_aggregate` on the rollup.
    Refresh,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::Compression, JobKind::Retention, JobKind::Refresh];

    /// The `kind` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Compression => "compression",
            JobKind::Retention => "retention",
            JobKind::Refresh => "refresh",
        }
    }

    /// The kind of a job by its procedure (`proc_name`); `None` for
    /// procedures iotpipe does not schedule.
    pub fn from_proc(proc_name: &str) -> Option<JobKind> {
        match proc_name {
            "policy_compression" => Some(JobKind::Compression),
            "policy_retention" => Some(JobKind::Retention),
            "policy_refresh_continuous_aggregate" => Some(JobKind::Refresh),
            _ => None,
        }
    }

    pub fn index(self) -> usize {
        match self {
            JobKind::Compression => 0,
            JobKind::Retention => 1,
            JobKind::Refresh => 2,
        }
    }
}

/// One job as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobState {
    pub job_id: i32,
    pub kind: JobKind,
    /// Its last finished run failed (`last_run_status = 'Failed'`).
    pub last_run_failed: bool,
    /// Failed runs of this job since it was created (`total_failures`).
    pub total_failures: u64,
}

/// The jobs of iotpipe's policies on its tables (in the current schema):
/// id, procedure, whether the last run failed, failures so far. A job
/// never run has no stats yet: not failed, no failures.
pub const JOBS_SQL: &str = "SELECT j.job_id, j.proc_name::text, \
    coalesce(s.last_run_status = 'Failed', false), coalesce(s.total_failures, 0)::bigint \
    FROM timescaledb_information.jobs AS j \
    LEFT JOIN timescaledb_information.job_stats AS s ON s.job_id = j.job_id \
    WHERE j.hypertable_schema = current_schema() \
      AND j.hypertable_name IN ('telemetry', 'dead_letters', 'telemetry_numeric_rollup') \
      AND j.proc_name IN ('policy_compression', 'policy_retention', 'policy_refresh_continuous_aggregate') \
    ORDER BY j.job_id";

/// A row of [`JOBS_SQL`] as read (id, procedure, failed, failures), or
/// `None` for a procedure outside [`JobKind`].
pub fn job_state(job_id: i32, proc_name: &str, last_run_failed: bool, total_failures: i64) -> Option<JobState> {
    Some(JobState {
        job_id,
        kind: JobKind::from_proc(proc_name)?,
        last_run_failed,
        total_failures: u64::try_from(total_failures).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_the_policy_procedures_only() {
        assert_eq!(JobKind::from_proc("policy_compression"), Some(JobKind::Compression));
        assert_eq!(JobKind::from_proc("policy_retention"), Some(JobKind::Retention));
        assert_eq!(JobKind::from_proc("policy_refresh_continuous_aggregate"), Some(JobKind::Refresh));
        assert_eq!(JobKind::from_proc("policy_reorder"), None);
        assert_eq!(job_state(1000, "custom_proc", true, 3), None);
        let s = job_state(1001, "policy_retention", true, -1).expect("a retention job");
        assert_eq!((s.kind, s.last_run_failed, s.total_failures), (JobKind::Retention, true, 0));
        for (i, k) in JobKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }

    #[test]
    fn the_query_reads_iotpipes_tables_in_its_schema() {
        assert!(JOBS_SQL.contains("timescaledb_information.job_stats"));
        assert!(JOBS_SQL.contains("hypertable_schema = current_schema()"));
        assert!(JOBS_SQL.contains("'telemetry_numeric_rollup'"));
    }
}
