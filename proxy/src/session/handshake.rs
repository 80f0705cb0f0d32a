//! The startup phase, as straight-line async code: SSL/GSS negotiation with the client, then
//! (after the session connects upstream) relaying authentication until the server's first
//! ReadyForQuery. Passwords and SASL exchanges are forwarded as opaque bytes: the proxy never
//! learns a secret, so every method the server offers works (trust, password, md5,
//! SCRAM-SHA-256; GSS/SSPI bytes pass the same way).

use bytes::BytesMut;
use tokio_rustls::TlsAcceptor;

use super::conn::{Conn, Read, ReadError};
use crate::config::{MAX_AUTH_MESSAGE, MAX_SERVER_MESSAGE, MAX_STARTUP_PACKET};
use crate::error::{ClientViolation, Refusal, SessionError, UpstreamViolation};
use crate::protocol::backend::{self as be, TxStatus};
use crate::protocol::build::{error_response, Severity};
use crate::protocol::framing::peek_tagged;
use crate::protocol::frontend as fe;
use crate::protocol::startup::{self, StartupMessage, StartupPacket};
use crate::stream::Stream;

/// How a client opened its connection.
#[derive(Debug)]
pub enum Opening {
    /// A session: the raw packet (forwarded upstream byte for byte) and its parsed view.
    Startup {
        /// The StartupMessage exactly as the client sent it.
        packet: BytesMut,
        /// Parsed parameters.
        message: StartupMessage,
    },
    /// A CancelRequest, raw, to forward upstream.
    Cancel(BytesMut),
    /// The client left before sending a startup packet.
    Gone,
}

/// Sends a FATAL ErrorResponse with the error's SQLSTATE (best effort: the client may be
/// gone) and returns the error.
pub async fn fatal(client: &mut Conn, err: SessionError) -> SessionError {
    if let Some(sqlstate) = err.sqlstate() {
        let msg = error_response(Severity::Fatal, sqlstate, &err.to_string(), None, None);
        let _ = client.write_flush(&msg).await;
    }
    err
}

/// Negotiates encryption and reads the StartupMessage or CancelRequest.
pub async fn negotiate(
    tcp: tokio::net::TcpStream,
    tls: Option<&TlsAcceptor>,
) -> Result<(Conn, Opening), SessionError> {
    let mut client = Conn::new(Stream::Plain(tcp));
    let (mut ssl_answered, mut gss_answered) = (false, false);
    loop {
        let packet = match client.read_untagged(MAX_STARTUP_PACKET).await {
            Ok(Read::Frame(p)) => p,
            Ok(Read::Closed | Read::Truncated) => return Ok((client, Opening::Gone)),
            Err(ReadError::Io(e)) => return Err(SessionError::ClientIo(e)),
            Err(ReadError::Frame(e)) => {
                let err = ClientViolation::StartupFrame(e).into();
                return Err(fatal(&mut client, err).await);
            }
        };
        let parsed = match startup::parse(&packet) {
            Ok(p) => p,
            Err(e) => return Err(fatal(&mut client, ClientViolation::from(e).into()).await),
        };
        match parsed {
            StartupPacket::SslRequest if !ssl_answered && !client.stream.is_tls() => {
                ssl_answered = true;
                client = answer_ssl(client, tls).await?;
            }
            StartupPacket::GssEncRequest if !gss_answered && !client.stream.is_tls() => {
                gss_answered = true;
                client
                    .write_flush(b"N")
                    .await
                    .map_err(SessionError::ClientIo)?;
            }
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                let err = ClientViolation::RepeatedNegotiation.into();
                return Err(fatal(&mut client, err).await);
            }
            StartupPacket::Cancel { .. } => return Ok((client, Opening::Cancel(packet))),
            StartupPacket::Startup(message) => {
                return Ok((client, Opening::Startup { packet, message }))
            }
        }
    }
}

async fn answer_ssl(mut client: Conn, tls: Option<&TlsAcceptor>) -> Result<Conn, SessionError> {
    let Some(acceptor) = tls else {
        client
            .write_flush(b"N")
            .await
            .map_err(SessionError::ClientIo)?;
        return Ok(client);
    };
    if !client.rbuf.is_empty() {
        // Bytes sent before the handshake could be injected by a man in the middle
        // (CVE-2021-23214): refuse them rather than treat them as encrypted traffic.
        let err = ClientViolation::DataAfterSslRequest.into();
        return Err(fatal(&mut client, err).await);
    }
    client
        .write_flush(b"S")
        .await
        .map_err(SessionError::ClientIo)?;
    let Stream::Plain(tcp) = client.stream else {
        return Err(ClientViolation::RepeatedNegotiation.into());
    };
    let tls = acceptor
        .accept(tcp)
        .await
        .map_err(SessionError::ClientTls)?;
    Ok(Conn::new(Stream::ServerTls(Box::new(tls))))
}

