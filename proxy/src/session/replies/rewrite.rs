//! A client Query the proxy rewrote by inserting statements of its own: which statement
//! results the client must not see ([`HiddenStatements`]), where the rewrite inserted text
//! (so that error positions can be given back in the client's terms), and how the timing of
//! the first inserted statement is taken.

use std::time::Instant;

use crate::protocol::backend as be;

use super::action::{Action, Route};
use super::queue::{Entry, Expect};
use super::ReplyTracker;

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

/// Which statement results of a rewritten Query the client must not see, and where the
/// rewrite inserted text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HiddenStatements {
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

    /// Routes a server message other than ReadyForQuery answering the rewritten Query, and
    /// moves on to the next statement when one ends. When an inserted statement ends, says
    /// whether it completed (the caller times the first one: [`super::queue::Queue::take_front_check`]).
    pub(super) fn route(&mut self, tag: u8, body: &[u8]) -> (Route, Option<bool>) {
        let route = match (self.current_is_hidden(), tag) {
            (true, be::ERROR_RESPONSE) => Route::InjectedError,
            // Raised while PostgreSQL parsed the whole string (a nonstandard
            // backslash, an identifier truncated): the client's. A check's own notice
            // can come first too (a DO block sends nothing before it runs).
            (true, be::NOTICE_RESPONSE) if !self.parsed && !be::is_fencegate_notice(body) => {
                Route::Forward
            }
            (true, _) => Route::Drop,
            (false, _) => Route::Forward,
        };
        if tag != be::NOTICE_RESPONSE {
            self.parsed = true;
        }
        let done = matches!(tag, be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE);
        let hidden_ended =
            (self.current_is_hidden() && (done || tag == be::ERROR_RESPONSE)).then_some(done);
        if done {
            self.statement_done();
        }
        (route, hidden_ended)
    }
}

impl ReplyTracker {
    /// Records a Query the proxy rewrote by inserting statements of its own: the client
    /// sees everything except the results of the statements at `rewrite.hidden`; an error
    /// raised by one of them reaches the client as [`Route::InjectedError`].
    pub fn rewritten_query(&mut self, rewrite: Rewrite) {
        if self.is_desynchronized() {
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
}
