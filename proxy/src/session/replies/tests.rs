//! Unit tests of the expected-reply queue: scripted client and server message sequences.

use bytes::Bytes;

use super::*;
use crate::protocol::backend::TxStatus;
use crate::protocol::frontend::FrontendMessage;

fn client(t: &mut ReplyTracker, tag: u8, body: &[u8], action: Action) {
    t.client_message(&FrontendMessage { tag, body }, action);
}

fn hide(indices: &[u32]) -> Rewrite {
    Rewrite {
        hidden: indices.to_vec(),
        insertions: Vec::new(),
    }
}

fn fwd(t: &mut ReplyTracker, tag: u8) {
    client(t, tag, b"", Action::Forward);
}

/// Feeds server tags and returns the ones the client sees, as a string.
fn server(t: &mut ReplyTracker, tags: &str) -> String {
    let mut seen = String::new();
    for tag in tags.bytes() {
        let body: &[u8] = if tag == b'Z' { b"I" } else { b"" };
        match t.server_message(tag, body) {
            Route::Forward => seen.push(tag as char),
            // Shown lower-case: an error from the proxy's own work, forwarded.
            Route::InjectedError => seen.push((tag as char).to_ascii_lowercase()),
            Route::Drop => {}
        }
    }
    seen
}

#[test]
fn simple_query_forwards_everything_until_ready() {
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'Q');
    assert_eq!(server(&mut t, "TDDCTCZ"), "TDDCTCZ");
    assert!(t.is_idle());
}

#[test]
fn injected_query_is_hidden_including_its_error() {
    let mut t = ReplyTracker::default();
    client(&mut t, b'Q', b"", Action::Ignore);
    fwd(&mut t, b'Q');
    assert_eq!(server(&mut t, "NTDCZ"), "");
    assert_eq!(server(&mut t, "TDCZ"), "TDCZ");
    client(&mut t, b'Q', b"", Action::Ignore);
    fwd(&mut t, b'Q');
    assert_eq!(server(&mut t, "EZ"), "");
    assert_eq!(server(&mut t, "CZ"), "CZ");
    assert!(t.is_idle());
}

#[test]
fn extended_batch_with_injected_check() {
    let mut t = ReplyTracker::default();
    for tag in [b'P', b'B'] {
        fwd(&mut t, tag);
    }
    client(&mut t, b'D', b"P\0", Action::Forward);
    for tag in [b'P', b'B', b'E'] {
        client(&mut t, tag, b"", Action::Check);
    }
    fwd(&mut t, b'E');
    fwd(&mut t, b'S');
    assert_eq!(server(&mut t, "12T" /* client */), "12T");
    assert_eq!(server(&mut t, "12DC" /* injected */), "");
    assert_eq!(server(&mut t, "DDCZ"), "DDCZ");
    assert!(t.is_idle());
}

#[test]
fn error_in_injected_check_reaches_client_and_skips_to_sync() {
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'P');
    client(&mut t, b'B', b"", Action::Check);
    client(&mut t, b'E', b"", Action::Check);
    fwd(&mut t, b'B');
    fwd(&mut t, b'E');
    fwd(&mut t, b'S');
    assert_eq!(server(&mut t, "1eZ"), "1eZ");
    assert!(t.is_idle());
}

#[test]
fn client_error_mid_pipeline_drops_entries_until_its_sync_only() {
    let mut t = ReplyTracker::default();
    // Segment 1 fails at Bind; segment 2 succeeds.
    for tag in [b'P', b'B', b'E', b'S', b'P', b'B', b'E', b'S'] {
        fwd(&mut t, tag);
    }
    assert_eq!(server(&mut t, "1EZ"), "1EZ");
    assert_eq!(server(&mut t, "12CZ"), "12CZ");
    assert!(t.is_idle());
}

#[test]
fn error_before_client_has_sent_sync_keeps_discarding() {
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'P');
    assert_eq!(server(&mut t, "E"), "E");
    // Messages sent after the error, before Sync, get no reply.
    fwd(&mut t, b'B');
    fwd(&mut t, b'E');
    fwd(&mut t, b'S');
    assert_eq!(server(&mut t, "Z"), "Z");
    fwd(&mut t, b'Q');
    assert_eq!(server(&mut t, "CZ"), "CZ");
    assert!(t.is_idle());
}

#[test]
fn describe_statement_has_two_replies() {
    let mut t = ReplyTracker::default();
    client(&mut t, b'D', b"Sname\0", Action::Ignore);
    fwd(&mut t, b'S');
    assert_eq!(server(&mut t, "tT"), "");
    assert_eq!(server(&mut t, "Z"), "Z");
}

#[test]
fn flush_expects_nothing_and_suspended_portal_completes_execute() {
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'E');
    fwd(&mut t, b'H');
    assert_eq!(server(&mut t, "DDs"), "DDs");
    assert!(t.is_idle());
    fwd(&mut t, b'E');
    fwd(&mut t, b'S');
    assert_eq!(server(&mut t, "DCZ"), "DCZ");
}

