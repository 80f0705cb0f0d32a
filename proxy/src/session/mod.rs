//! One client session, from the first byte to the close.
//!
//! - [`handshake`]: encryption negotiation, the startup packet, authentication relay.
//! - [`relay`]: the steady state, both directions in one task.
//! - [`replies`]: the queue of expected server replies (Forward / Ignore / Check /
//!   Synthesize) and the transaction status.
//! - [`hook`]: the interface a policy uses to inject messages and hide their replies.
//! - [`conn`] and [`outbox`]: read buffers and write queues.
//! - [`opening`]: the budget of connections before their startup packet.
//! - [`budget`]: the memory all sessions may hold in unfinished client messages.
//! - [`limit`]: how many sessions may be open (`max_connections`, changed by a reload).
//!
//! One server connection per client connection (session mode). The client's StartupMessage
//! and every later message go upstream as the client sent them; BackendKeyData reaches the
//! client unchanged, so cancel requests (forwarded as-is) reach the right backend.

pub mod budget;
pub mod conn;
pub mod handshake;
pub mod hook;
pub mod limit;
pub mod opening;
pub mod outbox;
pub mod relay;
pub mod replies;
pub mod role_query;
pub mod signals;

use std::future::{poll_fn, Future};
use std::sync::{Arc, RwLock};
use std::task::Poll;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, Span};

use self::conn::Conn;
use self::handshake::{fatal, Login, Opening};
use self::hook::HookFactory;
use self::relay::{End, Relay};
use self::signals::Signals;
use crate::config::{Config, SynchronousReplication};
use crate::error::{ClientViolation, Refusal, SessionError, UpstreamViolation};
use crate::upstream::hosts::{role_name, Host, OnHost};
use crate::upstream::Upstream;

/// How long a client may take to send its startup packet (and finish TLS), as PostgreSQL's
/// default `authentication_timeout`; afterwards the server's own timeout applies.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

const SHUTTING_DOWN: &str = "terminating connection because the proxy is shutting down";

/// What every session shares.
pub struct Shared {
    /// Settings.
    pub config: Arc<Config>,
    /// How to reach the server.
    pub upstream: Upstream,
    /// Client TLS, when configured (a reload may replace it).
    pub tls: RwLock<Option<TlsAcceptor>>,
    /// Makes the per-session hook.
    pub hooks: Arc<dyn HookFactory>,
    /// Shutdown signals for the sessions.
    pub signals: Arc<Signals>,
    /// Places for sessions (`max_connections`).
    pub sessions: Arc<limit::SessionLimit>,
    /// Places for connections before their startup packet (`max_startup_connections`).
    pub opening: opening::OpeningSlots,
    /// Memory for unfinished client messages, across sessions (`max_buffered_bytes`).
    pub buffers: Arc<budget::BufferBudget>,
}

/// Serves one client connection to the end. Errors are logged here, not returned: a broken
/// client ends only its own session.
///
/// The server's [`Signals`] end it: "drain" closes a session still opening at once and an
/// open one at its next quiescent point (no transaction open), "stop" closes it at once.
/// `span` is entered wherever the session logs: for the whole opening exchange, and
/// afterwards only around the relay's rare log lines, so that the steady state does not
/// pay for entering it at every wake-up.
pub async fn serve(tcp: TcpStream, shared: Arc<Shared>, span: Span) {
    let _ = crate::stream::tune_socket(&tcp);
    let ended = run(tcp, &shared, &span).await;
    let _entered = span.enter();
    match ended {
        Ok(()) => tracing::debug!("session closed"),
        Err(e) if e.is_client_gone() => tracing::debug!(error = %e, "client connection ended"),
        Err(e @ SessionError::ClientProtocol(_)) => {
            tracing::info!(error = %e, "client broke the protocol")
        }
        Err(e) => tracing::warn!(error = %e, "session ended with an error"),
    }
}

