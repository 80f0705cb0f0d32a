//! What each of a session's prepared statements says, as far as the server has confirmed.
//!
//! A Parse or Close changes the server's statements only if the server completes it: a
//! Parse of a name that exists fails, any message after an error is skipped up to Sync,
//! and a skipped Close leaves the statement in place. So the proxy records each Parse and
//! Close as sent and applies it when the server's answer comes back
//! ([`PreparedStatements::answered`], fed by the relay in order).
//!
//! A Bind in the same round (before the next Sync) as an unanswered Parse or Close of its
//! statement runs only if they succeeded, since a failure skips the rest of the round: it
//! gets the text they leave. A Bind in a later round, while they are still unanswered (a
//! pipelining client), may meet either state: it gets every candidate text, and the fence
//! checks each. SQL-level `DEALLOCATE` and `DISCARD ALL` are not followed: they can only
//! leave a stale entry, which a later confirmed Parse of the name replaces, and a Bind of a
//! deallocated name fails on the server anyway.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::plan::Analysis;

/// A client Parse or Close, as sent.
#[derive(Debug)]
pub enum StatementOp {
    /// Parse of a statement name with the text's analysis.
    Parse(Vec<u8>, Arc<Analysis>),
    /// Close of a statement name.
    Close(Vec<u8>),
    /// Close of a portal, or a malformed message: nothing to apply, but answered in turn.
    Other,
}

impl StatementOp {
    fn name(&self) -> Option<&[u8]> {
        match self {
            StatementOp::Parse(name, _) | StatementOp::Close(name) => Some(name),
            StatementOp::Other => None,
        }
    }
}

/// The session's prepared statements: confirmed ones, and operations awaiting answers.
#[derive(Debug, Default)]
pub struct PreparedStatements {
    /// The unnamed statement, apart: drivers re-parse it for every statement, so it is kept
    /// out of the map (no hashing, no key allocation per round trip).
    unnamed: Option<Arc<Analysis>>,
    confirmed: HashMap<Vec<u8>, Arc<Analysis>>,
    /// Sent, unanswered, oldest first, with the round each was sent in.
    pending: VecDeque<(u64, StatementOp)>,
    /// How many of `pending` name each statement (the unnamed one apart, as above): a Bind
    /// of a name with none skips the walk over `pending`, which a pipelining client can
    /// make long.
    pending_unnamed: usize,
    pending_named: HashMap<Vec<u8>, usize>,
    /// Rounds the client has ended (Syncs and Queries sent).
    round: u64,
}

impl PreparedStatements {
    /// The client sent a Parse or a Close.
    pub fn sent(&mut self, op: StatementOp) {
        match op.name() {
            None => {}
            Some(b"") => self.pending_unnamed += 1,
            Some(name) => match self.pending_named.get_mut(name) {
                Some(count) => *count += 1,
                None => {
                    self.pending_named.insert(name.to_vec(), 1);
                }
            },
        }
        self.pending.push_back((self.round, op));
    }

    /// The client ended a round (Sync, or a simple Query).
    pub fn round_ended(&mut self) {
        self.round += 1;
    }

    /// The server answered the oldest unanswered Parse or Close.
    pub fn answered(&mut self, completed: bool) {
        let Some((_, op)) = self.pending.pop_front() else {
            return;
        };
        match op.name() {
            None => {}
            Some(b"") => self.pending_unnamed -= 1,
            Some(name) => {
                if let Some(count) = self.pending_named.get_mut(name) {
                    *count -= 1;
                    if *count == 0 {
                        self.pending_named.remove(name);
                    }
                }
            }
        }
        if !completed {
            return;
        }
        match op {
            StatementOp::Parse(name, analysis) if name.is_empty() => self.unnamed = Some(analysis),
            StatementOp::Close(name) if name.is_empty() => self.unnamed = None,
            StatementOp::Parse(name, analysis) => {
                self.confirmed.insert(name, analysis);
            }
            StatementOp::Close(name) => {
                self.confirmed.remove(&name);
            }
            StatementOp::Other => {}
        }
    }

