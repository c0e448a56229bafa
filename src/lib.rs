//! iotpipe: an IoT telemetry pipeline. MQTT → Kafka with end-to-end
//! acknowledgement (`bridge`), Kafka → store (`sink`), and the single-node
//! pipeline (`run`, `demo`). See docs/design.md for the layout.

pub mod cli;
pub mod config;
pub mod demo;
/// `memcpy`/`memmove` of the static x86_64 (musl) binary, exported by
/// `main.rs` there only.
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub mod fastmem;
/// Property checks shared by the fuzz targets (`fuzz/`) and `tests/fuzz_corpus.rs`;
/// only with the `fuzzing` feature, never in the shipped binary.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod journal;
pub mod kafka;
pub mod mqtt;
pub mod pipeline;
pub mod record;
pub mod residency;
pub mod retry;
pub mod route;
pub mod shutdown;
pub mod simulate;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod units;
