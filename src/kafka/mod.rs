//! Every Kafka client part in one place: the idempotent producer whose
//! delivery reports drive the acks, the consumer group of the sink (offsets
//! stored after the store commit), topic creation, the reachability probe,
//! and the classification of delivery failures. librdkafka lives here and
//! nowhere else.

mod admin;
mod classify;
mod client;
mod config;
mod consumer;
mod diagnosis;
mod probe;
mod producer;
mod security;

pub use admin::{run_topic_creator, TopicAdmin, TopicRequests};
pub use classify::{classify, Failure};
pub use client::{common_config, is_common_property};
pub use config::{resolve_property_files, KafkaConfig};
pub use consumer::{ConsumerSettings, GroupConsumer, KafkaRecord, NextOffset};
pub use diagnosis::{diagnose, Diagnosis, ErrorReporter, Reporting, Step};
pub use probe::{run_probe, Prober};
pub use producer::{producer_config, Delivery, Pending, Producer};
pub use security::{mechanism, protocol, uses_sasl, uses_tls};
