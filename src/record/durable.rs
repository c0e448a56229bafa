//! A record read back from a durable hand-off — a Kafka topic (`sink`) or
//! the journal (`run`) — on its way to the decoder. The decoder sees only
//! this type; each source builds it (the Kafka consumer from librdkafka's
//! messages, `run` from a routed journal record).

use super::headers::ReadHeaders;
use super::RecordId;
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;

/// Where a record was read from. Names the record in dead letters, and
/// gives a record that carries no id of its own a stable one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Position {
    /// A Kafka record: its topic (shared by the records of one consumer
    /// read), partition and offset.
    Kafka { topic: Arc<str>, partition: i32, offset: i64 },
    /// A journal record: its sequence number.
    Journal { seq: u64 },
}

impl Position {
    /// The text hashed into the id of a record without one: two reads of
    /// the same position give the same id.
    fn id_key(&self) -> String {
        match self {
            Self::Kafka { topic, partition, offset } => format!("{topic}/{partition}@{offset}"),
            Self::Journal { seq } => format!("journal/{seq}"),
        }
    }
}

/// `kafka:<topic>/<partition>@<offset>` or `journal:<seq>`: the `source`
/// column of a dead letter, unique per record.
impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kafka { topic, partition, offset } => write!(f, "kafka:{topic}/{partition}@{offset}"),
            Self::Journal { seq } => write!(f, "journal:{seq}"),
        }
    }
}

/// A record as the decoder sees it: headers (the header contract of
/// [`super::headers`]), payload, where it was read from and its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableRecord {
    pub position: Position,
    /// The record's own timestamp (Kafka's record timestamp; the event time,
    /// else the receive time, of a journal record), ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Header values are text; bytes that are not UTF-8 are replaced.
    pub headers: ReadHeaders,
    pub payload: Bytes,
}

impl DurableRecord {
    /// Where dead letters say the record came from.
    pub fn source(&self) -> String {
        self.position.to_string()
    }

    /// The id of a record that carries none: derived from its position, its
    /// timestamp (else `received_ms`) and its payload, so reading it again
    /// gives the same id and the store keeps one row.
    pub fn position_id(&self, received_ms: i64) -> RecordId {
        let key = self.position.id_key();
        RecordId::derive(Some(self.timestamp_ms.unwrap_or(received_ms)), received_ms, &key, &self.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(offset: i64, timestamp_ms: Option<i64>, payload: &'static [u8]) -> DurableRecord {
        DurableRecord {
            position: Position::Kafka { topic: "iot.a.p".into(), partition: 1, offset },
            timestamp_ms,
            headers: ReadHeaders::default(),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn sources_name_the_position() {
        assert_eq!(kafka(42, None, b"").source(), "kafka:iot.a.p/1@42");
        let j = DurableRecord { position: Position::Journal { seq: 7 }, ..kafka(0, None, b"") };
        assert_eq!(j.source(), "journal:7");
    }

    /// Ids derived from a Kafka position are stored in rows: the values
    /// below are what every earlier version derived, and must not change.
    #[test]
    fn kafka_position_ids_are_pinned() {
        let with_ts = kafka(
            42,
            Some(1_700_000_000_000),
            br#"{"tenantId":"a","projectId":"p","deviceId":"d","ts":1700000000000}"#,
        );
        assert_eq!(with_ts.position_id(5).to_hyphenated(), "018bcfe5-6800-76ea-a9a6-21616ef11607");
        assert_eq!(with_ts.position_id(9), with_ts.position_id(5), "the Kafka timestamp wins");
        let without_ts = kafka(42, None, br#"{"v":1}"#);
        assert_eq!(without_ts.position_id(1_700_000_000_999).to_hyphenated(), "018bcfe5-6be7-784b-bc71-011421edeeed");
        assert_ne!(
            kafka(43, None, br#"{"v":1}"#).position_id(1_700_000_000_999),
            without_ts.position_id(1_700_000_000_999)
        );
    }

    #[test]
    fn journal_and_kafka_positions_never_share_an_id() {
        let k = DurableRecord {
            position: Position::Kafka { topic: "t".into(), partition: 0, offset: 3 },
            ..kafka(0, Some(1), b"x")
        };
        let j = DurableRecord { position: Position::Journal { seq: 3 }, ..k.clone() };
        assert_ne!(k.position_id(1), j.position_id(1));
        assert_eq!(j.position_id(1), j.position_id(2), "a journal record read again keeps its id");
    }
}