/// Negotiation, upstream connection and authentication; `None` when the exchange ended
/// without a session (a cancel request, a failed login, a client that left).
async fn open(
    tcp: TcpStream,
    shared: &Shared,
    span: Span,
) -> Result<Option<(Relay, limit::SessionPlace, OnHost)>, SessionError> {
    let slot = shared.opening.enter();
    let client_ip = tcp.peer_addr().map(|a| a.ip()).ok();
    let tls = shared.tls.read().map(|tls| tls.clone()).unwrap_or_default();
    let negotiation = handshake::negotiate(tcp, tls.as_ref());
    let negotiated = tokio::select! {
        negotiated = tokio::time::timeout(STARTUP_TIMEOUT, negotiation) => negotiated,
        () = slot.evicted.cancelled() => {
            tracing::debug!("closed before its startup packet to make room for a newer connection");
            return Ok(None);
        }
    };
    drop(slot);
    let (mut client, opening) =
        negotiated.map_err(|_| ClientViolation::StartupTimeout(STARTUP_TIMEOUT))??;
    let (packet, startup) = match opening {
        Opening::Gone => return Ok(None),
        Opening::Cancel(packet) => {
            return shared.upstream.forward_cancel(&packet).await.map(|()| None)
        }
        Opening::Startup { packet, message } => (packet, message),
    };
    let Some(permit) = shared.sessions.try_enter() else {
        return Err(fatal(&mut client, Refusal::TooManyClients.into()).await);
    };
    tracing::debug!(
        user = startup.param("user"),
        database = startup.param("database"),
        "startup"
    );
    let Some((server, established, on_host)) =
        login(&mut client, shared, &packet, client_ip).await?
    else {
        return Ok(None);
    };
    let status = established.status;
    let mut hook = shared.hooks.session_hook(&startup);
    if let Some(hook) = hook.as_mut() {
        for (name, value) in &established.parameters {
            hook.server_parameter(name, value);
        }
    }
    let max = shared.config.max_message_size;
    Ok(Some((
        Relay::new(
            client,
            server,
            status,
            hook,
            (max, shared.buffers.share()),
            span,
        ),
        permit,
        on_host,
    )))
}

/// Tries the hosts in [`HostTable::candidates`] order until one takes the login: a host
/// that cannot be reached, or refuses before authentication, costs nothing but time and
/// the next is tried; once the client has authenticated, the session stays on that host
/// or ends (a login cannot be replayed elsewhere without the client's secret).
async fn login(
    client: &mut Conn,
    shared: &Shared,
    packet: &[u8],
    client_ip: Option<std::net::IpAddr>,
) -> Result<Option<(Conn, handshake::Established, OnHost)>, SessionError> {
    let table = shared.upstream.table();
    let candidates = table.candidates();
    let mut last = None;
    for (i, host) in candidates.iter().enumerate() {
        let mut server = match shared.upstream.connect(host).await {
            Ok(stream) => Conn::new(stream),
            Err(e) => {
                tracing::info!(host = %host.label, error = %e, "upstream host unreachable");
                host.connect_failed();
                last = Some(e);
                continue;
            }
        };
        if let Err(e) = server.write_flush(packet).await {
            host.connect_failed();
            last = Some(SessionError::UpstreamIo(e));
            continue;
        }
        // A peer address that cannot be read is treated as remote.
        let wanted = handshake::Wanted {
            require_password: client_ip
                .is_none_or(|ip| shared.config.requires_upstream_auth(ip, &host.addr)),
            attrs: table.attrs(),
            more_hosts: i + 1 < candidates.len(),
            synchronous: asks_synchronous(shared, host),
        };
        match handshake::authenticate(client, &mut server, wanted).await? {
            Login::Established(established) => {
                host.logged_in(established.role);
                if wanted.synchronous.is_some() {
                    synchronous_seen(host, established.synchronous);
                }
                return Ok(Some((server, established, host.enter())));
            }
            Login::Ended => return Ok(None),
            Login::TryNext(e) => {
                tracing::info!(host = %host.label, error = %e, "upstream host refused the connection; trying the next");
                host.connect_failed();
                last = Some(e);
            }
            Login::WrongRole(role) => {
                host.wrong_role(role);
                let (host, attrs) = (host.label.clone(), table.attrs().name());
                let refusal = match role {
                    Some(role) => Refusal::WrongServerRole {
                        host,
                        role: role_name(role),
                        attrs,
                    },
                    None => Refusal::RoleNotReported { host, attrs },
                };
                return Err(fatal(client, refusal.into()).await);
            }
            Login::NotSynchronous(role) => {
                host.logged_in(role);
                synchronous_seen(host, Some(false));
                let refusal = Refusal::NotSynchronous {
                    host: host.label.clone(),
                };
                return Err(fatal(client, refusal.into()).await);
            }
        }
    }
    let err = last.unwrap_or(SessionError::Refused(Refusal::ByHook {
        sqlstate: "08001",
        reason: "no upstream host is configured",
    }));
    Err(fatal(client, err).await)
}

