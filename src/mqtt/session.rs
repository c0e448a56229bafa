//! One MQTT session, 3.1.1 or 5 behind one interface: the client handle
//! (acks, subscribe, disconnect) and the event-loop driver.

use super::options;
use super::{MqttConfig, MqttVersion, Qos};
use crate::record::{now_ms, Inbound};
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Qos5;

/// What an ack needs: the packet id and the QoS it arrived with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub pkid: u16,
    pub qos: u8,
}

/// The handle through which acks, subscriptions and the disconnect are sent.
#[derive(Clone)]
pub enum Client {
    V5(rumqttc::v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

/// The request channel is full (or the event loop is gone): try again shortly.
#[derive(Debug, PartialEq, Eq)]
pub struct ChannelFull;

impl Client {
    pub fn try_ack(&self, t: AckToken) -> Result<(), ChannelFull> {
        match self {
            Client::V5(c) => {
                let mut p = p5::Publish::new("", qos5(t.qos), Vec::new(), None);
                p.pkid = t.pkid;
                c.try_ack(&p).map_err(|_| ChannelFull)
            }
            Client::V311(c) => {
                let mut p = rumqttc::Publish::new("", qos4(t.qos), Vec::new());
                p.pkid = t.pkid;
                c.try_ack(&p).map_err(|_| ChannelFull)
            }
        }
    }

    /// Queue the subscriptions without waiting (the caller polls the event loop).
    pub fn try_subscribe(&self, filters: &[String], qos: Qos) -> bool {
        match self {
            Client::V5(c) => {
                let fs = filters.iter().map(|f| {
                    let mut filter = p5::Filter::new(f.clone(), qos5(qos.level()));
                    filter.retain_forward_rule = p5::RetainForwardRule::OnNewSubscribe;
                    filter
                });
                c.try_subscribe_many(fs).is_ok()
            }
            Client::V311(c) => {
                let fs = filters.iter().map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos4(qos.level())));
                c.try_subscribe_many(fs).is_ok()
            }
        }
    }

    /// Queue one UNSUBSCRIBE per filter without waiting.
    pub fn try_unsubscribe(&self, filters: &[String]) -> bool {
        filters.iter().all(|f| match self {
            Client::V5(c) => c.try_unsubscribe(f.clone()).is_ok(),
            Client::V311(c) => c.try_unsubscribe(f.clone()).is_ok(),
        })
    }

    pub fn try_disconnect(&self) -> bool {
        match self {
            Client::V5(c) => c.try_disconnect().is_ok(),
            Client::V311(c) => c.try_disconnect().is_ok(),
        }
    }
}

fn qos5(level: u8) -> Qos5 {
    match level {
        0 => Qos5::AtMostOnce,
        1 => Qos5::AtLeastOnce,
        _ => Qos5::ExactlyOnce,
    }
}

fn level5(q: Qos5) -> u8 {
    match q {
        Qos5::AtMostOnce => 0,
        Qos5::AtLeastOnce => 1,
        Qos5::ExactlyOnce => 2,
    }
}

fn level4(q: rumqttc::QoS) -> u8 {
    match q {
        rumqttc::QoS::AtMostOnce => 0,
        rumqttc::QoS::AtLeastOnce => 1,
        rumqttc::QoS::ExactlyOnce => 2,
    }
}

