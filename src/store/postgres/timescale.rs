//! TimescaleDB: when the extension is available and preloaded, `telemetry`
//! is a hypertable with daily chunks and TimescaleDB's own retention policy,
//! instead of manual partitions. The SQL is generated here (pure) and
//! unit-tested as text; the store tests run it against a real TimescaleDB
//! where one is installed (docs/storage.md).

use std::time::Duration;

/// Whether the server offers the extension.
pub const AVAILABLE_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')";

/// Whether the extension is installed in this database.
pub const INSTALLED_SQL: &str = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')";

/// Installs the extension (needs the right to, and `shared_preload_libraries`).
pub const CREATE_EXTENSION_SQL: &str = "CREATE EXTENSION IF NOT EXISTS timescaledb";

/// Whether the TimescaleDB library is loaded in this session: its
/// `timescaledb.license` setting exists only then. A database where the
/// extension was created on a server that no longer preloads it silently
/// leaves out compressed rows and files new rows where the hypertable does
/// not see them, so that case is refused.
pub const LOADED_SQL: &str = "SELECT current_setting('timescaledb.license', true) IS NOT NULL";

/// The server's `shared_preload_libraries`.
pub const PRELOAD_SQL: &str = "SELECT current_setting('shared_preload_libraries')";

/// Whether a `shared_preload_libraries` value loads TimescaleDB (the
/// library may be named with its version, `timescaledb-2.28.3`).
pub fn preloads_timescaledb(setting: &str) -> bool {
    setting.split(',').map(|lib| lib.trim().trim_matches('"').trim_matches('\'')).any(|lib| {
        let name = lib.rsplit('/').next().unwrap_or(lib);
        name == "timescaledb" || name.starts_with("timescaledb-")
    })
}

/// An interval literal of whole seconds (at least one).
pub fn interval(d: Duration) -> String {
    format!("INTERVAL '{} seconds'", d.as_secs().max(1))
}

/// Drops the chunks of `table` older than `retention` now, returning their
/// names (the retention task runs it too, so expiry does not wait for the
/// background job).
pub fn drop_chunks_sql(table: &str, retention: Duration) -> String {
    format!("SELECT chunk::text FROM drop_chunks('{table}', older_than => {}) AS chunk", interval(retention))
}

/// The continuous aggregate of the numeric fields.
pub const ROLLUP: &str = "telemetry_numeric_rollup";

/// What the policies are to be (from `[store]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    pub retention: Duration,
    pub chunk_interval: Duration,
    /// Compress chunks older than this; `None`: no compression policy.
    pub compress_after: Option<Duration>,
    /// The rollup's bucket; `None`: no rollup refresh.
    pub rollup_bucket: Option<Duration>,
}

/// What is there already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Found {
    pub compression_enabled: bool,
    pub dead_letters_hypertable: bool,
    pub rollup_exists: bool,
}

/// Reads [`Found`]: three booleans.
pub const FOUND_SQL: &str = "SELECT \
    coalesce((SELECT compression_enabled FROM timescaledb_information.hypertables \
              WHERE hypertable_name = 'telemetry'), false), \
    EXISTS (SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = 'dead_letters'), \
    EXISTS (SELECT 1 FROM timescaledb_information.continuous_aggregates WHERE view_name = 'telemetry_numeric_rollup')";

/// The statements that bring the hypertables' chunking, retention,
/// compression and rollup to `p`. Idempotent; run under the migration lock
/// (two sinks starting at once must not both remove and add a policy).
pub fn policy_sql(p: &Policies, found: &Found) -> Vec<String> {
    let mut sql = vec![format!("SELECT set_chunk_time_interval('telemetry', {})", interval(p.chunk_interval))];
    sql.extend(replace_retention("telemetry", p.retention));
    if found.dead_letters_hypertable {
        sql.extend(replace_retention("dead_letters", p.retention));
    }
    match p.compress_after {
        Some(after) => {
            if !found.compression_enabled {
                sql.push(
                    "ALTER TABLE telemetry SET (timescaledb.compress, \
                     timescaledb.compress_segmentby = 'tenant_id, project_id, device_id', \
                     timescaledb.compress_orderby = 'time DESC, id')"
                        .to_string(),
                );
            }
            sql.push("SELECT remove_compression_policy('telemetry', if_exists => true)".to_string());
            sql.push(format!("SELECT add_compression_policy('telemetry', compress_after => {})", interval(after)));
        }
        None if found.compression_enabled => {
            sql.push("SELECT remove_compression_policy('telemetry', if_exists => true)".to_string());
        }
        None => {}
    }
    match p.rollup_bucket {
        Some(bucket) => {
            if !found.rollup_exists {
                sql.push(create_rollup_sql(bucket));
            }
            // Dashboards ask for one device and field over a time range.
            sql.push(format!(
                "CREATE INDEX IF NOT EXISTS {ROLLUP}_device_idx ON {ROLLUP} \
                 (tenant_id, project_id, device_id, field, bucket DESC)"
            ));
            // Refresh the last day (late data) up to the last whole bucket;
            // the raw chunks must still be there for what is refreshed.
            let start = Duration::from_secs(86_400).min(p.retention / 2).max(bucket * 3);
            sql.push(format!("SELECT remove_continuous_aggregate_policy('{ROLLUP}', if_exists => true)"));
            sql.push(format!(
                "SELECT add_continuous_aggregate_policy('{ROLLUP}', start_offset => {}, end_offset => {}, \
                 schedule_interval => {})",
                interval(start),
                interval(bucket),
                interval(bucket.max(Duration::from_secs(60)))
            ));
            sql.extend(replace_retention(ROLLUP, p.retention));
        }
        None if found.rollup_exists => {
            sql.push(format!("SELECT remove_continuous_aggregate_policy('{ROLLUP}', if_exists => true)"));
        }
        None => {}
    }
    sql
}

