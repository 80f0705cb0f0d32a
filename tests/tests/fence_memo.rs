//! The proxy's memo of the checks it already sent in the current transaction (`Admitted` in
//! `proxy/src/fence/hook.rs`): a (resource, token) admitted earlier in the same transaction
//! is not checked again. That the memo never outlives the transaction it was made in (G1)
//! is shown in `fence_memo_g1.rs`.
//!
//! Savings are counted in Postgres itself: every test database has `track_functions = 'all'`,
//! so `pg_stat_user_functions` counts the calls of `fencegate.check`. A session publishes its
//! counts when it goes idle after `pg_stat_force_next_flush()`, so each count is read by the
//! monitor after the session that ran the scenario has done that: no waiting on timers. Each
//! case has its own database (function statistics are per database) and takes deltas.
//!
//! Covered, one table of cases each: simple Queries one by one, a multi-statement Query,
//! autocommit Queries, savepoints, several resources in one transaction, `COMMIT AND CHAIN`
//! and settings (`SET LOCAL fencing.*`, checked by `check_settings` itself); pipelined
//! Queries; tokio-postgres' extended protocol in and out of transactions and pipelined.
#![forbid(unsafe_code)]

use fencegate::fence::stats::FenceStats;
use fencegate_tests::cluster::TRUST_USER;
use fencegate_tests::fence::FenceEnv;
use fencegate_tests::memo::{note, read, write, SETUP};
use fencegate_tests::wire::{self, msg, tags, WireClient};
use tokio_postgres::{Client, GenericClient, SimpleQueryMessage, ToStatement};

/// Calls of the token checks (`fencegate.check`, `fencegate.admit_current` for a token the
/// session saw admitted, `fencegate.admit_set` for settings the client just set) published
/// so far in the current database.
const CHECK_CALLS: &str = "SELECT COALESCE(sum(calls), 0)::int8 FROM pg_stat_user_functions \
                           WHERE schemaname = 'fencegate' \
                           AND funcname IN ('check', 'admit_current', 'admit_set')";

/// Makes the session publish its pending statistics before its next ReadyForQuery.
const FLUSH: &str = "SELECT pg_stat_force_next_flush()";

/// A fenced database whose sessions count function calls, and a proxy in front of it.
async fn counting_env(prefix: &str) -> FenceEnv {
    FenceEnv::counting(prefix, SETUP).await
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
    let replies = raw.round(&msg::query("SHOW track_functions"), 1, "SHOW");
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

/// Publishes the pending statistics of `client`'s backend.
async fn flush(client: &Client) {
    client
        .simple_query(FLUSH)
        .await
        .expect("pg_stat_force_next_flush()");
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

/// How the statements of a [`Round`] reach the proxy.
enum Sent {
    /// Each as a simple Query of its own, waiting for each reply.
    OneByOne,
    /// All in one simple Query string, joined with `; `.
    OneString,
}

/// Statements sent on one session, and the calls of `fencegate.check` they must cost.
struct Round {
    what: &'static str,
    statements: Vec<String>,
    sent: Sent,
    checks: i64,
}

/// Rounds on one tokio-postgres session of a fresh counting database, then the note they
/// must leave in row 1 and the high-water marks they must leave behind.
struct QueryCase {
    db: &'static str,
    rounds: Vec<Round>,
    note: &'static str,
    high_water: &'static [(&'static str, i64)],
}

