//! The startup phase, as straight-line async code: SSL/GSS negotiation with the client, then
//! (after the session connects upstream) relaying authentication until the server's first
//! ReadyForQuery. Passwords and SASL exchanges are forwarded as opaque bytes: the proxy never
//! learns a secret, so every method the server offers works (trust, password, md5,
//! SCRAM-SHA-256; GSS/SSPI bytes pass the same way).

use bytes::BytesMut;
use tokio_rustls::TlsAcceptor;

use super::conn::{Conn, Read, ReadError};
use super::role_query::{ask_role, ask_synchronous};
use crate::config::{
    ServerRole, SynchronousReplication, TargetSessionAttrs, MAX_AUTH_MESSAGE, MAX_SERVER_MESSAGE,
    MAX_STARTUP_PACKET,
};
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
    /// The server's role, from `in_hot_standby` and `default_transaction_read_only`.
    pub role: Option<ServerRole>,
    /// Whether a primary's commits wait for a synchronous standby, when it was asked.
    pub synchronous: Option<bool>,
}

/// How the login on one host ended.
pub enum Login {
    /// The session is up and its server matches `target_session_attrs`.
    Established(Established),
    /// The exchange ended without a session; the client has its FATAL or has left.
    Ended,
    /// The server refused the connection before asking for anything (starting up,
    /// shutting down, not accepting connections, too many clients): nothing reached the
    /// client, another host may be tried.
    TryNext(SessionError),
    /// The login succeeded but the server does not match `target_session_attrs` (or does
    /// not say whether it does): the client has had nothing after its last
    /// authentication response and gets the refusal from the caller.
    WrongRole(Option<ServerRole>),
    /// The server is a primary whose commits do not wait for a synchronous standby (or it
    /// did not say), and [`Wanted::synchronous`] requires it; the client has had nothing
    /// after its last authentication response. Holds the role the server reported.
    NotSynchronous(Option<ServerRole>),
}

/// What the caller wants of the login.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    /// Refuse a login the server grants without a password exchange
    /// ([`crate::config::Config::requires_upstream_auth`]).
    pub require_password: bool,
    /// Which servers the session may stay on.
    pub attrs: TargetSessionAttrs,
    /// Whether another host is left to try after this one.
    pub more_hosts: bool,
    /// Ask a primary whether its commits wait for a synchronous standby (`None`: do not
    /// ask); with `require`, a primary that answers no, or nothing, is refused.
    pub synchronous: Option<SynchronousReplication>,
}

/// SQLSTATEs of a refusal before authentication that another host may not share:
/// `cannot_connect_now` (starting up, shutting down, in recovery without hot standby) and
/// `too_many_connections`.
const TRY_NEXT_HOST: [&[u8]; 2] = [b"57P03", b"53300"];

/// Most bytes held back from the client between AuthenticationOk and ReadyForQuery.
const MAX_HELD: usize = 1 << 20;

/// Relays authentication between client and server until the server's first
/// ReadyForQuery, and judges the server by the role it reports.
///
/// With `require_password`, an AuthenticationOk that no password or SASL exchange came
/// before (the server trusted the proxy's connection: `trust`, `peer`, `ident`) is not
/// relayed: the client gets a FATAL 28000 instead, since every client would get in that
/// way under any role name.
///
/// Everything from AuthenticationOk to ReadyForQuery (ParameterStatus, BackendKeyData,
/// notices) is held back until ReadyForQuery shows what the server is; the client gets it
/// only when the server matches, so a client never starts a session on a standby it did
/// not ask for.
///
/// Only authentication responses (`p`) are forwarded in this phase. A client that pipelines
/// other messages behind its startup packet is simply not read further until the session
/// is established; the relay then takes those messages from the buffer like any others, so
/// they pass the reply queue and the fencing hook.
pub async fn authenticate(
    client: &mut Conn,
    server: &mut Conn,
    wanted: Wanted,
) -> Result<Login, SessionError> {
    let mut client_paused = forward_auth_responses(client, server).await?;
    let mut login = LoginState::default();
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
                if let Some(ended) = login.server_message(client, server, frame, wanted).await? {
                    return Ok(ended);
                }
            }
            read = client.fill(), if !client_paused => {
                if read.map_err(SessionError::ClientIo)? == 0 {
                    return Ok(Login::Ended);
                }
                client_paused = forward_auth_responses(client, server).await?;
            }
        }
    }
}

