//! The proxy's memo of the checks it already sent in the current transaction (`Admitted` in
//! `proxy/src/fence/hook.rs`): a (resource, token) admitted earlier in the same transaction
//! is not checked again, and the memo never outlives the transaction it was made in.
//!
//! Savings are counted in Postgres itself: every test database has `track_functions = 'all'`,
//! so `pg_stat_user_functions` counts the calls of `fencegate.check`. A session publishes its
//! counts when it goes idle after `pg_stat_force_next_flush()`, so each count is read by the
//! monitor after the session that ran the scenario has done that: no waiting on timers. Each
//! test has its own database (function statistics are per database) and takes deltas.
//!
//! Covered: simple Queries one by one, a multi-statement Query, autocommit and pipelined
//! Queries, savepoints, tokio-postgres' extended protocol in and out of transactions and
//! pipelined, several resources in one transaction, `COMMIT AND CHAIN`, and settings
//! (`SET LOCAL fencing.*`, admitted once per transaction by `check_settings` itself).
//! Safety (G1): a token, or settings, rolled back to a savepoint are checked again; a COMMIT in a portal bound before the
//! last boundary, or a FunctionCall ending an implicit transaction, leaves no memo behind
//! that would let a stale writer through in the next transaction; neither does a COMMIT
//! before a Sync that COPY FROM STDIN swallowed, a COMMIT after a look-alike of `BEGIN
//! ATOMIC`, a DO block that commits mid-round, or a statement re-parsed as COMMIT after a
//! failed Parse. The proxy's record of prepared statements follows the server's: a Close or
//! Parse discarded after an error, and SQL `DEALLOCATE`, do not leave a write unchecked.
#![forbid(unsafe_code)]

use std::time::Duration;

use fencegate::fence::stats::FenceStats;
use fencegate::protocol::backend::error_field;
use fencegate_tests::cluster::TRUST_USER;
use fencegate_tests::fence::{assert_stale, comment, eventually, expect_code, FenceEnv, STALE};
use fencegate_tests::wire::{self, msg, Message, WireClient};
use tokio_postgres::{Client, SimpleQueryMessage, ToStatement};

const SETUP: &str = "
CREATE TABLE t (id int PRIMARY KEY, note text NOT NULL DEFAULT '');
INSERT INTO t VALUES (1, '');
GRANT ALL ON t TO trust_user;
";

/// Calls of `fencegate.check` published so far in the current database.
const CHECK_CALLS: &str = "SELECT COALESCE(sum(calls), 0)::int8 FROM pg_stat_user_functions \
                           WHERE schemaname = 'fencegate' AND funcname = 'check'";

/// Makes the session publish its pending statistics before its next ReadyForQuery.
const FLUSH: &str = "SELECT pg_stat_force_next_flush()";

/// How long B's write may take in the savepoint test: it waits for no lock at all.
const NO_WAIT: Duration = Duration::from_secs(10);

/// A fenced database whose sessions count function calls, and a proxy in front of it.
async fn counting_env(prefix: &str) -> FenceEnv {
    let env = FenceEnv::new(prefix, SETUP).await;
    env.monitor
        .client()
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET track_functions = 'all'",
            env.db
        ))
        .await
        .expect("enable track_functions for the test database");
    env
}

/// A tokio-postgres session through the proxy (as [`TRUST_USER`]) that counts function calls.
async fn session(env: &FenceEnv) -> Client {
    let client = env.client().await;
    let rows = client
        .simple_query("SHOW track_functions")
        .await
        .expect("SHOW track_functions");
    let value = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(
        value.as_deref(),
        Some("all"),
        "the session must count SQL function calls, or no check would be seen"
    );
    client
}

