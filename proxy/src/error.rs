//! Error types. Each says which side failed: the client, the upstream server, or the
//! proxy's own setup, and keeps its cause.

use std::io;

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
    ClientProtocol(String),
    /// The client's TLS handshake failed.
    #[error("client TLS handshake: {0}")]
    ClientTls(#[source] io::Error),
    /// The proxy refused to relay a message it could not handle safely.
    #[error("{0}")]
    Refused(String),
    /// The proxy's memory for unfinished client messages is used up
    /// (`max_buffered_bytes`).
    #[error("{0}")]
    OutOfMemory(String),
    /// The upstream server could not be reached.
    #[error("cannot connect to upstream {addr}: {cause}")]
    UpstreamConnect {
        /// The configured upstream address.
        addr: String,
        /// What went wrong, in words (I/O error, timeout, TLS refusal).
        cause: String,
    },
    /// Reading from or writing to the upstream server failed.
    #[error("upstream I/O: {0}")]
    UpstreamIo(#[source] io::Error),
    /// The upstream server sent something the proxy cannot frame.
    #[error("upstream protocol violation: {0}")]
    UpstreamProtocol(String),
}

impl SessionError {
    /// A client framing error.
    pub fn client_frame(e: FrameError) -> Self {
        SessionError::ClientProtocol(e.to_string())
    }

    /// An upstream framing error.
    pub fn upstream_frame(e: FrameError) -> Self {
        SessionError::UpstreamProtocol(e.to_string())
    }
}

impl From<StartupError> for SessionError {
    fn from(e: StartupError) -> Self {
        SessionError::ClientProtocol(e.to_string())
    }
}

/// Why the proxy could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS certificate, key or CA file could not be loaded.
    #[error("TLS setup: {0}")]
    TlsSetup(String),
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