/// Where a login stands.
#[derive(Default)]
struct LoginState {
    /// The server has sent something (a refusal after that is the client's to see).
    spoke: bool,
    /// The server asked for a password or ran a SASL exchange.
    challenged: bool,
    /// From AuthenticationOk on: what the client gets once the server is judged.
    held: Option<BytesMut>,
    parameters: Vec<(Vec<u8>, Vec<u8>)>,
}

impl LoginState {
    /// Takes one server message; `Some` when the login is over.
    async fn server_message(
        &mut self,
        client: &mut Conn,
        server: &mut Conn,
        frame: BytesMut,
        wanted: Wanted,
    ) -> Result<Option<Login>, SessionError> {
        let body = &frame[5..];
        let first = !std::mem::replace(&mut self.spoke, true);
        if first && wanted.more_hosts && frame[0] == be::ERROR_RESPONSE && be::is_fatal(body) {
            let code = be::error_field(body, b'C').unwrap_or_default();
            if TRY_NEXT_HOST.contains(&code) {
                let text = be::error_field(body, b'M').unwrap_or_default();
                let reason = String::from_utf8_lossy(text).into_owned();
                return Ok(Some(Login::TryNext(
                    UpstreamViolation::Refused(reason).into(),
                )));
            }
        }
        if frame[0] == be::AUTHENTICATION && self.held.is_none() {
            match be::auth_code(body) {
                Some(be::AUTH_OK) if wanted.require_password && !self.challenged => {
                    return Err(fatal(client, Refusal::PasswordlessLogin.into()).await);
                }
                Some(be::AUTH_OK) => {
                    self.held = Some(BytesMut::new());
                    return self.hold(&frame).map(|()| None);
                }
                _ => self.challenged = true,
            }
        }
        let Some(held) = self.held.as_mut() else {
            client
                .write_flush(&frame)
                .await
                .map_err(SessionError::ClientIo)?;
            return Ok(None);
        };
        match frame[0] {
            be::READY_FOR_QUERY => self.ready(client, server, &frame, wanted).await,
            be::ERROR_RESPONSE if be::is_fatal(body) => {
                held.extend_from_slice(&frame);
                client
                    .write_flush(held)
                    .await
                    .map_err(SessionError::ClientIo)?;
                Ok(Some(Login::Ended))
            }
            tag => {
                if tag == be::PARAMETER_STATUS {
                    if let Some((name, value)) = be::parameter_status(body) {
                        self.parameters.push((name.to_vec(), value.to_vec()));
                    }
                }
                self.hold(&frame).map(|()| None)
            }
        }
    }

    /// The server's first ReadyForQuery while the post-login messages are held: judges the
    /// server (its role, and whether its commits wait for a synchronous standby, where asked)
    /// and either hands the held messages to the client or says why this host will not do.
    async fn ready(
        &mut self,
        client: &mut Conn,
        server: &mut Conn,
        frame: &[u8],
        wanted: Wanted,
    ) -> Result<Option<Login>, SessionError> {
        let body = &frame[5..];
        let mut role = ServerRole::from_parameters(&self.parameters);
        if role.is_none() && wanted.attrs != TargetSessionAttrs::Any {
            role = ask_role(server).await?;
        }
        let matches = match role {
            Some(role) => wanted.attrs.accepts(role),
            None => wanted.attrs == TargetSessionAttrs::Any,
        };
        if !matches {
            return Ok(Some(Login::WrongRole(role)));
        }
        let primary = role.is_some_and(|r| !r.in_hot_standby);
        let mut synchronous = None;
        if let Some(mode) = wanted.synchronous.filter(|_| primary) {
            synchronous = ask_synchronous(server).await?;
            if mode == SynchronousReplication::Require && synchronous != Some(true) {
                return Ok(Some(Login::NotSynchronous(role)));
            }
        }
        let held = self.held.get_or_insert_with(BytesMut::new);
        held.extend_from_slice(frame);
        client
            .write_flush(held)
            .await
            .map_err(SessionError::ClientIo)?;
        Ok(Some(Login::Established(Established {
            status: TxStatus::from_ready_body(body).unwrap_or_default(),
            parameters: std::mem::take(&mut self.parameters),
            role,
            synchronous,
        })))
    }

    fn hold(&mut self, frame: &[u8]) -> Result<(), SessionError> {
        let held = self.held.get_or_insert_with(BytesMut::new);
        if held.len() + frame.len() > MAX_HELD {
            return Err(UpstreamViolation::TooMuchBeforeReady(MAX_HELD).into());
        }
        held.extend_from_slice(frame);
        Ok(())
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
