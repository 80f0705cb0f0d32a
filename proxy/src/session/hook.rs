//! The narrow interface through which a policy (the fence, or a test) adds its own messages
//! to a client's traffic, without knowing about sockets.
//!
//! For every complete client message in the steady state the session calls
//! [`SessionHook::before_client_message`]. The hook may queue messages to be sent to the
//! server *before* that client message, each with an [`Action`] saying what happens to the
//! replies. The relay forwards the client message itself unchanged afterwards.

use bytes::Bytes;

use crate::config::Config;
use crate::error::Refusal;
use crate::protocol::backend::TxStatus;
use crate::protocol::framing::peek_tagged;
use crate::protocol::frontend::FrontendMessage;
use crate::protocol::startup::StartupMessage;

pub use super::replies::{Action, CheckDone, Insertion, Rewrite};

/// Makes one hook per client session.
pub trait HookFactory: Send + Sync + 'static {
    /// Called once the client's StartupMessage is known, before authentication.
    /// `None` means the session needs no hook (the relay then skips the call entirely).
    fn session_hook(&self, startup: &StartupMessage) -> Option<Box<dyn SessionHook>>;

    /// The settings changed (a reload): sessions that start from now on follow `config`.
    fn reconfigure(&self, config: &Config) {
        let _ = config;
    }
}

/// Per-session policy called for each client message.
pub trait SessionHook: Send + 'static {
    /// Sees a complete client message before it is forwarded; may inject messages ahead of it.
    /// CopyData is never shown: it is relayed as it arrives, a long one before it is whole.
    fn before_client_message(&mut self, msg: &FrontendMessage<'_>, inject: &mut Injector<'_>);

    /// Sees an ErrorResponse body caused by the hook's own injected work before it reaches
    /// the client; returning a whole replacement message rewords it (the server-side effect,
    /// an aborted statement or transaction, is unchanged).
    fn injected_error(&mut self, _body: &[u8]) -> Option<Bytes> {
        None
    }

    /// Called once for every Parse and every Close the client sent, in the order sent, when
    /// the server's answer is known: `true` when the server completed it (ParseComplete,
    /// CloseComplete), `false` when it failed or was skipped after an earlier error. Not
    /// called once reply tracking is lost.
    fn client_outcome(&mut self, _completed: bool) {}

    /// Sees each DataRow that the hook's own injected work returned (hidden from the
    /// client), as it arrives.
    fn injected_row(&mut self, _body: &[u8]) {}

    /// Sees each NoticeResponse that the hook's own injected work raised (hidden from the
    /// client), as it arrives.
    fn injected_notice(&mut self, _body: &[u8]) {}

    /// Sees every parameter the server reports (ParameterStatus: during authentication,
    /// then whenever a reported setting changes, `SET LOCAL`, `RESET` and rollbacks
    /// included), in the order the server sent them.
    fn server_parameter(&mut self, _name: &[u8], _value: &[u8]) {}

    /// Learns how each of the hook's checks ended (see [`CheckDone`]), once per server read.
    fn check_done(&mut self, _done: CheckDone) {}

    /// Learns how many of the hook's checks are on their way or at the server, their
    /// results not back yet, whenever that number changes (after a client or server read
    /// that changed it; 0 once reply tracking is lost). The session does not report its end:
    /// a hook that counts these beyond itself withdraws its count when it is dropped.
    fn checks_waiting(&mut self, _waiting: usize) {}
}

/// The default: plain relaying, no hook.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl HookFactory for NoHooks {
    fn session_hook(&self, _startup: &StartupMessage) -> Option<Box<dyn SessionHook>> {
        None
    }
}

/// Why an injection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The bytes are not exactly one complete frontend message.
    #[error("injected bytes are not exactly one complete message")]
    NotOneMessage,
    /// Reply tracking was lost (see `ReplyTracker::desync`); nothing can be hidden safely.
    #[error("reply tracking is lost on this connection")]
    Desynchronized,
}

