//! Why a message was dead-lettered: one closed set of reasons for every
//! stage (routing in `bridge` and `run`, Kafka, decoding in `sink` and
//! `run`, the store). The `as_str` values are part of the public contract:
//! they travel in the `reason` header, fill the dead-letter table's `reason`
//! column, and are the only values of the metrics' `reason` label.

/// A dead-letter reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadLetterReason {
    /// The MQTT topic does not match `route.topic_pattern`.
    TopicMismatch,
    /// `route.require_json` and the payload is not UTF-8.
    InvalidUtf8,
    /// `route.require_json` and the payload is not JSON.
    InvalidJson,
    /// The payload is empty.
    EmptyPayload,
    /// The payload is larger than `route.max_payload_size`.
    Oversize,
    /// The Kafka topic rendered from the template is not a valid topic name.
    InvalidTopicName,
    /// Kafka refused the record for good (too large, invalid).
    KafkaRejected,
    /// A consumed record names no tenant or project.
    MissingTenant,
    /// A consumed record's `id` header is not a UUID.
    InvalidId,
    /// A consumed record has no headers and is not a JSON object.
    Undecodable,
    /// The store refused the row on its own (after the batch was isolated).
    StoreRejected,
    /// A reason this version does not know (from another producer's header).
    Other,
}

impl DeadLetterReason {
    /// Every reason, in label order.
    pub const ALL: [DeadLetterReason; 12] = [
        Self::TopicMismatch,
        Self::InvalidUtf8,
        Self::InvalidJson,
        Self::EmptyPayload,
        Self::Oversize,
        Self::InvalidTopicName,
        Self::KafkaRejected,
        Self::MissingTenant,
        Self::InvalidId,
        Self::Undecodable,
        Self::StoreRejected,
        Self::Other,
    ];

    /// The reasons routing and the Kafka producer give (what `bridge` dead-letters).
    pub const ROUTING: [DeadLetterReason; 7] = [
        Self::TopicMismatch,
        Self::InvalidUtf8,
        Self::InvalidJson,
        Self::EmptyPayload,
        Self::Oversize,
        Self::InvalidTopicName,
        Self::KafkaRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TopicMismatch => "topic_mismatch",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::InvalidJson => "invalid_json",
            Self::EmptyPayload => "empty_payload",
            Self::Oversize => "oversize",
            Self::InvalidTopicName => "invalid_topic_name",
            Self::KafkaRejected => "kafka_rejected",
            Self::MissingTenant => "missing_tenant",
            Self::InvalidId => "invalid_id",
            Self::Undecodable => "undecodable",
            Self::StoreRejected => "store_rejected",
            Self::Other => "other",
        }
    }

    /// The reason a `reason` header or column names; anything unknown is `Other`.
    pub fn parse(text: &str) -> Self {
        Self::ALL.into_iter().find(|r| r.as_str() == text).unwrap_or(Self::Other)
    }

    /// Position in [`Self::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_reason_round_trips_and_indexes_its_place() {
        for (i, r) in DeadLetterReason::ALL.into_iter().enumerate() {
            assert_eq!(DeadLetterReason::parse(r.as_str()), r);
            assert_eq!(r.index(), i);
        }
        assert!(DeadLetterReason::ROUTING.iter().all(|r| DeadLetterReason::ALL.contains(r)));
    }

    proptest! {
        /// Whatever a producer writes, the label is one of the fixed set.
        #[test]
        fn unknown_text_is_other(text in ".{0,40}") {
            let r = DeadLetterReason::parse(&text);
            prop_assert!(r == DeadLetterReason::Other || r.as_str() == text);
        }
    }
}
