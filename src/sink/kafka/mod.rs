//! Kafka sink: an idempotent producer whose delivery reports drive the MQTT
//! acks, topic creation, and the classification of failures.

mod admin;
mod classify;
mod probe;
mod producer;

pub use admin::TopicAdmin;
pub use classify::{classify, Failure};
pub use probe::{spawn_probe, Reachability};
pub use producer::{client_config, Delivery, Pending, Prober, Producer};
