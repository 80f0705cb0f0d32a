//! The scenario fencegate exists for (SPEC §8, failure mode FM12), in both variants:
//! worker A holds the lease on `job:7` with token 1, reads the job and freezes; the lease
//! passes to worker B with token 2, which processes the job and writes its result; A wakes
//! up and writes its stale result.
//!
//! 1. A froze between transactions: directly against Postgres A's write lands and the
//!    record mixes both workers' work; through fencegate A gets 55Z01 and the record holds
//!    exactly B's result.
//! 2. A froze inside an open transaction: B waits about the preemption grace, then the proxy
//!    ends A's backend, B's write goes through, and A's transaction fails.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use fencegate::fence::stats::FenceStats;
use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fence::{
    assert_stale, backend_pid, comment, expect_code, fenced_database, within, FenceEnv, FenceProxy,
    Monitor, STALE,
};
use fencegate_tests::Endpoint;
use tokio_postgres::Client;

const JOB: &str = "job:7";

const SETUP: &str = "
CREATE TABLE jobs (id int PRIMARY KEY, state text NOT NULL, result text, steps text NOT NULL DEFAULT '');
INSERT INTO jobs VALUES (7, 'new', NULL, '');
GRANT ALL ON jobs TO trust_user;
";

/// The job as `(state, result, steps)`: `steps` lists every worker whose write landed.
type Record = (String, Option<String>, String);

fn read(token: i64) -> String {
    format!(
        "SELECT state FROM jobs WHERE id = 7 {}",
        comment(JOB, token)
    )
}

fn write(token: i64, worker: &str) -> String {
    format!(
        "UPDATE jobs SET state = 'done', result = '{worker}: processed', steps = steps || '{worker}' \
         WHERE id = 7 {}",
        comment(JOB, token)
    )
}

