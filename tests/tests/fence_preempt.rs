//! Preemption: a raise that waits out the grace ends the sessions holding older tokens
//! (docs/fencing.md, "Preemption, and bounded waits"). A slow path publishes its token in
//! `pg_locks` (one advisory lock carries the low 32 bits, a second, taken first, the high 32
//! bits of a token of 2^32 or more); a fast path publishes nothing, and a raise reads H for
//! a holder of K(r) that published no token. These tests hold tokens open in a paused
//! transaction and raise behind them:
//! - an older holder is ended after the grace, whatever the size of its token (fails when a
//!   raise looks for a key the holder did not take), also one a fast path admitted (fails
//!   when a raise ends only the sessions that published a token);
//! - a newer holder is never ended, also when its low half is below the raise's (fails when
//!   the high half is left out of what a raise reads), and neither is a fast path's holder
//!   of the raise's own token, when the raise's snapshot cannot see that token's row (fails
//!   when a raise takes every holder that published nothing for an older one);
//! - a superuser's session, which preemption may not end, is waited for (fails when the
//!   refusal to end it becomes the raise's error).
#![forbid(unsafe_code)]

use std::time::Duration;

use fencegate::fence::stats::FenceStats;
use fencegate_tests::cluster::{Cluster, SUPERUSER};
use fencegate_tests::fence::jobs::{fenced_append, fenced_read, steps, JOB, SETUP};
use fencegate_tests::fence::{assert_stale, backend_pid, expect_code, within, FenceEnv, STALE};

const GRACE: Duration = Duration::from_millis(300);

/// 2^32: tokens from here on publish a high half.
const HIGH: i64 = 1 << 32;

/// How a paused holder came by its token.
#[derive(Clone, Copy, PartialEq)]
enum Admitted {
    /// Its first touch raised H, in the transaction it then leaves idle (the slow path,
    /// which publishes the token).
    ByRaise,
    /// An earlier transaction raised H; this one presents the same token again, which a
    /// fast path admits, publishing nothing.
    ByFastPath,
}

/// How many published-token keys (two-int4 advisory locks) backend `pid` holds.
async fn published_keys(env: &FenceEnv, pid: i32) -> i64 {
    env.monitor
        .client()
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND pid = $1",
            &[&pid],
        )
        .await
        .expect("read pg_locks")
        .get(0)
}

