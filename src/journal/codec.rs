//! What the bridge stores in a journal record: an [`Inbound`] MQTT message.
//!
//! Layout, version 1 (14 bytes plus the topic and the payload):
//!
//! ```text
//! [version u8 = 1][flags u8: bit 0 = redelivered][received_ms i64 LE]
//! [topic_len u32 LE][topic: UTF-8][payload: the rest]
//! ```
//!
//! The frame around it carries the length and the checksum. A decoder for a
//! later version keeps accepting version 1.

use super::JournalError;
use crate::record::Inbound;
use bytes::Bytes;

/// The layout written by [`encode_inbound`].
const VERSION: u8 = 1;
/// Bytes before the topic.
const FIXED: usize = 1 + 1 + 8 + 4;
const FLAG_REDELIVERED: u8 = 1;

/// Bytes [`encode_inbound`] writes for `msg`.
pub fn encoded_len(msg: &Inbound) -> usize {
    FIXED + msg.topic.len() + msg.payload.len()
}

/// Encode a message for the journal.
pub fn encode_inbound(msg: &Inbound) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(msg));
    encode_inbound_into(msg, &mut out);
    out
}

/// [`encode_inbound`], appending to `out`.
pub fn encode_inbound_into(msg: &Inbound, out: &mut Vec<u8>) {
    out.reserve(encoded_len(msg));
    out.push(VERSION);
    out.push(if msg.redelivered { FLAG_REDELIVERED } else { 0 });
    out.extend_from_slice(&msg.received_ms.to_le_bytes());
    let topic_len = u32::try_from(msg.topic.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(&msg.topic.as_bytes()[..topic_len as usize]);
    out.extend_from_slice(&msg.payload);
}

/// Decode a journal record written by [`encode_inbound`] (copies the payload).
pub fn decode_inbound(bytes: &[u8]) -> Result<Inbound, JournalError> {
    let (meta, topic, payload_at) = decode_head(bytes)?;
    Ok(Inbound { topic, payload: Bytes::copy_from_slice(&bytes[payload_at..]), ..meta })
}

/// Like [`decode_inbound`], but the payload shares `bytes` instead of copying it.
pub fn decode_inbound_shared(bytes: &Bytes) -> Result<Inbound, JournalError> {
    let (meta, topic, payload_at) = decode_head(bytes)?;
    Ok(Inbound { topic, payload: bytes.slice(payload_at..), ..meta })
}

/// The fields before the payload, and where the payload starts.
fn decode_head(b: &[u8]) -> Result<(Inbound, String, usize), JournalError> {
    let fixed = b.get(..FIXED).ok_or(JournalError::BadRecord("shorter than its fixed fields"))?;
    if fixed[0] != VERSION {
        return Err(JournalError::BadRecord("unknown layout version"));
    }
    if fixed[1] & !FLAG_REDELIVERED != 0 {
        return Err(JournalError::BadRecord("unknown flags"));
    }
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&fixed[2..10]);
    let mut len = [0u8; 4];
    len.copy_from_slice(&fixed[10..14]);
    let topic_end = usize::try_from(u32::from_le_bytes(len))
        .ok()
        .and_then(|n| FIXED.checked_add(n))
        .filter(|&end| end <= b.len())
        .ok_or(JournalError::BadRecord("topic length beyond the record"))?;
    let topic = std::str::from_utf8(&b[FIXED..topic_end]).map_err(|_| JournalError::BadRecord("topic is not UTF-8"))?;
    let meta = Inbound {
        topic: String::new(),
        payload: Bytes::new(),
        received_ms: i64::from_le_bytes(ms),
        redelivered: fixed[1] & FLAG_REDELIVERED != 0,
    };
    Ok((meta, topic.to_string(), topic_end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_stable() {
        let msg =
            Inbound { topic: "t/a".into(), payload: Bytes::from_static(b"{}"), received_ms: 0x0102, redelivered: true };
        let b = encode_inbound(&msg);
        assert_eq!(b, [&[1u8, 1, 2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0][..], b"t/a{}"].concat());
        let shared = Bytes::from(b);
        let back = decode_inbound_shared(&shared).unwrap();
        assert_eq!(
            (back.topic.as_str(), &back.payload[..], back.received_ms, back.redelivered),
            ("t/a", &b"{}"[..], 0x0102, true)
        );
    }

    #[test]
    fn rejects_damaged_records() {
        let b =
            encode_inbound(&Inbound { topic: "x".into(), payload: Bytes::new(), received_ms: 1, redelivered: false });
        assert!(decode_inbound(&b[..FIXED]).is_err(), "topic cut off");
        assert!(decode_inbound(&[&[2u8][..], &b[1..]].concat()).is_err(), "version");
        let mut bad = b.clone();
        bad[FIXED] = 0xff;
        assert!(decode_inbound(&bad).is_err(), "utf-8");
    }

    proptest! {
        #[test]
        fn any_message_round_trips(topic in ".{0,40}", payload in proptest::collection::vec(any::<u8>(), 0..200), ms in any::<i64>(), re in any::<bool>()) {
            let msg = Inbound { topic, payload: Bytes::from(payload), received_ms: ms, redelivered: re };
            let back = decode_inbound(&encode_inbound(&msg)).unwrap();
            prop_assert_eq!(&back.topic, &msg.topic);
            prop_assert_eq!(&back.payload, &msg.payload);
            prop_assert_eq!((back.received_ms, back.redelivered), (ms, re));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_inbound(&b);
        }
    }
}
