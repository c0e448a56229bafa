//! Telemetry rows: a fleet's rows stored exactly once and unchanged, a
//! replay that stores nothing twice, payloads that are not JSON, and event
//! times outside the retention window.

use super::{assert_kept, assert_received, per_device};
use crate::common::store::{fleet_rows, payload, row, DAY_MS};
use crate::engine::postgres::{count, relation_exists};
use crate::engine::{Engine, Layout};
use iotpipe::record::now_ms;
use iotpipe::store::postgres::partition;
use iotpipe::store::query::SeriesRange;
use iotpipe::store::StoreRow;
use std::collections::HashMap;

/// `engine.fleet_size()` rows over 3 tenants × 2 projects × 20 devices and
/// two days: one row each per (tenant, project, device), byte-identical.
pub async fn exactly_once(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let rows = fleet_rows(engine.fleet_size(), 2 * DAY_MS);
    for batch in rows.chunks(5_000) {
        let out = store.write(batch, &[]).await.expect("write");
        assert_eq!((out.inserted, out.duplicates, out.rejected), (batch.len() as u64, 0, 0));
    }

    let expected = per_device(&rows);
    assert_eq!(expected.len(), 120);
    assert_eq!(engine.counts_by_device().await, expected);
    if let Some(summary) = engine.device_summary().await {
        assert_eq!(summary, expected, "the device summary counts every row");
    }
    if engine.layout() == Layout::DayPartitions {
        let db = engine.pg().await;
        assert_eq!(count(&db, "SELECT count(*) FROM telemetry_default").await, 0, "every row found its day partition");
    }

    let by_id: HashMap<String, &StoreRow> = rows.iter().map(|r| (r.id.to_string(), r)).collect();
    let stored = engine.rows().await;
    assert_eq!(stored.len(), rows.len());
    for s in &stored {
        assert_kept(engine, s, by_id[&s.id]);
    }
    store.ping().await.expect("ping");
}

/// Writing the same rows again (in other batches) stores no second row.
pub async fn a_replay_stores_no_second_row(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let rows = fleet_rows(engine.fleet_size(), 2 * DAY_MS);
    for batch in rows.chunks(5_000) {
        store.write(batch, &[]).await.expect("write");
    }
    let mut duplicates = 0;
    for batch in rows.chunks(7_000) {
        let out = store.write(batch, &[]).await.expect("write again");
        let inserted = if engine.reports_duplicates() { 0 } else { batch.len() as u64 };
        assert_eq!(out.inserted, inserted, "nothing new (InfluxDB: each point overwrites itself)");
        duplicates += out.duplicates;
    }
    let reported = if engine.reports_duplicates() { rows.len() as u64 } else { 0 };
    assert_eq!(duplicates, reported, "every row reported as a duplicate");
    assert_eq!(engine.count().await, rows.len() as i64);
    if let Some(summary) = engine.device_summary().await {
        assert_eq!(summary.values().sum::<i64>(), rows.len() as i64, "the summary is unchanged");
    }
    store.ping().await.expect("ping");
}

/// Binary, text, empty, out-of-range, NUL-bearing and 1,000-deep
/// payloads: every byte kept; only real JSON counts as JSON (nesting deeper
/// than 128 levels does not: it is kept as bytes, and nothing recurses on it).
pub async fn payloads_that_are_not_json_keep_their_bytes(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let now = now_ms();
    let deep = format!("{}{}", "[".repeat(1_000), "]".repeat(1_000));
    let bodies: [&[u8]; 6] =
        [b"\xff\xfe\x00binary", b"plain text", b"", b"1e400", br#"{"nul": "a\u0000b"}"#, deep.as_bytes()];
    let rows: Vec<_> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| row("acme", "p1", &format!("d{i}"), now - i as i64, b.to_vec()))
        .collect();
    let out = store.write(&rows, &[]).await.expect("write");
    assert_eq!((out.inserted, out.rejected), (6, 0));
    for (i, r) in rows.iter().enumerate() {
        let s = engine.row(r.id).await;
        let json = i == 4 && engine.json_may_contain_nul();
        assert_eq!(s.json.is_some(), json, "{}: payload only for JSON: {s:?}", r.device_id);
        if json {
            assert_eq!(s.json, Some(serde_json::json!({"nul": "a\u{0}b"})), "{}", r.device_id);
        }
        if !json || !engine.flattens_json() {
            assert_eq!(s.raw.as_deref(), Some(r.payload.as_ref()), "{}: raw keeps every byte", r.device_id);
        }
    }
    if engine.answers_queries() {
        // The queries cope with every kind of payload.
        let q = store.query_handle().expect("query handle");
        for i in 0..6 {
            let device = format!("d{i}");
            let series = q.series("acme", "p1", &device, SeriesRange::Minutes15, None).await.expect("series");
            series.expect("known device");
            let latest = q.latest("acme", "p1", &device).await.expect("latest").expect("known device");
            if i == 1 {
                assert_eq!(latest.payload, serde_json::json!("plain text"));
            }
        }
    }
}

