//! Kafka source for `iotpipe sink`: a consumer group whose offsets are
//! stored only after the records were committed to the store.

mod consumer;
mod decode;

pub use consumer::{KafkaSource, SourceError};
pub use decode::{decode, decode_from, reasons, Decoded, KafkaRecord};
