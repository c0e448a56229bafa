//! Checks that need more than a type: URLs, filters, templates, ranges.
//! Pure; runs once, after loading.

use super::{Config, ConfigError};
use crate::route::{validate_filter, Router};

const COMPRESSIONS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

pub fn validate(c: &Config) -> Result<(), ConfigError> {
    fn err(key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::key(key, message)
    }
    parse_mqtt_url(&c.mqtt.url).map_err(|m| err("mqtt.url", m))?;
    if c.mqtt.topics.is_empty() {
        return Err(err("mqtt.topics", "at least one topic filter is needed"));
    }
    for t in &c.mqtt.topics {
        validate_filter(t).map_err(|m| err("mqtt.topics", m))?;
    }
    if let Some(g) = &c.mqtt.shared_group {
        if g.is_empty() || g.contains(['/', '+', '#']) {
            return Err(err("mqtt.shared_group", format!("`{g}` must be non-empty and contain no `/`, `+` or `#`")));
        }
    }
    if c.mqtt.max_in_flight == 0 {
        return Err(err("mqtt.max_in_flight", "must be at least 1"));
    }
    if c.mqtt.client_cert_file.is_some() != c.mqtt.client_key_file.is_some() {
        return Err(err("mqtt.client_cert_file", "client_cert_file and client_key_file go together"));
    }
    if c.mqtt.keep_alive.get().as_secs() < 5 {
        return Err(err("mqtt.keep_alive", "must be at least 5s"));
    }
    if c.mqtt.reconnect_backoff_min > c.mqtt.reconnect_backoff_max {
        return Err(err("mqtt.reconnect_backoff_min", "is larger than mqtt.reconnect_backoff_max"));
    }
    if c.kafka.brokers.trim().is_empty() {
        return Err(err("kafka.brokers", "is empty"));
    }
    if !COMPRESSIONS.contains(&c.kafka.compression.as_str()) {
        return Err(err(
            "kafka.compression",
            format!("`{}` is not one of {}", c.kafka.compression, COMPRESSIONS.join(", ")),
        ));
    }
    if c.kafka.partitions < 1 {
        return Err(err("kafka.partitions", "must be at least 1"));
    }
    if c.kafka.replication_factor == 0 || c.kafka.replication_factor < -1 {
        return Err(err("kafka.replication_factor", "must be -1 (broker default) or at least 1"));
    }
    if c.sink.topics.is_empty() {
        return Err(err("sink.topics", "at least one topic name or regex is needed"));
    }
    if c.sink.group_id.trim().is_empty() {
        return Err(err("sink.group_id", "is empty"));
    }
    if c.sink.batch_max_rows == 0 {
        return Err(err("sink.batch_max_rows", "must be at least 1"));
    }
    if !(1..=8).contains(&c.sink.writers) {
        return Err(err("sink.writers", format!("{} is outside 1..=8", c.sink.writers)));
    }
    if !c.http.listen.is_empty() && c.http.listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(err("http.listen", format!("`{}` is not an address like 127.0.0.1:8080", c.http.listen)));
    }
    if tracing_subscriber::EnvFilter::try_new(&c.log.level).is_err() {
        return Err(err(
            "log.level",
            format!("`{}` is not a log filter such as `info` or `iotpipe=debug`", c.log.level),
        ));
    }
    Router::new(c).map_err(|e| {
        let text = e.to_string();
        match text.split_once(": ") {
            Some((key, msg)) => err(key, msg),
            None => err("route", text),
        }
    })?;
    Ok(())
}

/// An MQTT broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

pub fn parse_mqtt_url(url: &str) -> Result<MqttUrl, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("`{url}` needs a scheme: mqtt:// or mqtts://"))?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(format!("scheme `{other}` is not supported; use mqtt:// or mqtts://")),
    };
    let hostport = rest.split(['/', '?']).next().unwrap_or("");
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().map_err(|_| format!("`{p}` is not a port number"))?)
        }
        _ => (hostport, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok(MqttUrl { tls, host: host.to_string(), port })
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
        assert_eq!(c.kafka.topic, "iot.{tenant_id}.{project_id}");
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

    #[test]
    fn mqtt_urls() {
        assert_eq!(parse_mqtt_url("mqtt://h:1884").unwrap(), MqttUrl { tls: false, host: "h".into(), port: 1884 });
        assert_eq!(parse_mqtt_url("mqtts://h").unwrap().port, 8883);
        assert_eq!(parse_mqtt_url("mqtt://[::1]:1883").unwrap().host, "::1");
        assert!(parse_mqtt_url("h:1883").is_err());
        assert!(parse_mqtt_url("mqtt://:1883").is_err());
        assert!(parse_mqtt_url("mqtt://h:99999").is_err());
    }
}
