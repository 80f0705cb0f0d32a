//! Connecting to the upstream PostgreSQL servers: the host list in the order a session
//! tries it ([`hosts`]), TCP with a timeout and `TCP_NODELAY`, the optional SSLRequest
//! exchange and TLS handshake, or a Unix-domain socket; and forwarding of CancelRequests.
//!
//! Which host a session keeps is decided after authentication, by the role its server
//! reports (`session::handshake`); this module only opens connections and keeps count.

pub mod hosts;

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use self::hosts::{Host, HostTable};
use crate::config::{Config, UpstreamAddr, UpstreamTls};
use crate::error::{ConnectError, ServerError, SessionError, TlsSetupError};
use crate::protocol::startup::SSL_REQUEST;
use crate::stream::Stream;

/// How to reach the upstream servers; built once, shared by all sessions.
pub struct Upstream {
    table: Arc<HostTable>,
    mode: UpstreamTls,
    tls: Option<TlsConnector>,
    timeout: Duration,
}

impl Upstream {
    /// Prepares connections as configured.
    pub fn new(config: &Config) -> Result<Upstream, ServerError> {
        let hosts = config
            .upstream_hosts()
            .map_err(|_| ServerError::InvalidUpstream(config.upstream.clone()))?;
        let any_tcp = hosts.iter().any(|h| matches!(h, UpstreamAddr::Tcp(_)));
        let tls = if any_tcp {
            crate::tls::connector(config)?
        } else {
            None
        };
        for host in &hosts {
            match host {
                UpstreamAddr::Tcp(_) if tls.is_some() => {
                    server_name(host)?;
                }
                UpstreamAddr::Unix(_)
                    if matches!(
                        config.upstream_tls,
                        UpstreamTls::Require | UpstreamTls::VerifyFull
                    ) =>
                {
                    return Err(TlsSetupError::OverUnixSocket.into())
                }
                _ => {}
            }
        }
        Ok(Upstream {
            table: Arc::new(HostTable::new(hosts, config.target_session_attrs)),
            mode: config.upstream_tls,
            tls,
            timeout: config.connect_timeout,
        })
    }

    /// The hosts and what is known of them.
    pub fn table(&self) -> &Arc<HostTable> {
        &self.table
    }

    /// Opens a connection to `host`, negotiating TLS as configured.
    pub async fn connect(&self, host: &Host) -> Result<Stream, SessionError> {
        let fail = |cause: ConnectError| SessionError::UpstreamConnect {
            addr: host.label.clone(),
            cause,
        };
        match tokio::time::timeout(self.timeout, self.connect_inner(host)).await {
            Ok(result) => result.map_err(fail),
            Err(_) => Err(fail(ConnectError::Timeout(self.timeout))),
        }
    }

    async fn connect_inner(&self, host: &Host) -> Result<Stream, ConnectError> {
        let addr = match &host.addr {
            UpstreamAddr::Tcp(addr) => addr,
            UpstreamAddr::Unix(path) => {
                // As libpq: no SSLRequest over a Unix-domain socket (PostgreSQL would
                // answer N); `prefer` means plain, stronger modes are refused by validate.
                return Ok(Stream::Unix(UnixStream::connect(path).await?));
            }
        };
        // A name is resolved again at every connect (DNS failover), as libpq does.
        let mut tcp = TcpStream::connect(addr.as_str()).await?;
        crate::stream::tune_socket(&tcp)?;
        let Some(connector) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8i32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
        tcp.write_all(&request).await?;
        // Exactly one byte of answer: anything after it belongs to the TLS handshake.
        let answer = tcp.read_u8().await?;
        match (answer, self.mode) {
            (b'S', _) => {
                let name = server_name(&host.addr).map_err(|e| {
                    ConnectError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                })?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(ConnectError::Tls)?;
                Ok(Stream::ClientTls(Box::new(tls)))
            }
            (b'N', UpstreamTls::Prefer) => Ok(Stream::Plain(tcp)),
            (b'N', _) => Err(ConnectError::TlsUnsupported),
            (other, _) => Err(ConnectError::BadSslAnswer(other)),
        }
    }

    /// Forwards a client's CancelRequest packet unchanged. The key names a backend on one
    /// of the hosts, and which one is not recorded: the packet goes to every host, and a
    /// server that has no backend with that key ignores it (as PostgreSQL does for any
    /// unknown key).
    pub async fn forward_cancel(&self, packet: &[u8]) -> Result<(), SessionError> {
        let sends = self
            .table
            .all()
            .iter()
            .map(|host| self.cancel_on(host, packet));
        let results = futures_util::future::join_all(sends).await;
        match results.into_iter().find_map(Result::err) {
            Some(e) if self.table.all().len() == 1 => Err(e),
            _ => Ok(()),
        }
    }

    async fn cancel_on(&self, host: &Host, packet: &[u8]) -> Result<(), SessionError> {
        let mut stream = self.connect(host).await?;
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

/// The TLS server name for a TCP host (its name or address, without port or brackets).
fn server_name(host: &UpstreamAddr) -> Result<ServerName<'static>, TlsSetupError> {
    let name = host.host().unwrap_or_default().to_string();
    ServerName::try_from(name).map_err(TlsSetupError::from)
}
