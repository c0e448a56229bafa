//! One connection to one Kafka broker: a request written whole, with the
//! connection's next correlation id set in its header as it goes out, its
//! response read back by size prefix and checked against that id. A
//! connection carries one request at a time; the producer and the consumer
//! keep one per broker (the consumer one more to its group coordinator), and
//! one to a bootstrap broker for metadata ([`super::bootstrap`]).

use super::protocol::{self, Malformed};
use crate::transport::{self, Stream};
use bytes::{Bytes, BytesMut};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Responses larger than this are refused (the largest the producer asks
/// for is metadata of the topics it writes to).
const MAX_RESPONSE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(transparent)]
    Open(#[from] transport::TransportError),
    #[error("connection to broker {addr} lost: {source}")]
    Io { addr: String, source: io::Error },
    #[error("broker {addr} did not answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("broker {addr}: {source}")]
    Malformed { addr: String, source: Malformed },
    #[error("broker {addr} answered request {expected} with {got}")]
    Correlation { addr: String, expected: i32, got: i32 },
    #[error("broker {addr} speaks no {api} version iotpipe speaks ({ours})")]
    Unsupported { addr: String, api: &'static str, ours: String },
    #[error("no bootstrap broker to connect to")]
    NoBootstrap,
}

impl ConnError {
    /// The step of talking to the broker that failed, and what happened, for
    /// the error reporter and the probe (the step is not said twice).
    pub fn diagnosis(&self) -> crate::kafka::Diagnosis {
        use crate::kafka::Step;
        use transport::TransportError as T;
        let (step, detail) = match self {
            Self::Open(T::Tls { addr, source }) => (Step::Tls, format!("{addr}: {source}")),
            Self::Open(T::ServerName(_)) => (Step::Tls, self.to_string()),
            Self::Open(T::Tcp { addr, source }) => (Step::Tcp, format!("{addr}: {source}")),
            // A TLS alert after the handshake (TLS 1.3 refuses a missing
            // client certificate only then) is the handshake's failure.
            Self::Io { source, .. } if source.get_ref().is_some_and(|e| e.is::<rustls::Error>()) => {
                (Step::Tls, self.to_string())
            }
            Self::Io { .. } | Self::Timeout { .. } => (Step::Tcp, self.to_string()),
            _ => (Step::Other, self.to_string()),
        };
        crate::kafka::Diagnosis { step, detail }
    }
}

/// Which client a connection serves: the APIs checked when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Producer,
    Consumer,
    /// Metadata only (the reachability probe).
    Metadata,
    /// Metadata and CreateTopics (the bridge's topic creator).
    Admin,
}

/// The API versions both sides speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub produce: i16,
    pub init_producer_id: i16,
    pub create_topics: i16,
    /// Fetch: v7 and up carry fetch sessions.
    pub fetch: i16,
}

pub struct Conn {
    stream: Box<dyn Stream>,
    addr: String,
    client_id: Arc<str>,
    next_correlation: i32,
    timeout: Duration,
    pub versions: Versions,
}

impl Conn {
    /// Connect for the producer, and agree on API versions.
    pub async fn open(
        host: &str,
        port: u16,
        tls: Option<&Arc<rustls::ClientConfig>>,
        client_id: Arc<str>,
        timeout: Duration,
    ) -> Result<Self, ConnError> {
        let (mut conn, apis) = Self::connect(host, port, tls, client_id, timeout).await?;
        let produce = conn.require(&apis, protocol::API_PRODUCE, protocol::PRODUCE_VERSIONS, "Produce")?;
        let init_producer_id =
            conn.require(&apis, protocol::API_INIT_PRODUCER_ID, protocol::INIT_PRODUCER_ID_VERSIONS, "InitProducerId")?;
        conn.versions = Versions { produce, init_producer_id, ..conn.versions };
        Ok(conn)
    }

    /// Connect for `client`: the APIs it sends are checked, their versions agreed.
    pub async fn open_for(
        client: Client,
        host: &str,
        port: u16,
        tls: Option<&Arc<rustls::ClientConfig>>,
        client_id: Arc<str>,
        timeout: Duration,
    ) -> Result<Self, ConnError> {
        match client {
            Client::Producer => Self::open(host, port, tls, client_id, timeout).await,
            Client::Consumer => Self::open_consumer(host, port, tls, client_id, timeout).await,
            Client::Metadata => Ok(Self::connect(host, port, tls, client_id, timeout).await?.0),
            Client::Admin => {
                let (mut conn, apis) = Self::connect(host, port, tls, client_id, timeout).await?;
                let versions = super::admin::CREATE_TOPICS_VERSIONS;
                conn.versions.create_topics =
                    conn.require(&apis, super::admin::API_CREATE_TOPICS, versions, "CreateTopics")?;
                Ok(conn)
            }
        }
    }

