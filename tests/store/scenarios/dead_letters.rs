//! Dead letters: kept once per source, with their reason, error, topic,
//! headers and payload.

use crate::common::store::dead_letter;
use crate::engine::{Engine, Kind};
use iotpipe::record::now_ms;

pub async fn dead_letters_are_kept_with_their_reason_once_per_source(engine: &Engine) {
    let mut store = engine.connect(3).await;
    let d = dead_letter("kafka:iot-dead-letters/2@1234", now_ms());
    let first = store.write(&[], std::slice::from_ref(&d)).await.expect("write");
    assert_eq!((first.dead_letters_inserted, first.dead_letters_duplicates), (1, 0));
    let second = store.write(&[], std::slice::from_ref(&d)).await.expect("write again");
    let reported = if engine.reports_duplicates() { (0, 1) } else { (1, 0) };
    assert_eq!((second.dead_letters_inserted, second.dead_letters_duplicates), reported);

    let stored = engine.dead_letters().await;
    assert_eq!(stored.len(), 1, "one per source: {stored:?}");
    let got = &stored[0];
    assert_eq!(
        (&got.source, got.received_ms, &got.reason, &got.error, &got.mqtt_topic),
        (&d.source, d.received_ms, &d.reason, &d.error, &d.mqtt_topic)
    );
    assert_eq!(got.reason, "invalid_json");
    match &got.headers {
        Some(headers) => {
            assert_eq!(headers, &serde_json::json!({"id": "0190", "received_at": "2026-01-01T00:00:00.000Z"}))
        }
        None => assert_eq!(engine.kind, Kind::Influx, "only InfluxDB keeps no headers"),
    }
    assert_eq!(got.payload, d.payload.to_vec());
}
