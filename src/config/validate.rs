//! Validation of the whole file: every section's own rules, then the rules
//! that span sections (routing templates over `[route]` and `[kafka]`).
//! Pure; runs once, after loading. Each error names one key.

use super::{Config, ConfigError};
use crate::units::KeyError;

pub fn validate(c: &Config) -> Result<(), ConfigError> {
    let section = |name: &'static str| move |e: KeyError| ConfigError::in_section(name, e);
    c.mqtt.validate().map_err(section("mqtt"))?;
    c.kafka.validate().map_err(section("kafka"))?;
    c.http.validate().map_err(section("http"))?;
    c.bridge.validate().map_err(section("bridge"))?;
    c.sink.validate().map_err(section("sink"))?;
    c.log.validate().map_err(section("log"))?;
    c.store.validate().map_err(|e| match e {
        crate::store::StoreError::Config { key, message } => ConfigError::key(&format!("store.{key}"), message),
        other => ConfigError::key("store", other.to_string()),
    })?;
    if let Some(j) = &c.journal {
        j.validate().map_err(|e| match e {
            crate::journal::JournalError::Config { key, reason } => ConfigError::key(&format!("journal.{key}"), reason),
            other => ConfigError::key("journal", other.to_string()),
        })?;
    }
    c.router().map_err(|e| {
        let text = e.to_string();
        match text.split_once(": ") {
            Some((key, msg)) => ConfigError::key(key, msg),
            None => ConfigError::key("route", text),
        }
    })?;
    Ok(())
}

/// What `iotpipe run` needs beyond [`validate`]: it serves the dashboard
/// API, which must not be open to the network by accident.
pub fn validate_for_run(c: &Config) -> Result<(), ConfigError> {
    c.http.check_api_exposure().map_err(|e| ConfigError::in_section("http", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_str(text, "test.toml", env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn the_documented_example_parses() {
        let c = load(crate::config::EXAMPLE, &[]).unwrap();
        assert_eq!(c.kafka.topic, "iot.telemetry");
    }

    #[test]
    fn defaults_are_valid() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.mqtt.qos.level(), 1);
        assert_eq!(c.kafka.retention.get().as_secs(), 3 * 86400);
    }

    #[test]
    fn environment_overrides_file() {
        let c = load(
            "[kafka]\nbrokers = \"file:9092\"",
            &[
                ("IOTPIPE_KAFKA__BROKERS", "env:9092"),
                ("IOTPIPE_MQTT__QOS", "2"),
                ("IOTPIPE_MQTT__TOPICS", "[\"a/#\", \"b/+\"]"),
                ("IOTPIPE_MQTT__CLIENT_ID", "12345"),
                ("IOTPIPE_KAFKA__PROPERTIES__SECURITY_PROTOCOL", "plaintext"),
                ("IOTPIPE_HTTP__PER_TENANT_METRICS", "true"),
                ("IOTPIPE_CONFIG", "ignored.toml"),
                ("OTHER__THING", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.brokers, "env:9092");
        assert_eq!(c.mqtt.qos.level(), 2);
        assert_eq!(c.mqtt.topics, ["a/#", "b/+"]);
        assert_eq!(c.mqtt.client_id.as_deref(), Some("12345"));
        assert_eq!(c.kafka.properties.get("security.protocol").map(String::as_str), Some("plaintext"));
        assert!(c.http.per_tenant_metrics);
    }

    #[test]
    fn errors_name_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("[mqtt]\nqos = 3", &[], "mqtt.qos"),
            ("[mqtt]\nurl = \"http://x\"", &[], "mqtt.url"),
            ("[mqtt]\ntopics = [\"a/#/b\"]", &[], "mqtt.topics"),
            ("[mqtt]\nkeep_alive = \"30\"", &[], "mqtt.keep_alive"),
            ("[mqtt]\nbogus = 1", &[], "mqtt"),
            ("[route]\ntopic_pattern = \"a/{tenant_id}\"", &[], "route.topic_pattern"),
            ("[route]\ndevice_id = \"deviceId\"", &[], "route.device_id"),
            ("[kafka]\ntopic = \"iot.{tenant}\"", &[], "kafka.topic"),
            ("[kafka]\ncompression = \"brotli\"", &[], "kafka.compression"),
            ("[kafka]\ndead_letter_topic = \"dead letters\"", &[], "kafka.dead_letter_topic"),
            ("[http]\nlisten = \"localhost\"", &[], "http.listen"),
            ("[sink]\nwriters = 0", &[], "sink.writers"),
            ("[sink]\nbatch_max_rows = 0", &[], "sink.batch_max_rows"),
            ("[sink]\ntopics = []", &[], "sink.topics"),
            ("[store]\nretention = \"10m\"", &[], "store.retention"),
            ("[store]\nwrite_timeout = \"0s\"", &[], "store.write_timeout"),
            ("[store]\nurl = \"mysql://x/y\"", &[], "store.url"),
            ("[journal]\nmax_size = \"1MiB\"", &[], "journal.max_size"),
            ("[journal]\nforward_max_records = 0", &[], "journal.forward_max_records"),
            ("[sink]\nbatch_max_wait = \"0s\"", &[], "sink.batch_max_wait"),
            ("[mqtt]\nconnect_timeout = \"0s\"", &[], "mqtt.connect_timeout"),
            ("[kafka]\ndelivery_timeout = \"0s\"", &[], "kafka.delivery_timeout"),
            ("[log]\nlevel = \"info,=[\"", &[], "log.level"),
            ("", &[("IOTPIPE_STORE__RETENTION", "5m")], "IOTPIPE_STORE__RETENTION"),
            ("", &[("IOTPIPE_MQTT__QOS", "7")], "IOTPIPE_MQTT__QOS"),
            ("", &[("IOTPIPE_MQTT__MAX_IN_FLIGHT", "lots")], "mqtt.max_in_flight"),
        ];
        for (text, env, needle) in cases {
            let e = load(text, env).unwrap_err().to_string();
            assert!(e.contains(needle), "error for {text:?} {env:?} should name {needle}: {e}");
        }
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let e = load("[mqtt\nurl=", &[]).unwrap_err().to_string();
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = load(&format!("[mqtt]\npassword_file = {:?}", f.display().to_string()), &[]).unwrap();
        assert_eq!(c.mqtt.password.as_deref(), Some("s3cret"));
        let e = load("[mqtt]\npassword_file = \"/nonexistent/pw\"", &[]).unwrap_err().to_string();
        assert!(e.contains("mqtt.password_file"), "{e}");
    }
}
