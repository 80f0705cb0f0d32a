//! Error types. Each says which side failed (the client, the upstream server, or the
//! proxy's own setup), keeps its cause as a source error, and, for a session, says which
//! SQLSTATE the client's FATAL carries ([`SessionError::sqlstate`]).

use std::io;
use std::time::Duration;

use crate::protocol::framing::FrameError;
use crate::protocol::startup::StartupError;

/// Why one client session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Reading from or writing to the client failed.
    #[error("client I/O: {0}")]
    ClientIo(#[source] io::Error),
    /// The client sent a malformed message or one not allowed in this phase.
    #[error("client protocol violation: {0}")]
    ClientProtocol(#[source] ClientViolation),
    /// The client's TLS handshake failed.
    #[error("client TLS handshake: {0}")]
    ClientTls(#[source] io::Error),
    /// The proxy ended a session it could have gone on relaying (a limit, a login it does
    /// not pass on, a message it cannot check).
    #[error("{0}")]
    Refused(#[source] Refusal),
    /// The upstream server could not be reached.
    #[error("cannot connect to upstream {addr}: {cause}")]
    UpstreamConnect {
        /// The configured upstream address.
        addr: String,
        /// What went wrong.
        #[source]
        cause: ConnectError,
    },
    /// Reading from or writing to the upstream server failed.
    #[error("upstream I/O: {0}")]
    UpstreamIo(#[source] io::Error),
    /// The upstream server sent something the proxy cannot frame, or left mid-exchange.
    #[error("upstream protocol violation: {0}")]
    UpstreamProtocol(#[source] UpstreamViolation),
}

impl SessionError {
    /// The SQLSTATE of the FATAL the client gets for this error; `None` when the client's
    /// own connection failed and nothing can reach it.
    pub fn sqlstate(&self) -> Option<&'static str> {
        match self {
            SessionError::ClientIo(_) | SessionError::ClientTls(_) => None,
            SessionError::ClientProtocol(ClientViolation::Startup(
                StartupError::UnsupportedVersion { .. },
            )) => Some("0A000"),
            SessionError::ClientProtocol(_) => Some("08P01"),
            SessionError::Refused(refusal) => Some(refusal.sqlstate()),
            SessionError::UpstreamConnect { .. }
            | SessionError::UpstreamIo(_)
            | SessionError::UpstreamProtocol(_) => Some("08006"),
        }
    }

    /// Whether the upstream server's side failed.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self,
            SessionError::UpstreamConnect { .. }
                | SessionError::UpstreamIo(_)
                | SessionError::UpstreamProtocol(_)
        )
    }

    /// Whether the client's own connection failed (nothing more can be sent to it).
    pub fn is_client_gone(&self) -> bool {
        self.sqlstate().is_none()
    }
}

impl From<ClientViolation> for SessionError {
    fn from(e: ClientViolation) -> Self {
        SessionError::ClientProtocol(e)
    }
}

impl From<UpstreamViolation> for SessionError {
    fn from(e: UpstreamViolation) -> Self {
        SessionError::UpstreamProtocol(e)
    }
}

impl From<Refusal> for SessionError {
    fn from(e: Refusal) -> Self {
        SessionError::Refused(e)
    }
}

/// What the client did wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientViolation {
    /// The first packet's length is out of bounds.
    #[error("invalid startup packet: {0}")]
    StartupFrame(#[source] FrameError),
    /// The first packet's contents.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// A message's length is out of bounds.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// No startup packet arrived in time.
    #[error("no startup packet within {} s", .0.as_secs())]
    StartupTimeout(Duration),
    /// SSLRequest or GSSENCRequest after encryption was already negotiated.
    #[error("repeated encryption negotiation")]
    RepeatedNegotiation,
    /// Bytes sent behind an SSLRequest, before the TLS handshake (CVE-2021-23214).
    #[error("received unencrypted data after SSL request")]
    DataAfterSslRequest,
}

/// What the upstream server did wrong.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamViolation {
    /// A message's length is out of bounds.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The server closed the connection before the session was established.
    #[error("server closed the connection during authentication")]
    ClosedDuringAuthentication,
    /// The server closed the connection without a FATAL of its own.
    #[error("server closed the connection unexpectedly")]
    ClosedUnexpectedly,
    /// The server refused the connection before authentication (its FATAL's message).
    #[error("server refused the connection: {0}")]
    Refused(String),
    /// The server sent more than this many bytes between AuthenticationOk and its first
    /// ReadyForQuery.
    #[error("server sent more than {0} bytes before its first ReadyForQuery")]
    TooMuchBeforeReady(usize),
}

/// Why the proxy ended a session itself.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// `max_connections` sessions are open.
    #[error("sorry, too many clients already (fencegate's max_connections)")]
    TooManyClients,
    /// The server let this login in without a password, which the proxy does not pass on
    /// to this client (`upstream_auth`).
    #[error("the server accepted this login without a password (trust or peer authentication), which it grants because of where fencegate's connection comes from, not who this client is; fencegate lets such logins through only to clients on its own host's loopback, over TCP; configure password or scram-sha-256 authentication for connections from fencegate, or set upstream_auth = any")]
    PasswordlessLogin,
    /// The budget for unfinished client messages (`max_buffered_bytes`) is used up.
    #[error("out of memory for unfinished messages: the {buffered} bytes buffered of this session's message do not fit in what remains of max_buffered_bytes ({limit} bytes for all sessions)")]
    OutOfMemory {
        /// Bytes of the unfinished message buffered in this session.
        buffered: usize,
        /// The budget's limit.
        limit: usize,
    },
    /// The server the login reached does not match `target_session_attrs`.
    #[error("server {host} is {role}, which target_session_attrs = {attrs} does not take; the next connection tries the other hosts first")]
    WrongServerRole {
        /// The host.
        host: String,
        /// What it reported (`standby`, `primary-read-only`, `primary`).
        role: &'static str,
        /// The setting.
        attrs: &'static str,
    },
    /// The server does not report `in_hot_standby` (PostgreSQL before 14), so whether it
    /// matches `target_session_attrs` is unknown.
    #[error("server {host} does not report in_hot_standby and did not answer pg_is_in_recovery(), so fencegate cannot tell whether it matches target_session_attrs = {attrs}; set target_session_attrs = any for this server")]
    RoleNotReported {
        /// The host.
        host: String,
        /// The setting.
        attrs: &'static str,
    },
    /// `synchronous_replication = require` and the primary's commits do not wait for a
    /// synchronous standby (or it did not say).
    #[error("server {host} is a primary whose commits do not wait for a synchronous standby (synchronous_standby_names empty or synchronous_commit off/local), and synchronous_replication = require: a failover could lose admitted fencing tokens")]
    NotSynchronous {
        /// The host.
        host: String,
    },
    /// A session hook would not let a message through (see
    /// [`crate::session::hook::Injector::abort_session`]).
    #[error("{reason}")]
    ByHook {
        /// The SQLSTATE the hook chose.
        sqlstate: &'static str,
        /// The message the client gets.
        reason: &'static str,
    },
}

