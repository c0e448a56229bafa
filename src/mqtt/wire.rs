//! MQTT packets on the wire, 3.1.1 and 5, for the bridge's session: what
//! the broker sends, decoded into one version-independent form, and what
//! the session sends, encoded into a buffer that goes out in one write.
//!
//! rumqttc's packet codec (its `mqttbytes` modules) reads and writes the
//! packets with fields; the acknowledgements, PINGREQ and DISCONNECT are
//! fixed four- and two-byte packets written here directly, since they are
//! what the session sends most (one PUBACK per message).

use super::{MqttVersion, Qos};
use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::v4 as p4;
use rumqttc::v5::mqttbytes::v5 as p5;
use std::time::Duration;

/// Largest MQTT packet the bridge accepts: the protocol maximum, so that an
/// oversize message reaches the bridge and is dead-lettered instead of being
/// discarded by the broker.
pub const MAX_INCOMING_PACKET: usize = 268_435_455;

/// What the broker sent, whatever the protocol version.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    ConnAck {
        session_present: bool,
        /// The reason the broker refused the connection; `None` when accepted.
        refused: Option<String>,
        /// MQTT 5: the keep-alive the broker wants instead of ours.
        server_keep_alive: Option<u16>,
    },
    Publish {
        topic: String,
        payload: Bytes,
        qos: u8,
        pkid: u16,
        dup: bool,
    },
    /// QoS 2, second step: answered with PUBCOMP.
    PubRel {
        pkid: u16,
    },
    SubAck {
        /// The filters' refusals, as the broker's reason codes.
        failures: Vec<String>,
    },
    UnsubAck,
    PingResp,
    /// MQTT 5: the broker closes the connection, with its reason.
    Disconnect {
        reason: String,
    },
    /// Anything a subscriber does not act on (acks of publishes it never sent).
    Other,
}

/// The broker sent bytes that are not a valid MQTT packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed MQTT packet from the broker: {0}")]
pub struct Malformed(pub String);

/// Decode the next whole packet at the front of `buf` (consuming it), or
/// `Ok(None)` with `buf` untouched when it holds only part of one; `need`
/// then says how many more bytes that packet takes, when known.
pub fn read(version: MqttVersion, buf: &mut BytesMut, need: &mut usize) -> Result<Option<Incoming>, Malformed> {
    *need = 0;
    match version {
        MqttVersion::V5 => match p5::Packet::read(buf, Some(MAX_INCOMING_PACKET as u32)) {
            Ok(p) => Ok(Some(from_v5(p))),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(n)) => {
                *need = n;
                Ok(None)
            }
            Err(e) => Err(Malformed(e.to_string())),
        },
        MqttVersion::V311 => match p4::Packet::read(buf, MAX_INCOMING_PACKET) {
            Ok(p) => Ok(Some(from_v4(p))),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(n)) => {
                *need = n;
                Ok(None)
            }
            Err(e) => Err(Malformed(e.to_string())),
        },
    }
}

fn from_v5(p: p5::Packet) -> Incoming {
    match p {
        p5::Packet::ConnAck(ack) => Incoming::ConnAck {
            session_present: ack.session_present,
            refused: (ack.code != p5::ConnectReturnCode::Success).then(|| format!("{:?}", ack.code)),
            server_keep_alive: ack.properties.and_then(|p| p.server_keep_alive),
        },
        p5::Packet::Publish(p) => Incoming::Publish {
            topic: String::from_utf8(p.topic.to_vec())
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            payload: p.payload,
            // Both codecs' QoS are `repr(u8)` with the protocol's levels.
            qos: p.qos as u8,
            pkid: p.pkid,
            dup: p.dup,
        },
        p5::Packet::PubRel(r) => Incoming::PubRel { pkid: r.pkid },
        p5::Packet::SubAck(ack) => Incoming::SubAck {
            failures: ack
                .return_codes
                .iter()
                .filter(|c| !matches!(c, p5::SubscribeReasonCode::Success(_)))
                .map(|c| format!("{c:?}"))
                .collect(),
        },
        p5::Packet::UnsubAck(_) => Incoming::UnsubAck,
        p5::Packet::PingResp(_) => Incoming::PingResp,
        p5::Packet::Disconnect(d) => Incoming::Disconnect { reason: format!("{:?}", d.reason_code) },
        _ => Incoming::Other,
    }
}

