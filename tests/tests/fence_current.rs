//! A token seen admitted before is checked with `CALL fencegate.admit_current` (schema 11), which
//! must decide exactly as `fencegate.check` does (docs/fencing.md, "A token seen admitted
//! before"): a current token admitted, a stale one refused, and a belief that turned out
//! wrong (the admitting transaction rolled back) still raises the fence. Which function
//! ran is read from pg_stat_user_functions, so each test fails when the proxy never sends
//! `admit_current`; on a schema without it the proxy must keep to `check`.
#![forbid(unsafe_code)]

use fencegate_tests::fence::{assert_stale, comment, expect_code, FenceEnv, INVALID, STALE};
use tokio_postgres::Client;

const SETUP: &str = "
CREATE TABLE jobs (id int PRIMARY KEY, steps text NOT NULL DEFAULT '');
INSERT INTO jobs VALUES (7, '');
GRANT ALL ON jobs TO trust_user;
";

const JOB: &str = "job:7";

struct Env(FenceEnv);

impl std::ops::Deref for Env {
    type Target = FenceEnv;
    fn deref(&self) -> &FenceEnv {
        &self.0
    }
}

impl Env {
    /// A database whose sessions count their function calls (for the monitor to read).
    async fn new(prefix: &str) -> Env {
        Env(FenceEnv::counting(prefix, SETUP).await)
    }

    /// One transaction appending `step` with `token`; its outcome.
    async fn append(
        &self,
        c: &Client,
        token: i64,
        step: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let note = comment(JOB, token);
        c.batch_execute(&format!(
            "BEGIN; UPDATE jobs SET steps = steps || '{step}' WHERE id = 7 {note}; COMMIT"
        ))
        .await
    }

    /// Makes the sessions publish their pending statistics (at the end of this statement's
    /// transaction, as each is idle then).
    async fn flush(&self, sessions: &[&Client]) {
        for c in sessions {
            c.batch_execute("SELECT pg_stat_force_next_flush()")
                .await
                .unwrap();
        }
    }

    /// Appends with a stale `token` on `c` and expects 55Z01 naming `current`; then rolls
    /// the aborted transaction back.
    async fn refused(&self, c: &Client, token: i64, current: i64) {
        let err = expect_code(self.append(c, token, "x").await, STALE);
        assert_stale(&err, JOB, token, current);
        c.batch_execute("ROLLBACK").await.unwrap();
    }

