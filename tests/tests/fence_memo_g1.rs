//! G1 for the proxy's memo of the checks it already sent in the current transaction
//! (`Admitted` in `proxy/src/fence/hook.rs`; what it saves is counted in `fence_memo.rs`):
//! the memo never outlives the transaction it was made in, so a stale writer is checked
//! again and refused.
//!
//! A token, or settings, rolled back to a savepoint are checked again; a COMMIT in a portal
//! bound before the last boundary, or a FunctionCall ending an implicit transaction, leaves
//! no memo behind that would let a stale writer through in the next transaction; neither does
//! a COMMIT before a Sync that COPY FROM STDIN swallowed, a COMMIT after a look-alike of
//! `BEGIN ATOMIC`, a DO block that commits mid-round, or a statement re-parsed as COMMIT after
//! a failed Parse. The proxy's record of prepared statements follows the server's: a Close or
//! Parse discarded after an error, and SQL `DEALLOCATE`, do not leave a write unchecked.
#![forbid(unsafe_code)]

use std::time::Duration;

use fencegate_tests::cluster::TRUST_USER;
use fencegate_tests::fence::{assert_stale, comment, eventually, expect_code, FenceEnv, STALE};
use fencegate_tests::memo::{note, read, write, SETUP};
use fencegate_tests::wire::{self, error_codes, last_status, msg, tags, Message, WireClient};

/// How long B's write may take after A rolled back to a savepoint: it waits for no lock.
const NO_WAIT: Duration = Duration::from_secs(10);

/// SQLSTATE of a syntax error.
const SYNTAX_ERROR: &str = "42601";

/// The resource of the raw-protocol tests (each has a database of its own).
const R: &str = "memo";

