//! What the workers reported, gathered from their stdout lines as they arrive, and the
//! rules that judge it beyond the lock-set checker's: every error a worker saw is a
//! documented one, and every acknowledged add is in the history and in the final set.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fencegate_tests::lockset::{Add, Verdict};
use tokio::sync::watch;

/// Codes a worker may see during the suite's faults (docs/testing.md, "Fault suite"):
/// - `55Z01`: a stale token refused (the lock was lost);
/// - `57P01`: the session ended by the server: a stale holder's transaction preempted by
///   a newer holder, or PostgreSQL's immediate shutdown;
/// - `57P03`: PostgreSQL not accepting connections yet (starting, crash recovery);
/// - `08001`: a connection could not be made (the proxy, PostgreSQL or the link is down);
/// - `08006`, `08P01`: the proxy's answer when its server connection failed or spoke out of turn;
/// - `40001`, `40P01`: a serialization failure or a deadlock, retryable;
/// - `closed`: the connection ended without an ErrorResponse (a killed proxy, a reset link);
/// - `timeout`: no answer within the worker's operation timeout (a blackholed link).
pub const DOCUMENTED: [&str; 10] = [
    "55Z01", "57P01", "57P03", "08001", "08006", "08P01", "40001", "40P01", "closed", "timeout",
];

/// A park the worker reached: where, and with which lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parked {
    /// `inside` or `between`.
    pub inside: bool,
    /// The resource.
    pub resource: usize,
    /// The lease's token.
    pub token: i64,
}

/// One operation's end, as a worker reported it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Its COMMIT returned.
    Acked(Add),
    /// It failed with this code.
    Failed(String),
}

/// Everything the workers reported.
#[derive(Debug, Default)]
pub struct Record {
    /// Acknowledged adds, each with the worker and when it was reported.
    pub acked: Vec<(Add, usize, Instant)>,
    /// Acknowledged adds whose lease had expired by the COMMIT.
    pub late_acks: u64,
    /// Operations ended (acknowledged or failed), by worker.
    pub ops: BTreeMap<usize, u64>,
    /// Each worker's operation outcomes in order, with when they were reported.
    pub outcomes: BTreeMap<usize, Vec<(Outcome, Instant)>>,
    /// Errors by `kind code` (kind: op, side, connect).
    pub errors: BTreeMap<String, u64>,
    /// The first few lines of each undocumented code.
    pub undocumented: Vec<String>,
    /// The first line seen of each `kind code`, for the report.
    pub samples: BTreeMap<String, String>,
    /// Workers that reported `ready`.
    pub ready: Vec<usize>,
    /// Workers that reported `done`.
    pub done: Vec<usize>,
    /// Parks reached, by worker.
    pub parked: BTreeMap<usize, Vec<Parked>>,
    /// Lines that could not be read (a harness bug).
    pub garbled: Vec<String>,
}

impl Record {
    /// Errors with `code`, whatever their kind.
    pub fn count(&self, code: &str) -> u64 {
        self.errors
            .iter()
            .filter(|(k, _)| k.split(' ').nth(1) == Some(code))
            .map(|(_, n)| n)
            .sum()
    }

    /// Acknowledged adds of the workers in `group` reported after `since`.
    pub fn acks_since(&self, since: Instant, group: impl Fn(usize) -> bool) -> usize {
        self.acked
            .iter()
            .filter(|(_, w, at)| *at > since && group(*w))
            .count()
    }

    fn take(&mut self, worker: usize, line: &str) {
        let now = Instant::now();
        let parts: Vec<&str> = line.splitn(6, ' ').collect();
        match parts.as_slice() {
            ["ready"] => self.ready.push(worker),
            ["done", _] => self.done.push(worker),
            ["resumed"] => {}
            ["parked", place, r, token] => {
                let parked = Parked {
                    inside: *place == "inside",
                    resource: r.parse().unwrap_or(usize::MAX),
                    token: token.parse().unwrap_or(-1),
                };
                self.parked.entry(worker).or_default().push(parked);
            }
            ["ack", r, token, element, version, late] => {
                let add = Add {
                    resource: r.parse().unwrap_or(usize::MAX),
                    token: token.parse().unwrap_or(-1),
                    element: element.parse().unwrap_or(-1),
                    version: version.parse().unwrap_or(-1),
                };
                self.late_acks += u64::from(*late == "1");
                self.acked.push((add, worker, now));
                *self.ops.entry(worker).or_default() += 1;
                let outcomes = self.outcomes.entry(worker).or_default();
                outcomes.push((Outcome::Acked(add), now));
            }
            ["err", kind, code, ..] => {
                let key = format!("{kind} {code}");
                self.samples
                    .entry(key.clone())
                    .or_insert_with(|| line.to_string());
                *self.errors.entry(key).or_default() += 1;
                if !DOCUMENTED.contains(code) && self.undocumented.len() < 20 {
                    self.undocumented.push(format!("worker {worker}: {line}"));
                }
                if *kind == "op" {
                    *self.ops.entry(worker).or_default() += 1;
                    let outcomes = self.outcomes.entry(worker).or_default();
                    outcomes.push((Outcome::Failed(code.to_string()), now));
                }
            }
            _ => self.garbled.push(format!("worker {worker}: {line}")),
        }
    }
}

/// The record, shared by the readers of the workers' output and the test.
#[derive(Debug)]
pub struct Shared {
    record: Mutex<Record>,
    events: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            record: Mutex::default(),
            events: watch::Sender::new(0),
        }
    }
}

impl Shared {
    /// Takes one line of `worker`'s output.
    pub fn take(&self, worker: usize, line: &str) {
        self.record.lock().unwrap().take(worker, line);
        self.events.send_modify(|n| *n += 1);
    }

    /// Reads the record.
    pub fn read<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
        f(&self.record.lock().unwrap())
    }

    /// Waits until `f` finds what it looks for in the record (checked again at every event),
    /// failing the test after `limit`.
    pub async fn until<T>(
        &self,
        what: &str,
        limit: Duration,
        f: impl Fn(&Record) -> Option<T>,
    ) -> T {
        let mut events = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(found) = self.read(&f) {
                return found;
            }
            match tokio::time::timeout_at(deadline, events.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("fault suite: no {what} within {limit:?}"),
            }
        }
    }
}

/// Acknowledged adds that are missing: not in the final set (the checker's lost
/// acknowledged adds), or recorded in no history row as acknowledged.
pub fn missing_acknowledged(verdict: &Verdict) -> usize {
    let unrecorded = verdict
        .inconsistencies
        .iter()
        .filter(|text| text.starts_with("acknowledged"))
        .count();
    verdict.lost_acked.len() + unrecorded
}

impl Shared {
    /// The record, once nothing else holds it.
    pub fn into_record(self) -> Record {
        self.record.into_inner().unwrap()
    }
}