    async fn steps(&self) -> String {
        self.monitor
            .text("SELECT steps FROM jobs WHERE id = 7")
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_current_decides_as_check_does() {
    let env = Env::new("current_decides").await;
    let c = env.client().await;
    // First touch with `check`; then the same token again: `admit_current`, admitted.
    env.append(&c, 5, "a").await.expect("first touch of 5");
    env.append(&c, 5, "b").await.expect("5 is current");
    env.append(&c, 5, "c").await.expect("5 is still current");
    // A newer holder raises H to 6 on another connection: the believed 5 is now stale.
    let other = env.client().await;
    env.append(&other, 6, "d").await.expect("6 raises");
    env.refused(&c, 5, 6).await;
    // A belief that turns out wrong: 7 admitted in a transaction that rolled back leaves H
    // at 6; the next transaction with 7 must still raise it.
    let note = comment(JOB, 7);
    c.batch_execute(&format!(
        "BEGIN; UPDATE jobs SET steps = steps || 'y' WHERE id = 7 {note}; ROLLBACK"
    ))
    .await
    .unwrap();
    assert_eq!(env.monitor.high_water(JOB).await, Some(6));
    env.append(&c, 7, "e").await.expect("7 raises after all");
    assert_eq!(env.monitor.high_water(JOB).await, Some(7));
    env.refused(&other, 6, 7).await;
    env.flush(&[&c, &other]).await;
    assert_eq!(env.steps().await, "abcde");
    // Which function decided: every token its session had seen admitted went to
    // check_current (5 twice, 7 after its rolled-back admission; the two stale ones too,
    // but PostgreSQL counts only calls that return, not those that end with an error),
    // every other one to check (the first touches of 5 and 6, and 7 before its rollback).
    assert_eq!(env.wait_for_calls("admit_current", 3).await, 3);
    assert_eq!(env.wait_for_calls("check", 3).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_current_refuses_a_raise_that_committed_after_the_snapshot() {
    // The case table's REPEATABLE READ row: the session believes 5 (admitted before), takes
    // its snapshot, and a newer holder raises H to 6 and commits before the session's next
    // fenced statement. The locks are free again, and the one read shows the old version
    // holding 5: only its xmax (the committed raise) tells that it is superseded.
    let env = Env::new("current_rr").await;
    let c = env.client().await;
    env.append(&c, 5, "a").await.expect("first touch of 5");
    env.append(&c, 5, "b").await.expect("5 is current");
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT steps FROM jobs")
        .await
        .unwrap();
    let other = env.client().await;
    env.append(&other, 6, "c").await.expect("6 raises");
    let note = comment(JOB, 5);
    let late = c
        .batch_execute(&format!(
            "UPDATE jobs SET steps = steps || 'x' WHERE id = 7 {note}"
        ))
        .await;
    let err = expect_code(late, STALE);
    assert!(
        err.message()
            .contains("after this transaction took its snapshot"),
        "{err:?}"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(env.steps().await, "abc");
    env.flush(&[&c]).await;
    // The belief was used: the second append went to admit_current.
    assert!(env.wait_for_calls("admit_current", 1).await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_schema_11_the_proxy_keeps_to_check() {
    let env = Env::new("current_old_schema").await;
    env.monitor
        .client()
        .batch_execute(
            // As schema 10: without schema 11's procedures.
            "DROP PROCEDURE fencegate.admit_current(text, bigint, int4); \
             DROP PROCEDURE fencegate.settings_unchanged(text, text, int4, boolean)",
        )
        .await
        .unwrap();
    let c = env.client().await;
    for step in ["a", "b", "c"] {
        env.append(&c, 5, step).await.expect("5 is current");
    }
    let other = env.client().await;
    env.append(&other, 6, "d").await.expect("6 raises");
    env.refused(&c, 5, 6).await;
    env.flush(&[&c, &other]).await;
    assert_eq!(env.steps().await, "abcd");
    // The three of 5 and the first touch of 6 (the stale 5 ended with an error, which
    // PostgreSQL does not count).
    assert_eq!(env.wait_for_calls("check", 4).await, 4);
}

/// Schema 11 left the checks of the name's length and the token's sign to the slow path:
/// the fast paths admit only a row that matches, and the table's constraints admit no row
/// for such arguments. Both functions, called directly by an ordinary role, still refuse
/// each with 55Z02, from the slow path's own checks, and write nothing (without those
/// checks the first call fails with the table's 23514 instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_out_of_bounds_are_refused_by_both_checks() {
    let env = Env::new("current_bounds").await;
    let c = env.client().await;
    c.batch_execute(&format!(
        "UPDATE jobs SET steps = 'a' WHERE id = 7 {}",
        comment(JOB, 5)
    ))
    .await
    .expect("the first token");
    let bad = [
        ("pg_catalog.repeat('x', 257)", "'5'", "a 257-byte name"),
        ("''", "'5'", "an empty name"),
        ("NULL", "'5'", "no name"),
        ("'job:7'", "'-1'", "a negative token"),
        ("'job:7'", "NULL", "no token"),
    ];
    for function in ["check", "check_current"] {
        for (resource, token, what) in bad {
            let sql =
                format!("SELECT fencegate.{function}({resource}, {token}::pg_catalog.int8, 5000)");
            let refused = expect_code(c.simple_query(&sql).await, INVALID);
            assert!(
                refused.message().starts_with("invalid fencing annotation"),
                "{function}, {what}: {}",
                refused.message()
            );
        }
    }
    let rows = env.fence_rows().await;
    assert_eq!(rows, [(JOB.to_string(), 5)], "nothing written for them");
}
