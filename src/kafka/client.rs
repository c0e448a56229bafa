//! Settings every Kafka client of iotpipe shares: the bootstrap servers and
//! the security, client-id and socket properties from `[kafka.properties]`.
//! The producer adds its own settings on top; the consumer, the admin client
//! and the probe take only these (librdkafka warns about properties that do
//! not apply to a client type).

use super::KafkaConfig;
use rdkafka::config::ClientConfig;
use std::collections::BTreeMap;

/// Properties from `[kafka.properties]` that apply to every client type.
pub fn is_common_property(key: &str) -> bool {
    key.starts_with("security.")
        || key.starts_with("sasl.")
        || key.starts_with("ssl.")
        || key.starts_with("socket.")
        || key.starts_with("reconnect.backoff")
        || matches!(key, "client.id" | "client.dns.lookup" | "broker.address.family" | "debug")
}

/// Bootstrap servers plus the common properties.
pub fn common_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers).set("log.connection.close", "false");
    super::security::apply_defaults(&mut c, &cfg.properties);
    apply(&mut c, &cfg.properties, is_common_property);
    c
}

/// Copy the properties `keep` selects into `c` (later keys win).
pub fn apply(c: &mut ClientConfig, props: &BTreeMap<String, String>, keep: impl Fn(&str) -> bool) {
    for (k, v) in props {
        if keep(k) {
            c.set(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_settings_reach_every_client_and_producer_settings_do_not() {
        let mut cfg = KafkaConfig::default();
        cfg.properties.insert("security.protocol".into(), "sasl_ssl".into());
        cfg.properties.insert("sasl.mechanisms".into(), "SCRAM-SHA-512".into());
        cfg.properties.insert("ssl.ca.location".into(), "/etc/ca.pem".into());
        cfg.properties.insert("linger.ms".into(), "5".into());
        let c = common_config(&cfg);
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("ssl.ca.location"), Some("/etc/ca.pem"));
        assert_eq!(c.get("linger.ms"), None);
        assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }
}
