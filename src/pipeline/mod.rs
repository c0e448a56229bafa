//! The pipelines behind the subcommands, named after what they connect:
//!
//! - [`mqtt_kafka`]: `iotpipe bridge` (MQTT → Kafka, optionally through the journal);
//! - [`kafka_store`]: `iotpipe sink` (Kafka → store);
//! - [`mqtt_store`]: `iotpipe run` and `iotpipe demo` (MQTT → journal → store).
//!
//! They share the MQTT side ([`ingress`]), the journal stages
//! ([`journal_stage`]), the store writer ([`store_writer`]), the record
//! decoding ([`decode`]) and one way to run and stop their tasks
//! ([`supervisor`]).
//!
//! Each command's own section and the settings it is started with live
//! beside it: [`BridgeSettings`] (`bridge_config.rs`, `[bridge]`),
//! [`SinkSettings`] (`sink_config.rs`, `[sink]`), [`RunSettings`]
//! (`run_config.rs`, `[run]`). The pipelines never read the assembled
//! config file: `cli` hands each its settings.

mod bridge_config;
pub mod decode;
mod handoff;
mod ingress;
mod journal_stage;
mod kafka_forwarder;
pub mod kafka_store;
pub mod mqtt_kafka;
pub mod mqtt_store;
mod run_config;
mod sink_config;
mod store_writer;
pub mod supervisor;

pub use bridge_config::{BridgeConfig, BridgeSettings};
pub use run_config::{RunConfig, RunSettings};
pub use sink_config::{SinkConfig, SinkSettings};
pub use store_writer::{poll_timescale_jobs, JOB_POLL_INTERVAL};

/// Why a pipeline could not start, or why it ended.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Route(#[from] crate::route::RouterError),
    #[error(transparent)]
    MqttOptions(#[from] crate::mqtt::OptionsError),
    #[error("mqtt: {0}")]
    Mqtt(#[from] crate::mqtt::SourceError),
    #[error("kafka: {0}")]
    Kafka(#[from] crate::kafka::ClientError),
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("http.listen {listen}: {source}")]
    Http { listen: String, source: std::io::Error },
    #[error("HTTP server: {0}")]
    HttpServe(std::io::Error),
    /// A task ended with an error.
    #[error("{task}: {source}")]
    Failed { task: &'static str, source: Box<PipelineError> },
    /// A task ended before it was asked to.
    #[error("{task} stopped unexpectedly")]
    Ended { task: &'static str },
    /// A task panicked (or was cancelled from outside).
    #[error("task {message}")]
    Panicked { message: String },
}
