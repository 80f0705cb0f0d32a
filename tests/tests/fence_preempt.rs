//! Preemption reads each holder's published token from `pg_locks` (docs/fencing.md,
//! "Preemption, and bounded waits"): one advisory lock carries the low 32 bits of a token,
//! and a second, taken first, the high 32 bits of a token of 2^32 or more. These tests hold
//! tokens on both sides of 2^32 open in a paused transaction and raise behind them:
//! - an older holder is ended after the grace, whatever the size of its token (fails when a
//!   raise looks for a key the holder did not take);
//! - a newer holder is never ended, also when its low half is below the raise's (fails when
//!   the high half is left out of what a raise reads).
#![forbid(unsafe_code)]

use std::time::Duration;

use fencegate::fence::stats::FenceStats;
use fencegate_tests::cluster::Cluster;
use fencegate_tests::fence::jobs::{fenced_append, fenced_read, steps, JOB, SETUP};
use fencegate_tests::fence::{assert_stale, backend_pid, expect_code, within, FenceEnv, STALE};

const GRACE: Duration = Duration::from_millis(300);

/// 2^32: tokens from here on publish a high half.
const HIGH: i64 = 1 << 32;

/// A holder admitted with `older` (its first touch raises H, in an open transaction it then
/// leaves idle) is ended by a check of `newer`, which then writes.
async fn older_holder_is_ended(prefix: &str, older: i64, newer: i64) {
    let env = FenceEnv::with_grace(prefix, SETUP, GRACE).await;
    let a = env.client().await;
    let b = env.client().await;
    let a_pid = backend_pid(&a).await;
    a.batch_execute("BEGIN").await.unwrap();
    a.simple_query(&fenced_read(older)).await.unwrap();
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
    older_holder_is_ended("preempt_small", HIGH - 2, HIGH - 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_of_a_token_above_2_32_is_ended_by_a_newer_one() {
    older_holder_is_ended("preempt_large", HIGH + 1, 2 * HIGH + 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_below_2_32_is_ended_by_a_newer_one_above() {
    older_holder_is_ended("preempt_across", 7, HIGH + 3).await;
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
