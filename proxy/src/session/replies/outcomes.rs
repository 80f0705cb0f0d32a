//! What the replies tell the rest of the proxy: the transaction status of every
//! ReadyForQuery and whether one still to come may change it, whether each of the client's
//! Parse and Close messages was completed or failed/skipped (so that the fence knows which
//! prepared statements really exist on the server), and how the proxy's own checks ended.

use std::time::Instant;

use crate::protocol::backend::TxStatus;

use super::action::CheckDone;
use super::queue::Entry;
use super::{Mode, ReplyTracker};

impl ReplyTracker {
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
        self.copy.since_ready || self.queue.status_changers > 0
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

    /// The proxy's checks sent to the server whose result has not come back. Once tracking
    /// is lost none is counted: nobody could tell when they end.
    pub fn checks_waiting(&self) -> usize {
        self.queue.checks_waiting
    }

    /// A ReadyForQuery answered the head entry: the server is ready for the next round, in
    /// the transaction status it reports (a malformed one leaves the last known status).
    pub(super) fn ready_for_query(&mut self, body: &[u8]) {
        self.status = TxStatus::from_ready_body(body).unwrap_or(self.status);
        self.mode = Mode::Normal;
        self.copy.since_ready = false;
    }

    /// Reports what an entry that left the queue says: whether the server `completed` its
    /// message (for a reported Parse or Close), and whether the check it carries `ran`.
    pub(super) fn entry_ended(&mut self, entry: Entry, completed: bool, ran: bool) {
        if entry.report {
            self.outcomes.push_back(completed);
        }
        self.check_ended(entry.check_sent, ran);
    }

    pub(super) fn check_ended(&mut self, sent: Option<Instant>, ok: bool) {
        if let Some(sent) = sent {
            self.checks_done.push(CheckDone {
                elapsed: sent.elapsed(),
                ok,
            });
        }
    }
}