/// Collects messages a hook injects ahead of the current client message, or the rewritten
/// Query that replaces it.
pub struct Injector<'a> {
    pub(super) queued: &'a mut Vec<(Bytes, Action)>,
    pub(super) abort: &'a mut Option<Refusal>,
    pub(super) replacement: &'a mut Option<(Bytes, Rewrite)>,
    pub(super) status: TxStatus,
    pub(super) awaiting_ready: bool,
    pub(super) desynchronized: bool,
}

impl Injector<'_> {
    /// Transaction status as of the last ReadyForQuery the server sent (replies to
    /// messages already forwarded may still be in flight).
    pub fn status(&self) -> TxStatus {
        self.status
    }

    /// The transaction status where the client's message will run, when the proxy knows
    /// it: the last ReadyForQuery's, provided none still to come may report another.
    /// `None` while a Query or an executing round already sent is unanswered (the client's
    /// message may run in a transaction that ReadyForQuery has not reported yet), and once
    /// reply tracking is lost.
    pub fn settled_status(&self) -> Option<TxStatus> {
        (!self.awaiting_ready && !self.desynchronized).then_some(self.status)
    }

    /// Queues one complete frontend message (see `protocol::build`) to go to the server
    /// before the client's message.
    pub fn send(&mut self, message: Bytes, action: Action) -> Result<(), InjectError> {
        if self.desynchronized {
            return Err(InjectError::Desynchronized);
        }
        match peek_tagged(&message, usize::MAX >> 1) {
            Ok(Some(info)) if info.total_len == message.len() => {
                self.queued.push((message, action));
                Ok(())
            }
            _ => Err(InjectError::NotOneMessage),
        }
    }

    /// Ends the session (FATAL `sqlstate` with `reason` to the client) instead of
    /// forwarding the message: for a hook that must not let a message through unchecked
    /// and cannot check it.
    pub fn abort_session(&mut self, sqlstate: &'static str, reason: &'static str) {
        *self.abort = Some(Refusal::ByHook { sqlstate, reason });
    }

    /// Replaces the client's Query message with `query` (a whole Query message), which is
    /// the client's SQL with statements of the proxy's inserted as `rewrite` describes.
    /// Their results are hidden from the client; an error they raise reaches it; error
    /// positions in the client's own statements are mapped back to its text. Only valid
    /// while handling a client Query.
    pub fn replace_query(&mut self, query: Bytes, rewrite: Rewrite) -> Result<(), InjectError> {
        if self.desynchronized {
            return Err(InjectError::Desynchronized);
        }
        match peek_tagged(&query, usize::MAX >> 1) {
            Ok(Some(info)) if info.total_len == query.len() && info.tag == b'Q' => {
                *self.replacement = Some((query, rewrite));
                Ok(())
            }
            _ => Err(InjectError::NotOneMessage),
        }
    }
}

/// The session's side of an [`Injector`], for running a hook without a session (its unit
/// tests): set the state the relay would report, hand [`Injected::injector`] to
/// [`SessionHook::before_client_message`], then read what the hook queued, replaced or
/// refused.
#[derive(Default)]
pub struct Injected {
    /// Messages queued ahead of the client's, with their actions.
    pub queued: Vec<(Bytes, Action)>,
    /// The hook ended the session instead.
    pub abort: Option<Refusal>,
    /// The Query that replaces the client's, and what was inserted into it.
    pub replacement: Option<(Bytes, Rewrite)>,
    /// The last ReadyForQuery's status.
    pub status: TxStatus,
    /// A ReadyForQuery still to come may change `status`.
    pub awaiting_ready: bool,
    /// Reply tracking is lost: injection is refused.
    pub desynchronized: bool,
}

impl Injected {
    /// The injector a hook writes into.
    pub fn injector(&mut self) -> Injector<'_> {
        Injector {
            queued: &mut self.queued,
            abort: &mut self.abort,
            replacement: &mut self.replacement,
            status: self.status,
            awaiting_ready: self.awaiting_ready,
            desynchronized: self.desynchronized,
        }
    }
}
