//! What flows through every stage: the record id, the message as received,
//! the routed message, and (in submodules) the header contract, the record
//! read back from Kafka or the journal for the decoder, and the dead-letter
//! reasons shared by `bridge`, `sink` and `run`.

mod durable;
pub mod headers;
mod reason;

pub use durable::{DurableRecord, Position};
pub use reason::DeadLetterReason;

use bytes::Bytes;
use uuid::Uuid;

/// A record's stable id: a UUIDv7.
///
/// When the event time is known the id is derived from the event time and a
/// hash of the MQTT topic and payload, so a message the broker redelivers
/// after a crash gets the same id and the store keeps one row. Without an
/// event time the id is the receive time plus random bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordId(pub Uuid);

impl RecordId {
    pub fn derive(event_time_ms: Option<i64>, received_ms: i64, topic: &str, payload: &[u8]) -> Self {
        match event_time_ms {
            Some(ms) => {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(topic.as_bytes());
                h.update(&[0]);
                h.update(payload);
                let hash = h.digest128().to_be_bytes();
                let mut rand = [0u8; 10];
                rand.copy_from_slice(&hash[..10]);
                Self(build_v7(ms, rand))
            }
            None => Self(build_v7(received_ms, rand::random())),
        }
    }

    pub fn to_hyphenated(self) -> String {
        self.0.hyphenated().to_string()
    }
}

/// UUIDv7 layout: 48-bit ms timestamp, version 7, 74 bits from `rand`, variant 10.
fn build_v7(ms: i64, rand: [u8; 10]) -> Uuid {
    let ms = u64::try_from(ms).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6..].copy_from_slice(&rand);
    b[6] = (b[6] & 0x0F) | 0x70;
    b[8] = (b[8] & 0x3F) | 0x80;
    Uuid::from_bytes(b)
}

/// A message received from MQTT, before routing.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
    /// Receive time, ms since the epoch.
    pub received_ms: i64,
    /// The broker flagged it as a redelivery.
    pub redelivered: bool,
}

/// Where a message goes in Kafka and what travels with it.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub id: RecordId,
    pub topic: String,
    pub key: Option<String>,
    pub value: Bytes,
    pub headers: headers::HeaderList,
    /// Kafka record timestamp (event time when known, else receive time), ms.
    pub timestamp_ms: i64,
    /// Set on dead letters.
    pub reason: Option<DeadLetterReason>,
}

impl Outbound {
    /// The tenant, for per-tenant metrics (empty on dead letters).
    pub fn tenant_id(&self) -> &str {
        self.headers.get(headers::TENANT_ID).unwrap_or("")
    }

    /// The project, for per-tenant metrics (empty on dead letters).
    pub fn project_id(&self) -> &str {
        self.headers.get(headers::PROJECT_ID).unwrap_or("")
    }
}

pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_event_time_are_stable_and_time_ordered() {
        let a = RecordId::derive(Some(1_700_000_000_000), 5, "t/a", b"{}");
        let b = RecordId::derive(Some(1_700_000_000_000), 9, "t/a", b"{}");
        let c = RecordId::derive(Some(1_700_000_000_000), 5, "t/a", b"{\"x\":1}");
        let later = RecordId::derive(Some(1_700_000_000_001), 5, "t/a", b"{}");
        assert_eq!(a, b, "same message, same id, whenever it was received");
        assert_ne!(a, c);
        assert!(later.0 > a.0);
        assert_eq!(a.0.get_version_num(), 7);
        assert_eq!(a.0.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn ids_without_event_time_are_unique() {
        let a = RecordId::derive(None, 1_700_000_000_000, "t", b"x");
        let b = RecordId::derive(None, 1_700_000_000_000, "t", b"x");
        assert_ne!(a, b);
        assert_eq!(a.0.get_version_num(), 7);
    }
}
