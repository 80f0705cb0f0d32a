//! A session hook that injects harmless messages ahead of client traffic, to show that
//! injection is invisible to clients.
//!
//! [`NoopInjection`] puts a `SELECT 1` (simple Query, [`Action::Ignore`]) in front of every
//! client Query, and a whole named Parse/Bind/Execute/Close round (each [`Action::Check`]) in
//! front of every client Execute, and counts every message it injects. Comparing what a client
//! sees through the proxy with this hook against a direct connection tests the expected-reply
//! queue: any reply of ours that leaks, or any reply of the client's that is hidden, shows up
//! as a difference.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use fencegate::protocol::backend::TxStatus;
use fencegate::protocol::build;
use fencegate::protocol::frontend::{self as fe, FrontendMessage};
use fencegate::protocol::startup::StartupMessage;
use fencegate::session::hook::{Action, HookFactory, Injector, SessionHook};

/// Name of the statement the hook prepares (and closes first, so re-preparing never fails).
pub const NOOP_STATEMENT: &str = "fg_noop";
/// Name of the portal the hook binds, executes and closes.
pub const NOOP_PORTAL: &str = "fg_noop_p";

/// Makes [`NoopSession`] hooks that share one injection counter.
#[derive(Debug, Clone, Default)]
pub struct NoopInjection {
    injected: Arc<AtomicUsize>,
}

impl NoopInjection {
    /// A factory with its counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages injected so far, over all sessions of this factory.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }
}

impl HookFactory for NoopInjection {
    fn session_hook(&self, _startup: &StartupMessage) -> Option<Box<dyn SessionHook>> {
        Some(Box::new(NoopSession {
            injected: self.injected.clone(),
        }))
    }
}

/// The per-session hook of [`NoopInjection`].
#[derive(Debug)]
pub struct NoopSession {
    injected: Arc<AtomicUsize>,
}

impl NoopSession {
    fn send(&self, inject: &mut Injector<'_>, message: bytes::Bytes, action: Action) {
        // An injection the proxy refuses (tracking lost) is not counted, so a test that
        // asserts a positive count notices when nothing was injected.
        if inject.send(message, action).is_ok() {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl SessionHook for NoopSession {
    fn before_client_message(&mut self, msg: &FrontendMessage<'_>, inject: &mut Injector<'_>) {
        match msg.tag {
            fe::QUERY => self.send(inject, build::query("SELECT 1"), Action::Ignore),
            // In a failed transaction block every Parse but a transaction-ending one fails
            // with 25P02, and a Check injection must show its error to the client: that would
            // turn an extended-protocol ROLLBACK into an error. A real policy has the same
            // constraint, so the hook stays out of failed blocks (the status is the one of the
            // last ReadyForQuery, which is exact for a client that waits for it).
            fe::EXECUTE if inject.status() != TxStatus::Failed => {
                let round = [
                    build::close_statement(NOOP_STATEMENT),
                    build::parse(NOOP_STATEMENT, "SELECT 1"),
                    build::bind(NOOP_PORTAL, NOOP_STATEMENT, &[]),
                    build::execute(NOOP_PORTAL),
                    build::close_portal(NOOP_PORTAL),
                ];
                for message in round {
                    self.send(inject, message, Action::Check);
                }
            }
            _ => {}
        }
    }
}
