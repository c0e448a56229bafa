//! Creating missing topics with the configured partitions and retention.

use crate::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

pub struct TopicAdmin {
    client: Option<AdminClient<DefaultClientContext>>,
    known: HashSet<String>,
    /// Topics whose creation failed for a reason that may pass (Kafka down),
    /// with the time of the attempt: tried again after `RETRY_AFTER`.
    failed: HashMap<String, Instant>,
    partitions: i32,
    replication: i32,
    retention_ms: String,
}

/// How long one create request may take before the bridge carries on
/// (the produce itself then waits for the topic).
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after a failed create the next message for that topic tries again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

impl TopicAdmin {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, rdkafka::error::KafkaError> {
        let client = if cfg.create_topics { Some(super::client_config(cfg).create()?) } else { None };
        Ok(Self {
            client,
            known: HashSet::new(),
            failed: HashMap::new(),
            partitions: cfg.partitions,
            replication: cfg.replication_factor,
            retention_ms: cfg.retention.get().as_millis().to_string(),
        })
    }

    /// Make sure `topic` exists: once per topic per process, and again
    /// (at most every `RETRY_AFTER`) while creating it fails for a reason
    /// that may pass, such as Kafka being down.
    pub async fn ensure(&mut self, topic: &str) {
        if self.known.contains(topic) {
            return;
        }
        if self.failed.get(topic).is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return;
        }
        let Some(client) = &self.client else {
            self.known.insert(topic.to_string());
            return;
        };
        let new = NewTopic::new(topic, self.partitions, TopicReplication::Fixed(self.replication))
            .set("retention.ms", &self.retention_ms);
        let opts = AdminOptions::new().request_timeout(Some(CREATE_TIMEOUT)).operation_timeout(Some(CREATE_TIMEOUT));
        let settled = match client.create_topics([&new], &opts).await {
            Ok(results) => results.into_iter().all(|r| match r {
                Ok(name) => {
                    tracing::info!(
                        topic = name,
                        partitions = self.partitions,
                        retention_ms = self.retention_ms,
                        "Created Kafka topic."
                    );
                    true
                }
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => true,
                Err((name, code)) if transient(code) => {
                    tracing::warn!(topic = name, ?code, "Could not create Kafka topic yet; trying again later.");
                    false
                }
                Err((name, code)) => {
                    tracing::warn!(topic = name, ?code, "Could not create Kafka topic; relying on the broker.");
                    true
                }
            }),
            Err(error) => {
                tracing::warn!(topic, %error, "Could not create Kafka topic yet; trying again later.");
                false
            }
        };
        if settled {
            self.failed.remove(topic);
            self.known.insert(topic.to_string());
        } else {
            self.failed.insert(topic.to_string(), Instant::now());
        }
    }
}

/// Failures that may pass by themselves (timeouts, Kafka down or busy).
fn transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::OperationTimedOut
            | C::RequestTimedOut
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::NotController
            | C::NetworkException
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::CoordinatorNotAvailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_tried_again_and_refusals_are_not() {
        assert!(transient(RDKafkaErrorCode::OperationTimedOut));
        assert!(transient(RDKafkaErrorCode::RequestTimedOut));
        assert!(transient(RDKafkaErrorCode::AllBrokersDown));
        assert!(transient(RDKafkaErrorCode::NotController));
        assert!(!transient(RDKafkaErrorCode::TopicAuthorizationFailed));
        assert!(!transient(RDKafkaErrorCode::InvalidPartitions));
        assert!(!transient(RDKafkaErrorCode::PolicyViolation));
    }

    #[tokio::test]
    async fn a_failed_create_is_tried_again_only_after_the_pause() {
        // Nothing listens on port 1: every create fails fast as transient.
        let cfg = KafkaConfig {
            brokers: "127.0.0.1:1".into(),
            properties: [("socket.connection.setup.timeout.ms".to_string(), "1000".to_string())].into(),
            ..KafkaConfig::default()
        };
        let mut admin = TopicAdmin::new(&cfg).expect("admin client");
        admin.ensure("iot.a.b").await;
        assert!(!admin.known.contains("iot.a.b"), "not settled while Kafka is away");
        let first = admin.failed.get("iot.a.b").copied().expect("failure recorded");
        admin.ensure("iot.a.b").await;
        assert_eq!(admin.failed.get("iot.a.b").copied(), Some(first), "no second attempt within RETRY_AFTER");
    }
}