/// Cases of one transaction (or of autocommit statements) on one resource.
fn block_cases() -> Vec<QueryCase> {
    let r = "block-queries";
    let block_queries = vec![
        "BEGIN".into(),
        write(r, 1, "a"),
        write(r, 1, "b"),
        read(r, 1),
        "COMMIT".into(),
    ];
    let s = "block-string";
    let block_string = vec![
        "BEGIN".into(),
        write(s, 1, "a"),
        write(s, 1, "b"),
        "COMMIT".into(),
    ];
    let a = "autocommit";
    vec![
        QueryCase {
            db: "memo_block_queries",
            rounds: vec![Round {
                what: "BEGIN; UPDATE; UPDATE; SELECT; COMMIT as separate Queries, same token",
                statements: block_queries,
                sent: Sent::OneByOne,
                checks: 1,
            }],
            note: "ab",
            high_water: &[("block-queries", 1)],
        },
        QueryCase {
            db: "memo_block_string",
            rounds: vec![Round {
                what: "one Query \"BEGIN; UPDATE; UPDATE; COMMIT\", same token",
                statements: block_string,
                sent: Sent::OneString,
                checks: 1,
            }],
            note: "ab",
            high_water: &[],
        },
        QueryCase {
            db: "memo_autocommit",
            rounds: vec![Round {
                what: "three autocommit UPDATEs, each its own transaction",
                statements: vec![write(a, 1, "a"), write(a, 1, "b"), write(a, 1, "c")],
                sent: Sent::OneByOne,
                checks: 3,
            }],
            note: "abc",
            high_water: &[],
        },
    ]
}

/// `BEGIN; UPDATE; SAVEPOINT s; UPDATE; ROLLBACK TO s; UPDATE; COMMIT` on `r`, with `marks`.
fn savepoint_block(r: &str, marks: [&str; 3]) -> Vec<String> {
    vec![
        "BEGIN".into(),
        write(r, 1, marks[0]),
        "SAVEPOINT s".into(),
        write(r, 1, marks[1]),
        "ROLLBACK TO s".into(),
        write(r, 1, marks[2]),
        "COMMIT".into(),
    ]
}

/// `BEGIN`, then a write with each of `writes` (resource, token, mark), then `COMMIT`.
fn transaction_of(writes: &[(&str, i64, &str)]) -> Vec<String> {
    let writes = writes.iter().map(|&(r, token, mark)| write(r, token, mark));
    ["BEGIN".to_string()]
        .into_iter()
        .chain(writes)
        .chain(["COMMIT".to_string()])
        .collect()
}

/// A block under `SET LOCAL fencing.*` (resource `settings-once`, `token`): five UPDATEs
/// and a SELECT.
fn settings_block(token: i64) -> Vec<String> {
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
}

/// Cases where a transaction boundary inside the session ends what was admitted.
fn boundary_cases() -> Vec<QueryCase> {
    // The status stays "in transaction block" across each chained end: only the statement
    // itself tells the proxy that a new transaction began.
    let chain = vec![
        "BEGIN".into(),
        write("chain", 1, "a"),
        "COMMIT AND CHAIN".into(),
        write("chain", 1, "b"),
        "ROLLBACK AND CHAIN".into(),
        write("chain", 1, "c"),
        "COMMIT".into(),
    ];
    let (r, r2, r3) = ("res-one", "res-two", "res-three");
    vec![
        QueryCase {
            db: "memo_savepoints",
            rounds: vec![
                Round {
                    what: "UPDATE; SAVEPOINT s; UPDATE; ROLLBACK TO s; UPDATE, separate Queries",
                    statements: savepoint_block("savepoints", ["a", "b", "c"]),
                    sent: Sent::OneByOne,
                    checks: 3,
                },
                Round {
                    what: "the same savepoints in one Query string",
                    statements: savepoint_block("savepoints-string", ["d", "e", "f"]),
                    sent: Sent::OneString,
                    checks: 3,
                },
            ],
            note: "acdf",
            high_water: &[],
        },
        QueryCase {
            db: "memo_resources",
            rounds: vec![
                Round {
                    what:
                        "BEGIN; UPDATE (r,1); UPDATE (r2,1); UPDATE (r,1): one check per resource",
                    statements: transaction_of(&[(r, 1, "a"), (r2, 1, "b"), (r, 1, "c")]),
                    sent: Sent::OneByOne,
                    checks: 2,
                },
                Round {
                    what: "BEGIN; UPDATE (r3,1); UPDATE (r3,2); UPDATE (r3,2): one check per token",
                    statements: transaction_of(&[(r3, 1, "d"), (r3, 2, "e"), (r3, 2, "f")]),
                    sent: Sent::OneByOne,
                    checks: 2,
                },
            ],
            note: "abcdef",
            high_water: &[("res-one", 1), ("res-two", 1), ("res-three", 2)],
        },
        QueryCase {
            db: "memo_chain",
            rounds: vec![Round {
                what: "UPDATE; COMMIT AND CHAIN; UPDATE; ROLLBACK AND CHAIN; UPDATE (three \
                       transactions)",
                statements: chain,
                sent: Sent::OneByOne,
                checks: 3,
            }],
            note: "ac",
            high_water: &[],
        },
    ]
}