async fn record(monitor: &Monitor) -> Record {
    let row = monitor
        .client()
        .query_one("SELECT state, result, steps FROM jobs WHERE id = 7", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

fn b_result() -> Record {
    ("done".into(), Some("B: processed".into()), "B".into())
}

/// Variant 1 through `ep`: returns A's late write and the record afterwards.
async fn frozen_between_transactions(
    ep: Endpoint,
    prefix: &str,
) -> (Result<u64, tokio_postgres::Error>, Record, Monitor) {
    let cluster = Cluster::shared();
    let db = fenced_database(cluster, prefix, SETUP).await;
    let monitor = Monitor::connect(cluster, &db).await;
    let a = ep.connect(TRUST_USER, &db).await;
    let b = ep.connect(TRUST_USER, &db).await;
    let seen: String = a.query_one(&read(1), &[]).await.unwrap().get(0);
    assert_eq!(seen, "new");
    // A freezes here; its lease expires and B takes it with token 2.
    let seen: String = b.query_one(&read(2), &[]).await.unwrap().get(0);
    assert_eq!(seen, "new");
    assert_eq!(b.execute(&write(2, "B"), &[]).await.unwrap(), 1);
    // A wakes up and writes what it computed from its stale read.
    let late = a.execute(&write(1, "A"), &[]).await;
    let after = record(&monitor).await;
    (late, after, monitor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fm12_frozen_between_transactions_stale_write_rejected_through_proxy() {
    let fp = FenceProxy::start(Cluster::shared().port(), Duration::from_millis(500));
    let (late, after, monitor) = frozen_between_transactions(fp.endpoint(), "fm12_proxy").await;
    assert_stale(&expect_code(late, STALE), JOB, 1, 2);
    assert_eq!(after, b_result(), "the record must hold exactly B's result");
    assert_eq!(monitor.high_water(JOB).await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fm12_frozen_between_transactions_directly_against_postgres_corrupts_the_record() {
    let cluster = Cluster::shared();
    let (late, after, _) = frozen_between_transactions(cluster.endpoint(), "fm12_direct").await;
    assert_eq!(late.expect("without the proxy A's stale write lands"), 1);
    assert_eq!(
        after,
        ("done".into(), Some("A: processed".into()), "BA".into()),
        "directly, A's stale result overwrites B's and both wrote the record"
    );
}

const GRACE: Duration = Duration::from_millis(500);

/// Time allowed beyond the grace for the preemption itself on a busy test machine.
const SLACK: Duration = Duration::from_secs(5);

async fn open_and_read(a: &Client) {
    a.batch_execute("BEGIN").await.unwrap();
    let seen: String = a.query_one(&read(1), &[]).await.unwrap().get(0);
    assert_eq!(seen, "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fm12_frozen_inside_open_transaction_is_ended_after_the_grace() {
    let env = FenceEnv::with_grace("fm12_open", SETUP, GRACE).await;
    let a = env.client().await;
    let (b, b_notices) = env
        .fp
        .endpoint()
        .connect_keeping_notices(TRUST_USER, &env.db)
        .await;
    let a_pid = backend_pid(&a).await;
    // A opens a transaction, is admitted with token 1 by its read, and freezes there.
    open_and_read(&a).await;

    let started = Instant::now();
    let b_write = within("B's write", b.execute(&write(2, "B"), &[])).await;
    let waited = started.elapsed();
    let log_when_b_done = Cluster::shared().log();
    assert_eq!(b_write.expect("B's write is admitted"), 1);
    assert!(
        waited >= GRACE,
        "B finished after {waited:?}, before the grace of {GRACE:?} ran out"
    );
    assert!(
        waited < GRACE + SLACK,
        "B was blocked {waited:?}, far longer than the grace of {GRACE:?}"
    );
    // The proxy counts the preemption its check reported, and B sees nothing of it.
    env.assert_preempted(&log_when_b_done, a_pid, JOB, 1, 2)
        .await;
    let seen = b.batch_execute("SELECT 1").await;
    assert!(seen.is_ok(), "B goes on: {seen:?}");
    assert_eq!(
        *b_notices.lock().unwrap(),
        Vec::<String>::new(),
        "notices B saw"
    );

    // A wakes up inside its transaction: its write and its COMMIT fail.
    let late = a.execute(&write(1, "A"), &[]).await;
    assert!(late.is_err(), "A's write after preemption: {late:?}");
    let commit = a.batch_execute("COMMIT").await;
    assert!(commit.is_err(), "A's COMMIT after preemption succeeded");
    assert_eq!(record(&env.monitor).await, b_result());
    assert_eq!(env.monitor.high_water(JOB).await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fm12_frozen_inside_open_transaction_is_not_ended_without_a_newer_holder() {
    // Same token (A's own retry through another connection) and an unfenced writer never end A.
    let env = FenceEnv::with_grace("fm12_same_token", SETUP, GRACE).await;
    let a = env.client().await;
    let again = env.client().await;
    let a_pid = backend_pid(&a).await;
    let again_pid = backend_pid(&again).await;
    open_and_read(&a).await;
    let same = tokio::spawn(async move {
        let r = again.execute(&write(1, "C"), &[]).await;
        (r, again)
    });
    // Wait until C has waited out its grace twice (two new waits) and A, a holder of the
    // same token, is still there: no preemption happened.
    env.monitor
        .wait_until_waited_again(again_pid, a_pid, 2)
        .await;
    assert_eq!(a.execute(&write(1, "A"), &[]).await.unwrap(), 1);
    a.batch_execute("COMMIT").await.unwrap();
    let (r, _again) = within("C's write", same).await.unwrap();
    assert_eq!(r.unwrap(), 1);
    assert_eq!(
        record(&env.monitor).await,
        ("done".into(), Some("C: processed".into()), "AC".into())
    );
    assert_eq!(
        FenceStats::get(&env.fp.stats.preempted),
        0,
        "preemptions counted"
    );
}
