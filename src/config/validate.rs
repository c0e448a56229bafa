//! Validation of the whole file: every section's own rules, then the rules
//! that span sections (routing templates over `[route]` and `[kafka]`).
//! Pure; runs once, after loading. Each error names one key, the one way:
//! every section's validation returns a [`KeyError`] relative to the
//! section, and the routing rules (which span `[route]` and `[kafka]`) say
//! which section theirs is in ([`crate::route::RouterError::key_error`]).

use super::{Config, ConfigError};
use crate::units::KeyError;

pub fn validate(c: &Config) -> Result<(), ConfigError> {
    let section = |name: &'static str| move |e: KeyError| ConfigError::in_section(name, e);
    c.mqtt.validate().map_err(section("mqtt"))?;
    c.kafka.validate().map_err(section("kafka"))?;
    c.http.validate().map_err(section("http"))?;
    c.bridge.validate().map_err(section("bridge"))?;
    c.sink.validate().map_err(section("sink"))?;
    c.kafka.validate_consumer(&c.sink.properties).map_err(|(name, e)| ConfigError::in_section(name, e))?;
    c.run.validate().map_err(section("run"))?;
    c.log.validate().map_err(section("log"))?;
    c.store.validate().map_err(section("store"))?;
    if let Some(j) = &c.journal {
        j.validate().map_err(section("journal"))?;
    }
    c.router().map_err(|e| {
        let (name, e) = e.key_error();
        ConfigError::in_section(name, e)
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
    use crate::config::{load_str, load_str_for, Command};
    use crate::pipeline::{RunConfig, RunSettings};

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        load_str(text, "test.toml", env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn load_for(text: &str, env: &[(&str, &str)], command: Command) -> Result<Config, ConfigError> {
        load_str_for(text, "test.toml", env.iter().map(|(k, v)| (k.to_string(), v.to_string())), command)
    }

    /// The key a load error names, exactly.
    fn key_of(e: ConfigError) -> String {
        match e {
            ConfigError::Key { key, .. } => key,
            other => panic!("not a key error: {other}"),
        }
    }

    #[test]
    fn the_documented_example_is_exactly_the_defaults() {
        let example = load(crate::config::EXAMPLE, &[]).unwrap();
        assert_eq!(format!("{example:#?}"), format!("{:#?}", Config::default()));
    }

    #[test]
    fn run_reads_its_own_section_and_stores_to_sqlite_by_default() {
        let c = load_for("", &[], Command::Run).unwrap();
        assert_eq!(c.store.url, RunSettings::DEFAULT_STORE_URL);
        let settings = c.into_run();
        assert_eq!(settings.run, RunConfig::default());
        assert_eq!(settings.journal, crate::journal::JournalConfig::default());
        // The other commands keep the store's own default.
        let sink = load_for("", &[], Command::Sink).unwrap().into_sink();
        assert_eq!(sink.store.url, crate::store::StoreConfig::default().url);

        let c = load_for(
            "[run]\nbatch_max_rows = 10\ngrace_period = \"3s\"\n[sink]\nbatch_max_rows = 500\n[bridge]\ngrace_period = \"9s\"",
            &[("IOTPIPE_RUN__RETRY_BACKOFF_MAX", "2s")],
            Command::Run,
        )
        .unwrap()
        .into_run();
        assert_eq!(c.run.batch_max_rows, 10);
        assert_eq!(c.run.grace_period.get(), std::time::Duration::from_secs(3));
        assert_eq!(c.run.retry_backoff_max.get(), std::time::Duration::from_secs(2));
        let c = load_for("[store]\nretention = \"7d\"", &[], Command::Run).unwrap();
        assert_eq!(c.store.url, RunSettings::DEFAULT_STORE_URL, "a [store] without url keeps run's default");
    }

    #[test]
    fn run_refuses_the_keys_it_used_to_borrow_naming_the_new_one() {
        for (text, env, old, new) in [
            ("[sink]\nbatch_max_rows = 100", &[][..], "sink.batch_max_rows", "run.batch_max_rows"),
            ("[sink]\nretry_backoff_max = \"1s\"", &[], "sink.retry_backoff_max", "run.retry_backoff_max"),
            ("[bridge]\ngrace_period = \"3s\"", &[], "bridge.grace_period", "run.grace_period"),
            ("", &[("IOTPIPE_BRIDGE__GRACE_PERIOD", "3s")], "bridge.grace_period", "run.grace_period"),
        ] {
            let e = load_for(text, env, Command::Run).unwrap_err();
            let message = e.to_string();
            assert!(message.contains(new), "{message}");
            assert_eq!(key_of(e), old);
            // The same file is fine for the command that owns the key …
            assert!(load_for(text, env, Command::Sink).is_ok());
            // … and for run once it has its own section.
            assert!(load_for(&format!("[run]\n{text}"), env, Command::Run).is_ok());
        }
    }

    #[test]
    fn route_errors_name_their_key_exactly() {
        for (text, key) in [
            ("[route]\ntopic_pattern = \"a/{tenant_id}\"", "route.topic_pattern"),
            ("[route]\ntopic_pattern = \"a/#/b/{tenant_id}/{project_id}\"", "route.topic_pattern"),
            ("[route]\nevent_time = \"ts\"", "route.event_time"),
            ("[route]\ndevice_id = \"deviceId\"", "route.device_id"),
            ("[kafka]\ntopic = \"iot.{tenant}\"", "kafka.topic"),
            ("[kafka]\nkey = \"{nope}\"", "kafka.key"),
            ("[kafka]\ndead_letter_topic = \"dead letters\"", "kafka.dead_letter_topic"),
        ] {
            assert_eq!(key_of(load(text, &[]).unwrap_err()), key, "{text}");
        }
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
            ("[run]\nbatch_max_rows = 0", &[], "run.batch_max_rows"),
            ("[run]\nretry_backoff_max = \"10ms\"", &[], "run.retry_backoff_max"),
            ("[run]\ngrace_period = \"2h\"", &[], "run.grace_period"),
            ("[run]\nbogus = 1", &[], "run"),
            ("[mqtt]\nconnect_timeout = \"0s\"", &[], "mqtt.connect_timeout"),
            ("[kafka]\ndelivery_timeout = \"0s\"", &[], "kafka.delivery_timeout"),
            ("[kafka]\nconsumer = \"rust\"", &[], "kafka.consumer"),
            (
                "[kafka]\nconsumer = \"native\"\n[kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"PLAIN\"\n\"sasl.username\" = \"u\"\n\"sasl.password\" = \"p\"",
                &[],
                "kafka.properties.security.protocol",
            ),
            (
                "[kafka]\nconsumer = \"native\"\n[sink.properties]\n\"fetch.wait.max.ms\" = \"50\"",
                &[],
                "sink.properties.fetch.wait.max.ms",
            ),
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