fn from_v4(p: p4::Packet) -> Incoming {
    match p {
        p4::Packet::ConnAck(ack) => Incoming::ConnAck {
            session_present: ack.session_present,
            refused: (ack.code != p4::ConnectReturnCode::Success).then(|| format!("{:?}", ack.code)),
            server_keep_alive: None,
        },
        p4::Packet::Publish(p) => Incoming::Publish {
            topic: p.topic,
            payload: p.payload,
            // Both codecs' QoS are `repr(u8)` with the protocol's levels.
            qos: p.qos as u8,
            pkid: p.pkid,
            dup: p.dup,
        },
        p4::Packet::PubRel(r) => Incoming::PubRel { pkid: r.pkid },
        p4::Packet::SubAck(ack) => Incoming::SubAck {
            failures: ack
                .return_codes
                .iter()
                .filter(|c| matches!(c, p4::SubscribeReasonCode::Failure))
                .map(|c| format!("{c:?}"))
                .collect(),
        },
        p4::Packet::UnsubAck(_) => Incoming::UnsubAck,
        p4::Packet::PingResp => Incoming::PingResp,
        _ => Incoming::Other,
    }
}

/// Fixed header bytes of the two-byte-body packets (MQTT 3.1.1 and 5 alike:
/// in 5, a remaining length of 2 means reason "success", no properties).
const PUBACK: u8 = 0x40;
const PUBREC: u8 = 0x50;
const PUBCOMP: u8 = 0x70;

fn ack(buf: &mut BytesMut, kind: u8, pkid: u16) {
    let [hi, lo] = pkid.to_be_bytes();
    buf.put_slice(&[kind, 2, hi, lo]);
}

/// The acknowledgement of a received QoS 1 (PUBACK) or QoS 2 (PUBREC) PUBLISH.
pub fn publish_ack(buf: &mut BytesMut, qos: u8, pkid: u16) {
    ack(buf, if qos >= 2 { PUBREC } else { PUBACK }, pkid);
}

pub fn pubcomp(buf: &mut BytesMut, pkid: u16) {
    ack(buf, PUBCOMP, pkid);
}

pub fn pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[0xC0, 0]);
}

/// DISCONNECT, normal disconnection (in MQTT 5 a remaining length of 0 means
/// reason 0x00; the session is kept for its expiry interval).
pub fn disconnect(buf: &mut BytesMut) {
    buf.put_slice(&[0xE0, 0]);
}

/// What CONNECT carries.
#[derive(Debug, Clone)]
pub struct ConnectFields {
    pub client_id: String,
    pub keep_alive: Duration,
    /// Start a new session (`true`) or resume the stored one.
    pub clean: bool,
    /// MQTT 5: how long the broker keeps the session after a disconnect.
    pub session_expiry: Option<Duration>,
    /// MQTT 5: how many unacknowledged QoS 1/2 messages the broker may send.
    pub receive_maximum: u16,
    pub credentials: Option<(String, String)>,
}

/// Whole seconds, saturating at the protocol field's maximum.
fn secs_u16(d: Duration) -> u16 {
    u16::try_from(d.as_secs()).unwrap_or(u16::MAX)
}

fn secs_u32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// A packet the codec refused to encode (a field over its protocol limit).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot encode the MQTT {packet}: {reason}")]
pub struct Unencodable {
    pub packet: &'static str,
    pub reason: String,
}

/// The codec's error (3.1.1's or 5's) for `packet`.
fn unencodable<E: std::fmt::Display>(packet: &'static str) -> impl Fn(E) -> Unencodable {
    move |e| Unencodable { packet, reason: e.to_string() }
}

pub fn connect(version: MqttVersion, c: &ConnectFields, buf: &mut BytesMut) -> Result<(), Unencodable> {
    match version {
        MqttVersion::V5 => {
            let mut props = p5::ConnectProperties::new();
            props.session_expiry_interval = c.session_expiry.map(secs_u32);
            props.receive_maximum = Some(c.receive_maximum);
            props.max_packet_size = Some(MAX_INCOMING_PACKET as u32);
            let connect = p5::Connect {
                keep_alive: secs_u16(c.keep_alive),
                client_id: c.client_id.clone(),
                clean_start: c.clean,
                properties: Some(props),
            };
            let login = c.credentials.as_ref().map(|(u, p)| p5::Login::new(u.clone(), p.clone()));
            p5::Packet::Connect(connect, None, login).write(buf, None).map_err(unencodable("CONNECT"))?;
        }
        MqttVersion::V311 => {
            let mut connect = p4::Connect::new(c.client_id.clone());
            connect.keep_alive = secs_u16(c.keep_alive);
            connect.clean_session = c.clean;
            connect.login = c.credentials.as_ref().map(|(u, p)| p4::Login::new(u.clone(), p.clone()));
            p4::Packet::Connect(connect).write(buf, MAX_INCOMING_PACKET).map_err(unencodable("CONNECT"))?;
        }
    }
    Ok(())
}