    /// Connect for the consumer: every request it sends, each at the
    /// highest of its versions the broker speaks (Fetch is the one with a
    /// choice).
    pub async fn open_consumer(
        host: &str,
        port: u16,
        tls: Option<&Arc<rustls::ClientConfig>>,
        client_id: Arc<str>,
        timeout: Duration,
    ) -> Result<Self, ConnError> {
        let (mut conn, apis) = Self::connect(host, port, tls, client_id, timeout).await?;
        for (key, versions, name) in super::group_protocol::CONSUMER_APIS {
            let v = conn.require(&apis, key, versions, name)?;
            if key == super::group_protocol::API_FETCH {
                conn.versions.fetch = v;
            }
        }
        Ok(conn)
    }

    /// Connect, ask which API versions the broker speaks, and check Metadata v4.
    async fn connect(
        host: &str,
        port: u16,
        tls: Option<&Arc<rustls::ClientConfig>>,
        client_id: Arc<str>,
        timeout: Duration,
    ) -> Result<(Self, Vec<protocol::ApiRange>), ConnError> {
        let addr = format!("{host}:{port}");
        let stream = match tokio::time::timeout(timeout, transport::open(host, port, tls)).await {
            Ok(s) => s?,
            Err(_) => return Err(ConnError::Timeout { addr, secs: timeout.as_secs() }),
        };
        let placeholder = Versions { produce: 0, init_producer_id: 0, create_topics: 0, fetch: 0 };
        let mut conn = Self { stream, addr, client_id, next_correlation: 0, timeout, versions: placeholder };
        let client_id = conn.client_id.clone();
        let body = conn.call(&mut protocol::api_versions_request(&client_id)).await?;
        let (error, apis) = protocol::api_versions_response(&body).map_err(|e| conn.malformed(e))?;
        if error != 0 {
            return Err(conn.malformed(Malformed { what: "ApiVersions", detail: "error code set" }));
        }
        let v4 = (protocol::METADATA_VERSION, protocol::METADATA_VERSION);
        conn.require(&apis, protocol::API_METADATA, v4, "Metadata")?;
        Ok((conn, apis))
    }

    /// The highest version in `ours` the broker speaks, or why there is none.
    fn require(
        &self,
        apis: &[protocol::ApiRange],
        key: i16,
        ours: (i16, i16),
        api: &'static str,
    ) -> Result<i16, ConnError> {
        protocol::pick_version(apis, key, ours).ok_or_else(|| ConnError::Unsupported {
            addr: self.addr.clone(),
            api,
            ours: if ours.0 == ours.1 { format!("v{}", ours.0) } else { format!("v{}–v{}", ours.0, ours.1) },
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn malformed(&self, source: Malformed) -> ConnError {
        ConnError::Malformed { addr: self.addr.clone(), source }
    }

    /// The next correlation id.
    fn correlation(&mut self) -> i32 {
        self.next_correlation = self.next_correlation.wrapping_add(1) & i32::MAX;
        self.next_correlation
    }

    /// Send `request` (a finished [`protocol::Request`]: this sets its
    /// correlation id) and read its response body (after the correlation id).
    pub async fn call(&mut self, request: &mut [u8]) -> Result<Bytes, ConnError> {
        self.call_within(request, self.timeout).await
    }

    /// The same, with its own timeout (a JoinGroup waits for the whole group).
    pub async fn call_within(&mut self, request: &mut [u8], timeout: Duration) -> Result<Bytes, ConnError> {
        let id = self.correlation();
        protocol::set_correlation_id(request, id);
        let secs = timeout.as_secs();
        match tokio::time::timeout(timeout, self.exchange(id, request)).await {
            Ok(r) => r,
            Err(_) => Err(ConnError::Timeout { addr: self.addr.clone(), secs }),
        }
    }

    async fn exchange(&mut self, id: i32, request: &[u8]) -> Result<Bytes, ConnError> {
        let io = |addr: &str| {
            let addr = addr.to_string();
            move |source| ConnError::Io { addr, source }
        };
        self.stream.write_all(request).await.map_err(io(&self.addr))?;
        self.stream.flush().await.map_err(io(&self.addr))?;
        let size = self.stream.read_i32().await.map_err(io(&self.addr))?;
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if !(4..=MAX_RESPONSE).contains(&size) {
            return Err(self.malformed(Malformed { what: "response", detail: "size out of range" }));
        }
        let mut buf = BytesMut::zeroed(size);
        self.stream.read_exact(&mut buf).await.map_err(io(&self.addr))?;
        let got = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if got != id {
            return Err(ConnError::Correlation { addr: self.addr.clone(), expected: id, got });
        }
        Ok(buf.freeze().slice(4..))
    }
}
