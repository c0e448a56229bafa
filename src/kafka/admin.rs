//! Creating missing topics with the configured partitions and retention, on
//! a task of its own: a create request can take seconds while Kafka is
//! away, and nothing on the message path may wait for it (the produce itself
//! waits for the topic, and is retried). The creator uses the bridge's
//! client library ([`ClientLibrary`]): the native one sends CreateTopics to
//! the controller itself, librdkafka's goes through its admin client.

use super::diagnosis::Reporting;
use super::native::{NativeAdmin, NewTopic as NativeTopic};
use super::{ClientLibrary, KafkaConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use std::collections::BTreeSet;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub struct TopicAdmin {
    client: Option<Creator>,
    known: HashSet<String>,
    /// Topics whose creation failed for a reason that may pass (Kafka down),
    /// with the time of the attempt: tried again after `RETRY_AFTER`.
    failed: HashMap<String, Instant>,
    partitions: i32,
    replication: i32,
    /// Topic configs of every created topic (`KafkaConfig::created_topic_config`).
    configs: Vec<(String, String)>,
}

/// The client that sends the create requests.
enum Creator {
    Native(Box<NativeAdmin>),
    Librdkafka(AdminClient<Reporting>),
}

impl Creator {
    /// One create request for `topic`.
    async fn create(
        &mut self,
        topic: &str,
        partitions: i32,
        replication: i32,
        configs: &[(String, String)],
    ) -> Result<(), NotCreated> {
        match self {
            Self::Native(admin) => {
                let replication = i16::try_from(replication).unwrap_or(i16::MAX);
                let new = NativeTopic { name: topic, partitions, replication, configs };
                match admin.create(&new, CREATE_TIMEOUT).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(code)) => Err(NotCreated::Refused(code)),
                    Err(e) => Err(NotCreated::NoAnswer(e.to_string())),
                }
            }
            Self::Librdkafka(client) => {
                let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
                for (k, v) in configs {
                    new = new.set(k, v);
                }
                let opts =
                    AdminOptions::new().request_timeout(Some(CREATE_TIMEOUT)).operation_timeout(Some(CREATE_TIMEOUT));
                match client.create_topics([&new], &opts).await {
                    Ok(results) => results
                        .into_iter()
                        .find_map(|r| r.err())
                        .map_or(Ok(()), |(_, code)| Err(NotCreated::Refused(code))),
                    Err(e) => Err(NotCreated::NoAnswer(e.to_string())),
                }
            }
        }
    }
}

/// Why a topic was not created: the broker's answer, or no answer.
enum NotCreated {
    Refused(RDKafkaErrorCode),
    NoAnswer(String),
}

/// How long one create request may take before the bridge carries on
/// (the produce itself then waits for the topic).
const CREATE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long after a failed create the next message for that topic tries again.
const RETRY_AFTER: Duration = Duration::from_secs(30);

