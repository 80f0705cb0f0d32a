//! COPY FROM STDIN: while it runs the server swallows Sync and Flush, so the Syncs a client
//! sends between the COPY and its CopyDone/CopyFail expect nothing (libpq and others send a
//! Sync right after Execute without knowing the statement is a COPY). Whether the client has
//! sent its CopyDone yet is [`super::Mode::CopyIn`]; the rest is [`CopyState`].

use std::mem;

use crate::protocol::backend as be;

use super::action::Desync;
use super::queue::Expect;
use super::{Mode, ReplyTracker};

/// What the tracker follows of a COPY FROM STDIN on the server. Three flags, not one state:
/// each ends at its own event (`running` at the COPY's CommandComplete or ErrorResponse,
/// `syncs_uncertain` when `running` ends, `since_ready` at ReadyForQuery), so each may
/// outlive the others when the server's messages come in an unusual order, and exact
/// behaviour depends on every combination.
#[derive(Debug, Default)]
pub(super) struct CopyState {
    /// A COPY FROM STDIN is running on the server (from CopyInResponse to its end).
    pub(super) running: bool,
    /// Syncs sent after CopyData were taken as swallowed by the running COPY: right if it
    /// succeeds, not knowable if it fails (the server answers those it had not read yet).
    pub(super) syncs_uncertain: bool,
    /// A COPY FROM STDIN started since the last ReadyForQuery: the server swallowed Syncs
    /// the client sent meanwhile, so rounds did not end where the client's Syncs were (see
    /// [`ReplyTracker::awaiting_ready`]).
    pub(super) since_ready: bool,
}

impl ReplyTracker {
    /// The server entered COPY FROM STDIN: Syncs the client sent after the COPY and before
    /// its CopyDone/CopyFail are swallowed by the server.
    pub(super) fn start_copy_in(&mut self) {
        self.copy.since_ready = true;
        self.copy.running = true;
        let mut i = 1;
        while let Some(entry) = self.queue.get(i) {
            match entry.expect {
                Expect::Sync => {
                    self.copy.syncs_uncertain |= entry.after_copy_data;
                    self.queue.remove(i);
                }
                Expect::CopyEnd => {
                    self.queue.remove(i);
                    return;
                }
                _ => i += 1,
            }
        }
        // The client has not ended its copy yet: its next Syncs are swallowed too.
        self.mode = Mode::CopyIn;
    }

    /// Notes the end of a running COPY (the head entry that started it is answered by
    /// CommandComplete or ErrorResponse). A COPY that failed after Syncs were taken as
    /// swallowed leaves the queue unknowable: those the server had not read are answered.
    pub(super) fn end_copy(&mut self, expect: Expect, tag: u8) -> Result<(), Desync> {
        let ends = matches!(tag, be::ERROR_RESPONSE | be::COMMAND_COMPLETE)
            && matches!(expect, Expect::UntilReady | Expect::Execute);
        if !(self.copy.running && ends) {
            return Ok(());
        }
        self.copy.running = false;
        if mem::take(&mut self.copy.syncs_uncertain) && tag == be::ERROR_RESPONSE {
            return Err(Desync {
                got: 'E',
                expected: "a COPY to succeed (a Sync sent amid its data may be answered)".into(),
            });
        }
        Ok(())
    }
}
