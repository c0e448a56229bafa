//! The `[kafka]` section: brokers, routing templates, topic creation,
//! producer settings and the librdkafka passthrough; its validation and
//! secrets. Owned by the Kafka client parts (producer, consumer, admin, probe).

use crate::units::{ByteSize, HumanDuration, KeyError};
use serde::Deserialize;
use std::collections::BTreeMap;

const COMPRESSIONS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// Which client writes the bridge's records to Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProducerKind {
    /// The native producer when it can write what the config asks for,
    /// librdkafka otherwise (SASL, gzip or snappy, the TLS options the native
    /// one refuses).
    #[default]
    Auto,
    /// librdkafka: every security protocol and compression.
    Librdkafka,
    /// iotpipe's own producer: state per partition of ~100 bytes and one
    /// request per broker for all partitions; plaintext or ssl, none/lz4/zstd.
    Native,
}

/// Which client reads the sink's records from Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerKind {
    /// The native consumer when it can read what the config asks for,
    /// librdkafka otherwise (SASL, the TLS options the native one refuses,
    /// consumer properties other than the few it reads).
    #[default]
    Auto,
    /// librdkafka's consumer (`cooperative-sticky` assignment): every
    /// security protocol and consumer property.
    Librdkafka,
    /// iotpipe's own consumer: state per partition of ~150 bytes, one fetch
    /// per broker for all partitions, `cooperative-sticky` or `roundrobin`
    /// assignment; plaintext or ssl, and a few `sink.properties`
    /// (docs/topology.md).
    Native,
}

