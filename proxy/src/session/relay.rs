//! The steady state of a session: bytes flow both ways at once, one task, no locks.
//!
//! One `poll` drives four operations: write queued bytes to the server, write queued bytes
//! to the client, read from the client, read from the server. Reads stop while the opposite
//! write queue is above a high-water mark (backpressure), so neither side can make the proxy
//! buffer without bound, and a peer that is slow to read never blocks the other direction.
//! Complete messages are split off the read buffers and forwarded as shared slices; each one
//! passes the [`ReplyTracker`] (and the session hook, if any) on its way. A long client
//! CopyData is the exception: it is relayed as its bytes arrive, never buffered whole.

use std::future::poll_fn;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use super::budget::Share;
use super::conn::Conn;
use super::hook::{Injector, SessionHook};
use super::outbox::Outbox;
use super::replies::{Action, ReplyTracker, Route};
use super::signals::Subscription;
use crate::config::MAX_SERVER_MESSAGE;
use crate::error::SessionError;
use crate::error::{ClientViolation, Refusal, UpstreamViolation};
use crate::protocol::backend::{self as be, TxStatus};
use crate::protocol::build::{error_response, replace_field, Severity};
use crate::protocol::framing::{peek_tagged, HEADER_LEN};
use crate::protocol::frontend::{self as fe, FrontendMessage};

/// Stop reading from one side while this many bytes wait to be written to the other.
const HIGH_WATER: usize = 256 * 1024;

/// A CopyData at least this long is relayed as its bytes arrive instead of being buffered
/// whole: nothing in it needs inspecting, so an honest COPY row of any size costs the proxy
/// no more than the backpressure bound.
const STREAM_COPY_DATA_FROM: usize = 64 * 1024;

/// How the relay ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed its connection (after Terminate, or abruptly).
    ClientClosed,
    /// The server closed its connection; `fatal_forwarded` when the client already got the
    /// server's FATAL ErrorResponse explaining why.
    ServerClosed {
        /// The client has already seen a FATAL error from the server.
        fatal_forwarded: bool,
    },
    /// Draining was requested and the session reached a point with no transaction open and
    /// no reply outstanding.
    Drained,
}

/// A client and its server connection in the steady state.
pub struct Relay {
    client: Conn,
    server: Conn,
    to_client: Outbox,
    to_server: Outbox,
    tracker: ReplyTracker,
    hook: Option<Box<dyn SessionHook>>,
    injected: Vec<(Bytes, Action)>,
    /// Largest client message accepted (`max_message_size`).
    max_message: usize,
    /// What this session holds of the budget for unfinished client messages.
    buffered: Share,
    /// Bytes of a client CopyData being streamed that are still to come (see
    /// [`STREAM_COPY_DATA_FROM`]); they are relayed unframed.
    copy_rest: usize,
    client_eof: bool,
    server_eof: bool,
    /// What the server closing its connection would mean now.
    server_close: ServerClose,
    draining: bool,
    /// The session's log span, entered only around the relay's own log lines.
    span: tracing::Span,
    desync_reported: bool,
    /// The tracker's [`ReplyTracker::checks_waiting`] as last told to the hook.
    waiting_reported: usize,
}

/// What the server closing its connection means, by what came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerClose {
    /// Nothing announced it: the client must be told.
    Unexpected,
    /// The client already got the server's FATAL.
    AfterFatal,
    /// The client sent Terminate: the normal end, whatever else came.
    AfterTerminate,
}

impl ServerClose {
    fn fatal_forwarded(&mut self) {
        if *self == ServerClose::Unexpected {
            *self = ServerClose::AfterFatal;
        }
    }

    fn end(self) -> End {
        match self {
            ServerClose::AfterTerminate => End::ClientClosed,
            ServerClose::AfterFatal => End::ServerClosed {
                fatal_forwarded: true,
            },
            ServerClose::Unexpected => End::ServerClosed {
                fatal_forwarded: false,
            },
        }
    }
}

/// Which directions of a session said Pending during one [`Relay::poll_run`].
#[derive(Default)]
struct Pending {
    client_read: bool,
    server_read: bool,
    client_write: bool,
    server_write: bool,
}

