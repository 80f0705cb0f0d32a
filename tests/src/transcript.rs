//! Byte-level scenarios run the same way directly against Postgres and through a proxy with
//! [`NoopInjection`], for `injection.rs`: a [`Scenario`] is raw frontend bytes in [`Step`]s,
//! each run in a fresh database prepared with the same setup SQL, and every backend message
//! is compared, startup included. Masked, because they are provably different per
//! connection:
//! - BackendKeyData (pid and secret of a new backend);
//! - the sender pid of a NotificationResponse, after checking it is the session's own pid
//!   (from its BackendKeyData): a NOTIFY to self carries the receiving backend's pid.
//!
//! Nothing else is masked; scenarios avoid selecting bare table columns, whose
//! RowDescription would carry the table's OID (different in each database). Every scenario
//! also checks the exact number of injected messages, so a hook that was never called, or a
//! proxy that refused injections after losing track of replies, fails the test.

use std::sync::Arc;

use crate::cluster::{Cluster, SUPERUSER};
use crate::inject::NoopInjection;
use crate::wire::{self, tags, Message, WireClient};
use crate::TestProxy;

/// What to read back after a [`Step`]'s bytes.
pub enum Read {
    /// Read until this many ReadyForQuery messages have arrived.
    Ready(usize),
    /// Read exactly this many messages (for Flush and for the start of COPY FROM STDIN,
    /// where no ReadyForQuery comes until the client sends more).
    Count(usize),
}

/// One exchange: bytes written in one `write_all`, what to read back, and the tags the
/// replies must have where the scenario says.
pub struct Step {
    bytes: Vec<u8>,
    read: Read,
    tags: Option<&'static str>,
}

impl Step {
    /// `bytes`, then read until `n` ReadyForQuery messages have arrived.
    pub fn ready(bytes: Vec<u8>, n: usize) -> Step {
        Step {
            bytes,
            read: Read::Ready(n),
            tags: None,
        }
    }

    /// One simple Query of `sql`, then read until its ReadyForQuery.
    pub fn query(sql: &str) -> Step {
        Step::ready(crate::wire::msg::query(sql), 1)
    }

    /// `bytes`, then read exactly `n` messages.
    pub fn count(bytes: Vec<u8>, n: usize) -> Step {
        Step {
            bytes,
            read: Read::Count(n),
            tags: None,
        }
    }

    /// The same step, whose replies must have exactly these `tags` (see [`tags`]).
    pub fn expect_tags(self, tags: &'static str) -> Step {
        Step {
            tags: Some(tags),
            ..self
        }
    }
}

/// Tags of the frontend messages in `bytes` (all tagged: no startup packet).
fn frontend_tags(mut bytes: &[u8]) -> Vec<u8> {
    let mut tags = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        tags.push(bytes[0]);
        bytes = &bytes[1 + len..];
    }
    tags
}

/// Messages the hook must inject for `steps`: one per Query, five per Execute, minus five per
/// Execute sent in a failed transaction block (`skipped_executes`), where the hook abstains.
fn expected_injections(steps: &[Step], skipped_executes: usize) -> usize {
    let tags: Vec<u8> = steps.iter().flat_map(|s| frontend_tags(&s.bytes)).collect();
    let queries = tags.iter().filter(|&&t| t == b'Q').count();
    let executes = tags.iter().filter(|&&t| t == b'E').count();
    queries + 5 * (executes - skipped_executes)
}

/// Everything one connection received: startup, then one list per step. (What follows
/// Terminate is checked on its own in `faults.rs`.)
fn transcript(addr: std::net::SocketAddr, db: &str, steps: &[Step]) -> Vec<Vec<Message>> {
    let (mut client, startup) = WireClient::connect(addr, SUPERUSER, db)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let pid = startup
        .iter()
        .find(|m| m.0 == b'K')
        .map(|m| m.1[..4].to_vec())
        .expect("BackendKeyData");
    let mut out = vec![startup];
    for (i, step) in steps.iter().enumerate() {
        client.send(&step.bytes).expect("send step");
        let got = match step.read {
            Read::Ready(n) => client.read_until_ready(n),
            Read::Count(n) => (0..n).map(|_| client.read_message()).collect(),
        };
        let got = got.unwrap_or_else(|e| {
            panic!(
                "step {i} via {addr}: {e}; so far {:#?}",
                out.iter().map(|m| wire::render(m)).collect::<Vec<_>>()
            )
        });
        out.push(got);
    }
    out.iter().map(|msgs| mask(msgs, &pid)).collect()
}

/// Masks BackendKeyData and the own-pid field of NotificationResponse (see the module doc).
fn mask(messages: &[Message], pid: &[u8]) -> Vec<Message> {
    wire::normalize(messages)
        .into_iter()
        .map(|(tag, mut body)| {
            if tag == b'A' {
                assert_eq!(&body[..4], pid, "notification from another backend");
                body[..4].fill(0);
            }
            (tag, body)
        })
        .collect()
}

/// One byte-level scenario of [`same_both_ways`]; by default, no setup and no skipped
/// Executes.
#[derive(Default)]
pub struct Scenario {
    /// Names the databases and the failure messages.
    pub name: &'static str,
    /// SQL run in each fresh database first (none when empty).
    pub setup: &'static str,
    /// Executes sent in a failed transaction block, where the hook abstains.
    pub skipped_executes: usize,
    /// The exchanges, in order.
    pub steps: Vec<Step>,
}

/// Runs `steps` directly and through a proxy with [`NoopInjection`], each in a fresh database
/// set up with `setup`; asserts identical transcripts, the tags the steps expect and the
/// exact injection count. Returns
/// the (masked) direct transcript, startup first, for scenario-specific checks.
pub fn same_both_ways(scenario: Scenario) -> Vec<Vec<Message>> {
    let Scenario {
        name,
        setup,
        skipped_executes,
        steps,
    } = scenario;
    let steps = &steps[..];
    let cluster = Cluster::shared();
    let hooks = NoopInjection::new();
    let proxy = TestProxy::start(cluster.port(), |_| {}, Arc::new(hooks.clone()));
    let mut runs = Vec::new();
    for (side, addr) in [("d", cluster.endpoint().addr), ("p", proxy.addr())] {
        let db = cluster.create_database(&format!("inj_{name}_{side}"));
        if !setup.is_empty() {
            cluster.execute(&db, setup);
        }
        runs.push(transcript(addr, &db, steps));
    }
    let proxied = runs.pop().unwrap();
    let direct = runs.pop().unwrap();
    wire::assert_same_transcripts(name, &direct, &proxied);
    for (i, (step, replies)) in steps.iter().zip(&direct[1..]).enumerate() {
        if let Some(expected) = step.tags {
            assert_eq!(tags(replies), expected, "{name}: step {i}");
        }
    }
    assert_eq!(
        hooks.injected(),
        expected_injections(steps, skipped_executes),
        "injected message count"
    );
    direct
}
