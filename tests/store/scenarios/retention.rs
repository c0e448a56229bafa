//! Retention: what lies outside the window leaves the store (rows deleted,
//! day partitions or chunks dropped), old dead letters too, and a second run
//! finds nothing to do. InfluxDB expires points itself and has a test of its
//! retention policy instead (tests/store/influx.rs).

use crate::common::store::{dead_letter, payload, row, DAY_MS};
use crate::engine::postgres::relation_exists;
use crate::engine::{Engine, Layout};
use iotpipe::record::now_ms;
use iotpipe::store::postgres::partition;
use std::collections::HashSet;

pub async fn retention_drops_what_is_expired(engine: &Engine) {
    let now = now_ms();
    // Written under a 7-day window, so the 4- and 5-day-old rows keep their event time.
    let mut wide = engine.connect(7).await;
    let mut rng = rand::thread_rng();
    let mut rows = Vec::new();
    for (age_days, n) in [(1, 10), (2, 10), (4, 10), (5, 10)] {
        for i in 0..n {
            let ts = now - age_days * DAY_MS - i * 60_000;
            rows.push(row("acme", "p1", &format!("age-{age_days}"), ts, payload(&mut rng, "d", ts, i as u64)));
        }
    }
    let dead = [dead_letter("journal:1", now - 5 * DAY_MS), dead_letter("journal:2", now - 60_000)];
    let out = wide.write(&rows, &dead).await.expect("write");
    assert_eq!((out.inserted, out.dead_letters_inserted), (40, 2));
    let old_days: Vec<String> =
        [4, 5].iter().map(|a| partition::name(partition::day_of_ms(now - a * DAY_MS).unwrap()).unwrap()).collect();
    if engine.layout() == Layout::DayPartitions {
        let db = engine.pg().await;
        for table in &old_days {
            assert!(relation_exists(&db, table).await, "{table} exists before the retention run");
        }
    }

    let mut narrow = engine.connect(3).await;
    let outcome = narrow.enforce_retention().await.expect("retention");
    assert_eq!(outcome.dead_letters_deleted, 1, "{outcome:?}");
    match engine.layout() {
        Layout::File => {
            assert_eq!(outcome.rows_deleted, 20, "{outcome:?}");
            assert!(outcome.partitions_dropped.is_empty() && outcome.partitions_created.is_empty(), "{outcome:?}");
        }
        Layout::DayPartitions => {
            let db = engine.pg().await;
            for table in &old_days {
                assert!(outcome.partitions_dropped.contains(table), "{table} dropped: {outcome:?}");
                assert!(!relation_exists(&db, table).await, "{table} is gone");
            }
        }
        Layout::Hypertable => assert!(!outcome.partitions_dropped.is_empty(), "expired chunks dropped: {outcome:?}"),
        Layout::Measurements => panic!("InfluxDB expires points itself; this scenario does not apply"),
    }
    let kept = HashSet::from(["age-1".to_string(), "age-2".to_string()]);
    let devices = |counts: &std::collections::HashMap<crate::engine::Device, i64>| -> HashSet<String> {
        counts.keys().map(|(_, _, d)| d.clone()).collect()
    };
    assert_eq!(devices(&engine.counts_by_device().await), kept);
    assert_eq!(engine.count().await, 20);
    if let Some(summary) = engine.device_summary().await {
        assert_eq!(devices(&summary), kept, "expired devices leave the summary");
        assert_eq!(summary.values().sum::<i64>(), 20);
    }
    assert_eq!(engine.dead_letters().await.len(), 1);

    // Running it again finds nothing more to do.
    let again = narrow.enforce_retention().await.expect("retention again");
    assert_eq!((again.rows_deleted, again.dead_letters_deleted), (0, 0), "{again:?}");
    assert!(again.partitions_dropped.is_empty(), "{again:?}");
}
