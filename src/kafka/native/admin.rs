//! The native client's side tasks: the reachability probe (a metadata
//! request naming one topic) and the bridge's topic creator (CreateTopics
//! v0–v4, sent to the controller). They run without librdkafka, so a
//! process whose producer or consumer is native runs no librdkafka client
//! at all: no threads of its own, and no metadata cache that a broker's
//! answer for every topic of the cluster could fill (docs/topology.md).

use super::bootstrap::Bootstrap;
use super::conn::{Client, Conn, ConnError};
use super::protocol::{self, Malformed, Reader, Request};
use crate::kafka::{ClientError, KafkaConfig};
use rdkafka::error::RDKafkaErrorCode as C;
use std::sync::Arc;
use std::time::Duration;

pub const API_CREATE_TOPICS: i16 = 19;
/// The CreateTopics versions before the flexible encoding (v5).
pub const CREATE_TOPICS_VERSIONS: (i16, i16) = (0, 4);

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic<'a> {
    pub name: &'a str,
    pub partitions: i32,
    pub replication: i16,
    pub configs: &'a [(String, String)],
}

/// Metadata and topic creation over the native client.
pub struct NativeAdmin {
    boot: Bootstrap,
    /// A connection to the controller, kept between creates.
    controller: Option<Conn>,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: Arc<str>,
    timeout: Duration,
}

impl NativeAdmin {
    /// For the reachability probe: metadata requests only.
    pub fn probe(cfg: &KafkaConfig, timeout: Duration) -> Result<Self, ClientError> {
        Self::new(cfg, Client::Metadata, timeout)
    }

    /// For the topic creator: metadata and CreateTopics.
    pub fn creator(cfg: &KafkaConfig, timeout: Duration) -> Result<Self, ClientError> {
        Self::new(cfg, Client::Admin, timeout)
    }

    /// For `[kafka]`'s brokers and TLS settings.
    fn new(cfg: &KafkaConfig, client: Client, timeout: Duration) -> Result<Self, ClientError> {
        let super::Endpoints { bootstrap, tls, client_id } = super::Endpoints::of(cfg, None)?;
        let boot = Bootstrap::new(bootstrap, client, tls.clone(), client_id.clone(), timeout);
        Ok(Self { boot, controller: None, tls, client_id, timeout })
    }

    /// Drop the connections (after a call was abandoned midway).
    pub fn disconnect(&mut self) {
        self.boot.disconnect();
        self.controller = None;
    }

    /// The metadata of `topic` alone (never of every topic): the brokers
    /// and the controller. Whether the topic exists does not matter.
    pub async fn metadata(&mut self, topic: &str) -> Result<protocol::Metadata, ConnError> {
        self.boot
            .call(|c| protocol::metadata_request(c.client_id(), &[topic], false), |b, _| protocol::metadata_response(b))
            .await
    }

    /// Create `topic`: `Ok(Ok(()))` when it was created, `Ok(Err(code))`
    /// when the controller refused (`TopicAlreadyExists` included), `Err`
    /// when it could not be asked.
    pub async fn create(&mut self, topic: &NewTopic<'_>, wait: Duration) -> Result<Result<(), C>, ConnError> {
        if self.controller.is_none() {
            let md = self.metadata(topic.name).await?;
            let Some(b) = md.brokers.iter().find(|b| b.node_id == md.controller).or(md.brokers.first()) else {
                return Err(ConnError::NoBootstrap);
            };
            let port = u16::try_from(b.port).unwrap_or(0);
            let conn =
                Conn::open_for(Client::Admin, &b.host, port, self.tls.as_ref(), self.client_id.clone(), self.timeout)
                    .await?;
            self.controller = Some(conn);
        }
        let Some(conn) = self.controller.as_mut() else { return Err(ConnError::NoBootstrap) };
        let version = conn.versions.create_topics;
        let mut request = create_topics_request(conn.client_id(), version, topic, wait);
        let answer = conn
            .call_within(&mut request, self.timeout + wait)
            .await
            .and_then(|body| create_topics_response(&body, version).map_err(|e| conn.malformed(e)));
        let code = match answer {
            Ok(results) => results.iter().find(|(name, _)| name == topic.name).map_or(0, |&(_, code)| code),
            Err(e) => {
                self.controller = None;
                return Err(e);
            }
        };
        if code == NOT_CONTROLLER {
            // The controller moved: look it up again next time.
            self.controller = None;
        }
        Ok(if code == 0 { Ok(()) } else { Err(create_error(code)) })
    }
}