#[test]
fn copy_in_extended_swallows_sync_sent_before_copy_data() {
    // libpq/tokio-postgres: Bind, Execute, Sync; then CopyData, CopyDone, Sync.
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'B');
    fwd(&mut t, b'E');
    fwd(&mut t, b'S');
    assert_eq!(server(&mut t, "2G"), "2G");
    fwd(&mut t, b'd');
    fwd(&mut t, b'd');
    fwd(&mut t, b'S'); // swallowed by the server during copy-in
    fwd(&mut t, b'c');
    fwd(&mut t, b'S');
    assert_eq!(server(&mut t, "CZ"), "CZ");
    assert!(t.is_idle());
}

#[test]
fn copy_in_pipelined_all_at_once() {
    let mut t = ReplyTracker::default();
    for tag in [b'B', b'E', b'S', b'd', b'c', b'S'] {
        fwd(&mut t, tag);
    }
    assert_eq!(server(&mut t, "2GCZ"), "2GCZ");
    assert!(t.is_idle());
    fwd(&mut t, b'Q');
    assert_eq!(server(&mut t, "CZ"), "CZ");
}

#[test]
fn copy_in_simple_query_and_copy_fail() {
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'Q');
    assert_eq!(server(&mut t, "G"), "G");
    fwd(&mut t, b'd');
    fwd(&mut t, b'f');
    assert_eq!(server(&mut t, "EZ"), "EZ");
    assert!(t.is_idle());
}

#[test]
fn copy_in_error_while_client_still_sends_data() {
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'Q');
    assert_eq!(server(&mut t, "GE"), "GE");
    // The client has not noticed yet and finishes its copy; the server ignores it.
    fwd(&mut t, b'd');
    fwd(&mut t, b'c');
    assert_eq!(server(&mut t, "Z"), "Z");
    fwd(&mut t, b'Q');
    assert_eq!(server(&mut t, "CZ"), "CZ");
    assert!(t.is_idle());
}

#[test]
fn copy_out_rows_belong_to_execute() {
    let mut t = ReplyTracker::default();
    client(&mut t, b'E', b"", Action::Check);
    fwd(&mut t, b'S');
    assert_eq!(server(&mut t, "HddcC"), "");
    assert_eq!(server(&mut t, "Z"), "Z");
}

#[test]
fn notices_follow_their_entry_and_async_messages_always_pass() {
    let mut t = ReplyTracker::default();
    client(&mut t, b'Q', b"", Action::Ignore);
    assert_eq!(server(&mut t, "NSAC"), "SA");
    assert_eq!(server(&mut t, "Z"), "");
    assert_eq!(server(&mut t, "NA"), "NA");
}

#[test]
fn unsolicited_fatal_is_forwarded() {
    let mut t = ReplyTracker::default();
    assert_eq!(server(&mut t, "E"), "E");
}

#[test]
fn ready_for_query_updates_status() {
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'Q');
    assert_eq!(t.server_message(b'Z', b"T"), Route::Forward);
    assert_eq!(t.status(), TxStatus::InBlock);
    client(&mut t, b'Q', b"", Action::Ignore);
    assert_eq!(t.server_message(b'Z', b"E"), Route::Drop);
    assert_eq!(t.status(), TxStatus::Failed);
}

#[test]
fn error_at_sync_then_ready() {
    // A deferred constraint fails at the implicit commit of Sync.
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'E');
    fwd(&mut t, b'S');
    assert_eq!(server(&mut t, "CEZ"), "CEZ");
    assert!(t.is_idle());
}

#[test]
fn synthesized_reply_waits_for_earlier_entries() {
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'P');
    t.synthesize(Bytes::from_static(b"3"));
    fwd(&mut t, b'S');
    assert_eq!(t.take_synthesized(), None);
    assert_eq!(server(&mut t, "1"), "1");
    assert_eq!(t.take_synthesized(), Some(Bytes::from_static(b"3")));
    assert_eq!(server(&mut t, "Z"), "Z");
    assert!(t.is_idle());
}

#[test]
fn synthesized_reply_is_skipped_after_an_error() {
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'P');
    t.synthesize(Bytes::from_static(b"3"));
    fwd(&mut t, b'S');
    assert_eq!(server(&mut t, "E"), "E");
    assert_eq!(t.take_synthesized(), None);
    assert_eq!(server(&mut t, "Z"), "Z");
    assert!(t.is_idle());
}

#[test]
fn mismatch_desyncs_and_forwards_everything() {
    let mut t = ReplyTracker::default();
    client(&mut t, b'P', b"", Action::Ignore);
    assert_eq!(server(&mut t, "2"), "2");
    assert!(t.desync().is_some());
    client(&mut t, b'Q', b"", Action::Ignore);
    assert_eq!(server(&mut t, "CZ"), "CZ");
}

#[test]
fn function_call_waits_for_ready() {
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'F');
    assert_eq!(server(&mut t, "VZ"), "VZ");
    assert!(t.is_idle());
}