    /// The texts a Bind of `name` sent now may execute (see the module docs). A name with
    /// no statement gives [`Analysis::unknown`] (a statement prepared with SQL PREPARE, which
    /// carries no annotation, or one that does not exist, whose Bind fails).
    pub fn candidates(&self, name: &[u8]) -> Vec<Arc<Analysis>> {
        let unknown = || Arc::new(Analysis::unknown());
        let confirmed = if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.confirmed.get(name)
        };
        let pending = match name {
            b"" => self.pending_unnamed > 0,
            _ => self.pending_named.contains_key(name),
        };
        if !pending {
            return vec![confirmed.cloned().unwrap_or_else(unknown)];
        }
        let state = |op: &StatementOp| match op {
            StatementOp::Parse(_, analysis) => analysis.clone(),
            _ => unknown(),
        };
        let ops = || {
            self.pending
                .iter()
                .filter(move |(_, op)| op.name() == Some(name))
        };
        if let Some((_, op)) = ops().rev().find(|(round, _)| *round == self.round) {
            return vec![state(op)];
        }
        let mut out = vec![confirmed.cloned().unwrap_or_else(unknown)];
        for (_, op) in ops() {
            let candidate = state(op);
            if !out.iter().any(|c| **c == *candidate) {
                out.push(candidate);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FenceMode;
    use crate::fence::plan::FencePolicy;

    fn analysis(sql: &str) -> Arc<Analysis> {
        let policy = FencePolicy {
            mode: FenceMode::All,
            grace_ms: 5000,
            require_token_tables: Vec::new(),
        };
        Arc::new(policy.analyze(sql.as_bytes()))
    }

    const WRITE: &str = "UPDATE t SET v = 1 /*fencing_resource='r',fencing_token='1'*/";

    fn parse(name: &str, a: &Arc<Analysis>) -> StatementOp {
        StatementOp::Parse(name.as_bytes().to_vec(), a.clone())
    }

    fn close(name: &str) -> StatementOp {
        StatementOp::Close(name.as_bytes().to_vec())
    }

    /// Sends one operation and ends the round (a Sync).
    fn round(p: &mut PreparedStatements, op: StatementOp) {
        p.sent(op);
        p.round_ended();
    }

    /// The server's answers to the oldest rounds in flight, in order.
    fn answers(p: &mut PreparedStatements, succeeded: &[bool]) {
        for &ok in succeeded {
            p.answered(ok);
        }
    }

    /// A session in which `name` was parsed as a fenced write, the Parse answered.
    fn prepared_write(name: &str) -> (PreparedStatements, Arc<Analysis>) {
        let mut p = PreparedStatements::default();
        let write = analysis(WRITE);
        round(&mut p, parse(name, &write));
        p.answered(true);
        (p, write)
    }

    fn texts(p: &PreparedStatements, name: &str) -> Vec<Analysis> {
        p.candidates(name.as_bytes())
            .iter()
            .map(|a| (**a).clone())
            .collect()
    }

    #[test]
    fn a_parse_counts_once_the_server_completes_it() {
        let mut p = PreparedStatements::default();
        let write = analysis(WRITE);
        p.sent(parse("s", &write));
        // Same round: a Bind runs only if the Parse succeeded.
        assert_eq!(texts(&p, "s"), [(*write).clone()]);
        p.round_ended();
        // Later round, unanswered: either.
        assert_eq!(texts(&p, "s"), [Analysis::unknown(), (*write).clone()]);
        p.answered(true);
        assert_eq!(texts(&p, "s"), [(*write).clone()]);
    }

    #[test]
    fn a_failed_parse_or_close_changes_nothing() {
        let (mut p, write) = prepared_write("s");
        // A second Parse of the name fails on the server; a Close skipped after an error.
        p.sent(StatementOp::Parse(b"s".to_vec(), analysis("COMMIT")));
        p.sent(StatementOp::Other);
        round(&mut p, close("s"));
        answers(&mut p, &[false, true, false]);
        assert_eq!(texts(&p, "s"), [(*write).clone()]);
        p.sent(close("s"));
        p.answered(true);
        assert_eq!(texts(&p, "s"), [Analysis::unknown()]);
    }

    #[test]
    fn the_last_operation_of_the_current_round_decides() {
        let mut p = PreparedStatements::default();
        let first = analysis("SELECT 1");
        round(&mut p, parse("", &first));
        let second = analysis("SELECT 2 /*fencing_resource='r',fencing_token='1'*/");
        p.sent(parse("", &second));
        assert_eq!(texts(&p, ""), [(*second).clone()]);
        p.round_ended();
        assert_eq!(
            texts(&p, ""),
            [Analysis::unknown(), (*first).clone(), (*second).clone()]
        );
        answers(&mut p, &[true, true]);
        assert_eq!(texts(&p, ""), [(*second).clone()]);
    }

    #[test]
    fn the_unnamed_statement_follows_the_same_rules() {
        let (mut p, write) = prepared_write("");
        assert_eq!(texts(&p, ""), [(*write).clone()]);
        assert_eq!(
            texts(&p, "s"),
            [Analysis::unknown()],
            "named ones are apart"
        );
        p.sent(StatementOp::Parse(Vec::new(), analysis("COMMIT")));
        p.round_ended();
        p.answered(false);
        assert_eq!(
            texts(&p, ""),
            [(*write).clone()],
            "a failed Parse changes nothing"
        );
        round(&mut p, close(""));
        p.answered(true);
        assert_eq!(texts(&p, ""), [Analysis::unknown()]);
    }

    #[test]
    fn a_deep_pipeline_keeps_each_name_apart() {
        let (mut p, s1) = prepared_write("s1");
        // A pipelining client: many rounds in flight, each parsing the unnamed statement.
        let unnamed = analysis("SELECT 1");
        for _ in 0..1000 {
            round(&mut p, parse("", &unnamed));
        }
        assert_eq!(texts(&p, "s1"), [(*s1).clone()]);
        assert_eq!(texts(&p, ""), [Analysis::unknown(), (*unnamed).clone()]);
        // A Close of s1 still in flight: either state is possible.
        round(&mut p, close("s1"));
        assert_eq!(texts(&p, "s1"), [(*s1).clone(), Analysis::unknown()]);
        for _ in 0..1000 {
            p.answered(true);
        }
        assert_eq!(texts(&p, ""), [(*unnamed).clone()]);
        assert_eq!(texts(&p, "s1"), [(*s1).clone(), Analysis::unknown()]);
        p.answered(true);
        assert_eq!(texts(&p, "s1"), [Analysis::unknown()]);
        assert_eq!((p.pending_unnamed, p.pending_named.len()), (0, 0));
    }
}