/// The Kafka client library a process runs: the one its producer (bridge)
/// or consumer (sink) resolved to. Its side tasks (the topic creator, the
/// reachability probe, `iotpipe check`) use the same one, so a process on
/// the native clients runs no librdkafka client at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLibrary {
    Native,
    Librdkafka,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Topic template over `{tenant_id}`, `{project_id}`, `{device_id}` and
    /// pattern fields. A fixed name (the default) is the shared topology, a
    /// template with `{tenant_id}`/`{project_id}` a topic per pair
    /// (docs/topology.md).
    pub topic: String,
    /// Key template.
    pub key: String,
    pub dead_letter_topic: String,
    /// Dead-lettered payloads larger than this are truncated (headers say so).
    pub dead_letter_max_payload: ByteSize,
    /// none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// Create missing topics with `partitions`, `replication_factor`, `retention`.
    pub create_topics: bool,
    pub partitions: i32,
    /// -1 uses the broker's default.
    pub replication_factor: i32,
    pub retention: HumanDuration,
    /// Further topic configs of the topics the bridge creates (e.g.
    /// `min.insync.replicas = "2"` on a cluster of three brokers); they win
    /// over `retention`. `cleanup.policy = "delete"` is always set unless
    /// given here.
    pub topic_config: BTreeMap<String, String>,
    /// The bridge's producer: `auto`, `native` or `librdkafka` (docs/topology.md).
    pub producer: ProducerKind,
    /// The sink's consumer: `auto`, `native` or `librdkafka` (docs/sink.md).
    /// The members of one consumer group read together only when they use
    /// the same one; a member that meets the other kind waits.
    pub consumer: ConsumerKind,
    /// How long the producer tries one send before the bridge re-sends it itself.
    pub delivery_timeout: HumanDuration,
    pub linger: HumanDuration,
    /// Any librdkafka property, passed through verbatim (wins over the keys
    /// above). A key ending in `_file` names a file whose content is the
    /// value of the key without `_file` (secrets).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "iot.telemetry".into(),
            key: "{tenant_id}/{project_id}/{device_id}".into(),
            dead_letter_topic: "iot-dead-letters".into(),
            dead_letter_max_payload: ByteSize::kib(512),
            compression: "lz4".into(),
            create_topics: true,
            partitions: 12,
            replication_factor: -1,
            retention: HumanDuration::secs(3 * 86400),
            topic_config: BTreeMap::new(),
            producer: ProducerKind::Auto,
            consumer: ConsumerKind::Auto,
            delivery_timeout: HumanDuration::secs(60),
            linger: HumanDuration::millis(5),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Check the keys that need more than a type; keys are relative to `[kafka]`.
    pub fn validate(&self) -> Result<(), KeyError> {
        if self.brokers.trim().is_empty() {
            return Err(KeyError::new("brokers", "is empty"));
        }
        if !COMPRESSIONS.contains(&self.compression.as_str()) {
            return Err(KeyError::new(
                "compression",
                format!("`{}` is not one of {}", self.compression, COMPRESSIONS.join(", ")),
            ));
        }
        if self.partitions < 1 {
            return Err(KeyError::new("partitions", "must be at least 1"));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(KeyError::new("replication_factor", "must be -1 (broker default) or at least 1"));
        }
        if self.delivery_timeout.get().is_zero() {
            return Err(KeyError::new("delivery_timeout", "must be more than 0s"));
        }
        if self.retention.get().as_millis() < 1 {
            return Err(KeyError::new("retention", "must be more than 0s"));
        }
        if let Some(key) = self.topic_config.keys().find(|k| k.is_empty() || k.contains(char::is_whitespace)) {
            return Err(KeyError::new(format!("topic_config.{key}"), "is not a topic config name"));
        }
        super::security::validate(&self.properties, "properties")?;
        if self.producer == ProducerKind::Native {
            super::native::validate(self)?;
        }
        Ok(())
    }

    /// What `consumer = "native"` needs of `[kafka]` and of the sink's
    /// consumer properties: the section of the key at fault, and the error.
    pub fn validate_consumer(
        &self,
        sink_properties: &BTreeMap<String, String>,
    ) -> Result<(), (&'static str, KeyError)> {
        if self.consumer == ConsumerKind::Native {
            self.native_consumer_fits(sink_properties)?;
        }
        Ok(())
    }

    fn native_consumer_fits(&self, sink_properties: &BTreeMap<String, String>) -> Result<(), (&'static str, KeyError)> {
        super::native::validate_connection(self).map_err(|e| ("kafka", e))?;
        super::native::validate_consumer_properties(sink_properties).map_err(|e| ("sink", e))
    }

    /// The consumer the sink runs: `auto` resolved against what the native
    /// consumer can read with these `[sink] properties`.
    pub fn chosen_consumer(&self, sink_properties: &BTreeMap<String, String>) -> ConsumerKind {
        match self.consumer {
            ConsumerKind::Auto if self.native_consumer_fits(sink_properties).is_ok() => ConsumerKind::Native,
            ConsumerKind::Auto => ConsumerKind::Librdkafka,
            chosen => chosen,
        }
    }

    /// The producer the bridge runs: `auto` resolved against what the
    /// native producer can write.
    pub fn chosen_producer(&self) -> ProducerKind {
        match self.producer {
            ProducerKind::Auto if super::native::validate(self).is_ok() => ProducerKind::Native,
            ProducerKind::Auto => ProducerKind::Librdkafka,
            chosen => chosen,
        }
    }

    /// The library of the bridge (its producer's).
    pub fn bridge_library(&self) -> ClientLibrary {
        match self.chosen_producer() {
            ProducerKind::Native => ClientLibrary::Native,
            _ => ClientLibrary::Librdkafka,
        }
    }

    /// The library of the sink (its consumer's, with these `[sink] properties`).
    pub fn sink_library(&self, sink_properties: &BTreeMap<String, String>) -> ClientLibrary {
        match self.chosen_consumer(sink_properties) {
            ConsumerKind::Native => ClientLibrary::Native,
            _ => ClientLibrary::Librdkafka,
        }
    }

    /// The configs of a topic the bridge creates: `cleanup.policy = delete`,
    /// `retention.ms` from `retention`, then `topic_config` (which wins).
    pub fn created_topic_config(&self) -> BTreeMap<String, String> {
        let mut c = BTreeMap::from([
            ("cleanup.policy".to_string(), "delete".to_string()),
            ("retention.ms".to_string(), self.retention.get().as_millis().to_string()),
        ]);
        c.extend(self.topic_config.iter().map(|(k, v)| (k.clone(), v.clone())));
        c
    }

    /// Replace every `properties.<key>_file` by `<key>` holding the file's
    /// content (trailing newline stripped).
    pub fn resolve_secrets(&mut self) -> Result<(), KeyError> {
        resolve_property_files(&mut self.properties, "properties")
    }
}

