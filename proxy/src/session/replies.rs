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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::protocol::backend::{self as be, TxStatus};
use crate::protocol::frontend::{self as fe, FrontendMessage, Target};

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

/// How the proxy rewrote a client's Query string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Positions (0-based, ascending) of the statements the proxy inserted: their results are
    /// hidden from the client.
    pub hidden: Vec<u32>,
    /// Where text was inserted, in characters of the rewritten string (ascending), so that
    /// error positions can be given back in the client's own terms.
    pub insertions: Vec<Insertion>,
}

/// Text the proxy inserted into a client's Query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insertion {
    /// 1-based character position in the rewritten string where the inserted text starts.
    pub at: u32,
    /// Characters inserted.
    pub len: u32,
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

/// Which statement results of a rewritten Query the client must not see, and where the
/// rewrite inserted text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HiddenStatements {
    indices: Vec<u32>,
    insertions: Vec<Insertion>,
    next: usize,
    current: u32,
    /// Something other than a notice has come back for the Query: the server is past
    /// parsing the whole string (its notices until then are about the client's text).
    parsed: bool,
}

impl HiddenStatements {
    fn current_is_hidden(&self) -> bool {
        self.indices.get(self.next) == Some(&self.current)
    }

    fn statement_done(&mut self) {
        if self.current_is_hidden() {
            self.next += 1;
        }
        self.current += 1;
    }
}

/// What completes an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Query or FunctionCall: everything up to ReadyForQuery.
    UntilReady,
    Parse,
    Bind,
    Close,
    DescribeStatement,
    DescribePortal,
    Execute,
    Sync,
    /// The client sent CopyDone/CopyFail: no reply; marks where swallowed Syncs end.
    CopyEnd,
    /// A synthesized reply: nothing comes from the server.
    Nothing,
}

#[derive(Debug)]
struct Entry {
    expect: Expect,
    action: Action,
    /// For a rewritten Query: the inserted statements whose results are hidden.
    hidden: Option<Box<HiddenStatements>>,
    /// Its ReadyForQuery may report another transaction status than the last one: a
    /// Query or FunctionCall, or a Sync ending a round that executed something.
    may_change_status: bool,
    /// The client's own Parse or Close: its outcome is reported (see
    /// [`ReplyTracker::take_outcome`]).
    report: bool,
    /// A Sync the client sent after CopyData: swallowed if the COPY it follows is still
    /// running when the server reads it, answered if the COPY already failed.
    after_copy_data: bool,
    /// When a check this entry carries was sent, until its result is reported.
    check_sent: Option<Instant>,
}

impl Entry {
    fn new(expect: Expect, action: Action) -> Self {
        Entry {
            expect,
            action,
            hidden: None,
            may_change_status: matches!(expect, Expect::UntilReady),
            report: false,
            after_copy_data: false,
            check_sent: None,
        }
    }
}

/// The expected replies in order, with counts of the entries the hot path asks about on
/// every message (so that it need not walk the queue). Entries are not changed in those
/// respects once queued.
#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<Entry>,
    /// Entries whose ReadyForQuery may change the transaction status.
    status_changers: usize,
    /// [`Expect::CopyEnd`] markers.
    markers: usize,
    /// Replies the proxy makes itself.
    synthesized: usize,
}

impl Queue {
    fn push_back(&mut self, entry: Entry) {
        self.count(&entry, true);
        self.entries.push_back(entry);
        self.check_counts();
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        self.count(&entry, false);
        self.check_counts();
        Some(entry)
    }

    fn remove(&mut self, index: usize) -> Option<Entry> {
        let entry = self.entries.remove(index)?;
        self.count(&entry, false);
        self.check_counts();
        Some(entry)
    }

    fn clear(&mut self) {
        *self = Queue::default();
    }

    fn front(&self) -> Option<&Entry> {
        self.entries.front()
    }

    /// The head, for changes other than to what is counted.
    fn front_mut(&mut self) -> Option<&mut Entry> {
        self.entries.front_mut()
    }