fn replace_retention(table: &str, retention: Duration) -> [String; 2] {
    [
        format!("SELECT remove_retention_policy('{table}', if_exists => true)"),
        format!("SELECT add_retention_policy('{table}', {})", interval(retention)),
    ]
}

/// The rollup: per bucket, device and numeric field, average, minimum,
/// maximum, sample count and the last value.
pub fn create_rollup_sql(bucket: Duration) -> String {
    format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {ROLLUP} WITH (timescaledb.continuous) AS \
         SELECT time_bucket({}, t.time) AS bucket, t.tenant_id, t.project_id, t.device_id, f.field, \
                avg(f.value) AS avg, min(f.value) AS min, max(f.value) AS max, count(f.value) AS samples, \
                last(f.value, t.time) AS last \
         FROM telemetry AS t, iotpipe_numeric_fields(t.payload) AS f \
         WHERE f.value IS NOT NULL \
         GROUP BY 1, t.tenant_id, t.project_id, t.device_id, f.field \
         WITH NO DATA",
        interval(bucket)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPERTABLE_MIGRATION: &str = include_str!("sql/0001_telemetry.hypertable.sql");

    #[test]
    fn the_preload_setting_is_read_like_the_server_reads_it() {
        assert!(preloads_timescaledb("timescaledb"));
        assert!(preloads_timescaledb("pg_stat_statements, timescaledb"));
        assert!(preloads_timescaledb("'timescaledb'"));
        assert!(preloads_timescaledb("\"timescaledb-2.28.3\""));
        assert!(!preloads_timescaledb(""));
        assert!(!preloads_timescaledb("pg_stat_statements"));
        assert!(!preloads_timescaledb("timescaledb_toolkit"));
    }

    const DAY: Duration = Duration::from_secs(86_400);

    fn policies() -> Policies {
        Policies {
            retention: 3 * DAY,
            chunk_interval: DAY,
            compress_after: Some(DAY),
            rollup_bucket: Some(Duration::from_secs(60)),
        }
    }

    #[test]
    fn policies_replace_the_old_ones_and_set_compression_up_once() {
        let sql = policy_sql(&policies(), &Found { dead_letters_hypertable: true, ..Found::default() });
        let has = |s: &str| sql.iter().any(|q| q.contains(s));
        assert_eq!(sql[0], "SELECT set_chunk_time_interval('telemetry', INTERVAL '86400 seconds')");
        assert!(has("SELECT remove_retention_policy('telemetry', if_exists => true)"));
        assert!(has("SELECT add_retention_policy('telemetry', INTERVAL '259200 seconds')"));
        assert!(has("SELECT add_retention_policy('dead_letters', INTERVAL '259200 seconds')"));
        assert!(has("timescaledb.compress_segmentby = 'tenant_id, project_id, device_id'"));
        assert!(has("SELECT add_compression_policy('telemetry', compress_after => INTERVAL '86400 seconds')"));
        assert!(has("CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry_numeric_rollup WITH (timescaledb.continuous)"));
        assert!(has("start_offset => INTERVAL '86400 seconds', end_offset => INTERVAL '60 seconds'"));
        assert!(has("SELECT add_retention_policy('telemetry_numeric_rollup', INTERVAL '259200 seconds')"));

        let again = policy_sql(
            &policies(),
            &Found { compression_enabled: true, dead_letters_hypertable: false, rollup_exists: true },
        );
        assert!(!again.iter().any(|q| q.contains("ALTER TABLE") || q.contains("CREATE MATERIALIZED VIEW")));
        assert!(!again.iter().any(|q| q.contains("'dead_letters'")), "a plain dead-letter table is expired by DELETE");
    }

    #[test]
    fn turning_compression_and_the_rollup_off_removes_their_policies_only() {
        let off = Policies { compress_after: None, rollup_bucket: None, ..policies() };
        let found = Found { compression_enabled: true, dead_letters_hypertable: true, rollup_exists: true };
        let sql = policy_sql(&off, &found);
        assert!(sql.contains(&"SELECT remove_compression_policy('telemetry', if_exists => true)".to_string()));
        assert!(sql.contains(
            &"SELECT remove_continuous_aggregate_policy('telemetry_numeric_rollup', if_exists => true)".to_string()
        ));
        assert!(!sql.iter().any(|q| q.contains("add_compression_policy") || q.contains("DROP")));
    }

    #[test]
    fn drop_chunks_uses_the_window() {
        assert_eq!(
            drop_chunks_sql("telemetry", Duration::from_secs(7 * 86_400)),
            "SELECT chunk::text FROM drop_chunks('telemetry', older_than => INTERVAL '604800 seconds') AS chunk"
        );
        assert_eq!(interval(Duration::from_millis(10)), "INTERVAL '1 seconds'");
    }

    #[test]
    fn hypertable_has_daily_chunks_and_the_same_key() {
        assert!(HYPERTABLE_MIGRATION.contains(
            "SELECT create_hypertable('telemetry', 'time', chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE);"
        ));
        assert!(HYPERTABLE_MIGRATION.contains("PRIMARY KEY (time, id)"));
        assert!(!HYPERTABLE_MIGRATION.contains("PARTITION BY"));
    }
}