/// `<key>_file = PATH` → `<key> = content of PATH`, in a librdkafka property map.
pub fn resolve_property_files(props: &mut BTreeMap<String, String>, prefix: &str) -> Result<(), KeyError> {
    let file_keys: Vec<String> = props.keys().filter(|k| k.ends_with("_file")).cloned().collect();
    for key in file_keys {
        let path = props.remove(&key).unwrap_or_default();
        let secret = std::fs::read_to_string(&path)
            .map_err(|e| KeyError::new(format!("{prefix}.{key}"), format!("cannot read {path}: {e}")))?;
        let target = key.trim_end_matches("_file").to_string();
        props.insert(target, secret.trim_end_matches(['\n', '\r']).to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        assert_eq!(KafkaConfig::default().validate(), Ok(()));
        let bad = KafkaConfig { compression: "brotli".into(), ..KafkaConfig::default() };
        assert_eq!(bad.validate().unwrap_err().key, "compression");
        let bad = KafkaConfig { delivery_timeout: HumanDuration::secs(0), ..KafkaConfig::default() };
        assert_eq!(bad.validate().unwrap_err().key, "delivery_timeout");
    }

    #[test]
    fn auto_takes_the_native_producer_unless_the_config_needs_librdkafka() {
        let c = KafkaConfig::default();
        assert_eq!(c.chosen_producer(), ProducerKind::Native);
        let gzip = KafkaConfig { compression: "gzip".into(), ..KafkaConfig::default() };
        assert_eq!(gzip.chosen_producer(), ProducerKind::Librdkafka);
        assert_eq!(gzip.validate(), Ok(()), "auto: gzip is librdkafka's to write");
        let mut sasl = KafkaConfig::default();
        sasl.properties.insert("security.protocol".into(), "sasl_plaintext".into());
        sasl.properties.insert("sasl.mechanisms".into(), "PLAIN".into());
        assert_eq!(sasl.chosen_producer(), ProducerKind::Librdkafka);
        let forced = KafkaConfig { producer: ProducerKind::Librdkafka, ..KafkaConfig::default() };
        assert_eq!(forced.chosen_producer(), ProducerKind::Librdkafka);
        let native_gzip = KafkaConfig { producer: ProducerKind::Native, ..gzip };
        assert_eq!(native_gzip.validate().unwrap_err().key, "compression");
    }

    #[test]
    fn auto_takes_the_native_consumer_unless_the_config_needs_librdkafka() {
        let c = KafkaConfig::default();
        let mut props = BTreeMap::new();
        assert_eq!(c.chosen_consumer(&props), ConsumerKind::Native);
        props.insert("session.timeout.ms".into(), "30000".into());
        assert_eq!(c.chosen_consumer(&props), ConsumerKind::Native, "a property the native consumer reads");
        props.insert("fetch.wait.max.ms".into(), "50".into());
        assert_eq!(c.chosen_consumer(&props), ConsumerKind::Librdkafka, "a librdkafka consumer property");
        assert_eq!(c.validate_consumer(&props), Ok(()), "auto: librdkafka reads it");
        let native = KafkaConfig { consumer: ConsumerKind::Native, ..KafkaConfig::default() };
        assert_eq!(native.validate_consumer(&props).unwrap_err().1.key, "properties.fetch.wait.max.ms");
        let mut sasl = KafkaConfig::default();
        sasl.properties.insert("security.protocol".into(), "SASL_SSL".into());
        assert_eq!(sasl.chosen_consumer(&BTreeMap::new()), ConsumerKind::Librdkafka);
        let forced = KafkaConfig { consumer: ConsumerKind::Librdkafka, ..KafkaConfig::default() };
        assert_eq!(forced.chosen_consumer(&BTreeMap::new()), ConsumerKind::Librdkafka);
    }

    #[test]
    fn created_topics_get_retention_delete_and_the_extra_configs() {
        let mut c = KafkaConfig::default();
        let t = c.created_topic_config();
        assert_eq!(t.get("retention.ms").map(String::as_str), Some("259200000"));
        assert_eq!(t.get("cleanup.policy").map(String::as_str), Some("delete"));
        c.topic_config.insert("min.insync.replicas".into(), "2".into());
        c.topic_config.insert("retention.ms".into(), "1000".into());
        let t = c.created_topic_config();
        assert_eq!(t.get("min.insync.replicas").map(String::as_str), Some("2"));
        assert_eq!(t.get("retention.ms").map(String::as_str), Some("1000"), "topic_config wins");
        c.topic_config.insert("bad key".into(), "1".into());
        assert_eq!(c.validate().unwrap_err().key, "topic_config.bad key");
    }

    #[test]
    fn property_files_become_values() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let mut c = KafkaConfig::default();
        c.properties.insert("sasl.password_file".into(), f.display().to_string());
        c.resolve_secrets().unwrap();
        assert_eq!(c.properties.get("sasl.password").map(String::as_str), Some("s3cret"));
        assert!(!c.properties.contains_key("sasl.password_file"));
        c.properties.insert("ssl.key.password_file".into(), "/nonexistent".into());
        assert_eq!(c.resolve_secrets().unwrap_err().key, "properties.ssl.key.password_file");
    }
}
