//! Recording what goes to the server: one entry for each client or injected message the
//! server will answer (none for those it swallows during a COPY), and the replies the proxy
//! makes itself, delivered in order.

use std::time::Instant;

use bytes::Bytes;

use crate::protocol::frontend::{self as fe, FrontendMessage, Target};

use super::action::Action;
use super::queue::{Entry, Expect};
use super::{Mode, ReplyTracker};

impl ReplyTracker {
    /// Records a message on its way to the server (the client's own, or one the proxy
    /// injects) together with what to do with its replies.
    pub fn client_message(&mut self, msg: &FrontendMessage<'_>, action: Action) {
        if self.is_desynchronized() {
            return;
        }
        let in_copy = matches!(self.mode, Mode::CopyIn);
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
            fe::SYNC if in_copy => {
                // Swallowed by the COPY; whether rightly is known when it ends.
                self.copy.syncs_uncertain |= self.copy_data_sent;
                return;
            }
            fe::SYNC => {
                let mut entry = Entry::new(Expect::Sync, action);
                entry.may_change_status = std::mem::take(&mut self.round_executes);
                entry.after_copy_data = self.copy_data_sent;
                self.queue.push_back(entry);
                return;
            }
            fe::COPY_DONE | fe::COPY_FAIL if in_copy => {
                self.mode = Mode::Normal;
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

    /// Queues a reply the proxy makes itself, delivered in order (see [`Action::Synthesize`]).
    pub fn synthesize(&mut self, reply: Bytes) {
        if !self.is_desynchronized() {
            self.queue
                .push_back(Entry::new(Expect::Nothing, Action::Synthesize(reply)));
        }
    }

    /// Takes the next synthesized reply that is due (its earlier entries are complete).
    /// Call until `None` after pushing client messages and before routing a server message.
    pub fn take_synthesized(&mut self) -> Option<Bytes> {
        let discarding = matches!(self.mode, Mode::Discarding);
        if self.queue.synthesized == 0 && self.queue.markers == 0 && !discarding {
            // Nothing to take, nothing to tidy (the usual case, on every server message).
            return None;
        }
        self.pop_markers();
        if discarding {
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
}
