//! Is a failed delivery worth retrying? One place decides (read through
//! [`super::ClientError::failure`]).

use rdkafka::error::{KafkaError, RDKafkaErrorCode as C};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Kafka is slow, down or electing a leader: send again, keep the ack back.
    Retry,
    /// The producer is stuck (a fatal error, or the broker fenced its
    /// idempotence state): recreate it, then send again.
    Fatal,
    /// Kafka will never take this record (too large, invalid): dead-letter it.
    Reject,
}

pub(super) fn classify(e: &KafkaError) -> Failure {
    let code = match e {
        KafkaError::MessageProduction(c) => *c,
        _ => return Failure::Retry,
    };
    match code {
        // A fenced or forgotten producer id never recovers by itself: with
        // the same producer every retry fails the same way.
        C::Fatal | C::ProducerFenced | C::InvalidProducerEpoch | C::InvalidProducerIdMapping => Failure::Fatal,
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::MessageBatchTooLarge
        | C::InvalidTopic
        | C::InvalidRequiredAcks
        | C::UnsupportedForMessageFormat
        | C::PolicyViolation => Failure::Reject,
        _ => Failure::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_retried_and_bad_records_rejected() {
        assert_eq!(classify(&KafkaError::MessageProduction(C::MessageTimedOut)), Failure::Retry);
        assert_eq!(classify(&KafkaError::MessageProduction(C::AllBrokersDown)), Failure::Retry);
        assert_eq!(classify(&KafkaError::MessageProduction(C::UnknownTopicOrPartition)), Failure::Retry);
        assert_eq!(classify(&KafkaError::MessageProduction(C::NotLeaderForPartition)), Failure::Retry);
        assert_eq!(classify(&KafkaError::MessageProduction(C::MessageSizeTooLarge)), Failure::Reject);
        assert_eq!(classify(&KafkaError::MessageProduction(C::InvalidRecord)), Failure::Reject);
        assert_eq!(classify(&KafkaError::MessageProduction(C::Fatal)), Failure::Fatal);
        assert_eq!(classify(&KafkaError::MessageProduction(C::ProducerFenced)), Failure::Fatal);
        assert_eq!(classify(&KafkaError::MessageProduction(C::InvalidProducerEpoch)), Failure::Fatal);
        assert_eq!(classify(&KafkaError::Canceled), Failure::Retry);
    }
}