impl Refusal {
    /// The SQLSTATE the client's FATAL carries.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Refusal::TooManyClients => "53300",
            Refusal::PasswordlessLogin => "28000",
            Refusal::OutOfMemory { .. } => "53200",
            Refusal::WrongServerRole { .. }
            | Refusal::RoleNotReported { .. }
            | Refusal::NotSynchronous { .. } => "08001",
            Refusal::ByHook { sqlstate, .. } => sqlstate,
        }
    }
}

/// Why a connection to the upstream server failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Connecting, or the SSLRequest exchange.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// No connection within `connect_timeout`.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake with the server.
    #[error("TLS handshake: {0}")]
    Tls(#[source] io::Error),
    /// The server answered N to SSLRequest and `upstream_tls` requires TLS.
    #[error("server does not support TLS (upstream_tls requires it)")]
    TlsUnsupported,
    /// The server answered SSLRequest with neither S nor N.
    #[error("unexpected answer {:?} to SSLRequest", char::from(*.0))]
    BadSslAnswer(u8),
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A certificate or key file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("no PEM certificate in {}", .0.display())]
    NoCertificate(std::path::PathBuf),
    /// The file holds no PEM private key.
    #[error("no PEM private key in {}", .0.display())]
    NoKey(std::path::PathBuf),
    /// rustls refused the configuration (protocol versions, certificate and key).
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// A certificate of `upstream_ca` is not usable as a trust anchor.
    #[error("bad CA certificate: {0}")]
    BadCa(#[source] rustls::Error),
    /// `upstream_tls = verify-full` without `upstream_ca`.
    #[error("verify-full needs upstream_ca")]
    VerifyFullNeedsCa,
    /// The upstream host is not a valid TLS server name.
    #[error("upstream host name: {0}")]
    HostName(#[from] rustls::pki_types::InvalidDnsNameError),
    /// TLS was asked for towards a Unix-domain socket.
    #[error("PostgreSQL does not use TLS over Unix-domain sockets")]
    OverUnixSocket,
}

/// Why the proxy could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS certificate, key or CA file could not be loaded.
    #[error("TLS setup: {0}")]
    TlsSetup(#[from] TlsSetupError),
    /// Accepting connections failed.
    #[error("accept: {0}")]
    Accept(#[source] io::Error),
    /// The session threads could not be started.
    #[error("starting session threads: {0}")]
    Workers(#[source] io::Error),
    /// The upstream address is neither `host:port` nor a socket directory.
    #[error("invalid upstream {0:?}: expected host:port, or a socket directory /dir or /dir:port")]
    InvalidUpstream(String),
    /// The client listener could not bind its address.
    #[error("cannot listen on {0}")]
    Listen(std::net::SocketAddr, #[source] io::Error),
    /// The metrics endpoint could not listen on its address.
    #[error("cannot listen for metrics on {0}")]
    MetricsListen(std::net::SocketAddr, #[source] io::Error),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn each_cause_chooses_its_sqlstate() {
        let io = || io::Error::new(io::ErrorKind::BrokenPipe, "gone");
        let cases: Vec<(SessionError, Option<&str>)> = vec![
            (SessionError::ClientIo(io()), None),
            (SessionError::ClientTls(io()), None),
            (ClientViolation::RepeatedNegotiation.into(), Some("08P01")),
            (
                ClientViolation::Startup(StartupError::UnsupportedVersion { major: 4, minor: 0 })
                    .into(),
                Some("0A000"),
            ),
            (Refusal::TooManyClients.into(), Some("53300")),
            (Refusal::PasswordlessLogin.into(), Some("28000")),
            (
                Refusal::OutOfMemory {
                    buffered: 1,
                    limit: 1,
                }
                .into(),
                Some("53200"),
            ),
            (
                Refusal::ByHook {
                    sqlstate: "XX000",
                    reason: "r",
                }
                .into(),
                Some("XX000"),
            ),
            (UpstreamViolation::ClosedUnexpectedly.into(), Some("08006")),
            (SessionError::UpstreamIo(io()), Some("08006")),
        ];
        for (err, want) in cases {
            assert_eq!(err.sqlstate(), want, "{err}");
        }
    }

    #[test]
    fn the_cause_stays_reachable() {
        let err = SessionError::UpstreamConnect {
            addr: "127.0.0.1:5432".into(),
            cause: ConnectError::Io(io::Error::new(io::ErrorKind::ConnectionRefused, "no")),
        };
        let cause = err.source().and_then(|e| e.downcast_ref::<ConnectError>());
        let Some(ConnectError::Io(io)) = cause else {
            panic!("the connect error is not the source: {cause:?}");
        };
        assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
    }
}
