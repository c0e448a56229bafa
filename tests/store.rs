//! The stores of `src/store/` against real databases. Each scenario is
//! written once (`store/scenarios/`, and the engine-specific ones in
//! `store/{sqlite,postgres,timescale,influx}.rs`) and run against every engine it
//! applies to (`store/engine/`): a SQLite file, PostgreSQL (day partitions),
//! TimescaleDB (a hypertable; skipped with one loud line when the services
//! env file names no TimescaleDB server) and InfluxDB 1.x. Every test has a
//! database (or file) of its own, dropped at its end.
//!
//! Tests are named `<scenario>::<engine>`, e.g. `exactly_once::postgres`.

mod common;
#[path = "store/engine/mod.rs"]
mod engine;
#[path = "store/influx.rs"]
mod influx;
#[path = "store/postgres.rs"]
mod postgres;
#[path = "store/scenarios/mod.rs"]
mod scenarios;
#[path = "store/sqlite.rs"]
mod sqlite;
#[path = "store/timescale.rs"]
mod timescale;

/// `path::to => scenario: engine, engine;` → a module `scenario` with one
/// `#[tokio::test]` per engine that gets a fresh database, runs
/// `path::to::scenario` on it and drops it. Attributes before a line
/// (`#[ignore]`) go on each of its tests.
macro_rules! scenarios {
    ($($(#[$attr:meta])* $($module:ident)::+ => $name:ident: $($engine:ident),+;)+) => {$(
        mod $name {
            scenarios!(@tests [$(#[$attr])*] (crate::$($module)::+::$name) $($engine)+);
        }
    )+};
    (@tests $attrs:tt $scenario:tt $($engine:ident)+) => {$(
        scenarios!(@test $attrs $scenario $engine);
    )+};
    (@test [$(#[$attr:meta])*] $scenario:tt $engine:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $engine() {
            let Some(engine) = crate::engine::Engine::start(crate::engine::kinds::$engine) else { return };
            $scenario(&engine).await;
            engine.finish().await;
        }
    };
}

scenarios! {
    scenarios::rows => exactly_once: sqlite, postgres, timescale, influx;
    scenarios::rows => a_replay_stores_no_second_row: sqlite, postgres, timescale, influx;
    scenarios::rows => payloads_that_are_not_json_keep_their_bytes: sqlite, postgres, timescale, influx;
    scenarios::rows => event_times_outside_the_window_are_filed_under_the_receive_time: sqlite, postgres, timescale, influx;
    scenarios::rows => hostile_ids_are_stored_as_given: sqlite, postgres, timescale, influx;
    scenarios::dead_letters => dead_letters_are_kept_with_their_reason_once_per_source: sqlite, postgres, timescale, influx;
    scenarios::retention => retention_drops_what_is_expired: sqlite, postgres, timescale;
    scenarios::schema => reopening_keeps_the_data_and_migrates_once: sqlite, postgres, timescale, influx;
    scenarios::schema => concurrent_connects_migrate_once: sqlite, postgres, timescale, influx;
    scenarios::schema => errors_say_whether_to_retry: postgres, timescale, influx;

    postgres => the_numeric_view_lists_numbers_at_the_top_and_one_level_down: postgres, timescale;
    postgres => rows_caught_by_the_default_partition_move_into_a_new_day_partition: postgres;
    postgres => a_batch_of_many_statements_stores_each_id_once: postgres, timescale;
    postgres => a_batch_with_a_stored_row_is_copied_then_inserted: postgres, timescale;

    timescale => hypertables_and_their_jobs_exist_and_run: timescale;
    timescale => a_failing_job_shows_in_the_job_metrics: timescale;
    timescale => compressed_chunks_keep_one_row_per_id: timescale;
    timescale => the_rollup_aggregates_the_numeric_fields: timescale;
    timescale => a_partitioned_database_is_not_converted: timescale;
    timescale => without_the_preload_auto_uses_partitions_and_on_refuses: postgres;

    sqlite => retention_works_through_many_chunks: sqlite;
    sqlite => a_missing_file_is_created_only_when_allowed: sqlite;
    sqlite => queries_answer_from_the_stored_rows: sqlite;
    /// Slow to fill: run it on its own, in release (see the function).
    #[ignore]
    sqlite => a_million_rows_query_latencies: sqlite;

    influx => points_are_queryable_by_tenant_project_and_device: influx;
    influx => odd_names_and_payloads_become_escaped_tags_and_fields: influx;
    influx => the_iotpipe_retention_policy_has_the_window_and_is_the_default: influx;
    influx => two_records_of_one_device_in_the_same_millisecond_are_both_kept: influx;
}
