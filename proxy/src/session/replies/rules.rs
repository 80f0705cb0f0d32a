//! Matching a server message to the head of the queue: where it goes (by the head's
//! [`Action`]), whether it completes the head (by what the head expects), and what the
//! server does after an ErrorResponse (it discards every message up to the next Sync). A
//! message that fits no rule desynchronizes the tracker.

use crate::protocol::backend as be;

use super::action::{Action, Desync, Route};
use super::queue::{Entry, Expect};
use super::{Mode, ReplyTracker};

impl ReplyTracker {
    /// Routes one server message (tag and body) and advances the queue.
    pub fn server_message(&mut self, tag: u8, body: &[u8]) -> Route {
        match tag {
            be::PARAMETER_STATUS | be::NOTIFICATION_RESPONSE => return Route::Forward,
            _ if self.is_desynchronized() => return Route::Forward,
            _ => {}
        }
        self.pop_markers();
        if matches!(self.mode, Mode::Discarding) {
            self.skip_discarded();
        }
        let Some(head) = self.queue.front_mut() else {
            self.unsolicited(tag, body);
            return Route::Forward;
        };
        let expect = head.expect;
        let (route, hidden_ended) = route(head, tag, body);
        if let Some(ok) = hidden_ended {
            // An inserted statement ended: the first one is the check, timed once.
            let sent = self.queue.take_front_check();
            self.check_ended(sent, ok);
        }
        if tag == be::NOTICE_RESPONSE {
            return route;
        }
        match self.step(expect, tag, body) {
            Ok(true) => {
                if let Some(entry) = self.queue.pop_front() {
                    let completed = tag != be::ERROR_RESPONSE;
                    // A rewritten Query still holding its time never ran its check (an
                    // earlier statement of the string failed).
                    let ran = completed && entry.expect != Expect::UntilReady;
                    self.entry_ended(entry, completed, ran);
                }
            }
            Ok(false) => {}
            Err(desync) => {
                self.mode = Mode::Desynchronized(desync);
                self.queue.clear();
                return Route::Forward;
            }
        }
        route
    }

    /// A server message with no reply outstanding: a FATAL (shutdown, a timeout) or a
    /// notice reaches the client. Anything else answers a message the proxy did not count:
    /// tracking is lost.
    fn unsolicited(&mut self, tag: u8, body: &[u8]) {
        let fatal = tag == be::ERROR_RESPONSE && be::is_fatal(body);
        if tag != be::NOTICE_RESPONSE && !fatal {
            self.mode = Mode::Desynchronized(Desync {
                got: tag as char,
                expected: "nothing (no reply outstanding)".into(),
            });
        }
    }

    /// Applies one server message to the head entry; `Ok(true)` when the entry completes.
    fn step(&mut self, expect: Expect, tag: u8, body: &[u8]) -> Result<bool, Desync> {
        use Expect::*;
        let extended = !matches!(expect, UntilReady | Sync);
        self.end_copy(expect, tag)?;
        match (expect, tag) {
            (_, be::ERROR_RESPONSE) if extended => {
                self.mode = Mode::Discarding;
                Ok(true)
            }
            (UntilReady | Sync, be::ERROR_RESPONSE) => {
                // The error ends a COPY, but not a discard (its Sync's ReadyForQuery does).
                if matches!(self.mode, Mode::CopyIn) {
                    self.mode = Mode::Normal;
                }
                Ok(false)
            }
            (UntilReady | Sync, be::READY_FOR_QUERY) => {
                self.ready_for_query(body);
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

    /// Drops the CopyDone/CopyFail markers at the head: they expect no reply.
    pub(super) fn pop_markers(&mut self) {
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
    pub(super) fn skip_discarded(&mut self) {
        while let Some(head) = self.queue.front() {
            if head.expect == Expect::Sync {
                break;
            }
            if let Some(entry) = self.queue.pop_front() {
                self.entry_ended(entry, false, false);
            }
        }
    }
}

/// Where a server message answering `head` goes (a notice included: it follows its entry),
/// and, when it ends an inserted statement of a rewritten Query, whether that completed.
fn route(head: &mut Entry, tag: u8, body: &[u8]) -> (Route, Option<bool>) {
    match (&head.action, tag, &mut head.hidden) {
        (Action::Forward, be::READY_FOR_QUERY, _) => (Route::Forward, None),
        (Action::Forward, _, Some(hidden)) => hidden.route(tag, body),
        (Action::Forward, _, None) => (Route::Forward, None),
        (Action::Check, be::ERROR_RESPONSE, _) => (Route::InjectedError, None),
        _ => (Route::Drop, None),
    }
}
