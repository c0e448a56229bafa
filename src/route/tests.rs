use super::*;
use crate::units::ByteSize;

/// A router from `[route]` keys (device id and event time pointers preset)
/// and, after an optional `[kafka]` line, the dead-letter payload limit.
fn router(extra: &str) -> Router {
    let (route_keys, kafka_keys) = extra.split_once("[kafka]").unwrap_or((extra, ""));
    let route: RouteConfig =
        toml::from_str(&format!("device_id = \"/deviceId\"\nevent_time = \"/ts\"\n{route_keys}")).unwrap();
    let limit = kafka_keys.trim().strip_prefix("dead_letter_max_payload = ").map(|v| v.trim_matches('"'));
    let mut t = targets("iot.{tenant_id}.{project_id}");
    if let Some(l) = limit {
        t.dead_letter_max_payload = l.parse().unwrap();
    }
    Router::new(&route, &t).unwrap()
}

/// The default targets with the given topic template.
fn targets(topic: &str) -> Targets {
    Targets {
        topic: topic.into(),
        key: "{tenant_id}/{project_id}/{device_id}".into(),
        dead_letter_topic: "iot-dead-letters".into(),
        dead_letter_max_payload: ByteSize::kib(512),
    }
}

fn inbound(topic: &str, payload: &[u8]) -> Inbound {
    Inbound {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        received_ms: 1_700_000_000_000,
        redelivered: false,
    }
}

fn header<'a>(o: &'a Outbound, name: &str) -> Option<&'a str> {
    o.headers.get(name)
}

#[test]
fn routes_to_tenant_topic_with_key_and_headers() {
    let r = router("");
    let payload = br#"{"deviceId":"dev-7","ts":1700000000123,"temperature":21.5}"#;
    let o = r.route(&inbound("mtic/msg/client/realtime/acme/solar", payload));
    assert_eq!(o.reason, None);
    assert_eq!(o.topic, "iot.acme.solar");
    assert_eq!(o.key.as_deref(), Some("acme/solar/dev-7"));
    assert_eq!(&o.value[..], payload, "payload bytes are forwarded unchanged");
    assert_eq!(header(&o, "tenant_id"), Some("acme"));
    assert_eq!(header(&o, "project_id"), Some("solar"));
    assert_eq!(header(&o, "device_id"), Some("dev-7"));
    assert_eq!(header(&o, "mqtt_topic"), Some("mtic/msg/client/realtime/acme/solar"));
    assert_eq!(header(&o, "received_at"), Some("2023-11-14T22:13:20.000Z"));
    assert_eq!(header(&o, "event_time"), Some("2023-11-14T22:13:20.123Z"));
    assert_eq!(header(&o, "id"), Some(o.id.to_hyphenated().as_str()));
    assert_eq!(o.timestamp_ms, 1_700_000_000_123);
}

#[test]
fn bad_input_becomes_dead_letters_with_reasons() {
    let r = router("max_payload_size = \"1KiB\"");
    let cases: Vec<(&str, Vec<u8>, DeadLetterReason)> = vec![
        ("other/topic", b"{}".to_vec(), DeadLetterReason::TopicMismatch),
        ("mtic/msg/client/realtime/acme", b"{}".to_vec(), DeadLetterReason::TopicMismatch),
        ("mtic/msg/client/realtime/acme/p", b"{not json".to_vec(), DeadLetterReason::InvalidJson),
        ("mtic/msg/client/realtime/acme/p", vec![0xff, 0xfe, b'{'], DeadLetterReason::InvalidUtf8),
        ("mtic/msg/client/realtime/acme/p", vec![], DeadLetterReason::EmptyPayload),
        ("mtic/msg/client/realtime/acme/p", vec![b' '; 2000], DeadLetterReason::Oversize),
    ];
    for (topic, payload, reason) in cases {
        let o = r.route(&inbound(topic, &payload));
        assert_eq!(o.reason, Some(reason), "{topic} {payload:?}");
        assert_eq!(o.topic, "iot-dead-letters");
        assert_eq!(header(&o, "reason"), Some(reason.as_str()));
        assert_eq!(&o.value[..], &payload[..], "dead letters carry the original bytes");
    }
}

#[test]
fn large_dead_letters_are_truncated_and_say_so() {
    let r = router("max_payload_size = \"1KiB\"\n[kafka]\ndead_letter_max_payload = \"100B\"");
    let o = r.route(&inbound("mtic/msg/client/realtime/a/p", &[b'x'; 5000]));
    assert_eq!(o.value.len(), 100);
    assert_eq!(header(&o, "truncated"), Some("true"));
    assert_eq!(header(&o, "original_size"), Some("5000"));
}

#[test]
fn non_json_is_forwarded_when_json_is_not_required() {
    let r = router("require_json = false");
    let o = r.route(&inbound("mtic/msg/client/realtime/a/p", b"\xff raw bytes"));
    assert_eq!(o.reason, None);
    assert_eq!(o.key.as_deref(), Some("a/p/"));
}