/// A session the server has accepted.
pub struct Established {
    /// The transaction status of the server's first ReadyForQuery.
    pub status: TxStatus,
    /// Every ParameterStatus the server sent before it, in order.
    pub parameters: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Relays authentication between client and server until the server's first
/// ReadyForQuery. `Ok(None)` when the exchange ended without a session (authentication
/// failed with a FATAL the client has already received, or the client left).
///
/// With `require_password`, an AuthenticationOk that no password or SASL exchange came
/// before (the server trusted the proxy's connection: `trust`, `peer`, `ident`) is not
/// relayed: the client gets a FATAL 28000 instead, since every client would get in that
/// way under any role name (the caller decides, by the client's address and the upstream:
/// [`crate::config::Config::requires_upstream_auth`]).
///
/// Only authentication responses (`p`) are forwarded in this phase. A client that pipelines
/// other messages behind its startup packet is simply not read further until the session
/// is established; the relay then takes those messages from the buffer like any others, so
/// they pass the reply queue and the fencing hook.
pub async fn authenticate(
    client: &mut Conn,
    server: &mut Conn,
    require_password: bool,
) -> Result<Option<Established>, SessionError> {
    let mut client_paused = forward_auth_responses(client, server).await?;
    let mut challenged = false;
    let mut parameters = Vec::new();
    loop {
        tokio::select! {
            read = server.read_tagged(MAX_SERVER_MESSAGE) => {
                let frame = match read {
                    Ok(Read::Frame(f)) => f,
                    Ok(Read::Closed | Read::Truncated) => {
                        let err = UpstreamViolation::ClosedDuringAuthentication.into();
                        return Err(fatal(client, err).await);
                    }
                    Err(ReadError::Io(e)) => {
                        return Err(fatal(client, SessionError::UpstreamIo(e)).await)
                    }
                    Err(ReadError::Frame(e)) => {
                        return Err(fatal(client, UpstreamViolation::from(e).into()).await)
                    }
                };
                if frame[0] == be::AUTHENTICATION {
                    match be::auth_code(&frame[5..]) {
                        Some(be::AUTH_OK) if require_password && !challenged => {
                            return Err(fatal(client, Refusal::PasswordlessLogin.into()).await);
                        }
                        Some(be::AUTH_OK) => {}
                        _ => challenged = true,
                    }
                }
                client.write_flush(&frame).await.map_err(SessionError::ClientIo)?;
                let body = &frame[5..];
                match frame[0] {
                    be::READY_FOR_QUERY => return Ok(Some(Established {
                        status: TxStatus::from_ready_body(body).unwrap_or_default(),
                        parameters,
                    })),
                    be::PARAMETER_STATUS => {
                        if let Some((name, value)) = be::parameter_status(body) {
                            parameters.push((name.to_vec(), value.to_vec()));
                        }
                    }
                    be::ERROR_RESPONSE if be::is_fatal(body) => return Ok(None),
                    _ => {}
                }
            }
            read = client.fill(), if !client_paused => {
                if read.map_err(SessionError::ClientIo)? == 0 {
                    return Ok(None);
                }
                client_paused = forward_auth_responses(client, server).await?;
            }
        }
    }
}

/// Forwards the complete authentication responses at the front of the client's buffer.
/// Returns true when the next buffered message is something else (the client pipelined
/// its first queries): the caller stops reading the client until the session is up.
async fn forward_auth_responses(
    client: &mut Conn,
    server: &mut Conn,
) -> Result<bool, SessionError> {
    loop {
        match client.rbuf.first() {
            None => return Ok(false),
            Some(&tag) if tag != fe::PASSWORD => return Ok(true),
            Some(_) => {}
        }
        let info = match peek_tagged(&client.rbuf, MAX_AUTH_MESSAGE) {
            Ok(Some(info)) => info,
            Ok(None) => return Ok(false),
            Err(e) => return Err(fatal(client, ClientViolation::from(e).into()).await),
        };
        let frame = client.rbuf.split_to(info.total_len);
        server
            .write_flush(&frame)
            .await
            .map_err(SessionError::UpstreamIo)?;
    }
}