/// One SUBSCRIBE for all the filters. With MQTT 5, retained messages are
/// sent only on a new subscription, not again on every resubscribe.
pub fn subscribe(
    version: MqttVersion,
    pkid: u16,
    filters: &[String],
    qos: Qos,
    buf: &mut BytesMut,
) -> Result<(), Unencodable> {
    match version {
        MqttVersion::V5 => {
            let filters = filters
                .iter()
                .map(|f| {
                    let mut filter = p5::Filter::new(f.clone(), qos5(qos));
                    filter.retain_forward_rule = p5::RetainForwardRule::OnNewSubscribe;
                    filter
                })
                .collect();
            let packet = p5::Subscribe { pkid, filters, properties: None };
            p5::Packet::Subscribe(packet).write(buf, None).map_err(unencodable("SUBSCRIBE"))?;
        }
        MqttVersion::V311 => {
            let filters = filters.iter().map(|f| p4::SubscribeFilter::new(f.clone(), qos4(qos))).collect();
            let packet = p4::Subscribe { pkid, filters };
            p4::Packet::Subscribe(packet).write(buf, MAX_INCOMING_PACKET).map_err(unencodable("SUBSCRIBE"))?;
        }
    }
    Ok(())
}

pub fn unsubscribe(version: MqttVersion, pkid: u16, filter: &str, buf: &mut BytesMut) -> Result<(), Unencodable> {
    match version {
        MqttVersion::V5 => {
            let packet = p5::Unsubscribe { pkid, filters: vec![filter.to_string()], properties: None };
            p5::Packet::Unsubscribe(packet).write(buf, None).map_err(unencodable("UNSUBSCRIBE"))?;
        }
        MqttVersion::V311 => {
            let packet = p4::Unsubscribe { pkid, topics: vec![filter.to_string()] };
            p4::Packet::Unsubscribe(packet).write(buf, MAX_INCOMING_PACKET).map_err(unencodable("UNSUBSCRIBE"))?;
        }
    }
    Ok(())
}

fn qos5(q: Qos) -> rumqttc::v5::mqttbytes::QoS {
    rumqttc::v5::mqttbytes::qos(q.level()).unwrap_or(rumqttc::v5::mqttbytes::QoS::ExactlyOnce)
}

