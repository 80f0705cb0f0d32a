//! The public vocabulary of the reply queue: what to do with the replies to a message
//! ([`Action`]), where one server message goes ([`Route`]), how one of the proxy's checks
//! ended ([`CheckDone`]) and the mismatch that ends tracking ([`Desync`]).

use std::time::Duration;

use bytes::Bytes;

/// What happens to the server's replies to one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The client's own message: replies go to the client.
    Forward,
    /// A message the proxy injected that is self-contained (a whole Query, or extended
    /// messages followed by their own Sync): every reply is hidden, errors included.
    Ignore,
    /// A message the proxy injected into the client's own extended-protocol batch: replies are
    /// hidden, but an ErrorResponse reaches the client, because the server then skips the
    /// client's messages up to the next Sync and the client must learn why.
    Check,
    /// A reply the proxy makes itself: these bytes reach the client when every earlier
    /// entry is complete. The message it answers is not sent to the server.
    Synthesize(Bytes),
}

/// Where one server message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Send it to the client.
    Forward,
    /// Hide it.
    Drop,
    /// An ErrorResponse caused by a message or statement the proxy injected: it goes to the
    /// client (the client's own work was skipped because of it), and the session hook may
    /// reword it first.
    InjectedError,
}

/// How one of the proxy's own checks ended (for metrics): the time from sending it to its
/// result, and whether it ran without error. For a rewritten Query that is its first
/// inserted statement; for injected extended-protocol messages, their Execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckDone {
    /// From handing the messages to the outbox to the server's answer.
    pub elapsed: Duration,
    /// The check completed; `false` when it raised an error or was skipped after one.
    pub ok: bool,
}

/// A server message that does not fit the expected replies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server sent {got:?} while {expected} was expected")]
pub struct Desync {
    /// The server message's tag.
    pub got: char,
    /// What the head of the queue expected.
    pub expected: String,
}