/// A fenced database set up with [`SETUP`] (named after `prefix`), a proxy in front of it,
/// and A's raw protocol session through the proxy, as [`TRUST_USER`].
async fn env_with_a(prefix: &str) -> (FenceEnv, WireClient) {
    let env = FenceEnv::new(prefix, SETUP).await;
    let (a, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("A logs in");
    (env, a)
}

/// Runs each statement as its own simple Query, waiting for each reply.
async fn queries(client: &tokio_postgres::Client, statements: &[String], what: &str) {
    for sql in statements {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{what}: {sql}: {e}"));
    }
}

/// G1 with a savepoint: A's token 1, rolled back to a savepoint, holds nothing; B commits
/// token 2 without waiting; A's next statement with token 1 in the same transaction is
/// checked again and rejected, so only B's write remains.
async fn savepoint_rollback_then_stale(env: &FenceEnv, r: &str, extended: bool) {
    let protocol = if extended { "extended" } else { "simple" };
    let a = env.client().await;
    let b = env.client().await;
    let a_ref = &a;
    let a_write = |token, mark| async move {
        let sql = write(r, token, mark);
        if extended {
            a_ref.execute(&sql, &[]).await.map(drop)
        } else {
            a_ref.batch_execute(&sql).await
        }
    };
    queries(
        &a,
        &["BEGIN".into(), "SAVEPOINT s".into()],
        "A: BEGIN; SAVEPOINT",
    )
    .await;
    a_write(1, "A1")
        .await
        .unwrap_or_else(|e| panic!("{protocol}: A's first write with token 1: {e}"));
    a.batch_execute("ROLLBACK TO SAVEPOINT s")
        .await
        .expect("A: ROLLBACK TO SAVEPOINT");

    let b_write = write(r, 2, "B2");
    let Ok(result) = tokio::time::timeout(NO_WAIT, b.batch_execute(&b_write)).await else {
        let locks = env
            .monitor
            .text(
                "SELECT string_agg(locktype || ' ' || mode || ' granted=' || granted, '; ') \
                 FROM pg_locks WHERE database = (SELECT oid FROM pg_database \
                 WHERE datname = current_database())",
            )
            .await;
        panic!(
            "{protocol}: B's write with token 2 was still blocked after {NO_WAIT:?}, although \
             A rolled back to the savepoint before it (locks: {locks:?})"
        );
    };
    result.unwrap_or_else(|e| panic!("{protocol}: B's autocommit write with token 2: {e}"));
    assert_eq!(env.monitor.high_water(r).await, Some(2), "{protocol}");

    let err = expect_code(a_write(1, "A2").await, STALE);
    assert_stale(&err, r, 1, 2);
    a.batch_execute("ROLLBACK").await.expect("A: ROLLBACK");
    assert_eq!(
        note(env).await,
        "B2",
        "{protocol}: only B's write may have committed"
    );
    assert_eq!(env.monitor.high_water(r).await, Some(2), "{protocol}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_token_rolled_back_to_a_savepoint_is_checked_again() {
    let env = FenceEnv::new("memo_g1_savepoint", SETUP).await;
    savepoint_rollback_then_stale(&env, "sp-simple", false).await;
    env.monitor
        .client()
        .batch_execute("UPDATE t SET note = '' WHERE id = 1")
        .await
        .unwrap();
    savepoint_rollback_then_stale(&env, "sp-extended", true).await;
}

/// Asserts that the last ReadyForQuery among `replies` says idle: `why` A's transaction ended.
fn assert_transaction_ended(replies: &[Message], why: &str) {
    assert_eq!(
        last_status(replies),
        Some(b'I'),
        "{why}: {:?}",
        wire::render(replies)
    );
}

/// B commits token 2 for `r` through the proxy.
async fn newer_holder_commits(env: &FenceEnv, r: &str) {
    let b = env.client().await;
    b.batch_execute(&write(r, 2, "B"))
        .await
        .expect("B's write with token 2");
    assert_eq!(env.monitor.high_water(r).await, Some(2));
}

/// A's write with token 1 committed (`how`); then B commits token 2, and A's stale write
/// (token 1) in its own Parse/Bind/Execute/Sync must fail with 55Z01 and leave the table
/// as it was.
async fn after_a_committed_a_stale_write_is_rejected(
    env: &FenceEnv,
    a: &mut WireClient,
    r: &str,
    how: &str,
) {
    assert_eq!(env.monitor.high_water(r).await, Some(1), "{how}");
    assert_eq!(note(env).await, "A", "{how}");
    newer_holder_commits(env, r).await;
    a.round_expecting(
        &msg::extended(&write(r, 1, "STALE"), &[]),
        1,
        &[STALE],
        "G1 violated: A's write with token 1 ran unchecked in a new transaction after B \
         committed token 2; the proxy kept the check of an ended transaction",
    );
    assert_eq!(note(env).await, "AB", "the stale write must not commit");
    assert_eq!(env.monitor.high_water(r).await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_commit_bound_before_a_sync_and_executed_after_it_ends_the_memo() {
    let (env, mut a) = env_with_a("memo_g1_portal").await;
    a.round(&msg::query("BEGIN"), 1, "A: BEGIN");
    // A binds COMMIT to a named portal, to run it later in the same transaction.
    let bound = msg::batch([
        msg::parse("c", "COMMIT"),
        msg::bind("p", "c", &[]),
        msg::sync(),
    ]);
    a.round(&bound, 1, "A: Parse/Bind COMMIT into portal p");
    // Then runs it, and a write with token 1 after it, in one round: the COMMIT ends the
    // block, the write runs (checked) in an implicit transaction that ends at Sync.
    let round = msg::batch([msg::execute("p", 0), msg::extended(&write(R, 1, "A"), &[])]);
    let replies = a.round(&round, 1, "A: Execute p (COMMIT), then a write");
    assert_transaction_ended(&replies, "A's transaction ended");
    after_a_committed_a_stale_write_is_rejected(&env, &mut a, R, "portal COMMIT").await;
}

/// A FunctionCall of the function `oid`: no argument formats, no arguments, text result.
fn function_call(oid: u32) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut message = vec![b'F'];
    message.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    message.extend_from_slice(&body);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_function_call_ending_an_implicit_transaction_ends_the_memo() {
    let (env, mut a) = env_with_a("memo_g1_fastpath").await;
    let oid: u32 = env
        .monitor
        .text("SELECT 'pg_backend_pid'::regproc::oid::text")
        .await
        .unwrap()
        .parse()
        .unwrap();
    // A write with token 1 in the implicit transaction of an extended round, then a
    // FunctionCall, which commits that transaction (no Sync).
    let round = msg::batch([msg::run_unnamed(&write(R, 1, "A"), &[]), function_call(oid)]);
    let replies = a.round(&round, 1, "A: write, then FunctionCall");
    assert_eq!(tags(&replies), "12CVZ", "{:?}", wire::render(&replies));
    let how = "the FunctionCall committed A's implicit transaction";
    after_a_committed_a_stale_write_is_rejected(&env, &mut a, R, how).await;
}

/// Sends `bytes` (which start a COPY FROM STDIN) and reads until CopyInResponse, failing
/// on any error before it.
fn start_copy_in(a: &mut WireClient, bytes: &[u8], what: &str) {
    a.send(bytes)
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let replies = a
        .read_until_tag(b'G')
        .unwrap_or_else(|e| panic!("{what}: read: {e}"));
    assert!(
        error_codes(&replies).is_empty(),
        "{what}: {:?}",
        wire::render(&replies)
    );
}

/// G1 through COPY: a Sync sent while the server is in COPY FROM STDIN is swallowed by the
/// server, so it ends nothing; the proxy must not treat it as the boundary after which the
/// round's COMMIT is forgotten. A's round ends the block with COMMIT, starts a COPY, sends a
/// Sync (swallowed), finishes the COPY and writes with token 1 (checked, in the implicit
/// transaction after the COMMIT), then the real Sync commits that transaction. The memo of
/// that check must not survive into A's next transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_sync_swallowed_by_copy_in_is_no_transaction_boundary() {
    let (env, mut a) = env_with_a("memo_g1_copy_sync").await;
    a.round(&msg::query("BEGIN"), 1, "A: BEGIN");
    // libpq's way: the Sync goes with the COPY, before the server says it is copying.
    let start = msg::batch([
        msg::run_unnamed("COMMIT", &[]),
        msg::extended("COPY t (id) FROM STDIN", &[]),
    ]);
    start_copy_in(&mut a, &start, "A: COMMIT, then COPY FROM STDIN, Sync");
    let rest = msg::batch([msg::copy_done(), msg::extended(&write(R, 1, "A"), &[])]);
    let replies = a.round(&rest, 1, "A: CopyDone, a write with token 1, Sync");
    assert_transaction_ended(&replies, "the COMMIT ended A's block");
    after_a_committed_a_stale_write_is_rejected(&env, &mut a, R, "COMMIT before COPY").await;
}

/// G1 through the statement splitter: `s.begin atomic` (a column named `begin` labelled
/// `atomic`) is not a SQL-standard function body, so PostgreSQL runs the COMMIT and BEGIN
/// that follow; a splitter that takes it for `BEGIN ATOMIC` sees one CREATE statement and
/// no COMMIT. A's check of token 1 was in the committed transaction: A's next write with
/// token 1, after B committed token 2, must be checked and rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_commit_after_a_lookalike_begin_atomic_ends_the_memo() {
    let env = FenceEnv::new("memo_g1_atomic", SETUP).await;
    let r = "atomic-lookalike";
    let a = env.client().await;
    queries(&a, &["BEGIN".into(), write(r, 1, "A")], "A: BEGIN; write").await;
    a.batch_execute(
        "CREATE TEMP TABLE x AS SELECT s.begin atomic FROM (SELECT 1 AS begin) s; COMMIT; BEGIN",
    )
    .await
    .expect("A: CREATE ... AS SELECT s.begin atomic ...; COMMIT; BEGIN");
    assert_eq!(env.monitor.high_water(r).await, Some(1), "A committed");
    assert_eq!(note(&env).await, "A");

    newer_holder_commits(&env, r).await;
    let result = a.batch_execute(&write(r, 1, "STALE")).await;
    let committed = a.batch_execute("COMMIT").await;
    assert!(
        result.is_err(),
        "G1 violated: A's write with token 1 after B committed token 2 was not checked \
         (COMMIT hidden from the memo by the splitter); A's COMMIT: {committed:?}; note {:?}",
        note(&env).await
    );
    let err = expect_code(result, STALE);
    assert_stale(&err, r, 1, 2);
    assert_eq!(note(&env).await, "AB");
}

/// G1 through the proxy's record of prepared statements: a Parse that fails leaves no
/// statement on the server, so a later Parse of the same name (here COMMIT) succeeds; the
/// proxy must not go on believing the failed text (a read carrying token 1), or the COMMIT
/// passes for a statement of the same transaction and the memo outlives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_statement_reparsed_after_a_failed_parse_is_what_runs() {
    let (env, mut a) = env_with_a("memo_g1_reparse").await;
    let broken = msg::batch([msg::parse("s", &format!("{} AND", read(R, 1))), msg::sync()]);
    a.round_expecting(&broken, 1, &[SYNTAX_ERROR], "A: Parse s (syntax error)");
    let commit = msg::batch([msg::parse("s", "COMMIT"), msg::sync()]);
    a.round(&commit, 1, "A: Parse s as COMMIT");
    a.round(&msg::query("BEGIN"), 1, "A: BEGIN");
    a.round(&msg::query(&write(R, 1, "A")), 1, "A: write");
    let replies = a.round(&msg::bind_and_run("s"), 1, "A: Bind/Execute s (COMMIT)");
    assert_transaction_ended(&replies, "s is COMMIT");
    after_a_committed_a_stale_write_is_rejected(&env, &mut a, R, "s re-parsed as COMMIT").await;
}

/// A Parse of statement `name` as a write with token 1 on `R` (A's, stale once B commits),
/// and Sync.
fn parse_stale_write(name: &str) -> Vec<u8> {
    msg::batch([msg::parse(name, &write(R, 1, "STALE")), msg::sync()])
}

/// A's Bind of `name` (a write with token 1) must be checked and rejected after B committed
/// token 2: `why` the proxy must know what `name` says.
fn stale_bind_is_rejected(a: &mut WireClient, name: &str, why: &str) {
    a.round_expecting(
        &msg::bind_and_run(name),
        1,
        &[STALE],
        &format!(
            "G1 violated: {why}: A's prepared write with token 1 ran unchecked after B \
             committed token 2"
        ),
    );
}

/// A's statement `name` is a write with token 1; B commits token 2; then A's `round`, whose
/// first message fails, makes the server discard the rest of it (a Close or Parse of
/// `name`), so the proxy must still check what `name` says when A binds it.
async fn a_message_discarded_after_an_error_leaves_the_statement_checked(
    prefix: &str,
    name: &str,
    round: &[u8],
    why: &str,
) {
    let (env, mut a) = env_with_a(prefix).await;
    a.round(&parse_stale_write(name), 1, "A: Parse a write with token 1");
    newer_holder_commits(&env, R).await;
    a.round_expecting(round, 1, &[SYNTAX_ERROR], "A: a failing Parse, then more");
    stale_bind_is_rejected(&mut a, name, why);
    assert_eq!(note(&env).await, "B");
}

/// G1: a Close that the server discards (it follows an error in the same round) does not
/// close the statement, so the proxy must still know what `s` says when A binds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_close_discarded_after_an_error_leaves_the_statement_checked() {
    let round = msg::batch([
        msg::parse("", "bogus"),
        msg::close_statement("s"),
        msg::sync(),
    ]);
    let why = "Close s was discarded";
    a_message_discarded_after_an_error_leaves_the_statement_checked(
        "memo_g1_discarded_close",
        "s",
        &round,
        why,
    )
    .await;
}