fn qos4(q: Qos) -> rumqttc::mqttbytes::QoS {
    rumqttc::mqttbytes::qos(q.level()).unwrap_or(rumqttc::mqttbytes::QoS::ExactlyOnce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_v5(topic: &str, payload: &[u8], pkid: u16) -> BytesMut {
        use rumqttc::v5::mqttbytes::QoS;
        let mut p = p5::Publish::new(topic, QoS::AtLeastOnce, payload.to_vec(), None);
        p.pkid = pkid;
        let mut buf = BytesMut::new();
        p5::Packet::Publish(p).write(&mut buf, None).unwrap();
        buf
    }

    #[test]
    fn acks_are_the_four_bytes_both_versions_define() {
        let mut buf = BytesMut::new();
        publish_ack(&mut buf, 1, 0x1234);
        publish_ack(&mut buf, 2, 7);
        pubcomp(&mut buf, 7);
        pingreq(&mut buf);
        disconnect(&mut buf);
        assert_eq!(&buf[..], &[0x40, 2, 0x12, 0x34, 0x50, 2, 0, 7, 0x70, 2, 0, 7, 0xC0, 0, 0xE0, 0]);
        // And the codec reads them back as the packets they are.
        let mut b = BytesMut::from(&buf[..4]);
        assert_eq!(p5::Packet::read(&mut b, None).unwrap(), p5::Packet::PubAck(p5::PubAck::new(0x1234, None)));
        let mut b = BytesMut::from(&buf[..4]);
        let p = p4::Packet::read(&mut b, 100).unwrap();
        assert_eq!(p, p4::Packet::PubAck(p4::PubAck::new(0x1234)));
    }

    #[test]
    fn a_publish_split_anywhere_is_read_whole_once_all_of_it_came() {
        let whole = publish_v5("mtic/msg/client/realtime/t/p", br#"{"deviceId":"d1"}"#, 9);
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let mut need = 0;
            assert_eq!(read(MqttVersion::V5, &mut buf, &mut need), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "a partial packet is left in the buffer");
            buf.extend_from_slice(&whole[cut..]);
            let got = read(MqttVersion::V5, &mut buf, &mut need).unwrap().unwrap();
            assert_eq!(
                got,
                Incoming::Publish {
                    topic: "mtic/msg/client/realtime/t/p".into(),
                    payload: Bytes::from_static(br#"{"deviceId":"d1"}"#),
                    qos: 1,
                    pkid: 9,
                    dup: false,
                }
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn several_packets_in_one_read_come_out_in_order() {
        let mut buf = publish_v5("a", b"1", 1);
        buf.extend_from_slice(&publish_v5("b", b"2", 2));
        buf.extend_from_slice(&[0xD0, 0]); // PINGRESP
        let mut need = 0;
        let mut topics = Vec::new();
        while let Some(p) = read(MqttVersion::V5, &mut buf, &mut need).unwrap() {
            match p {
                Incoming::Publish { topic, .. } => topics.push(topic),
                Incoming::PingResp => topics.push("ping".into()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(topics, ["a", "b", "ping"]);
    }

    #[test]
    fn garbage_is_a_malformed_packet_not_a_panic() {
        let mut need = 0;
        // Packet type 0 is reserved.
        let mut buf = BytesMut::from(&[0x00u8, 0x02, 0, 0][..]);
        assert!(read(MqttVersion::V5, &mut buf, &mut need).is_err());
        let mut buf = BytesMut::from(&[0x00u8, 0x02, 0, 0][..]);
        assert!(read(MqttVersion::V311, &mut buf, &mut need).is_err());
        // A remaining length that never ends (five continuation bytes).
        let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert!(read(MqttVersion::V5, &mut buf, &mut need).is_err());
    }

    #[test]
    fn connect_carries_the_session_settings() {
        let fields = ConnectFields {
            client_id: "bridge-1".into(),
            keep_alive: Duration::from_secs(30),
            clean: false,
            session_expiry: Some(Duration::from_secs(604_800)),
            receive_maximum: 1000,
            credentials: Some(("u".into(), "p".into())),
        };
        let mut buf = BytesMut::new();
        connect(MqttVersion::V5, &fields, &mut buf).unwrap();
        let p5::Packet::Connect(c, _, login) = p5::Packet::read(&mut buf, None).unwrap() else { panic!() };
        assert_eq!((c.client_id.as_str(), c.keep_alive, c.clean_start), ("bridge-1", 30, false));
        let props = c.properties.unwrap();
        assert_eq!(props.session_expiry_interval, Some(604_800));
        assert_eq!(props.receive_maximum, Some(1000));
        assert_eq!(login.unwrap().username, "u");

        let mut buf = BytesMut::new();
        connect(MqttVersion::V311, &fields, &mut buf).unwrap();
        let p4::Packet::Connect(c) = p4::Packet::read(&mut buf, MAX_INCOMING_PACKET).unwrap() else { panic!() };
        assert_eq!((c.client_id.as_str(), c.keep_alive, c.clean_session), ("bridge-1", 30, false));
    }

    #[test]
    fn subscribe_and_unsubscribe_round_trip() {
        let filters = vec!["$share/g/a/#".to_string(), "b/+".to_string()];
        let mut buf = BytesMut::new();
        subscribe(MqttVersion::V5, 3, &filters, Qos::AtLeastOnce, &mut buf).unwrap();
        let p5::Packet::Subscribe(s) = p5::Packet::read(&mut buf, None).unwrap() else { panic!() };
        assert_eq!(s.pkid, 3);
        assert_eq!(s.filters.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(), ["$share/g/a/#", "b/+"]);
        assert_eq!(s.filters[0].retain_forward_rule, p5::RetainForwardRule::OnNewSubscribe);

        let mut buf = BytesMut::new();
        unsubscribe(MqttVersion::V311, 4, "b/+", &mut buf).unwrap();
        let p4::Packet::Unsubscribe(u) = p4::Packet::read(&mut buf, MAX_INCOMING_PACKET).unwrap() else { panic!() };
        assert_eq!((u.pkid, u.topics), (4, vec!["b/+".to_string()]));
    }
}