/// A device clock 30 days ahead or 400 days behind: the row is filed under
/// its receive time, the device's timestamp kept; a replay stores nothing.
pub async fn event_times_outside_the_window_are_filed_under_the_receive_time(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let now = now_ms();
    let mut rng = rand::thread_rng();
    let (future, ancient) = (now + 30 * DAY_MS, now - 400 * DAY_MS);
    let rows = vec![
        row("acme", "p1", "future", future, payload(&mut rng, "future", future, 1)),
        row("acme", "p1", "ancient", ancient, payload(&mut rng, "ancient", ancient, 2)),
    ];
    assert_eq!(store.write(&rows, &[]).await.expect("write").inserted, 2);
    for r in &rows {
        let s = engine.row(r.id).await;
        assert_eq!(s.time_ms, r.received_ms, "{}: filed under the receive time", r.device_id);
        assert_received(engine, &s, r);
        assert_eq!(s.event_time_ms, Some(r.time_ms), "{}: the device's timestamp is kept", r.device_id);
    }
    if engine.layout() == Layout::DayPartitions {
        let db = engine.pg().await;
        assert_eq!(count(&db, "SELECT count(*) FROM telemetry_default").await, 0);
        let far = partition::name(partition::day_of_ms(future).unwrap()).unwrap();
        assert!(!relation_exists(&db, &far).await, "no partition 30 days ahead");
    }
    // Replaying them keeps one row each.
    let out = store.write(&rows, &[]).await.expect("replay");
    assert_eq!(out.duplicates, if engine.reports_duplicates() { 2 } else { 0 });
    assert_eq!(engine.count().await, 2);
}

/// Tenant, project and device ids made of SQL, InfluxQL and line-protocol
/// metacharacters are stored as given and read back unchanged: they reach
/// the database as parameters or escaped by a tested rule, never as text of
/// a statement (the table is still there afterwards).
pub async fn hostile_ids_are_stored_as_given(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let now = now_ms();
    let ids = [
        "'; DROP TABLE telemetry; --",
        "\" OR 1=1 --",
        "x' OR '1'='1",
        "back\\slash\\",
        "comma,equals=space tag",
        "tab\there",
        "new\nline",
        "$1 %s %n {}",
        "/* comment */",
        "ünïcødé ✓ 租户",
        "'",
        "\"",
        "\\",
    ];
    let rows: Vec<StoreRow> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| row(id, &format!("p {id}"), &format!("dev-{i} {id}"), now - i as i64, br#"{"v": 1}"#.to_vec()))
        .collect();
    let out = store.write(&rows, &[]).await.expect("write");
    assert_eq!((out.inserted, out.rejected), (rows.len() as u64, 0));
    // InfluxDB 1.x line protocol cannot carry a newline or a trailing
    // backslash in a tag: the documented mapping (docs/storage.md) applies.
    let expected: Vec<StoreRow> = if engine.kind == crate::engine::Kind::Influx {
        let tag = |v: &str| {
            let kept = v.trim_end_matches('\\');
            format!("{}{}", kept.replace(['\n', '\r'], " "), "/".repeat(v.len() - kept.len()))
        };
        rows.iter()
            .map(|r| StoreRow {
                tenant_id: tag(&r.tenant_id),
                project_id: tag(&r.project_id),
                device_id: tag(&r.device_id),
                ..r.clone()
            })
            .collect()
    } else {
        rows.clone()
    };
    assert_eq!(engine.counts_by_device().await, per_device(&expected), "every id read back as written");
    let by_id: HashMap<String, &StoreRow> = expected.iter().map(|r| (r.id.to_string(), r)).collect();
    let stored = engine.rows().await;
    assert_eq!(stored.len(), rows.len());
    for s in &stored {
        assert_kept(engine, s, by_id[&s.id]);
    }
    // A second write still finds the table (nothing was executed).
    let again = row("acme", "p1", "d1", now, b"{}".to_vec());
    assert_eq!(store.write(&[again], &[]).await.expect("write after").inserted, 1);
}
