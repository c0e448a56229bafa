//! iotpipe: an IoT telemetry pipeline. MQTT → Kafka with end-to-end
//! acknowledgement (`bridge`), plus the tools around it.

pub mod check;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod journal;
pub mod pipeline;
pub mod record;
pub mod route;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod store;
pub mod telemetry;