/// A holder admitted with `older` (see [`Admitted`]), in an open transaction it then leaves
/// idle, is ended by a check of `newer`, which then writes.
async fn older_holder_is_ended(prefix: &str, older: i64, newer: i64, how: Admitted) {
    let env = FenceEnv::with_grace(prefix, SETUP, GRACE).await;
    let a = env.client().await;
    let b = env.client().await;
    let a_pid = backend_pid(&a).await;
    if how == Admitted::ByFastPath {
        a.simple_query(&fenced_read(older)).await.unwrap();
    }
    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query(&fenced_read(older)).await.unwrap();
    assert_eq!(
        published_keys(&env, a_pid).await == 0,
        how == Admitted::ByFastPath,
        "a fast path publishes nothing, a raise publishes its token"
    );
    let written = within(
        "the newer holder's write",
        b.execute(&fenced_append(newer, "B"), &[]),
    )
    .await;
    assert_eq!(written.expect("the newer holder is admitted"), 1);
    let log = Cluster::shared().log();
    env.assert_preempted(&log, a_pid, JOB, older, newer).await;
    assert!(
        a.batch_execute("COMMIT").await.is_err(),
        "the ended holder committed"
    );
    assert_eq!(steps(&env.monitor).await, "B");
    assert_eq!(env.monitor.high_water(JOB).await, Some(newer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_of_a_token_below_2_32_is_ended_by_a_newer_one() {
    older_holder_is_ended("preempt_small", HIGH - 2, HIGH - 1, Admitted::ByRaise).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_of_a_token_above_2_32_is_ended_by_a_newer_one() {
    older_holder_is_ended("preempt_large", HIGH + 1, 2 * HIGH + 1, Admitted::ByRaise).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_below_2_32_is_ended_by_a_newer_one_above() {
    older_holder_is_ended("preempt_across", 7, HIGH + 3, Admitted::ByRaise).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_a_fast_path_admitted_is_ended_by_a_newer_one() {
    older_holder_is_ended("preempt_fast", 5, 6, Admitted::ByFastPath).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_a_fast_path_admitted_above_2_32_is_ended_by_a_newer_one() {
    older_holder_is_ended(
        "preempt_fast_large",
        HIGH + 1,
        HIGH + 2,
        Admitted::ByFastPath,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raise_from_an_older_snapshot_never_ends_a_holder_of_its_own_token() {
    // R takes a REPEATABLE READ snapshot while the resource has no row. C then raises H to
    // 3, and D, which a fast path admitted with 3 (publishing nothing), pauses in its
    // transaction. R presents 3 too: its snapshot shows no row, so it raises, and waits for
    // D. It must not end D, a holder of its own token, though D published none; once D
    // commits, R's insert meets the row it cannot see and fails with 40001.
    let env = FenceEnv::with_grace("preempt_snapshot", SETUP, GRACE).await;
    let (r, c, d) = (env.client().await, env.client().await, env.client().await);
    let (r_pid, d_pid) = (backend_pid(&r).await, backend_pid(&d).await);
    r.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .await
        .unwrap();
    c.simple_query(&fenced_read(3)).await.unwrap();
    d.batch_execute("BEGIN").await.unwrap();
    d.simple_query(&fenced_read(3)).await.unwrap();
    assert_eq!(published_keys(&env, d_pid).await, 0, "D published a token");
    let waiting = tokio::spawn(async move {
        let result = r.simple_query(&fenced_read(3)).await;
        (result, r)
    });
    env.monitor.wait_until_waited_again(r_pid, d_pid, 2).await;
    assert_eq!(d.execute(&fenced_append(3, "D"), &[]).await.unwrap(), 1);
    d.batch_execute("COMMIT").await.unwrap();
    let (result, _r) = within("R's check", waiting).await.unwrap();
    expect_code(result, "40001");
    assert_eq!(
        FenceStats::get(&env.fp.stats.preempted),
        0,
        "preemptions counted"
    );
    assert_eq!(steps(&env.monitor).await, "D");
    assert_eq!(env.monitor.high_water(JOB).await, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_holder_is_never_ended_though_its_low_half_is_smaller() {
    // A raises H to 2^33 + 1 (high half 2, low half 1) and pauses inside its transaction; B
    // presents 2^32 + 2 (high half 1, low half 2), older than A's. B waits, ends nobody, and
    // is refused once A commits.
    let newer = 2 * HIGH + 1;
    let older = HIGH + 2;
    let env = FenceEnv::with_grace("preempt_newer", SETUP, GRACE).await;
    let a = env.client().await;
    let b = env.client().await;
    let a_pid = backend_pid(&a).await;
    let b_pid = backend_pid(&b).await;
    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query(&fenced_read(newer)).await.unwrap();
    let waiting = tokio::spawn(async move {
        let r = b.execute(&fenced_append(older, "B"), &[]).await;
        (r, b)
    });
    // B has waited out its grace twice and A is still there: B ended nobody.
    env.monitor.wait_until_waited_again(b_pid, a_pid, 2).await;
    assert!(
        env.monitor.backend_exists(a_pid).await,
        "the newer holder was ended"
    );
    assert_eq!(a.execute(&fenced_append(newer, "A"), &[]).await.unwrap(), 1);
    a.batch_execute("COMMIT").await.unwrap();
    let (r, _b) = within("the older holder's write", waiting).await.unwrap();
    assert_stale(&expect_code(r, STALE), JOB, older, newer);
    assert_eq!(
        FenceStats::get(&env.fp.stats.preempted),
        0,
        "preemptions counted"
    );
    assert_eq!(steps(&env.monitor).await, "A");
    assert_eq!(env.monitor.high_water(JOB).await, Some(newer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superuser_holding_an_older_token_is_waited_for() {
    // PostgreSQL refuses pg_signal_backend the sessions of superusers (docs/security.md): a
    // raise behind a superuser's paused transaction with an older token waits for it, ending
    // nobody, and is admitted once that transaction ends.
    let env = FenceEnv::with_grace("preempt_superuser", SETUP, GRACE).await;
    let su = env.fp.endpoint().connect(SUPERUSER, &env.db).await;
    let b = env.client().await;
    let (su_pid, b_pid) = (backend_pid(&su).await, backend_pid(&b).await);
    su.simple_query(&fenced_read(5)).await.unwrap();
    su.batch_execute("BEGIN").await.unwrap();
    su.simple_query(&fenced_read(5)).await.unwrap();
    let waiting = tokio::spawn(async move {
        let r = b.execute(&fenced_append(6, "B"), &[]).await;
        (r, b)
    });
    env.monitor.wait_until_waited_again(b_pid, su_pid, 2).await;
    su.batch_execute("COMMIT").await.unwrap();
    let (r, _b) = within("the raise", waiting).await.unwrap();
    assert_eq!(r.expect("admitted once the superuser committed"), 1);
    assert_eq!(
        FenceStats::get(&env.fp.stats.preempted),
        0,
        "preemptions counted"
    );
    assert_eq!(steps(&env.monitor).await, "B");
    assert_eq!(env.monitor.high_water(JOB).await, Some(6));
}