/// Settings: every data statement of a session with `SET LOCAL fencing.*` is preceded by
/// `fencegate.check_settings`, which calls the check every time: PostgreSQL keeps no memo
/// of admitted settings, since anything a client can SET could forge one (a repeated check
/// takes the check's fast path and writes nothing).
fn settings_cases() -> Vec<QueryCase> {
    vec![QueryCase {
        db: "memo_settings",
        rounds: vec![
            Round {
                what: "one transaction with the same settings throughout: the first statement \
                       checks in the DO form (the database is not yet known to have the \
                       schema), the second checks and returns what it admitted, the others \
                       only compare the settings with that",
                statements: settings_block(3),
                sent: Sent::OneByOne,
                checks: 2,
            },
            Round {
                what: "the same block again: a new transaction checks again (admit_set: the proxy read \
                       both SETs)",
                statements: settings_block(3),
                sent: Sent::OneByOne,
                checks: 1,
            },
        ],
        note: "abcdeabcde",
        high_water: &[("settings-once", 3)],
    }]
}

/// Runs `case` in its own counting database and asserts its checks, note and high-water
/// marks.
async fn run_query_case(case: QueryCase) {
    let env = counting_env(case.db).await;
    let client = session(&env).await;
    for round in &case.rounds {
        flush(&client).await;
        let before = check_calls(&env).await;
        let batches = match round.sent {
            Sent::OneByOne => round.statements.clone(),
            Sent::OneString => vec![round.statements.join("; ")],
        };
        for sql in &batches {
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{}: {}: {sql}: {e}", case.db, round.what));
        }
        flush(&client).await;
        assert_checks(&env, round.what, before, round.checks).await;
    }
    assert_eq!(note(&env).await, case.note, "{}", case.db);
    for &(resource, token) in case.high_water {
        assert_eq!(
            env.monitor.high_water(resource).await,
            Some(token),
            "{}: high-water mark of {resource}",
            case.db
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_checks_each_token_once_and_autocommit_checks_every_statement() {
    for case in block_cases() {
        run_query_case(case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_resources_and_chained_transactions_are_checked_again() {
    for case in boundary_cases() {
        run_query_case(case).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_checked_before_every_data_statement() {
    for case in settings_cases() {
        run_query_case(case).await;
    }
}

/// Queries written in one go before any reply is read, on a raw session.
struct PipelinedCase {
    db: &'static str,
    what: &'static str,
    statements: Vec<String>,
    /// The tags of every reply, and the transaction status after each Query.
    tags: &'static str,
    statuses: &'static [u8],
    checks: i64,
    note: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_are_checked_once_per_transaction() {
    let (p, c) = ("pipelined", "pipelined-commit");
    let cases = [
        PipelinedCase {
            db: "memo_pipelined",
            what: "three autocommit UPDATEs written before any reply was read",
            statements: vec![write(p, 1, "a"), write(p, 1, "b"), write(p, 1, "c")],
            tags: "CZCZCZ",
            statuses: b"III",
            checks: 3,
            note: "abc",
        },
        PipelinedCase {
            db: "memo_pipelined_commit",
            what: "pipelined Queries BEGIN; UPDATE; COMMIT; UPDATE (two transactions)",
            statements: vec![
                "BEGIN".into(),
                write(c, 1, "a"),
                "COMMIT".into(),
                write(c, 1, "b"),
            ],
            tags: "CZCZCZCZ",
            statuses: b"TTII",
            checks: 2,
            note: "ab",
        },
    ];
    for case in cases {
        let env = counting_env(case.db).await;
        let mut raw = raw_session(&env);
        raw.round(&msg::query(FLUSH), 1, FLUSH);
        let before = check_calls(&env).await;
        let bytes = msg::batch(case.statements.iter().map(|sql| msg::query(sql)));
        let replies = raw.round(&bytes, case.statements.len(), case.what);
        assert_eq!(tags(&replies), case.tags, "{:?}", wire::render(&replies));
        let statuses: Vec<u8> = replies
            .iter()
            .filter(|(tag, _)| *tag == b'Z')
            .map(|(_, body)| body[0])
            .collect();
        assert_eq!(
            statuses, case.statuses,
            "transaction status after each Query"
        );
        raw.round(&msg::query(FLUSH), 1, FLUSH);
        assert_checks(&env, case.what, before, case.checks).await;
        assert_eq!(note(&env).await, case.note, "{}", case.db);
    }
}

/// How three UPDATEs of one row go through tokio-postgres' extended protocol.
#[derive(Clone, Copy)]
enum Extended {
    /// Prepared once, executed three times in one transaction: each round is
    /// Bind/Execute/Sync, sent after the previous round's ReadyForQuery.
    PreparedInTransaction,
    /// `execute(&str)` three times in one transaction: each call prepares a named statement
    /// (Parse/Describe/Sync, then Bind/Execute/Sync) and closes it when dropped with
    /// Close/Sync, which tokio-postgres writes without waiting for its ReadyForQuery: so the
    /// next call's Sync always arrives while a ReadyForQuery is still outstanding.
    PerCallInTransaction,
    /// `execute(&str)` three times in autocommit, one after the other.
    PerCallAutocommit,
    /// Prepared once, executed three times in autocommit: tokio-postgres writes the three
    /// Bind/Execute/Sync rounds before reading any reply.
    PreparedPipelined,
}

/// Executes `statement` (an UPDATE of one row) on `client` and asserts it updated the row.
async fn update_one_row<T>(client: &impl GenericClient, statement: &T, what: &str)
where
    T: ToStatement + Sync + Send + ?Sized,
{
    let n = client
        .execute(statement, &[])
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(n, 1, "{what}");
}

/// Runs the three UPDATEs of `how` on `client`, carrying (`r`, 1).
async fn extended_updates(client: &mut Client, how: Extended, r: &str) {
    let per_call = ["a", "b", "c"].map(|mark| write(r, 1, mark));
    let what = "extended UPDATE";
    match how {
        Extended::PreparedInTransaction => {
            let prepared = client.prepare(&write(r, 1, "x")).await.expect("prepare");
            let tx = client.transaction().await.expect("BEGIN");
            for _ in 0..3 {
                update_one_row(&tx, &prepared, what).await;
            }
            tx.commit().await.expect("COMMIT");
        }
        Extended::PerCallInTransaction => {
            let tx = client.transaction().await.expect("BEGIN");
            for sql in &per_call {
                update_one_row(&tx, sql.as_str(), what).await;
            }
            tx.commit().await.expect("COMMIT");
        }
        Extended::PerCallAutocommit => {
            for sql in &per_call {
                update_one_row(&*client, sql.as_str(), what).await;
            }
        }
        Extended::PreparedPipelined => {
            let prepared = client.prepare(&write(r, 1, "x")).await.expect("prepare");
            let client = &*client;
            futures_util::join!(
                update_one_row(client, &prepared, "pipelined execute 0"),
                update_one_row(client, &prepared, "pipelined execute 1"),
                update_one_row(client, &prepared, "pipelined execute 2"),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_checks_a_token_once_per_transaction() {
    let cases = [
        (Extended::PreparedInTransaction, "memo_ext_block", 1, "xxx"),
        (
            Extended::PerCallInTransaction,
            "memo_ext_block_str",
            1,
            "abc",
        ),
        (Extended::PerCallAutocommit, "memo_ext_autocommit", 3, "abc"),
        (Extended::PreparedPipelined, "memo_ext_pipelined", 3, "xxx"),
    ];
    for (how, db, checks, expected_note) in cases {
        let env = counting_env(db).await;
        let mut client = session(&env).await;
        flush(&client).await;
        let before = check_calls(&env).await;
        extended_updates(&mut client, how, db).await;
        flush(&client).await;
        assert_checks(&env, db, before, checks).await;
        assert_eq!(note(&env).await, expected_note, "{db}");
    }
}
