//! Connecting to the upstream PostgreSQL server: TCP with a timeout, `TCP_NODELAY`, the
//! optional SSLRequest exchange and TLS handshake, or a Unix-domain socket; and forwarding
//! of CancelRequests.

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::config::{Config, UpstreamAddr, UpstreamTls};
use crate::error::{ConnectError, ServerError, SessionError, TlsSetupError};
use crate::protocol::startup::SSL_REQUEST;
use crate::stream::Stream;

/// How to reach the upstream server; built once, shared by all sessions.
pub struct Upstream {
    target: UpstreamAddr,
    /// The address as shown in messages: `host:port` or the socket file's path.
    addr: String,
    mode: UpstreamTls,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    timeout: Duration,
}

impl Upstream {
    /// Prepares connections as configured.
    pub fn new(config: &Config) -> Result<Upstream, ServerError> {
        let target = config
            .upstream_addr()
            .ok_or_else(|| ServerError::InvalidUpstream(config.upstream.clone()))?;
        let tls = match (&target, config.upstream_tls) {
            (UpstreamAddr::Tcp(_), _) => crate::tls::connector(config)?,
            (UpstreamAddr::Unix(_), UpstreamTls::Disable | UpstreamTls::Prefer) => None,
            (UpstreamAddr::Unix(_), _) => return Err(TlsSetupError::OverUnixSocket.into()),
        };
        let addr = match &target {
            UpstreamAddr::Tcp(addr) => addr.clone(),
            UpstreamAddr::Unix(path) => path.display().to_string(),
        };
        Ok(Upstream {
            target,
            addr,
            mode: config.upstream_tls,
            tls,
            timeout: config.connect_timeout,
        })
    }

    /// The configured address, for messages.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn fail(&self, cause: impl Into<ConnectError>) -> SessionError {
        SessionError::UpstreamConnect {
            addr: self.addr.clone(),
            cause: cause.into(),
        }
    }

    /// Opens a connection, negotiating TLS as configured.
    pub async fn connect(&self) -> Result<Stream, SessionError> {
        match tokio::time::timeout(self.timeout, self.connect_inner()).await {
            Ok(result) => result,
            Err(_) => Err(self.fail(ConnectError::Timeout(self.timeout))),
        }
    }

    async fn connect_inner(&self) -> Result<Stream, SessionError> {
        let addr = match &self.target {
            UpstreamAddr::Tcp(addr) => addr,
            UpstreamAddr::Unix(path) => {
                // As libpq: no SSLRequest over a Unix-domain socket (PostgreSQL would
                // answer N); `prefer` means plain, stronger modes are refused by validate.
                let unix = UnixStream::connect(path).await.map_err(|e| self.fail(e))?;
                return Ok(Stream::Unix(unix));
            }
        };
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| self.fail(e))?;
        crate::stream::tune_socket(&tcp).map_err(|e| self.fail(e))?;
        let Some((connector, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8i32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
        tcp.write_all(&request).await.map_err(|e| self.fail(e))?;
        // Exactly one byte of answer: anything after it belongs to the TLS handshake.
        let answer = tcp.read_u8().await.map_err(|e| self.fail(e))?;
        match (answer, self.mode) {
            (b'S', _) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| self.fail(ConnectError::Tls(e)))?;
                Ok(Stream::ClientTls(Box::new(tls)))
            }
            (b'N', UpstreamTls::Prefer) => Ok(Stream::Plain(tcp)),
            (b'N', _) => Err(self.fail(ConnectError::TlsUnsupported)),
            (other, _) => Err(self.fail(ConnectError::BadSslAnswer(other))),
        }
    }

    /// Forwards a client's CancelRequest packet unchanged to the server, which identifies the
    /// backend by the key it issued (the proxy passes BackendKeyData through untouched).
    pub async fn forward_cancel(&self, packet: &[u8]) -> Result<(), SessionError> {
        let mut stream = self.connect().await?;
        stream
            .write_all(packet)
            .await
            .map_err(SessionError::UpstreamIo)?;
        stream.flush().await.map_err(SessionError::UpstreamIo)?;
        // The server closes the connection when done; wait for that, briefly.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut sink)).await;
        Ok(())
    }
}
