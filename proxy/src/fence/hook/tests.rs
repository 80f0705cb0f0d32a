//! The fence hook driven without a session: client messages in, what it injects out.

use super::*;
use crate::config::Config;
use crate::protocol::backend::TxStatus;
use crate::session::hook::Injected;

const TOKEN_COMMENT: &str = "/*fencing_resource='job',fencing_token='7'*/";

fn session(params: &[(&str, &str)]) -> Box<dyn SessionHook> {
    let hooks = FenceHooks::new(
        FencePolicy::from_config(&Config::default()),
        Arc::new(FenceStats::default()),
    );
    let mut all = vec![("user".to_string(), "app".to_string())];
    all.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let startup = StartupMessage {
        major: 3,
        minor: 0,
        params: all,
    };
    hooks
        .session_hook(&startup)
        .expect("a hook for every session")
}

/// Runs one client Query through the hook in a session whose last ReadyForQuery said
/// `status` and nothing is unanswered.
fn query(hook: &mut dyn SessionHook, sql: &str, state: Injected) -> Injected {
    let mut state = state;
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    let msg = FrontendMessage {
        tag: b'Q',
        body: &body,
    };
    hook.before_client_message(&msg, &mut state.injector());
    state
}

/// Asserts whether the hook put a check in front of the client's Query.
fn assert_checked(state: &Injected, checked: bool, why: &str) {
    assert_eq!(state.replacement.is_some(), checked, "{why}");
}

fn replaced_text(state: &Injected) -> String {
    let (bytes, _) = state.replacement.as_ref().expect("a rewritten Query");
    String::from_utf8_lossy(&bytes[5..bytes.len() - 1]).into_owned()
}

#[test]
fn a_query_without_fencing_passes_untouched() {
    let mut hook = session(&[]);
    let out = query(&mut *hook, "SELECT 1", Injected::default());
    assert!(out.queued.is_empty() && out.replacement.is_none() && out.abort.is_none());
}

#[test]
fn a_token_puts_one_hidden_check_before_the_clients_statement() {
    let mut hook = session(&[]);
    let sql = format!("UPDATE t SET v = 1 {TOKEN_COMMENT}");
    let out = query(&mut *hook, &sql, Injected::default());
    let text = replaced_text(&out);
    assert!(
        text.ends_with(&sql),
        "the client's text comes last, unchanged: {text}"
    );
    assert!(text.len() > sql.len(), "a check is inserted: {text}");
    let (_, rewrite) = out.replacement.as_ref().unwrap();
    assert_eq!(rewrite.hidden, vec![0], "the check's result is hidden");
    assert_eq!(rewrite.insertions.len(), 1, "{:?}", rewrite.insertions);
    assert!(out.abort.is_none());
}

#[test]
fn a_token_the_transaction_already_checked_is_not_checked_again() {
    let mut hook = session(&[]);
    let sql = format!("UPDATE t SET v = 1 {TOKEN_COMMENT}");
    let in_block = || Injected {
        status: TxStatus::InBlock,
        ..Injected::default()
    };
    let first = query(&mut *hook, &sql, in_block());
    assert_checked(&first, true, "the first statement is checked");
    let second = query(&mut *hook, &sql, in_block());
    assert_checked(&second, false, "the same transaction: no second check");
    let after_commit = query(&mut *hook, &sql, Injected::default());
    assert_checked(&after_commit, true, "a new transaction is checked again");
}

#[test]
fn lost_reply_tracking_ends_the_session_rather_than_pass_a_token_unchecked() {
    let mut hook = session(&[]);
    let sql = format!("UPDATE t SET v = 1 {TOKEN_COMMENT}");
    let out = query(
        &mut *hook,
        &sql,
        Injected {
            desynchronized: true,
            ..Injected::default()
        },
    );
    assert!(out.replacement.is_none());
    let refusal = out.abort.expect("the session ends");
    assert_eq!(refusal.sqlstate(), TRACKING_LOST_STATE);
}

#[test]
fn an_encoding_the_lexer_cannot_read_refuses_fencing_instead_of_guessing() {
    let mut hook = session(&[("client_encoding", "SJIS")]);
    let sql = format!("UPDATE t SET v = 1 {TOKEN_COMMENT}");
    let out = query(&mut *hook, &sql, Injected::default());
    let text = replaced_text(&out);
    // A Query string runs as one implicit transaction: the refusal's error ends it before
    // the client's statement runs.
    let (before, _) = text.split_once(&sql).expect("the client's text is kept");
    assert!(
        before.contains("ERRCODE = '55Z02'"),
        "refused first: {text}"
    );
    assert!(
        !before.contains("fencegate.check"),
        "and not checked: {text}"
    );
}

#[test]
fn a_query_too_large_once_checked_is_refused_whole() {
    let mut hook = session(&[]);
    // Each statement names its own resource, so each needs its own check; the first one
    // carries the bulk.
    let statement = |i: usize, value: &str| {
        format!("UPDATE t SET v = '{value}' /*fencing_resource='r{i}',fencing_token='7'*/;")
    };
    let sql = [
        statement(0, &"x".repeat(MAX_REWRITE)),
        statement(1, "1"),
        statement(2, "1"),
    ]
    .concat();
    let out = query(&mut *hook, &sql, Injected::default());
    let text = replaced_text(&out);
    assert!(
        !text.contains("UPDATE t"),
        "nothing of it runs: {text:.200}"
    );
    assert!(text.contains("ERRCODE = '55Z02'"), "{text:.300}");
}

#[test]
fn a_reload_changes_the_policy_of_sessions_that_start_after_it() {
    let hooks = FenceHooks::new(
        FencePolicy::from_config(&Config::default()),
        Arc::new(FenceStats::default()),
    );
    let startup = StartupMessage {
        major: 3,
        minor: 0,
        params: vec![("user".into(), "app".into())],
    };
    let read = format!("SELECT v FROM t {TOKEN_COMMENT}");
    let mut before = hooks.session_hook(&startup).unwrap();
    hooks.reconfigure(&Config {
        fence_mode: crate::config::FenceMode::Writes,
        ..Config::default()
    });
    let mut after = hooks.session_hook(&startup).unwrap();
    let checked = query(&mut *before, &read, Injected::default());
    assert_checked(&checked, true, "open session: reads still checked");
    let unchecked = query(&mut *after, &read, Injected::default());
    assert_checked(&unchecked, false, "new session: fence_mode = writes");
}