impl Relay {
    /// Starts relaying after authentication; `status` is from the first ReadyForQuery.
    pub fn new(
        client: Conn,
        server: Conn,
        status: TxStatus,
        hook: Option<Box<dyn SessionHook>>,
        (max_message, buffered): (usize, Share),
        span: tracing::Span,
    ) -> Self {
        let mut tracker = ReplyTracker::new(status);
        if hook.is_some() {
            tracker.report_outcomes();
        }
        Relay {
            client,
            server,
            to_client: Outbox::default(),
            to_server: Outbox::default(),
            tracker,
            hook,
            injected: Vec::new(),
            max_message,
            buffered,
            copy_rest: 0,
            client_eof: false,
            server_eof: false,
            server_close: ServerClose::Unexpected,
            draining: false,
            span,
            desync_reported: false,
            waiting_reported: 0,
        }
    }

    fn is_quiescent(&self) -> bool {
        self.tracker.is_idle()
            && self.tracker.status() == TxStatus::Idle
            && self.to_client.is_empty()
            && self.to_server.is_empty()
            && self.client.rbuf.is_empty()
            && self.copy_rest == 0
            && self.server.rbuf.is_empty()
    }

    /// Relays until one side closes or fails, or `signals` end the session: "stop" at
    /// once, "drain" at the first moment no transaction is open and nothing is in flight.
    pub async fn run(&mut self, signals: &mut Subscription) -> Result<End, SessionError> {
        if !self.client.rbuf.is_empty() {
            // Messages the client pipelined behind authentication.
            self.on_client_bytes()?;
        }
        poll_fn(|cx| {
            let raised = signals.poll(cx);
            if raised.stop {
                return Poll::Ready(Ok(End::Drained));
            }
            self.draining |= raised.drain;
            self.poll_run(cx)
        })
        .await
    }