fn qos4(level: u8) -> rumqttc::QoS {
    match level {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

/// What the driver reports, whatever the protocol version.
#[derive(Debug)]
pub enum Event {
    Connected {
        session_present: bool,
    },
    Refused(String),
    Subscribed {
        failures: Vec<String>,
    },
    /// One UNSUBACK (one per filter: they are sent one by one).
    Unsubscribed,
    Publish(Inbound, Option<AckToken>),
    DisconnectSent,
    Other,
}

/// The connection failed or ended (the driver reconnects on the next poll).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    V5(#[from] rumqttc::v5::ConnectionError),
    #[error(transparent)]
    V311(#[from] rumqttc::ConnectionError),
}

/// Owns the socket; must be polled continuously.
pub enum Driver {
    V5(Box<rumqttc::v5::EventLoop>),
    V311(Box<rumqttc::EventLoop>),
}

/// Build a session. `clean` is for one-off probes (`iotpipe check`); the
/// bridge always uses a persistent session.
pub fn connect(cfg: &MqttConfig, client_id: &str, clean: bool) -> Result<(Client, Driver), options::OptionsError> {
    let cap = usize::from(cfg.max_in_flight) * 2 + 64;
    Ok(match cfg.version {
        MqttVersion::V5 => {
            let (c, e) = rumqttc::v5::AsyncClient::new(options::v5(cfg, client_id, clean)?, cap);
            (Client::V5(c), Driver::V5(Box::new(e)))
        }
        MqttVersion::V311 => {
            let (c, e) = rumqttc::AsyncClient::new(options::v311(cfg, client_id, clean)?, cap);
            (Client::V311(c), Driver::V311(Box::new(e)))
        }
    })
}

impl Driver {
    pub async fn poll(&mut self) -> Result<Event, SessionError> {
        match self {
            Driver::V5(el) => {
                use rumqttc::v5::{Event as E, Incoming as I};
                match el.poll().await? {
                    E::Incoming(I::ConnAck(ack)) => Ok(match ack.code {
                        p5::ConnectReturnCode::Success => Event::Connected { session_present: ack.session_present },
                        code => Event::Refused(format!("{code:?}")),
                    }),
                    E::Incoming(I::SubAck(ack)) => Ok(Event::Subscribed {
                        failures: ack
                            .return_codes
                            .iter()
                            .filter(|c| !matches!(c, p5::SubscribeReasonCode::Success(_)))
                            .map(|c| format!("{c:?}"))
                            .collect(),
                    }),
                    E::Incoming(I::UnsubAck(_)) => Ok(Event::Unsubscribed),
                    E::Incoming(I::Publish(p)) => {
                        let token =
                            (p.qos != Qos5::AtMostOnce).then_some(AckToken { pkid: p.pkid, qos: level5(p.qos) });
                        let topic = String::from_utf8(p.topic.to_vec())
                            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                        Ok(Event::Publish(
                            Inbound { topic, payload: p.payload, received_ms: now_ms(), redelivered: p.dup },
                            token,
                        ))
                    }
                    E::Outgoing(rumqttc::Outgoing::Disconnect) => Ok(Event::DisconnectSent),
                    _ => Ok(Event::Other),
                }
            }
            Driver::V311(el) => {
                use rumqttc::{Event as E, Packet as P};
                match el.poll().await? {
                    E::Incoming(P::ConnAck(ack)) => Ok(match ack.code {
                        rumqttc::ConnectReturnCode::Success => {
                            Event::Connected { session_present: ack.session_present }
                        }
                        code => Event::Refused(format!("{code:?}")),
                    }),
                    E::Incoming(P::SubAck(ack)) => Ok(Event::Subscribed {
                        failures: ack
                            .return_codes
                            .iter()
                            .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .map(|c| format!("{c:?}"))
                            .collect(),
                    }),
                    E::Incoming(P::UnsubAck(_)) => Ok(Event::Unsubscribed),
                    E::Incoming(P::Publish(p)) => {
                        let token = (p.qos != rumqttc::QoS::AtMostOnce)
                            .then_some(AckToken { pkid: p.pkid, qos: level4(p.qos) });
                        Ok(Event::Publish(
                            Inbound { topic: p.topic, payload: p.payload, received_ms: now_ms(), redelivered: p.dup },
                            token,
                        ))
                    }
                    E::Outgoing(rumqttc::Outgoing::Disconnect) => Ok(Event::DisconnectSent),
                    _ => Ok(Event::Other),
                }
            }
        }
    }

    /// Drop the connection state and every ack still queued in the request
    /// channel (they belong to the connection that ended).
    pub fn clean(&mut self) {
        match self {
            Driver::V5(el) => el.clean(),
            Driver::V311(el) => el.clean(),
        }
    }
}