impl TopicAdmin {
    /// A creator on `library` (the bridge's, [`KafkaConfig::bridge_library`]).
    pub fn new(cfg: &KafkaConfig, library: ClientLibrary) -> Result<Self, super::ClientError> {
        let client = match (cfg.create_topics, library) {
            (false, _) => None,
            (true, ClientLibrary::Native) => {
                Some(Creator::Native(Box::new(NativeAdmin::creator(cfg, CREATE_TIMEOUT)?)))
            }
            (true, ClientLibrary::Librdkafka) => {
                Some(Creator::Librdkafka(super::common_config(cfg).create_with_context(Reporting::new("admin"))?))
            }
        };
        Ok(Self {
            client,
            known: HashSet::new(),
            failed: HashMap::new(),
            partitions: cfg.partitions,
            replication: cfg.replication_factor,
            configs: cfg.created_topic_config().into_iter().collect(),
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
        let Some(client) = &mut self.client else {
            self.known.insert(topic.to_string());
            return;
        };
        let outcome = client.create(topic, self.partitions, self.replication, &self.configs).await;
        let settled = match outcome {
            Ok(()) => {
                tracing::info!(topic, partitions = self.partitions, configs = ?self.configs, "Created Kafka topic.");
                true
            }
            Err(NotCreated::Refused(RDKafkaErrorCode::TopicAlreadyExists)) => true,
            Err(NotCreated::Refused(code)) if transient(code) => {
                tracing::warn!(topic, ?code, "Could not create Kafka topic yet; trying again later.");
                false
            }
            Err(NotCreated::Refused(code)) => {
                tracing::warn!(topic, ?code, "Could not create Kafka topic; relying on the broker.");
                true
            }
            Err(NotCreated::NoAnswer(error)) => {
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

    /// The failed topics whose pause is over, oldest first.
    fn due(&self) -> Vec<String> {
        let mut due: Vec<(&Instant, &String)> =
            self.failed.iter().filter(|(_, at)| at.elapsed() >= RETRY_AFTER).map(|(t, at)| (at, t)).collect();
        due.sort();
        due.into_iter().map(|(_, t)| t.clone()).collect()
    }
}

/// Requests for topics to exist, from the message path to the creator task.
/// Each topic is requested once per process; `request` never waits.
pub struct TopicRequests {
    tx: mpsc::Sender<String>,
    /// Topics handed to the creator (a bounded set: one per tenant and project).
    sent: BTreeSet<String>,
}

/// Topic requests that may wait for the creator before one is dropped (and asked again later).
const REQUEST_QUEUE: usize = 1024;

/// Least time between two create requests: a burst of new tenants (a topic
/// per pair) reaches the cluster's controller at 50 creates/s at most.
const CREATE_INTERVAL: Duration = Duration::from_millis(20);

impl TopicRequests {
    /// A request handle and the receiving end for [`run_topic_creator`].
    pub fn channel() -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        (Self { tx, sent: BTreeSet::new() }, rx)
    }

    /// Ask for `topic` to exist. Returns at once; a full queue means the
    /// topic is asked for again with a later message.
    pub fn request(&mut self, topic: &str) {
        if self.sent.contains(topic) {
            return;
        }
        if self.tx.try_send(topic.to_string()).is_ok() {
            self.sent.insert(topic.to_string());
        }
    }
}

/// The creator task: makes sure every requested topic exists, one create
/// request at a time and at most one per `CREATE_INTERVAL`, trying again
/// (every `RETRY_AFTER`) those whose creation failed for a reason that may
/// pass. Ends when every request handle is gone.
pub async fn run_topic_creator(mut admin: TopicAdmin, mut requests: mpsc::Receiver<String>) {
    let mut tick = tokio::time::interval(RETRY_AFTER / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pace = tokio::time::interval(CREATE_INTERVAL);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            topic = requests.recv() => match topic {
                Some(t) => {
                    pace.tick().await;
                    admin.ensure(&t).await;
                }
                None => return,
            },
            _ = tick.tick() => {
                for t in admin.due() {
                    pace.tick().await;
                    admin.ensure(&t).await;
                }
            }
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
        for library in [ClientLibrary::Native, ClientLibrary::Librdkafka] {
            let mut admin = TopicAdmin::new(&cfg, library).expect("admin client");
            admin.ensure("iot.a.b").await;
            assert!(!admin.known.contains("iot.a.b"), "{library:?}: not settled while Kafka is away");
            let first = admin.failed.get("iot.a.b").copied().expect("failure recorded");
            admin.ensure("iot.a.b").await;
            assert_eq!(admin.failed.get("iot.a.b").copied(), Some(first), "{library:?}: no second attempt yet");
            assert!(admin.due().is_empty(), "{library:?}: not due before the pause is over");
        }
    }

    #[tokio::test]
    async fn requests_never_wait_and_each_topic_is_asked_for_once() {
        let (mut requests, mut rx) = TopicRequests::channel();
        // Nobody reads the queue: requests still return at once, even past its capacity.
        for i in 0..(REQUEST_QUEUE + 10) {
            requests.request(&format!("iot.t{i}.p"));
        }
        requests.request("iot.t0.p");
        let mut seen = Vec::new();
        while let Ok(t) = rx.try_recv() {
            seen.push(t);
        }
        assert_eq!(seen.len(), REQUEST_QUEUE, "the queue holds what fits; the rest is asked for again later");
        assert_eq!(seen.iter().filter(|t| *t == "iot.t0.p").count(), 1);
        requests.request(&format!("iot.t{}.p", REQUEST_QUEUE + 5));
        assert_eq!(
            rx.try_recv().ok(),
            Some(format!("iot.t{}.p", REQUEST_QUEUE + 5)),
            "a dropped request is sent again"
        );
    }
}