    /// Sends the client everything queued and then a FATAL ErrorResponse, as last words
    /// before the session closes. Gives up when the client stops reading.
    pub async fn send_fatal(&mut self, sqlstate: &str, message: &str) {
        let fatal = error_response(Severity::Fatal, sqlstate, message, None, None);
        self.to_client.push(fatal);
        let flush = poll_fn(|cx| loop {
            match self.to_client.poll_write(&mut self.client.stream, cx) {
                Poll::Ready(Ok(true)) => continue,
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        });
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), flush).await;
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<End, SessionError>> {
        // Once a socket said Pending, its waker is registered and nothing can change before
        // this task is woken again: polling it again in this call would only cost tokio's
        // readiness bookkeeping (the larger part of the proxy's own CPU per round trip).
        //
        // Another pass is needed only when a read brought something (bytes to forward, or
        // an end of stream). A write never needs one: it either empties its queue or leaves
        // its waker registered, and a read held back by a full queue is retried when that
        // write's waker fires.
        let mut pending = Pending::default();
        loop {
            let mut read_something = false;
            if !pending.server_write {
                match self.to_server.poll_write(&mut self.server.stream, cx) {
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::UpstreamIo(e))),
                    Poll::Pending => pending.server_write = true,
                }
            }
            if !pending.client_write {
                match self.to_client.poll_write(&mut self.client.stream, cx) {
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(SessionError::ClientIo(e))),
                    Poll::Pending => pending.client_write = true,
                }
            }
            if self.client_eof && self.to_server.is_empty() {
                return Poll::Ready(Ok(End::ClientClosed));
            }
            if self.server_eof && self.to_client.is_empty() {
                return Poll::Ready(Ok(self.server_close.end()));
            }
            if !self.client_eof && !pending.client_read && self.to_server.len() < HIGH_WATER {
                match self.client.poll_fill(cx).map_err(SessionError::ClientIo)? {
                    Poll::Ready(0) => self.client_eof = true,
                    Poll::Ready(_) => {
                        self.on_client_bytes()?;
                        self.cover_unfinished()?;
                    }
                    Poll::Pending => pending.client_read = true,
                }
                read_something |= !pending.client_read;
            }
            if !self.server_eof && !pending.server_read && self.to_client.len() < HIGH_WATER {
                match self
                    .server
                    .poll_fill(cx)
                    .map_err(SessionError::UpstreamIo)?
                {
                    Poll::Ready(0) => self.server_eof = true,
                    Poll::Ready(_) => self.on_server_bytes()?,
                    Poll::Pending => pending.server_read = true,
                }
                read_something |= !pending.server_read;
            }
            if !read_something {
                if self.draining && self.is_quiescent() {
                    return Poll::Ready(Ok(End::Drained));
                }
                return Poll::Pending;
            }
        }
    }

    /// Moves every complete client message to the server queue, through the hook and the
    /// tracker. Unchanged messages leave as one slice of the read buffer. CopyData goes to
    /// the tracker only (hooks never see it), and a long one is streamed.
    fn on_client_bytes(&mut self) -> Result<(), SessionError> {
        if !self.relay_copy_rest() {
            return Ok(());
        }
        let mut run = 0;
        while let Some(info) = peek_tagged(&self.client.rbuf[run..], self.max_message)
            .map_err(ClientViolation::from)?
        {
            let frame = &self.client.rbuf[run..run + info.total_len];
            let msg = FrontendMessage {
                tag: info.tag,
                body: &frame[HEADER_LEN..],
            };
            if info.tag == fe::COPY_DATA {
                self.tracker.client_message(&msg, Action::Forward);
                run += info.total_len;
                continue;
            }
            let mut replacement = None;
            let mut abort = None;
            if let Some(hook) = self.hook.as_mut() {
                let mut injector = Injector {
                    queued: &mut self.injected,
                    abort: &mut abort,
                    replacement: &mut replacement,
                    status: self.tracker.status(),
                    awaiting_ready: self.tracker.awaiting_ready(),
                    desynchronized: self.tracker.desync().is_some(),
                };
                hook.before_client_message(&msg, &mut injector);
                if let Some(reason) = abort {
                    // Forward what came before this message, then end the session.
                    self.to_server.push(take(&mut self.client.rbuf, run));
                    return Err(reason.into());
                }
                for (bytes, action) in &self.injected {
                    let injected = FrontendMessage {
                        tag: bytes[0],
                        body: &bytes[HEADER_LEN..],
                    };
                    self.tracker.client_message(&injected, action.clone());
                }
            }
            match &mut replacement {
                Some((_, rewrite)) => self.tracker.rewritten_query(std::mem::take(rewrite)),
                None => self.tracker.client_message(&msg, Action::Forward),
            }
            if info.tag == fe::TERMINATE {
                self.server_close = ServerClose::AfterTerminate;
            }
            if !self.injected.is_empty() || replacement.is_some() {
                self.to_server.push(take(&mut self.client.rbuf, run));
                for (bytes, _) in self.injected.drain(..) {
                    self.to_server.push(bytes);
                }
                run = 0;
            }
            match replacement {
                Some((query, _)) => {
                    self.client.consume(info.total_len);
                    self.to_server.push(query);
                }
                None => run += info.total_len,
            }
        }
        self.to_server.push(take(&mut self.client.rbuf, run));
        self.start_copy_stream();
        while let Some(reply) = self.tracker.take_synthesized() {
            self.to_client.push(reply);
        }
        self.report_waiting();
        Ok(())
    }

    /// Relays what has arrived of a streamed CopyData; true once it is complete (or none is
    /// being streamed), so that framing resumes at the next message.
    fn relay_copy_rest(&mut self) -> bool {
        if self.copy_rest > 0 {
            let n = self.copy_rest.min(self.client.rbuf.len());
            self.to_server.push(take(&mut self.client.rbuf, n));
            self.copy_rest -= n;
        }
        self.copy_rest == 0
    }

    /// Begins streaming when the unfinished message left at the front of the buffer is a
    /// long CopyData (its header already checked by `peek_tagged`).
    fn start_copy_stream(&mut self) {
        let buf = &self.client.rbuf;
        if buf.len() < HEADER_LEN || buf[0] != fe::COPY_DATA {
            return;
        }
        let total = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize + 1;
        if total < STREAM_COPY_DATA_FROM {
            return;
        }
        let msg = FrontendMessage {
            tag: fe::COPY_DATA,
            body: &[],
        };
        self.tracker.client_message(&msg, Action::Forward);
        let have = buf.len();
        self.to_server.push(take(&mut self.client.rbuf, have));
        self.copy_rest = total - have;
    }

    /// Takes from the budget what the unfinished message left in the client's buffer
    /// holds (every complete one has just been moved out), or ends the session.
    fn cover_unfinished(&mut self) -> Result<(), SessionError> {
        self.buffered.cover(self.client.rbuf.len()).map_err(|e| {
            Refusal::OutOfMemory {
                buffered: e.buffered,
                limit: e.limit,
            }
            .into()
        })
    }

    /// Moves every complete server message to the client queue or drops it, as the tracker
    /// routes it.
    fn on_server_bytes(&mut self) -> Result<(), SessionError> {
        let mut run = 0;
        while let Some(info) = peek_tagged(&self.server.rbuf[run..], MAX_SERVER_MESSAGE)
            .map_err(UpstreamViolation::from)?
        {
            if let Some(reply) = self.tracker.take_synthesized() {
                self.to_client.push(take(&mut self.server.rbuf, run));
                run = 0;
                self.to_client.push(reply);
                while let Some(reply) = self.tracker.take_synthesized() {
                    self.to_client.push(reply);
                }
            }
            let body = &self.server.rbuf[run + HEADER_LEN..run + info.total_len];
            let route = self.tracker.server_message(info.tag, body);
            let clients_error = route == Route::InjectedError && self.in_client_text(body);
            let reworded = match (route, self.hook.as_mut()) {
                // An error whose position lies in the client's own text is the client's:
                // PostgreSQL parses a whole Query string before it runs any statement, so
                // a syntax error arrives while the proxy's first statement is current.
                (Route::InjectedError, Some(_)) if clients_error => None,
                (Route::InjectedError, Some(hook)) => {
                    self.span.in_scope(|| hook.injected_error(body))
                }
                (Route::Drop, Some(hook)) if info.tag == be::DATA_ROW => {
                    hook.injected_row(body);
                    None
                }
                (Route::Drop, Some(hook)) if info.tag == be::NOTICE_RESPONSE => {
                    hook.injected_notice(body);
                    None
                }
                (_, Some(hook)) if info.tag == be::PARAMETER_STATUS => {
                    if let Some((name, value)) = be::parameter_status(body) {
                        hook.server_parameter(name, value);
                    }
                    None
                }
                _ => None,
            };
            // A syntax error in a rewritten Query is raised before anything runs, while
            // the proxy's first statement is current: reposition those too.
            let reworded = match (route, reworded) {
                (Route::Drop, _) => None,
                (_, Some(message)) => Some(message),
                (_, None) => self.reposition(info.tag, body),
            };
            match (route, reworded) {
                (Route::Forward | Route::InjectedError, None) => {
                    if info.tag == be::ERROR_RESPONSE && be::is_fatal(body) {
                        self.server_close.fatal_forwarded();
                    }
                    run += info.total_len;
                }
                (_, reworded) => {
                    self.to_client.push(take(&mut self.server.rbuf, run));
                    self.server.consume(info.total_len);
                    run = 0;
                    if let Some(message) = reworded {
                        self.to_client.push(message);
                    }
                }
            }
        }
        self.to_client.push(take(&mut self.server.rbuf, run));
        self.report_outcomes();
        Ok(())
    }

    /// Once per read, not per message: tells the hook what the replies said about the
    /// client's own Parse and Close messages and the proxy's checks, and logs a loss of
    /// tracking once.
    fn report_outcomes(&mut self) {
        if let Some(hook) = self.hook.as_mut() {
            while let Some(completed) = self.tracker.take_outcome() {
                hook.client_outcome(completed);
            }
            for done in self.tracker.take_checks_done() {
                hook.check_done(done);
            }
        }
        self.report_waiting();
        if !self.desync_reported {
            if let Some(desync) = self.tracker.desync() {
                self.desync_reported = true;
                self.span.in_scope(
                    || tracing::warn!(%desync, "reply tracking lost; relaying without injection"),
                );
            }
        }
    }

    /// Tells the hook how many of its checks are waiting, when that changed: one integer
    /// comparison per read otherwise.
    fn report_waiting(&mut self) {
        let waiting = self.tracker.checks_waiting();
        if waiting != self.waiting_reported {
            self.waiting_reported = waiting;
            if let Some(hook) = self.hook.as_mut() {
                hook.checks_waiting(waiting);
            }
        }
    }

    /// True when an error's position (`P`) points into the client's own text of a
    /// rewritten Query rather than into what the proxy inserted.
    fn in_client_text(&self, body: &[u8]) -> bool {
        be::error_field(body, b'P')
            .and_then(|p| std::str::from_utf8(p).ok()?.parse::<u32>().ok())
            .is_some_and(|p| self.tracker.original_position(p).is_some())
    }

    /// An error or notice from a rewritten Query with its position field given back in
    /// the client's own text; `None` when nothing needs changing.
    fn reposition(&self, tag: u8, body: &[u8]) -> Option<Bytes> {
        if tag != be::ERROR_RESPONSE && tag != be::NOTICE_RESPONSE {
            return None;
        }
        let p: u32 = std::str::from_utf8(be::error_field(body, b'P')?)
            .ok()?
            .parse()
            .ok()?;
        let original = self.tracker.original_position(p)?;
        (original != p).then(|| replace_field(tag, body, b'P', original.to_string().as_bytes()))
    }
}

/// Splits the first `n` bytes off a read buffer as a shared slice (no copy).
fn take(buf: &mut BytesMut, n: usize) -> Bytes {
    if n == 0 {
        Bytes::new()
    } else {
        buf.split_to(n).freeze()
    }
}

#[cfg(test)]
mod tests;
