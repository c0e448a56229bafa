//! Every Kafka client part in one place: the idempotent producer whose
//! delivery reports drive the acks (librdkafka's, or iotpipe's own native
//! one), the consumer group of the sink (offsets
//! stored after the store commit), topic creation, the reachability probe,
//! and the classification of delivery failures. librdkafka and the Kafka
//! protocol live here and nowhere else: what this module exports speaks the crate's own types
//! ([`ClientError`], [`DurableRecord`](crate::record::DurableRecord),
//! [`Pending`], [`Delivery`]), never librdkafka's.

mod admin;
mod classify;
mod client;
mod config;
mod consumer;
mod diagnosis;
mod error;
mod native;
mod probe;
mod producer;
mod security;

pub use admin::{run_topic_creator, TopicAdmin, TopicRequests};
pub use classify::Failure;
use client::common_config;
pub use config::{resolve_property_files, ClientLibrary, ConsumerKind, KafkaConfig, ProducerKind};
pub use consumer::{ConsumerSettings, GroupConsumer, NextOffset};
pub use diagnosis::{Diagnosis, Step};
pub use error::ClientError;
pub use probe::{run_probe, Prober};
pub use producer::{Delivery, Pending, Producer};
pub use security::{mechanism, protocol, uses_sasl, uses_tls};
