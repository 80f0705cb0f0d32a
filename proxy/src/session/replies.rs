//! The queue of expected server replies for one server connection.
//!
//! Every client message that the server answers pushes one entry; every server message is
//! matched against the entry at the head of the queue, which says whether the client sees it
//! ([`Action`]) and whether the entry is complete. This is what lets the proxy send messages
//! of its own on a client's connection and hide their results (G5), and what tells it the
//! transaction status at every point. It is sans-IO and unit-tested without sockets.
//!
//! Rules it follows (PostgreSQL protocol, "Message Flow"):
//! - Query and FunctionCall are answered by everything up to and including ReadyForQuery.
//! - Parse, Bind, Close, Describe and Execute each end with one known message; an
//!   ErrorResponse ends the entry and makes the server discard every message up to the next
//!   Sync, so their entries get no reply and are dropped.
//! - Sync is answered by ReadyForQuery (an ErrorResponse may come first, e.g. a deferred
//!   constraint failing at the implicit commit).
//! - Flush, CopyData and Terminate get no reply. During COPY FROM STDIN the server swallows
//!   Sync and Flush (libpq and others send a Sync right after Execute without knowing the
//!   statement is a COPY), so Syncs sent between the start of the copy and CopyDone/CopyFail
//!   expect nothing.
//! - NoticeResponse follows the entry it belongs to; ParameterStatus and
//!   NotificationResponse always reach the client.
//!
//! Where each piece lives:
//! - [`action`]: the public vocabulary: [`Action`], [`Route`], [`CheckDone`], [`Desync`].
//! - [`queue`]: one expected reply ([`queue::Entry`], what completes it) and the queue of them.
//! - [`client`]: recording the messages that go to the server, and the proxy's own replies.
//! - [`rules`]: matching a server message to the head entry: where it goes, whether the entry
//!   is complete, and the server's error and discard rules.
//! - [`copy`]: COPY FROM STDIN, during which the server swallows Syncs.
//! - [`rewrite`]: a client Query with statements of the proxy's own inserted.
//! - [`outcomes`]: what the replies tell the rest of the proxy: the transaction status, the
//!   outcomes of the client's Parse and Close, and the proxy's checks that ended.

mod action;
mod client;
mod copy;
mod outcomes;
mod queue;
mod rewrite;
mod rules;

use std::collections::VecDeque;

use crate::protocol::backend::TxStatus;

pub use action::{Action, CheckDone, Desync, Route};
pub use rewrite::{Insertion, Rewrite};

use copy::CopyState;
use queue::Queue;

/// What the server does with the client's next messages, as far as the replies tell. These
/// exclude each other: the server never discards until Sync while it swallows Syncs in a
/// COPY, and after a desync nothing else is followed.
#[derive(Debug, Default)]
enum Mode {
    /// Each message is answered in turn.
    #[default]
    Normal,
    /// An extended-protocol message failed: the server discards every message up to the next
    /// Sync, whose ReadyForQuery ends this.
    Discarding,
    /// The server is in COPY FROM STDIN and the client has not sent its CopyDone or CopyFail
    /// yet: Syncs and Flushes sent meanwhile are swallowed and expect nothing.
    CopyIn,
    /// A server message fit no rule: from then on every server message is forwarded, client
    /// messages are not recorded, and nothing may be injected. Final.
    Desynchronized(Desync),
}

/// The expected-reply queue plus the server state it implies.
#[derive(Debug, Default)]
pub struct ReplyTracker {
    queue: Queue,
    mode: Mode,
    /// Transaction status as of the last ReadyForQuery.
    status: TxStatus,
    /// An Execute was sent since the last Sync. Client-side, and independent of `mode`: the
    /// client keeps sending while the server discards or copies.
    round_executes: bool,
    /// The client sent CopyData since its last Execute or Query. Client-side, ended by other
    /// messages than `round_executes` (Execute and Query, not Sync), so all four pairs occur.
    copy_data_sent: bool,
    /// What the tracker follows of the COPY FROM STDIN the server runs (see [`CopyState`]).
    copy: CopyState,
    /// Outcomes of the client's Parse and Close messages not yet taken, when wanted.
    outcomes: VecDeque<bool>,
    /// Whether to keep them: set once by the session, independent of any reply.
    report_outcomes: bool,
    /// The proxy's checks that ended, not yet taken.
    checks_done: Vec<CheckDone>,
}

impl ReplyTracker {
    /// A tracker for a session whose last ReadyForQuery reported `status`.
    pub fn new(status: TxStatus) -> Self {
        ReplyTracker {
            status,
            ..Default::default()
        }
    }

    /// True when no reply is outstanding.
    pub fn is_idle(&self) -> bool {
        self.queue.len() == self.queue.markers
    }

    /// The mismatch that made tracking unreliable, if any. After a desync every server
    /// message is forwarded and nothing may be injected.
    pub fn desync(&self) -> Option<&Desync> {
        match &self.mode {
            Mode::Desynchronized(desync) => Some(desync),
            _ => None,
        }
    }

    fn is_desynchronized(&self) -> bool {
        matches!(self.mode, Mode::Desynchronized(_))
    }
}

#[cfg(test)]
mod tests;