/// A raw protocol session through the proxy (as [`TRUST_USER`]) that counts function calls.
fn raw_session(env: &FenceEnv) -> WireClient {
    let (mut raw, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("raw login");
    let replies = raw_round(&mut raw, &msg::query("SHOW track_functions"), 1, "SHOW");
    let value = replies
        .iter()
        .find(|(tag, _)| *tag == b'D')
        .map(|(_, body)| String::from_utf8_lossy(&body[6..]).into_owned());
    assert_eq!(
        value.as_deref(),
        Some("all"),
        "the raw session must count SQL function calls"
    );
    raw
}

/// Sends `bytes` and reads up to the `ready`-th ReadyForQuery, failing on any ErrorResponse.
fn raw_round(raw: &mut WireClient, bytes: &[u8], ready: usize, what: &str) -> Vec<Message> {
    raw.send(bytes)
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let replies = raw
        .read_until_ready(ready)
        .unwrap_or_else(|e| panic!("{what}: read: {e}"));
    assert!(
        error_codes(&replies).is_empty(),
        "{what}: unexpected error: {:?}",
        wire::render(&replies)
    );
    replies
}

/// The SQLSTATEs of the ErrorResponses among `replies`.
fn error_codes(replies: &[Message]) -> Vec<String> {
    replies
        .iter()
        .filter(|(tag, _)| *tag == b'E')
        .map(|(_, body)| {
            String::from_utf8_lossy(error_field(body, b'C').unwrap_or_default()).into_owned()
        })
        .collect()
}

/// The tags of `replies`, as a string.
fn tags(replies: &[Message]) -> String {
    replies.iter().map(|(tag, _)| *tag as char).collect()
}

/// Publishes the pending statistics of `client`'s backend.
async fn flush(client: &Client) {
    client
        .simple_query(FLUSH)
        .await
        .expect("pg_stat_force_next_flush()");
}

/// Publishes the pending statistics of a raw session's backend.
fn flush_raw(raw: &mut WireClient) {
    raw_round(raw, &msg::query(FLUSH), 1, "pg_stat_force_next_flush()");
}

/// Calls of `fencegate.check` in the test's database that sessions have published so far.
async fn check_calls(env: &FenceEnv) -> i64 {
    env.monitor
        .client()
        .query_one(CHECK_CALLS, &[])
        .await
        .expect("read pg_stat_user_functions")
        .get(0)
}

/// Asserts that `expected` checks ran since `before` (the session has flushed).
async fn assert_checks(env: &FenceEnv, what: &str, before: i64, expected: i64) {
    let observed = check_calls(env).await - before;
    assert_eq!(
        observed,
        expected,
        "{what}: fencegate.check ran {observed} time(s), expected {expected} \
         (the proxy's checks counter is at {} for this test)",
        FenceStats::get(&env.fp.stats.checks)
    );
}

/// Runs `statements` as separate Queries on `client` (`what`) and asserts that PostgreSQL ran
/// `expected` checks for them (`checks_what`).
async fn queries_run_checks(
    env: &FenceEnv,
    client: &Client,
    statements: &[String],
    what: &str,
    checks_what: &str,
    expected: i64,
) {
    flush(client).await;
    let before = check_calls(env).await;
    queries(client, statements, what).await;
    flush(client).await;
    assert_checks(env, checks_what, before, expected).await;
}

/// Runs each of `statements` (an UPDATE of one row) with tokio-postgres' extended protocol
/// inside one transaction on `client` and asserts that PostgreSQL ran `expected` checks
/// for them (`what`).
async fn extended_transaction_runs_checks<S: ToStatement + ?Sized>(
    env: &FenceEnv,
    client: &mut Client,
    statements: &[&S],
    what: &str,
    expected: i64,
) {
    flush(client).await;
    let before = check_calls(env).await;
    let tx = client.transaction().await.expect("BEGIN");
    for (i, statement) in statements.iter().enumerate() {
        let n = tx
            .execute(*statement, &[])
            .await
            .unwrap_or_else(|e| panic!("{what}: extended UPDATE {i}: {e}"));
        assert_eq!(n, 1);
    }
    tx.commit().await.expect("COMMIT");
    flush(client).await;
    assert_checks(env, what, before, expected).await;
}

/// Appends `mark` to row 1 of `t`, carrying (`resource`, `token`).
fn write(resource: &str, token: i64, mark: &str) -> String {
    format!(
        "UPDATE t SET note = note || '{mark}' WHERE id = 1 {}",
        comment(resource, token)
    )
}

/// Reads row 1 of `t`, carrying (`resource`, `token`).
fn read(resource: &str, token: i64) -> String {
    format!(
        "SELECT note FROM t WHERE id = 1 {}",
        comment(resource, token)
    )
}

/// Row 1's note, read directly.
async fn note(env: &FenceEnv) -> String {
    env.monitor
        .text("SELECT note FROM t WHERE id = 1")
        .await
        .unwrap()
}

/// Runs each statement as its own simple Query, waiting for each reply.
async fn queries(client: &Client, statements: &[String], what: &str) {
    for sql in statements {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{what}: {sql}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_of_separate_queries_checks_its_token_once() {
    let env = counting_env("memo_block_queries").await;
    let c = session(&env).await;
    let r = "block-queries";
    queries_run_checks(
        &env,
        &c,
        &[
            "BEGIN".into(),
            write(r, 1, "a"),
            write(r, 1, "b"),
            read(r, 1),
            "COMMIT".into(),
        ],
        "block of separate Queries",
        "BEGIN; UPDATE; UPDATE; SELECT; COMMIT as separate Queries, same token",
        1,
    )
    .await;
    assert_eq!(note(&env).await, "ab");
    assert_eq!(env.monitor.high_water(r).await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_in_one_query_string_checks_its_token_once() {
    let env = counting_env("memo_block_string").await;
    let c = session(&env).await;
    flush(&c).await;
    let before = check_calls(&env).await;
    let r = "block-string";
    let sql = format!("BEGIN; {}; {}; COMMIT", write(r, 1, "a"), write(r, 1, "b"));
    c.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    flush(&c).await;
    assert_checks(
        &env,
        "one Query \"BEGIN; UPDATE; UPDATE; COMMIT\", same token",
        before,
        1,
    )
    .await;
    assert_eq!(note(&env).await, "ab");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autocommit_queries_are_each_checked() {
    let env = counting_env("memo_autocommit").await;
    let c = session(&env).await;
    let r = "autocommit";
    queries_run_checks(
        &env,
        &c,
        &[write(r, 1, "a"), write(r, 1, "b"), write(r, 1, "c")],
        "autocommit Queries",
        "three autocommit UPDATEs, each its own transaction",
        3,
    )
    .await;
    assert_eq!(note(&env).await, "abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_autocommit_queries_are_each_checked() {
    let env = counting_env("memo_pipelined").await;
    let mut raw = raw_session(&env);
    flush_raw(&mut raw);
    let before = check_calls(&env).await;
    let r = "pipelined";
    let bytes = [
        msg::query(&write(r, 1, "a")),
        msg::query(&write(r, 1, "b")),
        msg::query(&write(r, 1, "c")),
    ]
    .concat();
    let replies = raw_round(&mut raw, &bytes, 3, "three pipelined autocommit Queries");
    assert_eq!(tags(&replies), "CZCZCZ", "{:?}", wire::render(&replies));
    flush_raw(&mut raw);
    assert_checks(
        &env,
        "three autocommit UPDATEs written before any reply was read",
        before,
        3,
    )
    .await;
    assert_eq!(note(&env).await, "abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_commit_ends_the_memo() {
    let env = counting_env("memo_pipelined_commit").await;
    let mut raw = raw_session(&env);
    flush_raw(&mut raw);
    let before = check_calls(&env).await;
    let r = "pipelined-commit";
    let bytes = [
        msg::query("BEGIN"),
        msg::query(&write(r, 1, "a")),
        msg::query("COMMIT"),
        msg::query(&write(r, 1, "b")),
    ]
    .concat();
    let replies = raw_round(
        &mut raw,
        &bytes,
        4,
        "BEGIN, UPDATE, COMMIT, UPDATE pipelined",
    );
    assert_eq!(tags(&replies), "CZCZCZCZ", "{:?}", wire::render(&replies));
    let statuses: Vec<u8> = replies
        .iter()
        .filter(|(tag, _)| *tag == b'Z')
        .map(|(_, body)| body[0])
        .collect();
    assert_eq!(statuses, b"TTII", "transaction status after each Query");
    flush_raw(&mut raw);
    assert_checks(
        &env,
        "pipelined Queries BEGIN; UPDATE; COMMIT; UPDATE (two transactions)",
        before,
        2,
    )
    .await;
    assert_eq!(note(&env).await, "ab");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_drop_the_memo() {
    let env = counting_env("memo_savepoints").await;
    let c = session(&env).await;

    let r = "savepoints";
    queries_run_checks(
        &env,
        &c,
        &[
            "BEGIN".into(),
            write(r, 1, "a"),
            "SAVEPOINT s".into(),
            write(r, 1, "b"),
            "ROLLBACK TO s".into(),
            write(r, 1, "c"),
            "COMMIT".into(),
        ],
        "savepoints, separate Queries",
        "UPDATE; SAVEPOINT s; UPDATE; ROLLBACK TO s; UPDATE in a block, separate Queries",
        3,
    )
    .await;
    assert_eq!(note(&env).await, "ac");

    let before = check_calls(&env).await;
    let r = "savepoints-string";
    let sql = format!(
        "BEGIN; {}; SAVEPOINT s; {}; ROLLBACK TO s; {}; COMMIT",
        write(r, 1, "d"),
        write(r, 1, "e"),
        write(r, 1, "f")
    );
    c.batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    flush(&c).await;
    assert_checks(&env, "the same savepoints in one Query string", before, 3).await;
    assert_eq!(note(&env).await, "acdf");
}

/// Prepared once, executed three times: each round is Bind/Execute/Sync, sent after the
/// previous round's ReadyForQuery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_in_a_transaction_checks_its_token_once() {
    let env = counting_env("memo_ext_block").await;
    let mut c = session(&env).await;
    let r = "ext-block";
    let statement = c
        .prepare(&write(r, 1, "x"))
        .await
        .expect("prepare the UPDATE");
    let statements = [&statement, &statement, &statement];
    extended_transaction_runs_checks(
        &env,
        &mut c,
        &statements,
        "one prepared UPDATE executed three times in one transaction, same token",
        1,
    )
    .await;
    assert_eq!(note(&env).await, "xxx");
}

/// `execute(&str)` prepares a named statement for each call (Parse/Describe/Sync, then
/// Bind/Execute/Sync) and closes it when dropped with Close/Sync, which tokio-postgres
/// writes without waiting for its ReadyForQuery: so the next call's Sync always arrives
/// while a ReadyForQuery is still outstanding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_statements_prepared_per_call_in_a_transaction_check_their_token_once() {
    let env = counting_env("memo_ext_block_str").await;
    let mut c = session(&env).await;
    let r = "ext-block-str";
    let writes = ["a", "b", "c"].map(|mark| write(r, 1, mark));
    let statements: Vec<&String> = writes.iter().collect();
    extended_transaction_runs_checks(
        &env,
        &mut c,
        &statements,
        "three tokio-postgres execute(&str) UPDATEs in one transaction, same token",
        1,
    )
    .await;
    assert_eq!(note(&env).await, "abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_in_autocommit_checks_every_statement() {
    let env = counting_env("memo_ext_autocommit").await;
    let c = session(&env).await;
    flush(&c).await;
    let before = check_calls(&env).await;
    let r = "ext-autocommit";
    for mark in ["a", "b", "c"] {
        c.execute(&write(r, 1, mark), &[])
            .await
            .unwrap_or_else(|e| panic!("extended autocommit UPDATE {mark}: {e}"));
    }
    flush(&c).await;
    assert_checks(
        &env,
        "three extended-protocol autocommit UPDATEs, one after the other",
        before,
        3,
    )
    .await;
    assert_eq!(note(&env).await, "abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_extended_autocommit_checks_every_statement() {
    let env = counting_env("memo_ext_pipelined").await;
    let c = session(&env).await;
    let r = "ext-pipelined";
    let statement = c
        .prepare(&write(r, 1, "x"))
        .await
        .expect("prepare the UPDATE");
    flush(&c).await;
    let before = check_calls(&env).await;
    // tokio-postgres writes the three Bind/Execute/Sync rounds before reading any reply.
    let (a, b, d) = futures_util::join!(
        c.execute(&statement, &[]),
        c.execute(&statement, &[]),
        c.execute(&statement, &[]),
    );
    for (i, result) in [a, b, d].into_iter().enumerate() {
        let n = result.unwrap_or_else(|e| panic!("pipelined execute {i}: {e}"));
        assert_eq!(n, 1, "pipelined execute {i}");
    }
    flush(&c).await;
    assert_checks(
        &env,
        "three pipelined extended-protocol autocommit UPDATEs",
        before,
        3,
    )
    .await;
    assert_eq!(note(&env).await, "xxx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_resource_is_checked_in_a_transaction() {
    let env = counting_env("memo_resources").await;
    let c = session(&env).await;
    flush(&c).await;
    let before = check_calls(&env).await;
    let (r, r2) = ("res-one", "res-two");
    queries(
        &c,
        &[
            "BEGIN".into(),
            write(r, 1, "a"),
            write(r2, 1, "b"),
            write(r, 1, "c"),
            "COMMIT".into(),
        ],
        "two resources in a block",
    )
    .await;
    flush(&c).await;
    assert_checks(
        &env,
        "BEGIN; UPDATE (r,1); UPDATE (r2,1); UPDATE (r,1): one check per resource",
        before,
        2,
    )
    .await;
    assert_eq!(env.monitor.high_water(r).await, Some(1));
    assert_eq!(env.monitor.high_water(r2).await, Some(1));

    // A different token for the same resource is a different check.
    let before = check_calls(&env).await;
    let r3 = "res-three";
    queries(
        &c,
        &[
            "BEGIN".into(),
            write(r3, 1, "d"),
            write(r3, 2, "e"),
            write(r3, 2, "f"),
            "COMMIT".into(),
        ],
        "two tokens in a block",
    )
    .await;
    flush(&c).await;
    assert_checks(
        &env,
        "BEGIN; UPDATE (r3,1); UPDATE (r3,2); UPDATE (r3,2): one check per token",
        before,
        2,
    )
    .await;
    assert_eq!(env.monitor.high_water(r3).await, Some(2));
    assert_eq!(note(&env).await, "abcdef");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_and_chain_starts_a_transaction_that_is_checked_again() {
    let env = counting_env("memo_chain").await;
    let c = session(&env).await;
    flush(&c).await;
    let before = check_calls(&env).await;
    let r = "chain";
    // The status stays "in transaction block" across each chained end: only the statement
    // itself tells the proxy that a new transaction began.
    queries(
        &c,
        &[
            "BEGIN".into(),
            write(r, 1, "a"),
            "COMMIT AND CHAIN".into(),
            write(r, 1, "b"),
            "ROLLBACK AND CHAIN".into(),
            write(r, 1, "c"),
            "COMMIT".into(),
        ],
        "chained transactions",
    )
    .await;
    flush(&c).await;
    assert_checks(
        &env,
        "UPDATE; COMMIT AND CHAIN; UPDATE; ROLLBACK AND CHAIN; UPDATE (three transactions)",
        before,
        3,
    )
    .await;
    assert_eq!(note(&env).await, "ac");
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

/// B commits token 2 for `r` through the proxy.
async fn newer_holder_commits(env: &FenceEnv, r: &str) {
    let b = env.client().await;
    b.batch_execute(&write(r, 2, "B"))
        .await
        .expect("B's write with token 2");
    assert_eq!(env.monitor.high_water(r).await, Some(2));
}

/// A's stale write (token 1, after B committed token 2) in its own Parse/Bind/Execute/Sync
/// must fail with 55Z01 and leave the table as it was.
async fn stale_extended_write_is_rejected(env: &FenceEnv, raw: &mut WireClient, r: &str) {
    let before = note(env).await;
    let bytes = [
        msg::parse("", &write(r, 1, "STALE")),
        msg::bind("", "", &[]),
        msg::execute("", 0),
        msg::sync(),
    ]
    .concat();
    raw.send(&bytes).expect("send A's stale write");
    let replies = raw.read_until_ready(1).expect("read A's stale write");
    assert_eq!(
        error_codes(&replies),
        [STALE],
        "G1 violated: A's write with token 1 ran unchecked in a new transaction after B \
         committed token 2; the proxy kept the check of an ended transaction: {:?}",
        wire::render(&replies)
    );
    assert_eq!(note(env).await, before, "the stale write must not commit");
    assert_eq!(env.monitor.high_water(r).await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_commit_bound_before_a_sync_and_executed_after_it_ends_the_memo() {
    let env = FenceEnv::new("memo_g1_portal", SETUP).await;
    let r = "portal-commit";
    let (mut a, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("A logs in");
    raw_round(&mut a, &msg::query("BEGIN"), 1, "A: BEGIN");
    // A binds COMMIT to a named portal, to run it later in the same transaction.
    let bound = [
        msg::parse("c", "COMMIT"),
        msg::bind("p", "c", &[]),
        msg::sync(),
    ]
    .concat();
    raw_round(&mut a, &bound, 1, "A: Parse/Bind COMMIT into portal p");
    // Then runs it, and a write with token 1 after it, in one round: the COMMIT ends the
    // block, the write runs (checked) in an implicit transaction that ends at Sync.
    let round = [
        msg::execute("p", 0),
        msg::parse("", &write(r, 1, "A")),
        msg::bind("", "", &[]),
        msg::execute("", 0),
        msg::sync(),
    ]
    .concat();
    let replies = raw_round(&mut a, &round, 1, "A: Execute p (COMMIT), then a write");
    assert_eq!(
        replies.last().map(|(_, body)| body[0]),
        Some(b'I'),
        "A's transaction ended: {:?}",
        wire::render(&replies)
    );
    assert_eq!(env.monitor.high_water(r).await, Some(1));
    assert_eq!(note(&env).await, "A");

    newer_holder_commits(&env, r).await;
    stale_extended_write_is_rejected(&env, &mut a, r).await;
    assert_eq!(note(&env).await, "AB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_function_call_ending_an_implicit_transaction_ends_the_memo() {
    let env = FenceEnv::new("memo_g1_fastpath", SETUP).await;
    let r = "fastpath";
    let oid: u32 = env
        .monitor
        .text("SELECT 'pg_backend_pid'::regproc::oid::text")
        .await
        .unwrap()
        .parse()
        .unwrap();
    // FunctionCall: function oid, no argument formats, no arguments, text result.
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    let mut function_call = vec![b'F'];
    function_call.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    function_call.extend_from_slice(&body);

    let (mut a, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("A logs in");
    // A write with token 1 in the implicit transaction of an extended round, then a
    // FunctionCall, which commits that transaction (no Sync).
    let round = [
        msg::parse("", &write(r, 1, "A")),
        msg::bind("", "", &[]),
        msg::execute("", 0),
        function_call,
    ]
    .concat();
    let replies = raw_round(&mut a, &round, 1, "A: write, then FunctionCall");
    assert_eq!(tags(&replies), "12CVZ", "{:?}", wire::render(&replies));
    assert_eq!(
        env.monitor.high_water(r).await,
        Some(1),
        "the FunctionCall committed A's implicit transaction"
    );
    assert_eq!(note(&env).await, "A");

    newer_holder_commits(&env, r).await;
    stale_extended_write_is_rejected(&env, &mut a, r).await;
    assert_eq!(note(&env).await, "AB");
}

/// A frontend message with `tag` and `body` (for the messages [`msg`] has no builder for).
fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Close of a prepared statement.
fn close_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    frame(b'C', &body)
}

/// Reads until a message with `tag` arrives; returns everything read.
fn read_until_tag(raw: &mut WireClient, tag: u8, what: &str) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        let message = raw
            .read_message()
            .unwrap_or_else(|e| panic!("{what}: read: {e}"));
        let done = message.0 == tag;
        out.push(message);
        if done {
            return out;
        }
    }
}

/// The status byte of the last ReadyForQuery among `replies`.
fn last_status(replies: &[Message]) -> Option<u8> {
    replies
        .iter()
        .rev()
        .find(|(tag, _)| *tag == b'Z')
        .map(|(_, body)| body[0])
}

/// G1 through COPY: a Sync sent while the server is in COPY FROM STDIN is swallowed by the
/// server, so it ends nothing; the proxy must not treat it as the boundary after which the
/// round's COMMIT is forgotten. A's round ends the block with COMMIT, starts a COPY, sends a
/// Sync (swallowed), finishes the COPY and writes with token 1 (checked, in the implicit
/// transaction after the COMMIT), then the real Sync commits that transaction. The memo of
/// that check must not survive into A's next transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_sync_swallowed_by_copy_in_is_no_transaction_boundary() {
    let env = FenceEnv::new("memo_g1_copy_sync", SETUP).await;
    let r = "copy-sync";
    let (mut a, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("A logs in");
    raw_round(&mut a, &msg::query("BEGIN"), 1, "A: BEGIN");
    // libpq's way: the Sync goes with the COPY, before the server says it is copying.
    let start = [
        msg::parse("", "COMMIT"),
        msg::bind("", "", &[]),
        msg::execute("", 0),
        msg::parse("", "COPY t (id) FROM STDIN"),
        msg::bind("", "", &[]),
        msg::execute("", 0),
        msg::sync(),
    ]
    .concat();
    a.send(&start).expect("A: COMMIT, COPY, Sync");
    let replies = read_until_tag(&mut a, b'G', "A: COMMIT, then COPY FROM STDIN");
    assert!(
        error_codes(&replies).is_empty(),
        "{:?}",
        wire::render(&replies)
    );
    let rest = [
        frame(b'c', &[]),
        msg::parse("", &write(r, 1, "A")),
        msg::bind("", "", &[]),
        msg::execute("", 0),
        msg::sync(),
    ]
    .concat();
    let replies = raw_round(&mut a, &rest, 1, "A: CopyDone, a write with token 1, Sync");
    assert_eq!(
        last_status(&replies),
        Some(b'I'),
        "the COMMIT ended A's block: {:?}",
        wire::render(&replies)
    );
    assert_eq!(env.monitor.high_water(r).await, Some(1));
    assert_eq!(note(&env).await, "A");

    newer_holder_commits(&env, r).await;
    stale_extended_write_is_rejected(&env, &mut a, r).await;
    assert_eq!(note(&env).await, "AB");
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
    let env = FenceEnv::new("memo_g1_reparse", SETUP).await;
    let r = "reparse";
    let (mut a, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("A logs in");
    let broken = [msg::parse("s", &format!("{} AND", read(r, 1))), msg::sync()].concat();
    a.send(&broken).expect("A: Parse s (syntax error)");
    let replies = a.read_until_ready(1).expect("A: Parse s (syntax error)");
    assert_eq!(
        error_codes(&replies),
        ["42601"],
        "{:?}",
        wire::render(&replies)
    );
    raw_round(
        &mut a,
        &[msg::parse("s", "COMMIT"), msg::sync()].concat(),
        1,
        "A: Parse s as COMMIT",
    );
    raw_round(&mut a, &msg::query("BEGIN"), 1, "A: BEGIN");
    raw_round(&mut a, &msg::query(&write(r, 1, "A")), 1, "A: write");
    let replies = raw_round(
        &mut a,
        &[msg::bind("", "s", &[]), msg::execute("", 0), msg::sync()].concat(),
        1,
        "A: Bind/Execute s (COMMIT)",
    );
    assert_eq!(
        last_status(&replies),
        Some(b'I'),
        "s is COMMIT: {:?}",
        wire::render(&replies)
    );
    assert_eq!(env.monitor.high_water(r).await, Some(1));
    assert_eq!(note(&env).await, "A");

    newer_holder_commits(&env, r).await;
    stale_extended_write_is_rejected(&env, &mut a, r).await;
    assert_eq!(note(&env).await, "AB");
}

/// A's Bind of `s` (a write with token 1) must be checked and rejected after B committed
/// token 2.
fn stale_bind_of_named_statement_is_rejected(raw: &mut WireClient, what: &str) {
    let bytes = [msg::bind("", "s", &[]), msg::execute("", 0), msg::sync()].concat();
    raw.send(&bytes)
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let replies = raw
        .read_until_ready(1)
        .unwrap_or_else(|e| panic!("{what}: read: {e}"));
    assert_eq!(
        error_codes(&replies),
        [STALE],
        "G1 violated: {what}: A's prepared write with token 1 ran unchecked after B \
         committed token 2: {:?}",
        wire::render(&replies)
    );
}

/// G1: a Close that the server discards (it follows an error in the same round) does not
/// close the statement, so the proxy must still know what `s` says when A binds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_close_discarded_after_an_error_leaves_the_statement_checked() {
    let env = FenceEnv::new("memo_g1_discarded_close", SETUP).await;
    let r = "discarded-close";
    let (mut a, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("A logs in");
    raw_round(
        &mut a,
        &[msg::parse("s", &write(r, 1, "STALE")), msg::sync()].concat(),
        1,
        "A: Parse s",
    );
    newer_holder_commits(&env, r).await;
    let round = [msg::parse("", "bogus"), close_statement("s"), msg::sync()].concat();
    a.send(&round).expect("A: failing Parse, Close s, Sync");
    let replies = a.read_until_ready(1).expect("A: failing Parse, Close s");
    assert_eq!(
        error_codes(&replies),
        ["42601"],
        "{:?}",
        wire::render(&replies)
    );
    stale_bind_of_named_statement_is_rejected(&mut a, "Close s was discarded");
    assert_eq!(note(&env).await, "B");
}

/// G1: SQL `DEALLOCATE` drops a protocol-level statement too, so a later Parse of the same
/// name succeeds on the server; the proxy must check what the new text says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_statement_reparsed_after_sql_deallocate_is_checked() {
    let env = FenceEnv::new("memo_g1_deallocate", SETUP).await;
    let r = "deallocate";
    let (mut a, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("A logs in");
    raw_round(
        &mut a,
        &[msg::parse("s", "SELECT 1"), msg::sync()].concat(),
        1,
        "A: Parse s",
    );
    raw_round(&mut a, &msg::query("DEALLOCATE s"), 1, "A: DEALLOCATE s");
    raw_round(
        &mut a,
        &[msg::parse("s", &write(r, 1, "STALE")), msg::sync()].concat(),
        1,
        "A: Parse s again, as a write with token 1",
    );
    newer_holder_commits(&env, r).await;
    stale_bind_of_named_statement_is_rejected(&mut a, "s re-parsed after DEALLOCATE");
    assert_eq!(note(&env).await, "B");
}

/// A DO block that COMMITs, run through the extended protocol outside a transaction block
/// (a non-atomic context, so the COMMIT is allowed), ends the implicit transaction in the
/// middle of a round: the write after it in the same round runs in a new transaction and
/// must be checked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_do_block_committing_mid_round_ends_the_memo() {
    let env = FenceEnv::new("memo_g1_do_commit", SETUP).await;
    let r = "do-commit";
    let (mut a, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("A logs in");
    let first = [
        msg::parse("", &write(r, 1, "A")),
        msg::bind("", "", &[]),
        msg::execute("", 0),
        msg::parse("", "DO $$BEGIN COMMIT; END$$"),
        msg::bind("", "", &[]),
        msg::execute("", 0),
        frame(b'H', &[]),
    ]
    .concat();
    a.send(&first).expect("A: write, DO (COMMIT), Flush");
    let replies: Vec<Message> = (0..6)
        .map(|_| a.read_message().expect("A: write, DO (COMMIT)"))
        .collect();
    assert_eq!(tags(&replies), "12C12C", "{:?}", wire::render(&replies));
    assert_eq!(env.monitor.high_water(r).await, Some(1), "the DO committed");
    assert_eq!(note(&env).await, "A");

    newer_holder_commits(&env, r).await;
    // The rest of the same round: no Sync since A's checked write.
    stale_extended_write_is_rejected(&env, &mut a, r).await;
    assert_eq!(note(&env).await, "AB");
}

/// G1: a Parse of the unnamed statement that the server discards (it follows an error in
/// the same round) leaves the previous unnamed statement in place, so the proxy must check
/// what that one says when A binds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_discarded_parse_leaves_the_unnamed_statement_checked() {
    let env = FenceEnv::new("memo_g1_discarded_parse", SETUP).await;
    let r = "discarded-parse";
    let (mut a, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("A logs in");
    raw_round(
        &mut a,
        &[msg::parse("", &write(r, 1, "STALE")), msg::sync()].concat(),
        1,
        "A: Parse the unnamed statement",
    );
    newer_holder_commits(&env, r).await;
    let round = [
        msg::parse("x", "bogus"),
        msg::parse("", "SELECT 1"),
        msg::sync(),
    ]
    .concat();
    a.send(&round).expect("A: failing Parse, Parse \"\", Sync");
    let replies = a.read_until_ready(1).expect("A: failing Parse, Parse \"\"");
    assert_eq!(
        error_codes(&replies),
        ["42601"],
        "{:?}",
        wire::render(&replies)
    );
    let bytes = [msg::bind("", "", &[]), msg::execute("", 0), msg::sync()].concat();
    a.send(&bytes)
        .expect("A: Bind/Execute the unnamed statement");
    let replies = a
        .read_until_ready(1)
        .expect("A: Bind/Execute the unnamed statement");
    assert_eq!(
        error_codes(&replies),
        [STALE],
        "G1 violated: the unnamed statement (a write with token 1) ran unchecked after B \
         committed token 2, the proxy took the discarded Parse for it: {:?}",
        wire::render(&replies)
    );
    assert_eq!(note(&env).await, "B");
}

/// G1 through COPY and the record of prepared statements: a Sync sent during COPY FROM STDIN
/// is swallowed only while the server is still copying when it reads it. Here a CopyData
/// fails first, so the server ends the COPY with an error and answers that Sync; the Parse
/// of `s` (a write with token 1) that follows the CopyDone then completes on the server. The
/// proxy must not count that Parse as skipped, or A's later Bind of `s` runs unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_sync_answered_after_a_failed_copy_leaves_the_next_parse_counted() {
    let env = FenceEnv::new("memo_g1_copy_fail_sync", SETUP).await;
    let r = "copy-fail-sync";
    let (mut a, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("A logs in");
    let start = [
        msg::parse("", "COPY t (id) FROM STDIN"),
        msg::bind("", "", &[]),
        msg::execute("", 0),
        msg::sync(),
    ]
    .concat();
    a.send(&start).expect("A: COPY, Sync");
    let replies = read_until_tag(&mut a, b'G', "A: COPY FROM STDIN");
    assert!(
        error_codes(&replies).is_empty(),
        "{:?}",
        wire::render(&replies)
    );
    // The bad row fails the COPY before the server reads the Sync behind it.
    let rest = [
        frame(b'd', b"not a number\n"),
        msg::sync(),
        frame(b'c', &[]),
        msg::parse("s", &write(r, 1, "STALE")),
        msg::sync(),
    ]
    .concat();
    a.send(&rest)
        .expect("A: bad CopyData, Sync, CopyDone, Parse s, Sync");
    let replies = a.read_until_ready(2).expect("A: failed COPY, Parse s");
    assert_eq!(
        error_codes(&replies),
        ["22P02"],
        "{:?}",
        wire::render(&replies)
    );
    assert!(
        tags(&replies).contains('1'),
        "Parse s completed on the server: {:?}",
        wire::render(&replies)
    );
    newer_holder_commits(&env, r).await;
    // The proxy cannot know which of those Syncs the server answered: it must either check
    // the Bind (55Z01) or, having lost track of the replies, end the session rather than let
    // the statement run unchecked.
    a.send(&[msg::bind("", "s", &[]), msg::execute("", 0), msg::sync()].concat())
        .expect("A: Bind/Execute s");
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

/// G1 for a DO that commits midway, through the extended protocol: the COMMIT bound earlier
/// in the same round ends A's block, so the DO (carrying token 1) runs outside a transaction
/// block, where it may COMMIT and release the fence, and must be refused (55Z02), although
/// the last ReadyForQuery still said "in a block". Otherwise: A's DO is checked, commits,
/// waits (here on an advisory lock), B commits token 2 without waiting, and A's update with
/// token 1 commits after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_a_do_after_a_commit_in_the_same_round_is_refused() {
    let env = FenceEnv::new("memo_g1_do_after_commit", SETUP).await;
    let r = "do-after-commit";
    const KEY: i64 = 7_204_311;
    let (mut a, _) =
        WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("A logs in");
    let replies = raw_round(&mut a, &msg::query("SELECT pg_backend_pid()"), 1, "A: pid");
    let pid: i32 = replies
        .iter()
        .find(|(tag, _)| *tag == b'D')
        .map(|(_, body)| String::from_utf8_lossy(&body[6..]).parse().unwrap())
        .expect("A's pid");
    raw_round(&mut a, &msg::query("BEGIN"), 1, "A: BEGIN");
    env.monitor
        .client()
        .execute("SELECT pg_advisory_lock($1)", &[&KEY])
        .await
        .expect("monitor takes the advisory lock");
    let body = format!(
        "DO $$BEGIN COMMIT; PERFORM pg_advisory_lock({KEY}); \
         UPDATE t SET note = note || 'STALE' WHERE id = 1; END$$ {}",
        comment(r, 1)
    );
    let round = [
        msg::parse("", "COMMIT"),
        msg::bind("", "", &[]),
        msg::execute("", 0),
        msg::parse("", &body),
        msg::bind("", "", &[]),
        msg::execute("", 0),
        msg::sync(),
    ]
    .concat();
    a.send(&round).expect("A: COMMIT, DO with token 1, Sync");
    // Either A's DO waits for the advisory lock (it ran) or A is idle (it was refused).
    let waiting = eventually("A's DO waits or A is idle", || async {
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
    })
    .await;
    if waiting {
        newer_holder_commits(&env, r).await;
    }
    env.monitor
        .client()
        .execute("SELECT pg_advisory_unlock($1)", &[&KEY])
        .await
        .expect("monitor releases the advisory lock");
    let replies = a.read_until_ready(1).expect("A: COMMIT, DO");
    if !waiting {
        newer_holder_commits(&env, r).await;
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

/// Settings: every data statement of a session with `SET LOCAL fencing.*` is preceded by
/// `fencegate.check_settings`, which calls the check every time: PostgreSQL keeps no memo
/// of admitted settings, since anything a client can SET could forge one (a repeated check
/// takes the check's fast path and writes nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_checked_before_every_data_statement() {
    let env = counting_env("memo_settings").await;
    let client = session(&env).await;
    let block = |token: i64| -> Vec<String> {
        let mut statements = vec![
            "BEGIN".to_string(),
            "SET LOCAL fencing.resource = 'settings-once'".to_string(),
            format!("SET LOCAL fencing.token = {token}"),
        ];
        for mark in ["a", "b", "c", "d", "e"] {
            statements.push(format!("UPDATE t SET note = note || '{mark}' WHERE id = 1"));
        }
        statements.push("SELECT note FROM t WHERE id = 1".into());
        statements.push("COMMIT".into());
        statements
    };
    queries_run_checks(
        &env,
        &client,
        &block(3),
        "a SET LOCAL block of six data statements",
        "one transaction with the same settings throughout: the first statement checks in \
         the DO form (the database is not yet known to have the schema), the second checks \
         and returns what it admitted, the others only compare the settings with that",
        2,
    )
    .await;
    queries_run_checks(
        &env,
        &client,
        &block(3),
        "the same block again",
        "a new transaction checks again",
        1,
    )
    .await;
    assert_eq!(env.monitor.high_water("settings-once").await, Some(3));
    assert_eq!(note(&env).await, "abcdeabcde");
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
