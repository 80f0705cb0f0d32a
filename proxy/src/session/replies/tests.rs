//! Unit tests of the expected-reply queue: scripted client and server message sequences,
//! one table row a case. A script is a list of [`Step`]s run against a fresh tracker; a
//! failure names the case and the step. Unless a case says otherwise, tracking must still
//! hold (no desync) at its end.

use bytes::Bytes;

use super::*;
use crate::protocol::backend::TxStatus;
use crate::protocol::frontend::FrontendMessage;

use Step::*;

/// The body of a FATAL ErrorResponse.
const FATAL: &[u8] = b"SFATAL\0VFATAL\0C57P01\0\0";

#[derive(Debug)]
enum Step {
    /// The client's own messages, one per tag, with empty bodies.
    Send(&'static str),
    /// Messages the proxy injects with this action, one per tag, with empty bodies.
    Inject(&'static str, Action),
    /// One message with a body (a Describe of a portal or a statement).
    Message(u8, &'static [u8], Action),
    /// A Query the proxy rewrote, hiding the results of the statements at these positions.
    Rewritten(&'static [u32]),
    /// A reply the proxy makes itself.
    Synthesize(&'static [u8]),
    /// What [`ReplyTracker::take_synthesized`] gives now.
    Take(Option<&'static [u8]>),
    /// Server messages by tag (empty bodies; ReadyForQuery reports idle) and the tags the
    /// client sees: lower case for a [`Route::InjectedError`].
    Reply(&'static str, &'static str),
    /// One server message with this body, and where it goes.
    Server(u8, &'static [u8], Route),
    /// No reply is outstanding.
    Idle,
    /// Whether tracking was lost.
    Desynced(bool),
    /// What [`ReplyTracker::awaiting_ready`] says.
    Awaiting(bool),
    /// What [`ReplyTracker::status`] says.
    Status(TxStatus),
    /// Keep the outcomes of the client's Parse and Close messages.
    ReportOutcomes,
    /// Every outcome not taken yet, oldest first.
    Outcomes(&'static [bool]),
    /// Whether each check that ended since the last look ran, oldest first.
    Checks(&'static [bool]),
    /// What [`ReplyTracker::checks_waiting`] says.
    Waiting(usize),
}

type Case = (&'static str, &'static [Step]);

fn send(t: &mut ReplyTracker, tags: &str, action: &Action) {
    for tag in tags.bytes() {
        t.client_message(&FrontendMessage { tag, body: b"" }, action.clone());
    }
}

/// Feeds server tags and returns the ones the client sees, as a string.
fn reply(t: &mut ReplyTracker, tags: &str) -> String {
    let mut seen = String::new();
    for tag in tags.bytes() {
        let body: &[u8] = if tag == b'Z' { b"I" } else { b"" };
        match t.server_message(tag, body) {
            Route::Forward => seen.push(tag as char),
            Route::InjectedError => seen.push((tag as char).to_ascii_lowercase()),
            Route::Drop => {}
        }
    }
    seen
}

fn hide(indices: &[u32]) -> Rewrite {
    Rewrite {
        hidden: indices.to_vec(),
        insertions: Vec::new(),
    }
}

/// Runs one step; `at` names the case and the step for failure messages.
fn step(t: &mut ReplyTracker, step: &Step, at: &str) {
    match step {
        Send(tags) => send(t, tags, &Action::Forward),
        Inject(tags, action) => send(t, tags, action),
        Message(tag, body, action) => {
            t.client_message(&FrontendMessage { tag: *tag, body }, action.clone())
        }
        Rewritten(indices) => t.rewritten_query(hide(indices)),
        Synthesize(bytes) => t.synthesize(Bytes::from_static(bytes)),
        Take(want) => {
            let want = want.map(Bytes::from_static);
            assert_eq!(t.take_synthesized(), want, "{at}");
        }
        Reply(tags, seen) => assert_eq!(reply(t, tags), *seen, "{at}"),
        Server(tag, body, route) => assert_eq!(t.server_message(*tag, body), *route, "{at}"),
        Idle => assert!(t.is_idle(), "{at}"),
        Desynced(want) => assert_eq!(t.desync().is_some(), *want, "{at}: {:?}", t.desync()),
        Awaiting(want) => assert_eq!(t.awaiting_ready(), *want, "{at}"),
        Status(want) => assert_eq!(t.status(), *want, "{at}"),
        ReportOutcomes => t.report_outcomes(),
        Outcomes(want) => {
            let got: Vec<bool> = std::iter::from_fn(|| t.take_outcome()).collect();
            assert_eq!(got, *want, "{at}");
        }
        Checks(want) => {
            let got: Vec<bool> = t.take_checks_done().map(|done| done.ok).collect();
            assert_eq!(got, *want, "{at}");
        }
        Waiting(want) => assert_eq!(t.checks_waiting(), *want, "{at}"),
    }
}

fn run(cases: &[Case]) {
    for (name, steps) in cases {
        let mut t = ReplyTracker::default();
        for (i, s) in steps.iter().enumerate() {
            step(&mut t, s, &format!("case {name:?}, step {i} ({s:?})"));
        }
        if !steps.iter().any(|s| matches!(s, Desynced(true))) {
            assert_eq!(t.desync(), None, "case {name:?}: tracking was lost");
        }
    }
}

#[test]
fn simple_query_and_function_call() {
    run(&[
        (
            "a simple query forwards everything until ready",
            &[Send("Q"), Reply("TDDCTCZ", "TDDCTCZ"), Idle],
        ),
        (
            "an injected query is hidden, its error included",
            &[
                Inject("Q", Action::Ignore),
                Send("Q"),
                Reply("NTDCZ", ""),
                Reply("TDCZ", "TDCZ"),
                Inject("Q", Action::Ignore),
                Send("Q"),
                Reply("EZ", ""),
                Reply("CZ", "CZ"),
                Idle,
            ],
        ),
        (
            "a function call waits for ready",
            &[Send("F"), Reply("VZ", "VZ"), Idle],
        ),
        (
            "notices follow their entry and async messages always pass",
            &[
                Inject("Q", Action::Ignore),
                Reply("NSAC", "SA"),
                Reply("Z", ""),
                Reply("NA", "NA"),
            ],
        ),
        (
            "ready for query updates the status",
            &[
                Send("Q"),
                Server(b'Z', b"T", Route::Forward),
                Status(TxStatus::InBlock),
                Inject("Q", Action::Ignore),
                Server(b'Z', b"E", Route::Drop),
                Status(TxStatus::Failed),
            ],
        ),
    ]);
}

#[test]
fn extended_protocol() {
    run(&[
        (
            "an extended batch with an injected check",
            &[
                Send("PB"),
                Message(b'D', b"P\0", Action::Forward),
                Inject("PBE", Action::Check),
                Send("ES"),
                Reply("12T" /* client */, "12T"),
                Reply("12DC" /* injected */, ""),
                Reply("DDCZ", "DDCZ"),
                Idle,
            ],
        ),
        (
            "an error in an injected check reaches the client and skips to Sync",
            &[
                Send("P"),
                Inject("BE", Action::Check),
                Send("BES"),
                Reply("1EZ", "1eZ"),
                Idle,
            ],
        ),
        (
            // Segment 1 fails at Bind; segment 2 succeeds.
            "a client error mid-pipeline drops entries until its own Sync only",
            &[
                Send("PBESPBES"),
                Reply("1EZ", "1EZ"),
                Reply("12CZ", "12CZ"),
                Idle,
            ],
        ),
        (
            // Messages sent after the error, before Sync, get no reply.
            "an error before the client has sent Sync keeps discarding",
            &[
                Send("P"),
                Reply("E", "E"),
                Send("BES"),
                Reply("Z", "Z"),
                Send("Q"),
                Reply("CZ", "CZ"),
                Idle,
            ],
        ),
        (
            "a Describe of a statement has two replies",
            &[
                Message(b'D', b"Sname\0", Action::Ignore),
                Send("S"),
                Reply("tT", ""),
                Reply("Z", "Z"),
            ],
        ),
        (
            "Flush expects nothing and a suspended portal completes Execute",
            &[
                Send("EH"),
                Reply("DDs", "DDs"),
                Idle,
                Send("ES"),
                Reply("DCZ", "DCZ"),
            ],
        ),
        (
            // A deferred constraint fails at the implicit commit of Sync.
            "an error at Sync, then ready",
            &[Send("ES"), Reply("CEZ", "CEZ"), Idle],
        ),
    ]);
}

#[test]
fn copy() {
    run(&[
        (
            // libpq/tokio-postgres: Bind, Execute, Sync; then CopyData, CopyDone, Sync. The
            // Sync amid the data is swallowed by the server.
            "COPY FROM STDIN (extended) swallows the Sync sent before its data",
            &[
                Send("BES"),
                Reply("2G", "2G"),
                Send("ddScS"),
                Reply("CZ", "CZ"),
                Idle,
            ],
        ),
        (
            "COPY FROM STDIN pipelined all at once",
            &[
                Send("BESdcS"),
                Reply("2GCZ", "2GCZ"),
                Idle,
                Send("Q"),
                Reply("CZ", "CZ"),
            ],
        ),
        (
            "COPY FROM STDIN by a simple query, ended by CopyFail",
            &[
                Send("Q"),
                Reply("G", "G"),
                Send("df"),
                Reply("EZ", "EZ"),
                Idle,
            ],
        ),
        (
            // The client has not noticed yet and finishes its copy; the server ignores it.
            "a COPY FROM STDIN error while the client still sends data",
            &[
                Send("Q"),
                Reply("GE", "GE"),
                Send("dc"),
                Reply("Z", "Z"),
                Send("Q"),
                Reply("CZ", "CZ"),
                Idle,
            ],
        ),
        (
            "COPY TO STDOUT rows belong to Execute",
            &[
                Inject("E", Action::Check),
                Send("S"),
                Reply("HddcC", ""),
                Reply("Z", "Z"),
            ],
        ),
    ]);
}

#[test]
fn synthesized_replies_and_desync() {
    run(&[
        (
            "a synthesized reply waits for earlier entries",
            &[
                Send("P"),
                Synthesize(b"3"),
                Send("S"),
                Take(None),
                Reply("1", "1"),
                Take(Some(b"3")),
                Reply("Z", "Z"),
                Idle,
            ],
        ),
        (
            "a synthesized reply is skipped after an error",
            &[
                Send("P"),
                Synthesize(b"3"),
                Send("S"),
                Reply("E", "E"),
                Take(None),
                Reply("Z", "Z"),
                Idle,
            ],
        ),
        (
            "a mismatch desyncs, and then everything is forwarded",
            &[
                Inject("P", Action::Ignore),
                Reply("2", "2"),
                Desynced(true),
                Inject("Q", Action::Ignore),
                Reply("CZ", "CZ"),
            ],
        ),
        (
            // A FATAL with no reply outstanding (shutdown, a timeout) keeps tracking; any
            // other unsolicited error answers something the proxy did not count.
            "an unsolicited error is forwarded",
            &[
                Server(b'E', FATAL, Route::Forward),
                Desynced(false),
                Reply("E", "E"),
                Desynced(true),
            ],
        ),
    ]);
}

#[test]
fn rewritten_queries() {
    run(&[
        (
            // "check; BEGIN; check; UPDATE; COMMIT" where positions 0 and 2 are the proxy's.
            "a rewritten query hides the inserted statements only",
            &[
                Rewritten(&[0, 2]),
                Reply("TDC" /* check */, ""),
                Reply("C" /* BEGIN */, "C"),
                Reply("NTDC" /* check with a notice */, ""),
                Reply("NC" /* UPDATE */, "NC"),
                Reply("CZ" /* COMMIT */, "CZ"),
                Idle,
            ],
        ),
        (
            // The client's own error in an unhidden statement is an ordinary error.
            "an error in an inserted statement reaches the client",
            &[
                Rewritten(&[1]),
                Reply("C" /* BEGIN */, "C"),
                Reply("EZ" /* check fails, rest skipped */, "eZ"),
                Idle,
                Rewritten(&[0]),
                Reply("TDCEZ", "EZ"),
            ],
        ),
        (
            "a rewritten COPY statement keeps its copy messages",
            &[
                Rewritten(&[0]),
                Reply("TDCG", "G"),
                Send("dc"),
                Reply("CZ", "CZ"),
                Idle,
            ],
        ),
    ]);
}

#[test]
fn error_positions_map_back_to_the_clients_text() {
    let mut t = ReplyTracker::default();
    assert_eq!(t.original_position(5), None);
    // Client text "BEGIN; UPDATE x" rewritten as "BEGIN;CHECK; UPDATE x" (5 chars at 7).
    t.rewritten_query(Rewrite {
        hidden: vec![1],
        insertions: vec![Insertion { at: 7, len: 6 }],
    });
    assert_eq!(t.original_position(3), Some(3));
    assert_eq!(t.original_position(9), None);
    assert_eq!(t.original_position(14), Some(8));
}

#[test]
fn transaction_status_and_outcomes() {
    run(&[
        (
            // A round that prepares or closes but executes nothing cannot begin or end a
            // transaction; a round that executes can, once it has ended; Query and
            // FunctionCall always can.
            "only replies that may change the transaction status unsettle it",
            &[
                Awaiting(false),
                Send("PDCS"),
                Awaiting(false),
                Send("BE"),
                Awaiting(false), // the round has not ended yet
                Send("S"),
                Awaiting(true),
                Reply("1n3Z2CZ", "1n3Z2CZ"),
                Desynced(false),
                Awaiting(false),
                Send("Q"),
                Awaiting(true),
                Reply("CZ", "CZ"),
                Awaiting(false),
                Send("F"),
                Awaiting(true),
                Reply("CZ", "CZ"),
                Awaiting(false),
            ],
        ),
        (
            // Injected ones are not reported; skipped ones are, as failed.
            "the outcomes of the client's Parse and Close, in order",
            &[
                ReportOutcomes,
                Send("PC"),
                Inject("P", Action::Check),
                Send("PS"),
                Reply("13", "13"),
                Outcomes(&[true, true]),
                Reply("EZ", "eZ"),
                Outcomes(&[false]),
                Idle,
            ],
        ),
        (
            "outcomes are not kept unless asked for",
            &[Send("PCS"), Reply("13Z", "13Z"), Outcomes(&[])],
        ),
    ]);
}

#[test]
fn checks_done() {
    run(&[
        (
            "each check of a rewritten query is reported once, with whether it ran",
            &[
                // check; statement. The check's CommandComplete ends it.
                Rewritten(&[0]),
                Reply("TDC", ""),
                Checks(&[true]),
                Reply("CZ", "CZ"),
                Checks(&[]), // reported once
                // The check raises: reported as not run.
                Rewritten(&[0]),
                Reply("EZ", "eZ"),
                Checks(&[false]),
                // A statement before the check fails: the check never runs.
                Rewritten(&[1]),
                Reply("EZ", "EZ"),
                Checks(&[false]),
                // A rewrite that inserted nothing times nothing.
                Rewritten(&[]),
                Reply("CZ", "CZ"),
                Checks(&[]),
            ],
        ),
        (
            "an injected extended check is timed by its Execute",
            &[
                Send("P"),
                Inject("PBE", Action::Check),
                Send("BES"),
                Reply("112DC", "1"),
                Checks(&[true]),
                Reply("2DCZ", "2DCZ"),
                // The check's Parse fails: its Execute is skipped, and reported as not run.
                Send("P"),
                Inject("PBE", Action::Check),
                Send("BES"),
                Reply("1E", "1e"),
                Reply("Z", "Z"),
                Checks(&[false]),
                Idle,
            ],
        ),
    ]);
}

#[test]
fn checks_waiting() {
    run(&[
        (
            "a check waits from its sending until its result",
            &[
                Waiting(0),
                Rewritten(&[0]),
                Waiting(1),
                Reply("T", ""),
                Waiting(1),
                Reply("DC", ""),
                Waiting(0),
                Reply("CZ", "CZ"),
                Waiting(0),
                // Extended: the Execute carries it; two batches in flight count two.
                Send("P"),
                Inject("PBE", Action::Check),
                Send("BES"),
                Send("P"),
                Inject("PBE", Action::Check),
                Send("BES"),
                Waiting(2),
                Reply("112DC", "1"),
                Waiting(1),
                // A failed Parse of the check: its Execute is skipped, which the
                // tracker learns from the next message (the Sync's ReadyForQuery).
                Reply("2DCZ1E", "2DCZ1e"),
                Waiting(1),
                Reply("Z", "Z"),
                Waiting(0),
                Idle,
            ],
        ),
        (
            "a check that never runs stops waiting with the entry",
            &[
                Rewritten(&[1]),
                Waiting(1),
                Reply("EZ", "EZ"),
                Waiting(0),
                Rewritten(&[0]),
                Reply("EZ", "eZ"),
                Waiting(0),
            ],
        ),
        (
            "once tracking is lost no check is counted",
            &[
                Send("P"),
                Inject("PBE", Action::Check),
                Send("BES"),
                Waiting(1),
                // A DataRow cannot answer a Parse.
                Reply("D", "D"),
                Desynced(true),
                Waiting(0),
                Rewritten(&[0]),
                Waiting(0),
            ],
        ),
    ]);
}
