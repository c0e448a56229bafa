//! Creating missing topics with the configured partitions and retention.

use crate::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::collections::HashSet;
use std::time::Duration;

pub struct TopicAdmin {
    client: Option<AdminClient<DefaultClientContext>>,
    known: HashSet<String>,
    partitions: i32,
    replication: i32,
    retention_ms: String,
}

/// How long one create request may take before the bridge carries on
/// (the produce itself then waits for the topic).
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);

impl TopicAdmin {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, rdkafka::error::KafkaError> {
        let client = if cfg.create_topics { Some(super::client_config(cfg).create()?) } else { None };
        Ok(Self {
            client,
            known: HashSet::new(),
            partitions: cfg.partitions,
            replication: cfg.replication_factor,
            retention_ms: cfg.retention.get().as_millis().to_string(),
        })
    }

    /// Make sure `topic` exists (once per topic per process).
    pub async fn ensure(&mut self, topic: &str) {
        if self.known.contains(topic) {
            return;
        }
        self.known.insert(topic.to_string());
        let Some(client) = &self.client else { return };
        let new = NewTopic::new(topic, self.partitions, TopicReplication::Fixed(self.replication))
            .set("retention.ms", &self.retention_ms);
        let opts = AdminOptions::new().request_timeout(Some(CREATE_TIMEOUT)).operation_timeout(Some(CREATE_TIMEOUT));
        match client.create_topics([&new], &opts).await {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(name) => tracing::info!(
                            topic = name,
                            partitions = self.partitions,
                            retention_ms = self.retention_ms,
                            "Created Kafka topic."
                        ),
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((name, code)) => {
                            tracing::warn!(topic = name, ?code, "Could not create Kafka topic; relying on the broker.")
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(topic, %error, "Could not create Kafka topic; relying on the broker."),
        }
    }
}