#[test]
fn rewritten_query_hides_inserted_statements_only() {
    let mut t = ReplyTracker::default();
    // "check; BEGIN; check; UPDATE; COMMIT" where positions 0 and 2 are the proxy's.
    t.rewritten_query(hide(&[0, 2]));
    assert_eq!(server(&mut t, "TDC" /* check */), "");
    assert_eq!(server(&mut t, "C" /* BEGIN */), "C");
    assert_eq!(server(&mut t, "NTDC" /* check with a notice */), "");
    assert_eq!(server(&mut t, "NC" /* UPDATE */), "NC");
    assert_eq!(server(&mut t, "CZ" /* COMMIT */), "CZ");
    assert!(t.is_idle());
}

#[test]
fn rewritten_query_error_in_inserted_statement_reaches_client() {
    let mut t = ReplyTracker::default();
    t.rewritten_query(hide(&[1]));
    assert_eq!(server(&mut t, "C" /* BEGIN */), "C");
    assert_eq!(server(&mut t, "EZ" /* check fails, rest skipped */), "eZ");
    assert!(t.is_idle());
    // The client's own error in an unhidden statement is an ordinary error.
    t.rewritten_query(hide(&[0]));
    assert_eq!(server(&mut t, "TDCEZ"), "EZ");
}

#[test]
fn rewritten_copy_statement_keeps_its_copy_messages() {
    let mut t = ReplyTracker::default();
    t.rewritten_query(hide(&[0]));
    assert_eq!(server(&mut t, "TDCG"), "G");
    fwd(&mut t, b'd');
    fwd(&mut t, b'c');
    assert_eq!(server(&mut t, "CZ"), "CZ");
    assert!(t.is_idle());
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
fn only_replies_that_may_change_the_transaction_status_unsettle_it() {
    let mut t = ReplyTracker::default();
    assert!(!t.awaiting_ready());
    // A round that prepares or closes but executes nothing cannot begin or end a
    // transaction.
    for tag in [b'P', b'D', b'C', b'S'] {
        fwd(&mut t, tag);
    }
    assert!(!t.awaiting_ready());
    // A round that executes can.
    for tag in [b'B', b'E'] {
        fwd(&mut t, tag);
    }
    assert!(!t.awaiting_ready(), "the round has not ended yet");
    fwd(&mut t, b'S');
    assert!(t.awaiting_ready());
    assert_eq!(server(&mut t, "1n3Z2CZ"), "1n3Z2CZ");
    assert!(t.desync().is_none());
    assert!(!t.awaiting_ready());
    // Query and FunctionCall always can.
    for tag in [b'Q', b'F'] {
        fwd(&mut t, tag);
        assert!(t.awaiting_ready());
        assert_eq!(server(&mut t, "CZ"), "CZ");
        assert!(!t.awaiting_ready());
    }
}

fn checks_done(t: &mut ReplyTracker) -> Vec<bool> {
    t.take_checks_done().map(|done| done.ok).collect()
}

#[test]
fn each_check_is_reported_once_with_whether_it_ran() {
    let mut t = ReplyTracker::default();
    // Rewritten Query: check; statement. The check's CommandComplete ends it.
    t.rewritten_query(hide(&[0]));
    assert_eq!(server(&mut t, "TDC"), "");
    assert_eq!(checks_done(&mut t), [true]);
    assert_eq!(server(&mut t, "CZ"), "CZ");
    assert!(checks_done(&mut t).is_empty(), "reported once");
    // The check raises: reported as not run.
    t.rewritten_query(hide(&[0]));
    assert_eq!(server(&mut t, "EZ"), "eZ");
    assert_eq!(checks_done(&mut t), [false]);
    // A statement before the check fails: the check never runs.
    t.rewritten_query(hide(&[1]));
    assert_eq!(server(&mut t, "EZ"), "EZ");
    assert_eq!(checks_done(&mut t), [false]);
    // A rewrite that inserted nothing times nothing.
    t.rewritten_query(hide(&[]));
    assert_eq!(server(&mut t, "CZ"), "CZ");
    assert!(checks_done(&mut t).is_empty());
}

#[test]
fn an_injected_extended_check_is_timed_by_its_execute() {
    let mut t = ReplyTracker::default();
    fwd(&mut t, b'P');
    for tag in [b'P', b'B', b'E'] {
        client(&mut t, tag, b"", Action::Check);
    }
    for tag in [b'B', b'E', b'S'] {
        fwd(&mut t, tag);
    }
    assert_eq!(server(&mut t, "112DC"), "1");
    assert_eq!(checks_done(&mut t), [true]);
    assert_eq!(server(&mut t, "2DCZ"), "2DCZ");
    // The check's Parse fails: its Execute is skipped, and reported as not run.
    fwd(&mut t, b'P');
    for tag in [b'P', b'B', b'E'] {
        client(&mut t, tag, b"", Action::Check);
    }
    for tag in [b'B', b'E', b'S'] {
        fwd(&mut t, tag);
    }
    assert_eq!(server(&mut t, "1E"), "1e");
    assert_eq!(server(&mut t, "Z"), "Z");
    assert_eq!(checks_done(&mut t), [false]);
    assert!(t.is_idle());
}