/// What a new session on `host` should ask about synchronous replication, per
/// `synchronous_replication` and what the host last said.
fn asks_synchronous(shared: &Shared, host: &Host) -> Option<SynchronousReplication> {
    let mode = shared.config.synchronous_replication;
    host.should_ask_synchronous(mode).then_some(mode)
}

/// Records a primary's answer about synchronous replication and says so in the log when
/// it changed: loudly when its commits no longer wait for a synchronous standby.
fn synchronous_seen(host: &Host, synchronous: Option<bool>) {
    if !host.synchronous_seen(synchronous) {
        return;
    }
    match synchronous {
        Some(true) => {
            tracing::info!(host = %host.label, "upstream primary replicates synchronously")
        }
        Some(false) => {
            tracing::warn!(host = %host.label, "upstream primary has no synchronous standby (synchronous_standby_names is empty or synchronous_commit is off/local): a failover can lose the last admitted token and the write it admitted")
        }
        None => {
            tracing::warn!(host = %host.label, "upstream primary did not say whether it replicates synchronously")
        }
    }
}

async fn run(tcp: TcpStream, shared: &Shared, span: &Span) -> Result<(), SessionError> {
    let mut signals = shared.signals.subscribe();
    // A session still opening when shutdown begins has no transaction to finish: close it.
    let opening = open(tcp, shared, span.clone()).instrument(span.clone());
    let mut opening = std::pin::pin!(opening);
    let opened = poll_fn(|cx| {
        if signals.poll(cx).drain {
            return Poll::Ready(None);
        }
        opening.as_mut().poll(cx).map(Some)
    })
    .await;
    let (mut relay, _permit, on_host) = match opened {
        None => return Ok(()),
        Some(opened) => match opened? {
            Some(opened) => opened,
            None => return Ok(()),
        },
    };
    let ended = relay.run(&mut signals).await;
    if matches!(
        ended,
        Ok(End::ServerClosed { .. }) | Err(SessionError::UpstreamIo(_))
    ) {
        on_host.host().connection_lost();
    }
    let err = match ended {
        Ok(
            End::ClientClosed
            | End::ServerClosed {
                fatal_forwarded: true,
            },
        ) => return Ok(()),
        Ok(End::Drained) => {
            relay.send_fatal("57P01", SHUTTING_DOWN).await;
            return Ok(());
        }
        Ok(End::ServerClosed {
            fatal_forwarded: false,
        }) => UpstreamViolation::ClosedUnexpectedly.into(),
        Err(e) => e,
    };
    if let Some(sqlstate) = err.sqlstate() {
        let message = if err.is_upstream() {
            format!("fencegate: server {}: {err}", on_host.host().label)
        } else {
            format!("fencegate: {err}")
        };
        relay.send_fatal(sqlstate, &message).await;
    }
    Err(err)
}
