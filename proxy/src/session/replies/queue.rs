//! One expected reply ([`Entry`]: what completes it, what the client sees of it, what is
//! reported when it ends) and the queue of them in order, with the counts the hot path asks
//! about on every message.

use std::collections::VecDeque;
use std::time::Instant;

use super::action::Action;
use super::rewrite::HiddenStatements;

/// What completes an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
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
pub(super) struct Entry {
    pub(super) expect: Expect,
    pub(super) action: Action,
    /// For a rewritten Query: the inserted statements whose results are hidden.
    pub(super) hidden: Option<Box<HiddenStatements>>,
    /// Its ReadyForQuery may report another transaction status than the last one: a
    /// Query or FunctionCall, or a Sync ending a round that executed something.
    pub(super) may_change_status: bool,
    /// The client's own Parse or Close: its outcome is reported (see
    /// [`super::ReplyTracker::take_outcome`]).
    pub(super) report: bool,
    /// A Sync the client sent after CopyData: swallowed if the COPY it follows is still
    /// running when the server reads it, answered if the COPY already failed.
    pub(super) after_copy_data: bool,
    /// When a check this entry carries was sent, until its result is reported.
    pub(super) check_sent: Option<Instant>,
}

impl Entry {
    pub(super) fn new(expect: Expect, action: Action) -> Self {
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
/// respects once queued, except that a check's time is taken through
/// [`Queue::take_front_check`].
#[derive(Debug, Default)]
pub(super) struct Queue {
    entries: VecDeque<Entry>,
    /// Entries whose ReadyForQuery may change the transaction status.
    pub(super) status_changers: usize,
    /// [`Expect::CopyEnd`] markers.
    pub(super) markers: usize,
    /// Replies the proxy makes itself.
    pub(super) synthesized: usize,
    /// Entries carrying a check that was sent and has not ended ([`Entry::check_sent`]).
    pub(super) checks_waiting: usize,
}

impl Queue {
    pub(super) fn push_back(&mut self, entry: Entry) {
        self.count(&entry, true);
        self.entries.push_back(entry);
        self.check_counts();
    }

    pub(super) fn pop_front(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        self.count(&entry, false);
        self.check_counts();
        Some(entry)
    }

    pub(super) fn remove(&mut self, index: usize) -> Option<Entry> {
        let entry = self.entries.remove(index)?;
        self.count(&entry, false);
        self.check_counts();
        Some(entry)
    }

    pub(super) fn clear(&mut self) {
        *self = Queue::default();
    }

    pub(super) fn front(&self) -> Option<&Entry> {
        self.entries.front()
    }

    /// The head, for changes other than to what is counted.
    pub(super) fn front_mut(&mut self) -> Option<&mut Entry> {
        self.entries.front_mut()
    }

    /// The head's check ended while the head stays queued (the first inserted statement
    /// of a rewritten Query): takes its sending time, if it still had one.
    pub(super) fn take_front_check(&mut self) -> Option<Instant> {
        let sent = self.entries.front_mut()?.check_sent.take();
        if sent.is_some() {
            self.checks_waiting -= 1;
        }
        self.check_counts();
        sent
    }

    pub(super) fn get(&self, index: usize) -> Option<&Entry> {
        self.entries.get(index)
    }

    pub(super) fn len(&self) -> usize {
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
        adjust(&mut self.checks_waiting, entry.check_sent.is_some());
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
            debug_assert_eq!(self.checks_waiting, count(|e| e.check_sent.is_some()));
        }
    }
}