    fn get(&self, index: usize) -> Option<&Entry> {
        self.entries.get(index)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn count(&mut self, entry: &Entry, added: bool) {
        let adjust = |n: &mut usize, yes: bool| match (yes, added) {
            (false, _) => {}
            (true, true) => *n += 1,
            (true, false) => *n -= 1,
        };
        adjust(&mut self.status_changers, entry.may_change_status);
        adjust(&mut self.markers, entry.expect == Expect::CopyEnd);
        adjust(
            &mut self.synthesized,
            matches!(entry.action, Action::Synthesize(_)),
        );
    }

    /// In debug builds (the test suite), recounts short queues.
    fn check_counts(&self) {
        if cfg!(debug_assertions) && self.entries.len() <= 64 {
            let count = |f: fn(&Entry) -> bool| self.entries.iter().filter(|e| f(e)).count();
            debug_assert_eq!(self.status_changers, count(|e| e.may_change_status));
            debug_assert_eq!(self.markers, count(|e| e.expect == Expect::CopyEnd));
            debug_assert_eq!(
                self.synthesized,
                count(|e| matches!(e.action, Action::Synthesize(_)))
            );
        }
    }
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

/// The expected-reply queue plus the server state it implies.
#[derive(Debug, Default)]
pub struct ReplyTracker {
    queue: Queue,
    /// The server is discarding messages until Sync after an extended-protocol error.
    discarding: bool,
    /// The server is in COPY FROM STDIN and swallows Sync/Flush.
    copy_in: bool,
    status: TxStatus,
    desync: Option<Desync>,
    /// An Execute was sent since the last Sync.
    round_executes: bool,
    /// Outcomes of the client's Parse and Close messages not yet taken, when wanted.
    outcomes: VecDeque<bool>,
    report_outcomes: bool,
    /// The proxy's checks that ended, not yet taken.
    checks_done: Vec<CheckDone>,
    /// The client sent CopyData since its last Execute or Query.
    copy_data_sent: bool,
    /// A COPY FROM STDIN is running on the server (from CopyInResponse to its end).
    copy_running: bool,
    /// Syncs sent after CopyData were taken as swallowed by the running COPY: right if it
    /// succeeds, not knowable if it fails (the server answers those it had not read yet).
    copy_syncs_uncertain: bool,
    /// A COPY FROM STDIN started since the last ReadyForQuery: the server swallowed Syncs
    /// the client sent meanwhile, so rounds did not end where the client's Syncs were.
    copy_since_ready: bool,
}

impl ReplyTracker {
    /// A tracker for a session whose last ReadyForQuery reported `status`.
    pub fn new(status: TxStatus) -> Self {
        ReplyTracker {
            status,
            ..Default::default()
        }
    }

    /// Keeps the outcomes of the client's Parse and Close messages for
    /// [`Self::take_outcome`] (off by default: nobody would take them).
    pub fn report_outcomes(&mut self) {
        self.report_outcomes = true;
    }

    /// Transaction status as of the last ReadyForQuery the server sent.
    pub fn status(&self) -> TxStatus {
        self.status
    }

    /// True when a ReadyForQuery still to come may report another transaction status than
    /// [`Self::status`]: one owed for a Query, a FunctionCall, or a Sync ending a round with
    /// an Execute. (A round of only Parse, Bind, Describe and Close can fail, leaving a
    /// transaction block failed, but cannot begin or end a transaction.)
    pub fn awaiting_ready(&self) -> bool {
        self.copy_since_ready || self.queue.status_changers > 0
    }

    /// The outcome of the client's oldest Parse or Close whose answer has come and was not
    /// taken yet: `true` when the server completed it, `false` when it failed or was
    /// skipped.
    pub fn take_outcome(&mut self) -> Option<bool> {
        self.outcomes.pop_front()
    }

    /// The proxy's checks that ended since the last call, oldest first.
    pub fn take_checks_done(&mut self) -> std::vec::Drain<'_, CheckDone> {
        self.checks_done.drain(..)
    }

    fn check_ended(&mut self, sent: Option<Instant>, ok: bool) {
        if let Some(sent) = sent {
            self.checks_done.push(CheckDone {
                elapsed: sent.elapsed(),
                ok,
            });
        }
    }

    /// True when no reply is outstanding.
    pub fn is_idle(&self) -> bool {
        self.queue.len() == self.queue.markers
    }

    /// The mismatch that made tracking unreliable, if any. After a desync every server
    /// message is forwarded and nothing may be injected.
    pub fn desync(&self) -> Option<&Desync> {
        self.desync.as_ref()
    }

    /// Records a message on its way to the server (the client's own, or one the proxy
    /// injects) together with what to do with its replies.
    pub fn client_message(&mut self, msg: &FrontendMessage<'_>, action: Action) {
        if self.desync.is_some() {
            return;
        }
        let expect = match msg.tag {
            fe::QUERY | fe::FUNCTION_CALL => {
                self.copy_data_sent = false;
                Expect::UntilReady
            }
            fe::COPY_DATA => {
                self.copy_data_sent = true;
                return;
            }
            fe::PARSE => Expect::Parse,
            fe::BIND => Expect::Bind,
            fe::CLOSE => Expect::Close,
            fe::DESCRIBE => match msg.target() {
                Some(Target::Statement(_)) => Expect::DescribeStatement,
                // A malformed Describe draws an error, which ends any entry.
                _ => Expect::DescribePortal,
            },
            fe::EXECUTE => {
                self.round_executes = true;
                self.copy_data_sent = false;
                Expect::Execute
            }
            fe::SYNC if self.copy_in => {
                self.copy_syncs_uncertain |= self.copy_data_sent;
                return;
            }
            fe::SYNC => {
                let mut entry = Entry::new(Expect::Sync, action);
                entry.may_change_status = std::mem::take(&mut self.round_executes);
                entry.after_copy_data = self.copy_data_sent;
                self.queue.push_back(entry);
                return;
            }
            fe::COPY_DONE | fe::COPY_FAIL if self.copy_in => {
                self.copy_in = false;
                return;
            }
            fe::COPY_DONE | fe::COPY_FAIL => Expect::CopyEnd,
            _ => return,
        };
        let mut entry = Entry::new(expect, action);
        entry.report = self.report_outcomes
            && matches!(expect, Expect::Parse | Expect::Close)
            && entry.action == Action::Forward;
        if expect == Expect::Execute && entry.action == Action::Check {
            entry.check_sent = Some(Instant::now());
        }
        self.queue.push_back(entry);
    }

    /// Records a Query the proxy rewrote by inserting statements of its own: the client
    /// sees everything except the results of the statements at `rewrite.hidden`; an error
    /// raised by one of them reaches the client as [`Route::InjectedError`].
    pub fn rewritten_query(&mut self, rewrite: Rewrite) {
        if self.desync.is_some() {
            return;
        }
        let mut entry = Entry::new(Expect::UntilReady, Action::Forward);
        entry.check_sent = (!rewrite.hidden.is_empty()).then(Instant::now);
        entry.hidden = Some(Box::new(HiddenStatements {
            indices: rewrite.hidden,
            insertions: rewrite.insertions,
            next: 0,
            current: 0,
            parsed: false,
        }));
        self.queue.push_back(entry);
    }

    /// While the reply to a rewritten Query is being relayed: the client's own position
    /// for an error position `p` (1-based characters of the rewritten string), or `None`
    /// when no rewrite is in progress or `p` points into inserted text.
    pub fn original_position(&self, p: u32) -> Option<u32> {
        let hidden = self.queue.front()?.hidden.as_ref()?;
        let mut shift = 0;
        for ins in &hidden.insertions {
            if p >= ins.at + ins.len {
                shift += ins.len;
            } else if p >= ins.at {
                return None;
            }
        }
        Some(p - shift)
    }

    /// Queues a reply the proxy makes itself, delivered in order (see [`Action::Synthesize`]).
    pub fn synthesize(&mut self, reply: Bytes) {
        if self.desync.is_none() {
            self.queue
                .push_back(Entry::new(Expect::Nothing, Action::Synthesize(reply)));
        }
    }

    /// Takes the next synthesized reply that is due (its earlier entries are complete).
    /// Call until `None` after pushing client messages and before routing a server message.
    pub fn take_synthesized(&mut self) -> Option<Bytes> {
        if self.queue.synthesized == 0 && self.queue.markers == 0 && !self.discarding {
            // Nothing to take, nothing to tidy (the usual case, on every server message).
            return None;
        }
        self.pop_markers();
        if self.discarding {
            // The server skips everything up to Sync; so does the proxy's own answer.
            self.skip_discarded();
            return None;
        }
        match self.queue.front() {
            Some(Entry {
                action: Action::Synthesize(_),
                ..
            }) => match self.queue.pop_front() {
                Some(Entry {
                    action: Action::Synthesize(bytes),
                    ..
                }) => Some(bytes),
                _ => None,
            },
            _ => None,
        }
    }

    /// Routes one server message (tag and body) and advances the queue.
    pub fn server_message(&mut self, tag: u8, body: &[u8]) -> Route {
        match tag {
            be::PARAMETER_STATUS | be::NOTIFICATION_RESPONSE => return Route::Forward,
            _ if self.desync.is_some() => return Route::Forward,
            _ => {}
        }
        self.pop_markers();
        if self.discarding {
            self.skip_discarded();
        }
        let Some(head) = self.queue.front_mut() else {
            // Unsolicited: a FATAL (shutdown, a timeout) or a notice reaches the client.
            // Anything else answers a message the proxy did not count: tracking is lost.
            let fatal = tag == be::ERROR_RESPONSE && be::is_fatal(body);
            if tag != be::NOTICE_RESPONSE && !fatal {
                self.desync = Some(Desync {
                    got: tag as char,
                    expected: "nothing (no reply outstanding)".into(),
                });
            }
            return Route::Forward;
        };
        let expect = head.expect;
        let mut check_ended = None;
        let route = match (&head.action, tag, &mut head.hidden) {
            (Action::Forward, be::READY_FOR_QUERY, _) => Route::Forward,
            (Action::Forward, _, Some(hidden)) => {
                let route = match (hidden.current_is_hidden(), tag) {
                    (true, be::ERROR_RESPONSE) => Route::InjectedError,
                    // Raised while PostgreSQL parsed the whole string (a nonstandard
                    // backslash, an identifier truncated): the client's.
                    (true, be::NOTICE_RESPONSE) if !hidden.parsed => Route::Forward,
                    (true, _) => Route::Drop,
                    (false, _) => Route::Forward,
                };
                if tag != be::NOTICE_RESPONSE {
                    hidden.parsed = true;
                }
                let done = matches!(tag, be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE);
                if hidden.current_is_hidden() && (done || tag == be::ERROR_RESPONSE) {
                    // The first inserted statement ended: time it once.
                    check_ended = head.check_sent.take().map(|sent| (sent, done));
                }
                if done {
                    hidden.statement_done();
                }
                route
            }
            (Action::Forward, _, None) => Route::Forward,
            (Action::Check, be::ERROR_RESPONSE, _) => Route::InjectedError,
            _ => Route::Drop,
        };
        if let Some((sent, ok)) = check_ended {
            self.check_ended(Some(sent), ok);
        }
        if tag == be::NOTICE_RESPONSE {
            return route;
        }
        match self.step(expect, tag, body) {
            Ok(true) => {
                if let Some(entry) = self.queue.pop_front() {
                    if entry.report {
                        self.outcomes.push_back(tag != be::ERROR_RESPONSE);
                    }
                    // A rewritten Query still holding its time never ran its check (an
                    // earlier statement of the string failed).
                    let ran = tag != be::ERROR_RESPONSE && entry.expect != Expect::UntilReady;
                    self.check_ended(entry.check_sent, ran);
                }
            }
            Ok(false) => {}
            Err(desync) => {
                self.desync = Some(desync);
                self.queue.clear();
                return Route::Forward;
            }
        }
        route
    }

    /// Applies one server message to the head entry; `Ok(true)` when the entry completes.
    fn step(&mut self, expect: Expect, tag: u8, body: &[u8]) -> Result<bool, Desync> {
        use Expect::*;
        let extended = !matches!(expect, UntilReady | Sync);
        if self.copy_running
            && matches!(tag, be::ERROR_RESPONSE | be::COMMAND_COMPLETE)
            && matches!(expect, UntilReady | Execute)
        {
            self.copy_running = false;
            if std::mem::take(&mut self.copy_syncs_uncertain) && tag == be::ERROR_RESPONSE {
                return Err(Desync {
                    got: 'E',
                    expected: "a COPY to succeed (a Sync sent amid its data may be answered)"
                        .into(),
                });
            }
        }
        match (expect, tag) {
            (_, be::ERROR_RESPONSE) if extended => {
                self.copy_in = false;
                self.discarding = true;
                Ok(true)
            }
            (UntilReady | Sync, be::ERROR_RESPONSE) => {
                self.copy_in = false;
                Ok(false)
            }
            (UntilReady | Sync, be::READY_FOR_QUERY) => {
                self.status = TxStatus::from_ready_body(body).unwrap_or(self.status);
                self.copy_in = false;
                self.copy_since_ready = false;
                self.discarding = false;
                Ok(true)
            }
            (UntilReady | Execute, be::COPY_IN_RESPONSE | be::COPY_BOTH_RESPONSE) => {
                self.start_copy_in();
                Ok(false)
            }
            (UntilReady, _) => Ok(false),
            (Parse, be::PARSE_COMPLETE)
            | (Bind, be::BIND_COMPLETE)
            | (Close, be::CLOSE_COMPLETE)
            | (DescribeStatement | DescribePortal, be::ROW_DESCRIPTION | be::NO_DATA)
            | (Execute, be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED) => {
                Ok(true)
            }
            (DescribeStatement, be::PARAMETER_DESCRIPTION)
            | (Execute, be::DATA_ROW | be::COPY_OUT_RESPONSE | be::COPY_DATA | be::COPY_DONE) => {
                Ok(false)
            }
            _ => Err(Desync {
                got: tag as char,
                expected: format!("a reply to {expect:?}"),
            }),
        }
    }

    /// The server entered COPY FROM STDIN: Syncs the client sent after the COPY and before
    /// its CopyDone/CopyFail are swallowed by the server.
    fn start_copy_in(&mut self) {
        self.copy_since_ready = true;
        self.copy_running = true;
        let mut i = 1;
        while let Some(entry) = self.queue.get(i) {
            match entry.expect {
                Expect::Sync => {
                    self.copy_syncs_uncertain |= entry.after_copy_data;
                    self.queue.remove(i);
                }
                Expect::CopyEnd => {
                    self.queue.remove(i);
                    return;
                }
                _ => i += 1,
            }
        }
        self.copy_in = true;
    }

    fn pop_markers(&mut self) {
        if self.queue.markers == 0 {
            return;
        }
        while matches!(
            self.queue.front(),
            Some(Entry {
                expect: Expect::CopyEnd,
                ..
            })
        ) {
            self.queue.pop_front();
        }
    }

    /// Drops the entries the server skips while discarding until Sync.
    fn skip_discarded(&mut self) {
        while let Some(head) = self.queue.front() {
            if head.expect == Expect::Sync {
                break;
            }
            if head.report {
                self.outcomes.push_back(false);
            }
            if let Some(entry) = self.queue.pop_front() {
                self.check_ended(entry.check_sent, false);
            }
        }
    }
}

#[cfg(test)]
mod tests;