/// G1: SQL `DEALLOCATE` drops a protocol-level statement too, so a later Parse of the same
/// name succeeds on the server; the proxy must check what the new text says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_statement_reparsed_after_sql_deallocate_is_checked() {
    let (env, mut a) = env_with_a("memo_g1_deallocate").await;
    let select = msg::batch([msg::parse("s", "SELECT 1"), msg::sync()]);
    a.round(&select, 1, "A: Parse s");
    a.round(&msg::query("DEALLOCATE s"), 1, "A: DEALLOCATE s");
    let what = "A: Parse s again, as a write with token 1";
    a.round(&parse_stale_write("s"), 1, what);
    newer_holder_commits(&env, R).await;
    stale_bind_is_rejected(&mut a, "s", "s re-parsed after DEALLOCATE");
    assert_eq!(note(&env).await, "B");
}

/// G1: a Parse of the unnamed statement that the server discards (it follows an error in
/// the same round) leaves the previous unnamed statement in place, so the proxy must check
/// what that one says when A binds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_discarded_parse_leaves_the_unnamed_statement_checked() {
    let failing_parse = msg::parse("x", "bogus");
    let round = msg::batch([failing_parse, msg::parse("", "SELECT 1"), msg::sync()]);
    let prefix = "memo_g1_discarded_parse";
    let why = "the proxy took the discarded Parse for the unnamed statement";
    a_message_discarded_after_an_error_leaves_the_statement_checked(prefix, "", &round, why).await;
}

