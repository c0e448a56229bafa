//! The Kafka client's error, as the rest of the program sees it: the text
//! of librdkafka's error, and what a failed delivery calls for
//! ([`Failure`]). librdkafka's own error type stays inside this module.

use super::classify::{classify, Failure};
use rdkafka::error::KafkaError;

/// A Kafka client failed: creating a client, subscribing, a metadata
/// request, or delivering a record.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct ClientError(#[from] KafkaError);

impl ClientError {
    /// What a failed delivery calls for: send again, recreate the producer,
    /// or dead-letter the record.
    pub fn failure(&self) -> Failure {
        classify(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode as C;

    #[test]
    fn the_error_keeps_librdkafkas_text_and_classification() {
        let e = ClientError::from(KafkaError::MessageProduction(C::MessageSizeTooLarge));
        assert_eq!(e.to_string(), KafkaError::MessageProduction(C::MessageSizeTooLarge).to_string());
        assert_eq!(e.failure(), Failure::Reject);
        assert_eq!(ClientError::from(KafkaError::MessageProduction(C::ProducerFenced)).failure(), Failure::Fatal);
        assert_eq!(ClientError::from(KafkaError::MessageProduction(C::MessageTimedOut)).failure(), Failure::Retry);
    }
}