#[test]
fn envelope_format_wraps_the_payload() {
    let r = router("format = \"envelope\"");
    let o = r.route(&inbound("mtic/msg/client/realtime/a/p", br#"{"deviceId":"d","ts":1700000000000,"v":1}"#));
    let v: serde_json::Value = serde_json::from_slice(&o.value).unwrap();
    assert_eq!(v["tenant_id"], "a");
    assert_eq!(v["project_id"], "p");
    assert_eq!(v["mqtt_topic"], "mtic/msg/client/realtime/a/p");
    assert_eq!(v["payload"]["v"], 1);
    assert_eq!(v["timestamp"], 1_700_000_000_000_i64);
}

#[test]
fn device_id_can_come_from_the_topic() {
    let route: RouteConfig = toml::from_str("topic_pattern = \"rt/{tenant_id}/{project_id}/{device_id}\"").unwrap();
    let r = Router::new(&route, &targets("iot.{tenant_id}.{project_id}")).unwrap();
    let o = r.route(&inbound("rt/a/p/d9", b"{}"));
    assert_eq!(o.key.as_deref(), Some("a/p/d9"));
}

#[test]
fn extra_pattern_names_are_usable_in_templates() {
    let route: RouteConfig = toml::from_str("topic_pattern = \"rt/{tenant_id}/{project_id}/{kind}\"").unwrap();
    let o = Router::new(&route, &targets("iot.{kind}")).unwrap().route(&inbound("rt/a/p/alarm", b"{}"));
    assert_eq!(o.topic, "iot.alarm");
}

#[test]
fn redelivered_message_keeps_its_id() {
    let r = router("");
    let p = br#"{"deviceId":"d","ts":1700000000000}"#;
    let mut second = inbound("mtic/msg/client/realtime/a/p", p);
    second.received_ms += 60_000;
    assert_eq!(r.route(&inbound("mtic/msg/client/realtime/a/p", p)).id, r.route(&second).id);
}

/// Hostile MQTT input, case by case: each message is forwarded with the
/// fields it really has, or dead-lettered with its reason; nothing panics
/// (deep nesting included) and dead letters stay within their size limit.
#[test]
fn hostile_input_is_forwarded_or_dead_lettered_with_a_reason() {
    use DeadLetterReason as R;
    let r = router("");
    let t = "mtic/msg/client/realtime/acme/p";
    let long = "t".repeat(64 * 1024);
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(50_000), "}".repeat(50_000));
    let deep_device = format!(r#"{{"deviceId":"d","x":{}1{}}}"#, "[".repeat(5_000), "]".repeat(5_000));
    let huge = vec![b'x'; 16 << 20];
    let sql_tenant = "mtic/msg/client/realtime/'; DROP TABLE telemetry; --/p\"x";
    // (topic, payload, expected reason, expected device id when forwarded)
    let cases: Vec<(String, Vec<u8>, Option<R>, &str)> = vec![
        (format!("mtic/msg/client/realtime/{long}/p"), b"{}".to_vec(), Some(R::InvalidTopicName), ""),
        (format!("mtic/msg/client/realtime/acme/{long}"), b"{}".to_vec(), Some(R::InvalidTopicName), ""),
        (t.into(), huge.clone(), Some(R::Oversize), ""),
        (t.into(), deep_array.into_bytes(), None, ""),
        (t.into(), deep_object.into_bytes(), None, ""),
        (t.into(), deep_device.into_bytes(), None, "d"),
        (t.into(), br#"{"deviceId":"a\u0000b"}"#.to_vec(), None, "a\u{0}b"),
        (t.into(), b"{\"deviceId\":\"a\0b\"}".to_vec(), Some(R::InvalidJson), ""),
        (t.into(), br#"{"deviceId":"d","v":1e400}"#.to_vec(), None, "d"),
        (t.into(), br#"{"deviceId":"d","v":-99999999999999999999999999999}"#.to_vec(), None, "d"),
        (t.into(), br#"{"deviceId":"a","deviceId":"b"}"#.to_vec(), None, "b"),
        (t.into(), br#"{"deviceId":123}"#.to_vec(), None, "123"),
        (t.into(), br#"{"deviceId":null}"#.to_vec(), None, ""),
        (t.into(), br#"{"deviceId":{"x":1}}"#.to_vec(), None, ""),
        (t.into(), br#"{"deviceId":["a"]}"#.to_vec(), None, ""),
        (t.into(), br#"{"deviceId":true,"ts":"yesterday"}"#.to_vec(), None, "true"),
        (t.into(), br#"{"deviceId":"d","ts":1e300}"#.to_vec(), None, "d"),
        (t.into(), br#"{"deviceId":"d","ts":-1}"#.to_vec(), None, "d"),
        (t.into(), br#"{"deviceId":"d","ts":{"ms":1}}"#.to_vec(), None, "d"),
        (t.into(), br#"{"deviceId":"d","ts":"9999999-01-01T00:00:00Z"}"#.to_vec(), None, "d"),
        (t.into(), br#"[1,2,3]"#.to_vec(), None, ""),
        (t.into(), br#""just a string""#.to_vec(), None, ""),
        (sql_tenant.into(), br#"{"deviceId":"x' OR '1'='1"}"#.to_vec(), None, "x' OR '1'='1"),
    ];
    for (topic, payload, reason, device) in cases {
        let o = r.route(&inbound(&topic, &payload));
        let what = format!("{:.80} / {:.60}", topic, String::from_utf8_lossy(&payload));
        assert_eq!(o.reason, reason, "{what}");
        match reason {
            Some(reason) => {
                assert_eq!(o.topic, "iot-dead-letters", "{what}");
                assert_eq!(header(&o, "reason"), Some(reason.as_str()), "{what}");
                assert!(o.value.len() <= 512 * 1024, "{what}: dead letter of {} bytes", o.value.len());
            }
            None => {
                assert!(o.topic.starts_with("iot.") && o.topic.split('.').count() == 3, "{what}: {}", o.topic);
                assert_eq!(header(&o, "device_id").unwrap_or(""), device, "{what}");
                assert_eq!(&o.value[..], &payload[..], "{what}: forwarded unchanged");
                assert_eq!(o.timestamp_ms, 1_700_000_000_000, "{what}: no usable event time, so the receive time");
                let tenant = topic.split('/').nth(4).unwrap_or_default();
                assert_eq!(header(&o, "tenant_id"), Some(tenant), "{what}: the tenant as given");
            }
        }
    }
}