/// A DO block that COMMITs, run through the extended protocol outside a transaction block
/// (a non-atomic context, so the COMMIT is allowed), ends the implicit transaction in the
/// middle of a round: the write after it in the same round runs in a new transaction and
/// must be checked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_do_block_committing_mid_round_ends_the_memo() {
    let (env, mut a) = env_with_a("memo_g1_do_commit").await;
    let first = msg::batch([
        msg::run_unnamed(&write(R, 1, "A"), &[]),
        msg::run_unnamed("DO $$BEGIN COMMIT; END$$", &[]),
        msg::flush(),
    ]);
    a.send(&first).expect("A: write, DO (COMMIT), Flush");
    let replies: Vec<Message> = (0..6)
        .map(|_| a.read_message().expect("A: write, DO (COMMIT)"))
        .collect();
    assert_eq!(tags(&replies), "12C12C", "{:?}", wire::render(&replies));
    // The rest of the same round: no Sync since A's checked write.
    after_a_committed_a_stale_write_is_rejected(&env, &mut a, R, "the DO committed").await;
}

/// G1 through COPY and the record of prepared statements: a Sync sent during COPY FROM STDIN
/// is swallowed only while the server is still copying when it reads it. Here a CopyData
/// fails first, so the server ends the COPY with an error and answers that Sync; the Parse
/// of `s` (a write with token 1) that follows the CopyDone then completes on the server. The
/// proxy must not count that Parse as skipped, or A's later Bind of `s` runs unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_sync_answered_after_a_failed_copy_leaves_the_next_parse_counted() {
    let (env, mut a) = env_with_a("memo_g1_copy_fail_sync").await;
    let start = msg::extended("COPY t (id) FROM STDIN", &[]);
    start_copy_in(&mut a, &start, "A: COPY FROM STDIN, Sync");
    // The bad row fails the COPY before the server reads the Sync behind it.
    let rest = msg::batch([
        msg::copy_data("not a number\n"),
        msg::sync(),
        msg::copy_done(),
        parse_stale_write("s"),
    ]);
    let replies = a.round_expecting(&rest, 2, &["22P02"], "A: failed COPY, Parse s");
    assert!(
        tags(&replies).contains('1'),
        "Parse s completed on the server: {:?}",
        wire::render(&replies)
    );
    newer_holder_commits(&env, R).await;
    // The proxy cannot know which of those Syncs the server answered: it must either check
    // the Bind (55Z01) or, having lost track of the replies, end the session rather than let
    // the statement run unchecked.
    a.send(&msg::bind_and_run("s")).expect("A: Bind/Execute s");
    let mut replies = Vec::new();
    while let Ok(message) = a.read_message() {
        let ready = message.0 == b'Z';
        replies.push(message);
        if ready {
            break;
        }
    }
    let codes = error_codes(&replies);
    assert!(
        codes.first().map(String::as_str) == Some(STALE)
            || codes.iter().any(|c| c == "XX000"),
        "G1 violated: A's prepared write with token 1 ran unchecked after B committed token 2: {:?}",
        wire::render(&replies)
    );
    assert_eq!(note(&env).await, "B");
}

