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

/// Replaces the hypertable's retention policy with one for `retention`
/// (TimescaleDB then drops expired chunks in its background job).
pub fn retention_policy_sql(retention: Duration) -> [String; 2] {
    [
        "SELECT remove_retention_policy('telemetry', if_exists => true)".to_string(),
        format!("SELECT add_retention_policy('telemetry', {})", interval(retention)),
    ]
}

/// Drops the chunks older than `retention` now, returning their names (the
/// retention task runs it too, so expiry does not wait for the background job).
pub fn drop_chunks_sql(retention: Duration) -> String {
    format!("SELECT chunk::text FROM drop_chunks('telemetry', older_than => {}) AS chunk", interval(retention))
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

    #[test]
    fn retention_policy_replaces_the_old_one() {
        let [remove, add] = retention_policy_sql(Duration::from_secs(3 * 86_400));
        assert_eq!(remove, "SELECT remove_retention_policy('telemetry', if_exists => true)");
        assert_eq!(add, "SELECT add_retention_policy('telemetry', INTERVAL '259200 seconds')");
    }

    #[test]
    fn drop_chunks_uses_the_window() {
        assert_eq!(
            drop_chunks_sql(Duration::from_secs(7 * 86_400)),
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
