//! Connecting: reopening keeps the data, concurrent connects set the schema
//! up once, and errors say whether to retry.

use crate::common::store::{config, dead_letter, fleet_rows, fresh_name, DAY_MS};
use crate::engine::postgres::relation_exists;
use crate::engine::{Engine, Layout};
use iotpipe::config::HumanDuration;
use iotpipe::record::now_ms;
use iotpipe::store::postgres::partition;
use iotpipe::store::{Store, StoreError};

pub async fn reopening_keeps_the_data_and_migrates_once(engine: &Engine) {
    let rows = fleet_rows(1_000, DAY_MS);
    {
        let mut store = engine.connect(3).await;
        store.write(&rows, &[dead_letter("journal:7", now_ms())]).await.expect("write");
    }
    let (mut a, _b) = tokio::join!(engine.connect(3), engine.connect(3));
    let out = a.write(&rows, &[]).await.expect("write again");
    let expected = if engine.reports_duplicates() { (0, 1_000) } else { (1_000, 0) };
    assert_eq!((out.inserted, out.duplicates), expected);
    assert_eq!(engine.count().await, 1_000);
    assert_eq!(engine.dead_letters().await.len(), 1);
    assert_eq!(engine.schema().await, engine.expected_schema(3));
    if engine.answers_queries() {
        let tenants = a
            .query_handle()
            .expect("query handle")
            .tenants(&iotpipe::store::Page::first(iotpipe::store::MAX_LIST_LIMIT))
            .await
            .expect("tenants");
        assert_eq!(tenants.iter().map(|t| t.messages).sum::<u64>(), 1_000);
    }
}

/// Two stores connecting to a database that does not exist yet, then a third.
pub async fn concurrent_connects_migrate_once(engine: &Engine) {
    let (mut a, _b) = tokio::join!(engine.connect(3), engine.connect(3));
    let _again = engine.connect(3).await;
    assert_eq!(engine.schema().await, engine.expected_schema(3));
    if engine.layout() == Layout::DayPartitions {
        let db = engine.pg().await;
        let today = partition::name(partition::day_of_ms(now_ms()).unwrap()).unwrap();
        let ahead = partition::name(partition::day_of_ms(now_ms() + 2 * DAY_MS).unwrap()).unwrap();
        for table in [today, ahead, "telemetry_default".to_string()] {
            assert!(relation_exists(&db, &table).await, "{table}");
        }
    }
    a.ping().await.expect("ping");
}

/// A server that is not there is worth retrying; a refusal or a bad URL is not.
pub async fn errors_say_whether_to_retry(engine: &Engine) {
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cfg = config(engine.url_on_port(port), 3);
    cfg.connect_timeout = HumanDuration::secs(2);
    let e = Store::connect(&cfg).await.err().expect("no server");
    assert!(e.is_retryable(), "{e}");

    if let Some(server) = engine.server() {
        // A user without CREATEDB cannot create the database: a clear, final error.
        let admin = server.admin("postgres").await;
        let role = fresh_name("iot_role");
        admin.batch_execute(&format!("CREATE ROLE {role} LOGIN NOCREATEDB")).await.unwrap();
        let url = server
            .url("postgres")
            .replacen("iotpipe@", &format!("{role}@"), 1)
            .replace("/postgres?", &format!("/{role}_db?"));
        let e = Store::connect(&config(url, 3)).await.err().expect("no right to create");
        admin.batch_execute(&format!("DROP ROLE {role}")).await.unwrap();
        assert!(matches!(e, StoreError::CreateDatabase { .. }), "{e}");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("may not create it"), "{e}");
    }

    // A bad URL names the key.
    let e = Store::connect(&config("mysql://x/y".into(), 3)).await.err().expect("bad url");
    assert!(e.to_string().starts_with("store.url:"), "{e}");
}