/// Whether A's backend `pid` waits for a lock (`Some(true)`) or is idle (`Some(false)`).
async fn waiting_or_idle(env: &FenceEnv, pid: i32) -> Option<bool> {
    let row = env
        .monitor
        .client()
        .query_one(
            "SELECT coalesce(wait_event_type = 'Lock', false), state = 'idle' \
             FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("read pg_stat_activity");
    let (waiting, idle): (bool, bool) = (row.get(0), row.get(1));
    (waiting || idle).then_some(waiting)
}

/// G1 for a DO that commits midway, through the extended protocol: the COMMIT bound earlier
/// in the same round ends A's block, so the DO (carrying token 1) runs outside a transaction
/// block, where it may COMMIT and release the fence, and must be refused (55Z02), although
/// the last ReadyForQuery still said "in a block". Otherwise: A's DO is checked, commits,
/// waits (here on an advisory lock), B commits token 2 without waiting, and A's update with
/// token 1 commits after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_do_after_a_commit_in_the_same_round_is_refused() {
    let (env, mut a) = env_with_a("memo_g1_do_after_commit").await;
    const KEY: i64 = 7_204_311;
    let replies = a.round(&msg::query("SELECT pg_backend_pid()"), 1, "A: pid");
    let pid: i32 = replies
        .iter()
        .find(|(tag, _)| *tag == b'D')
        .map(|(_, body)| String::from_utf8_lossy(&body[6..]).parse().unwrap())
        .expect("A's pid");
    a.round(&msg::query("BEGIN"), 1, "A: BEGIN");
    let monitor = env.monitor.client();
    monitor
        .execute("SELECT pg_advisory_lock($1)", &[&KEY])
        .await
        .expect("monitor takes the advisory lock");
    let body = format!(
        "DO $$BEGIN COMMIT; PERFORM pg_advisory_lock({KEY}); \
         UPDATE t SET note = note || 'STALE' WHERE id = 1; END$$ {}",
        comment(R, 1)
    );
    let round = msg::batch([msg::run_unnamed("COMMIT", &[]), msg::extended(&body, &[])]);
    a.send(&round).expect("A: COMMIT, DO with token 1, Sync");
    // Either A's DO waits for the advisory lock (it ran) or A is idle (it was refused).
    let waiting = eventually("A's DO waits or A is idle", || waiting_or_idle(&env, pid)).await;
    if waiting {
        newer_holder_commits(&env, R).await;
    }
    monitor
        .execute("SELECT pg_advisory_unlock($1)", &[&KEY])
        .await
        .expect("monitor releases the advisory lock");
    let replies = a.read_until_ready(1).expect("A: COMMIT, DO");
    if !waiting {
        newer_holder_commits(&env, R).await;
    }
    assert_eq!(
        error_codes(&replies),
        ["55Z02"],
        "G1 violated: A's DO with token 1 ran outside a transaction block (committed \
         midway; B committed token 2 meanwhile: {waiting}); note {:?}: {:?}",
        note(&env).await,
        wire::render(&replies)
    );
    assert_eq!(note(&env).await, "B");
}

