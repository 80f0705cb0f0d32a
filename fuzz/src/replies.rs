//! A structure-aware check of the reply tracker, the part of the proxy that decides which
//! server messages a client sees. The input is decoded (with `arbitrary`) into one of two
//! scripts:
//! - a modelled conversation: client requests and requests the proxy injects, simple and
//!   extended, succeeding or failing, pipelined in any grouping, answered the way
//!   PostgreSQL answers them. Every reply to the client's own requests must reach the
//!   client, every reply to an injected one must be hidden, and the tracker must end idle
//!   and in step.
//! - raw messages in any order, tags and bodies arbitrary: the tracker must not panic, and
//!   while the proxy injected nothing, it must hide nothing.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use fencegate::protocol::backend::TxStatus;
use fencegate::protocol::frontend::FrontendMessage;
use fencegate::session::replies::{Action, ReplyTracker, Route};

/// One request in a modelled conversation.
#[derive(Debug, Arbitrary)]
struct Request {
    /// Sent by the proxy (replies hidden) rather than by the client.
    injected: bool,
    /// Extended protocol (Parse, Bind, Execute, Sync) rather than a simple Query.
    extended: bool,
    /// Rows the statement returns (a few).
    rows: u8,
    /// The statement fails: an ErrorResponse instead of its result.
    fails: bool,
    /// Answered only after the next request was sent (pipelining).
    pipelined: bool,
}

/// One raw step.
#[derive(Debug, Arbitrary)]
enum Raw {
    Client { tag: u8, body: Vec<u8> },
    Server { tag: u8, body: Vec<u8> },
}

#[derive(Debug, Arbitrary)]
enum Script {
    Modelled(Vec<Request>),
    Raw(Vec<Raw>),
}

/// Decodes the input into a script and runs it.
pub fn replies(data: &[u8]) {
    match Script::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(Script::Modelled(requests)) => modelled(&requests),
        Ok(Script::Raw(steps)) => raw(&steps),
        Err(_) => {}
    }
}

fn send(tracker: &mut ReplyTracker, tag: u8, body: &[u8], action: &Action) {
    tracker.client_message(&FrontendMessage { tag, body }, action.clone());
}

/// The client's (or the proxy's) messages for one request.
fn sent(tracker: &mut ReplyTracker, request: &Request) {
    let action = if request.injected {
        Action::Ignore
    } else {
        Action::Forward
    };
    if request.extended {
        send(tracker, b'P', b"\0SELECT 1\0\0\0", &action);
        send(tracker, b'B', b"\0\0\0\0\0\0\0\0", &action);
        send(tracker, b'E', b"\0\0\0\0\0", &action);
        send(tracker, b'S', b"", &action);
    } else {
        send(tracker, b'Q', b"SELECT 1\0", &action);
    }
}

/// PostgreSQL's answer to one request, as (tag, body) pairs.
fn answer(request: &Request) -> Vec<(u8, &'static [u8])> {
    let mut out: Vec<(u8, &'static [u8])> = Vec::new();
    if request.extended {
        out.push((b'1', b""));
        if !request.fails {
            out.push((b'2', b""));
        }
    } else if !request.fails {
        out.push((b'T', b"\0\0"));
    }
    if request.fails {
        out.push((b'E', b"SERROR\0VERROR\0C22012\0Mdivision by zero\0\0"));
    } else {
        out.extend((0..request.rows % 4).map(|_| (b'D', &b"\0\0"[..])));
        out.push((b'C', b"SELECT 1\0"));
    }
    out.push((b'Z', b"I"));
    out
}

fn modelled(requests: &[Request]) {
    let mut tracker = ReplyTracker::new(TxStatus::Idle);
    let mut waiting: Vec<&Request> = Vec::new();
    for request in requests.iter().take(64) {
        sent(&mut tracker, request);
        waiting.push(request);
        if !request.pipelined {
            answer_all(&mut tracker, waiting.drain(..));
        }
    }
    answer_all(&mut tracker, waiting.drain(..));
    assert!(
        tracker.desync().is_none(),
        "lost step: {:?}",
        tracker.desync()
    );
    assert!(
        tracker.is_idle(),
        "replies still expected after every answer"
    );
    assert_eq!(tracker.take_synthesized(), None::<Bytes>);
}

/// Feeds PostgreSQL's answers to these requests, in order, checking where each goes.
fn answer_all<'a>(tracker: &mut ReplyTracker, requests: impl Iterator<Item = &'a Request>) {
    for request in requests {
        let expected = if request.injected {
            Route::Drop
        } else {
            Route::Forward
        };
        for (tag, body) in answer(request) {
            let route = tracker.server_message(tag, body);
            assert_eq!(route, expected, "{} of {request:?}", tag as char);
        }
    }
}

fn raw(steps: &[Raw]) {
    let mut tracker = ReplyTracker::new(TxStatus::Idle);
    for step in steps.iter().take(256) {
        match step {
            Raw::Client { tag, body } => send(&mut tracker, *tag, body, &Action::Forward),
            Raw::Server { tag, body } => {
                let route = tracker.server_message(*tag, body);
                assert_eq!(route, Route::Forward, "the client's own reply was hidden");
            }
        }
    }
}