const NOT_CONTROLLER: i16 = 41;

/// A CreateTopics error code as librdkafka's (the creator classifies both alike).
fn create_error(code: i16) -> C {
    match code {
        5 => C::LeaderNotAvailable,
        7 => C::RequestTimedOut,
        8 => C::BrokerNotAvailable,
        13 => C::NetworkException,
        15 => C::CoordinatorNotAvailable,
        17 => C::InvalidTopic,
        29 => C::TopicAuthorizationFailed,
        31 => C::ClusterAuthorizationFailed,
        36 => C::TopicAlreadyExists,
        37 => C::InvalidPartitions,
        38 => C::InvalidReplicationFactor,
        39 => C::InvalidReplicaAssignment,
        40 => C::InvalidConfig,
        NOT_CONTROLLER => C::NotController,
        44 => C::PolicyViolation,
        _ => C::Unknown,
    }
}

/// CreateTopics (v0–v4) for one topic, with its configs, waiting up to `wait`.
fn create_topics_request(client_id: &str, version: i16, t: &NewTopic<'_>, wait: Duration) -> bytes::BytesMut {
    let size = t.name.len() + t.configs.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + 32;
    let mut r = Request::new(API_CREATE_TOPICS, version, client_id, size);
    r.len(1);
    r.string(t.name);
    r.i32(t.partitions);
    r.i16(t.replication);
    r.len(0); // no replica assignment
    r.len(t.configs.len());
    for (k, v) in t.configs {
        r.string(k);
        r.string(v);
    }
    r.i32(i32::try_from(wait.as_millis()).unwrap_or(i32::MAX));
    if version >= 1 {
        r.i8(0); // validate_only: false
    }
    r.finish()
}

/// `(topic, error code)` of each topic in a CreateTopics response.
fn create_topics_response(body: &[u8], version: i16) -> Result<Vec<(String, i16)>, Malformed> {
    let mut r = Reader::new(body, "CreateTopics");
    if version >= 2 {
        let _throttle = r.i32()?;
    }
    let n = r.len()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string()?.ok_or(r.err("topic without a name"))?;
        let code = r.i16()?;
        if version >= 1 {
            let _message = r.string()?;
        }
        out.push((name, code));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn create_topics_in_each_version() {
        let configs = [("retention.ms".to_string(), "1000".to_string())];
        let t = NewTopic { name: "t", partitions: 3, replication: 1, configs: &configs };
        for version in 0..=4 {
            let req = create_topics_request("c", version, &t, Duration::from_secs(5));
            // size, api key, version, correlation id, client id "c"
            let body = &req[4 + 2 + 2 + 4 + 3..];
            let mut want = vec![0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
            want.extend_from_slice(&[0, 12]);
            want.extend_from_slice(b"retention.ms");
            want.extend_from_slice(&[0, 4]);
            want.extend_from_slice(b"1000");
            want.extend_from_slice(&5000i32.to_be_bytes());
            if version >= 1 {
                want.push(0);
            }
            assert_eq!(body, &want[..], "v{version}");
            assert_eq!(i16::from_be_bytes([req[6], req[7]]), version);
        }
    }

    #[test]
    fn create_topics_answers_in_each_version() {
        for version in 0..=4 {
            let mut b = bytes::BytesMut::new();
            if version >= 2 {
                b.put_i32(0);
            }
            b.put_i32(2);
            for (name, code) in [("a", 0i16), ("b", 36)] {
                b.put_i16(1);
                b.put_slice(name.as_bytes());
                b.put_i16(code);
                if version >= 1 {
                    b.put_i16(-1);
                }
            }
            let got = create_topics_response(&b, version).expect("parses");
            assert_eq!(got, vec![("a".to_string(), 0), ("b".to_string(), 36)], "v{version}");
            assert!(create_topics_response(&b[..b.len() - 1], version).is_err(), "truncated v{version}");
        }
        assert_eq!(create_error(36), C::TopicAlreadyExists);
        assert_eq!(create_error(41), C::NotController);
        assert_eq!(create_error(999), C::Unknown);
    }
}