/// G1 with settings and a savepoint: A's settings, admitted inside a savepoint that is
/// then rolled back, hold nothing (the note that they were admitted is rolled back with the
/// lock); B commits token 2 without waiting; A's next statement under the same settings is
/// checked again and rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_settings_admitted_in_a_rolled_back_savepoint_are_checked_again() {
    let env = FenceEnv::new("memo_g1_settings_sp", SETUP).await;
    let r = "settings-sp";
    let a = env.client().await;
    let b = env.client().await;
    queries(
        &a,
        &[
            "BEGIN".into(),
            format!("SET LOCAL fencing.resource = '{r}'"),
            "SET LOCAL fencing.token = 1".into(),
            "SAVEPOINT s".into(),
            "UPDATE t SET note = note || 'A1' WHERE id = 1".into(),
            "ROLLBACK TO SAVEPOINT s".into(),
        ],
        "A: settings, a write inside a savepoint, rolled back",
    )
    .await;
    tokio::time::timeout(NO_WAIT, b.batch_execute(&write(r, 2, "B2")))
        .await
        .unwrap_or_else(|_| panic!("B waited {NO_WAIT:?} behind a lock A rolled back"))
        .expect("B's write with token 2");
    let err = expect_code(
        a.batch_execute("UPDATE t SET note = note || 'A2' WHERE id = 1")
            .await,
        STALE,
    );
    assert_stale(&err, r, 1, 2);
    a.batch_execute("ROLLBACK").await.expect("A: ROLLBACK");
    assert_eq!(note(&env).await, "B2");
}
