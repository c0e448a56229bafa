//! The byte stream under the MQTT session and the native Kafka producer:
//! TCP, or TLS over TCP (rustls).

use std::io;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connected stream to a broker (MQTT or Kafka).
pub trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Stream for T {}

/// Why the stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TCP connection to {addr} failed: {source}")]
    Tcp { addr: String, source: io::Error },
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls { addr: String, source: io::Error },
}

/// Connect to `host:port` (every address the name resolves to, in turn),
/// with Nagle's algorithm off: the session batches what it writes itself.
pub async fn open(
    host: &str,
    port: u16,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Stream>, TransportError> {
    let addr = format!("{host}:{port}");
    let tcp =
        TcpStream::connect((host, port)).await.map_err(|source| TransportError::Tcp { addr: addr.clone(), source })?;
    tcp.set_nodelay(true).map_err(|source| TransportError::Tcp { addr: addr.clone(), source })?;
    let Some(config) = tls else { return Ok(Box::new(tcp)) };
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|_| TransportError::ServerName(host.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|source| TransportError::Tls { addr, source })?;
    Ok(Box::new(stream))
}
