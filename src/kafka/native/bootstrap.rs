//! The connection the native clients ask for metadata (and the consumer
//! for its group coordinator) on: to one of the bootstrap brokers, opened
//! when needed, each time to the next broker of the list (round the list). A
//! failed call drops it, so the next call tries the next broker.

use super::conn::{Client, Conn, ConnError, Versions};
use super::protocol::Malformed;
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;

pub struct Bootstrap {
    brokers: Vec<(String, u16)>,
    /// The broker the next connection goes to (modulo the list's length).
    next: usize,
    conn: Option<Conn>,
    client: Client,
    tls: Option<Arc<rustls::ClientConfig>>,
    client_id: Arc<str>,
    timeout: Duration,
}

impl Bootstrap {
    pub fn new(
        brokers: Vec<(String, u16)>,
        client: Client,
        tls: Option<Arc<rustls::ClientConfig>>,
        client_id: Arc<str>,
        timeout: Duration,
    ) -> Self {
        Self { brokers, next: 0, conn: None, client, tls, client_id, timeout }
    }

    /// Send the request `build` makes for the connection (its client id, the
    /// versions agreed) and `parse` the answer's body (with those versions).
    /// Opens a connection when there is none; any error (connecting, the
    /// call, an answer that does not parse) drops it.
    pub async fn call<T>(
        &mut self,
        build: impl FnOnce(&Conn) -> BytesMut,
        parse: impl FnOnce(&[u8], Versions) -> Result<T, Malformed>,
    ) -> Result<T, ConnError> {
        let result = self.exchange(build, parse).await;
        if result.is_err() {
            self.disconnect();
        }
        result
    }

    /// Drop the connection (if any): the next call connects to the next broker.
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    async fn exchange<T>(
        &mut self,
        build: impl FnOnce(&Conn) -> BytesMut,
        parse: impl FnOnce(&[u8], Versions) -> Result<T, Malformed>,
    ) -> Result<T, ConnError> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => {
                let Some((host, port)) = self.brokers.get(self.next % self.brokers.len().max(1)) else {
                    return Err(ConnError::NoBootstrap);
                };
                self.next = self.next.wrapping_add(1);
                let conn =
                    Conn::open_for(self.client, host, *port, self.tls.as_ref(), self.client_id.clone(), self.timeout)
                        .await?;
                self.conn.insert(conn)
            }
        };
        let body = conn.call(&mut build(conn)).await?;
        parse(&body, conn.versions).map_err(|e| conn.malformed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::native::protocol::{self, API_INIT_PRODUCER_ID, API_METADATA, API_PRODUCE, API_VERSIONS};
    use bytes::BufMut;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A broker on loopback answering ApiVersions and an empty Metadata;
    /// it notes (connection, api key, correlation id) of every request, and
    /// answers the `wrong`-th request with another correlation id.
    async fn broker(wrong: usize) -> (u16, Arc<Mutex<Vec<(usize, i16, i32)>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let log = log.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok(size) = sock.read_i32().await else { return };
                        let mut req = vec![0u8; usize::try_from(size).unwrap_or(0)];
                        if sock.read_exact(&mut req).await.is_err() {
                            return;
                        }
                        let api = i16::from_be_bytes([req[0], req[1]]);
                        let id = i32::from_be_bytes([req[4], req[5], req[6], req[7]]);
                        let count = {
                            let mut l = log.lock().expect("lock");
                            l.push((n, api, id));
                            l.len()
                        };
                        let mut out = BytesMut::new();
                        out.put_i32(if count == wrong { id + 100 } else { id });
                        if api == API_VERSIONS {
                            out.put_i16(0);
                            out.put_i32(3);
                            for (k, max) in [(API_PRODUCE, 8), (API_METADATA, 4), (API_INIT_PRODUCER_ID, 4)] {
                                out.put_i16(k);
                                out.put_i16(0);
                                out.put_i16(max);
                            }
                        } else {
                            // Metadata v4: throttle, no brokers, null cluster id, controller, no topics.
                            out.put_i32(0);
                            out.put_i32(0);
                            out.put_i16(-1);
                            out.put_i32(-1);
                            out.put_i32(0);
                        }
                        let mut framed = BytesMut::new();
                        framed.put_i32(out.len() as i32);
                        framed.put_slice(&out);
                        if sock.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, seen)
    }

    async fn metadata(b: &mut Bootstrap) -> Result<protocol::Metadata, ConnError> {
        b.call(
            |c| protocol::metadata_request(c.client_id(), &["t"], false),
            |body, _| protocol::metadata_response(body),
        )
        .await
    }

    #[tokio::test]
    async fn correlation_ids_are_set_per_connection_and_a_failure_moves_to_the_next_broker() {
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr").port();
        // The 4th request (the second connection's first) is answered with the wrong id.
        let (port, seen) = broker(4).await;
        let brokers = vec![("127.0.0.1".to_string(), closed), ("127.0.0.1".to_string(), port)];
        let mut b = Bootstrap::new(brokers, Client::Producer, None, Arc::from("test"), Duration::from_secs(5));
        assert!(matches!(metadata(&mut b).await, Err(ConnError::Open(_))), "the first broker is down");
        assert!(metadata(&mut b).await.is_ok(), "the second answers");
        assert!(metadata(&mut b).await.is_ok(), "on the same connection");
        b.disconnect();
        // Back to the first broker (down), then the second on a new connection.
        assert!(metadata(&mut b).await.is_err());
        assert!(
            matches!(metadata(&mut b).await, Err(ConnError::Correlation { expected: 1, got: 101, .. })),
            "an answer to another request is refused"
        );
        assert!(metadata(&mut b).await.is_err(), "the first broker again");
        assert!(metadata(&mut b).await.is_ok());
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(
            seen,
            vec![
                (0, API_VERSIONS, 1),
                (0, API_METADATA, 2),
                (0, API_METADATA, 3),
                (1, API_VERSIONS, 1),
                (2, API_VERSIONS, 1),
                (2, API_METADATA, 2),
            ]
        );
    }
}
