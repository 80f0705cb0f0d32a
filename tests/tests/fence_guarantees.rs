//! The fencing guarantees of SPEC §3 (G1-G3, G5, G6), each proved against a real Postgres
//! through the fencing proxy with tokio-postgres clients.
//!
//! Every test uses job 7 of a fresh database with the `fencegate` schema installed; the
//! workers connect as an ordinary role, and a superuser [`Monitor`] connected straight to
//! Postgres reads the high-water mark and sees which backends wait for locks. "B is blocked"
//! always means B's backend has an ungranted lock in `pg_locks`, never that time passed.
//! The scenario of SPEC §8 (FM12) is in `fence_fm12.rs`, restarts of Postgres in
//! `fence_restart.rs`.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use fencegate::fence::stats::FenceStats;
use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fence::{
    assert_stale, assert_usable, backend_pid, comment, expect_code, fenced_database, render,
    within, FenceEnv, FenceProxy, Monitor, STALE,
};
use fencegate_tests::Endpoint;
use tokio_postgres::Client;

const JOB: &str = "job:7";

const SETUP: &str = "
CREATE TABLE jobs (id int PRIMARY KEY, state text NOT NULL, steps text NOT NULL DEFAULT '');
INSERT INTO jobs VALUES (7, 'new', ''), (8, 'new', '');
GRANT ALL ON jobs TO trust_user;
";

/// A fresh fenced database and a monitor on it.
async fn setup(prefix: &str) -> (&'static Cluster, String, Monitor) {
    let cluster = Cluster::shared();
    let db = fenced_database(cluster, prefix, SETUP).await;
    let monitor = Monitor::connect(cluster, &db).await;
    (cluster, db, monitor)
}

/// `N` workers through `env`'s proxy, as the ordinary role.
async fn workers<const N: usize>(env: &FenceEnv) -> [Client; N] {
    let mut clients = Vec::with_capacity(N);
    for _ in 0..N {
        clients.push(env.client().await);
    }
    match clients.try_into() {
        Ok(clients) => clients,
        Err(_) => unreachable!("{N} clients were made"),
    }
}

async fn worker(ep: Endpoint, db: &str) -> Client {
    ep.connect(TRUST_USER, db).await
}

/// `UPDATE` job 7: appends `step` to `steps` and sets `state`, with `token` attached.
fn write_job(token: i64, step: &str) -> String {
    format!(
        "UPDATE jobs SET state = 'done', steps = steps || '{step}' WHERE id = 7 {}",
        comment(JOB, token)
    )
}

/// Reads job 7's `steps` with `token` attached.
fn read_job(token: i64) -> String {
    format!(
        "SELECT steps FROM jobs WHERE id = 7 {}",
        comment(JOB, token)
    )
}

/// Job 7's `(state, steps)`, read directly.
async fn job(monitor: &Monitor) -> (String, String) {
    let row = monitor
        .client()
        .query_one("SELECT state, steps FROM jobs WHERE id = 7", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// After B committed token 2: A's token 1 fails for a write and a read, in both protocols,
/// with the message naming the resource and both tokens; the connection stays usable and
/// nothing A sent changed the job or H.
async fn assert_older_holder_rejected(a: &Client, monitor: &Monitor) {
    let write = expect_code(a.execute(&write_job(1, "A"), &[]).await, STALE);
    assert_stale(&write, JOB, 1, 2);
    assert_usable(a).await;
    let read = expect_code(a.query(&read_job(1), &[]).await, STALE);
    assert_stale(&read, JOB, 1, 2);
    assert_usable(a).await;
    let simple_write = expect_code(a.simple_query(&write_job(1, "A")).await, STALE);
    assert_stale(&simple_write, JOB, 1, 2);
    let simple_read = expect_code(a.simple_query(&read_job(1)).await, STALE);
    assert_stale(&simple_read, JOB, 1, 2);
    assert_usable(a).await;
    assert_eq!(job(monitor).await, ("done".into(), "B".into()));
    assert_eq!(monitor.high_water(JOB).await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_stale_token_rejected_for_writes_and_reads_after_newer_commit() {
    let env = FenceEnv::new("g1_same_proxy", SETUP).await;
    let [a, b] = workers(&env).await;
    // A was admitted with token 1 first, so this is a real takeover, not a first grant.
    a.query(&read_job(1), &[]).await.unwrap();
    assert_eq!(env.monitor.high_water(JOB).await, Some(1));
    assert_eq!(b.execute(&write_job(2, "B"), &[]).await.unwrap(), 1);
    assert_older_holder_rejected(&a, &env.monitor).await;
    // The current holder's token is still good (t >= H admits t == H).
    b.query(&read_job(2), &[]).await.unwrap();
    assert_eq!(FenceStats::get(&env.fp.stats.stale), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_stale_token_rejected_after_proxy_restart() {
    let (cluster, db, monitor) = setup("g1_proxy_restart").await;
    let first = FenceProxy::start(cluster.port(), Duration::ZERO);
    let b = worker(first.endpoint(), &db).await;
    assert_eq!(b.execute(&write_job(2, "B"), &[]).await.unwrap(), 1);
    drop(b);
    first.proxy.stop().expect("first proxy stops cleanly");
    // A new proxy process knows nothing in memory; the authority is the database.
    let second = FenceProxy::start(cluster.port(), Duration::ZERO);
    let a = worker(second.endpoint(), &db).await;
    assert_older_holder_rejected(&a, &monitor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_stale_token_rejected_through_another_proxy_instance() {
    let (cluster, db, monitor) = setup("g1_two_proxies").await;
    let for_a = FenceProxy::start(cluster.port(), Duration::ZERO);
    let for_b = FenceProxy::start(cluster.port(), Duration::ZERO);
    let a = worker(for_a.endpoint(), &db).await;
    let b = worker(for_b.endpoint(), &db).await;
    a.query(&read_job(1), &[]).await.unwrap();
    assert_eq!(b.execute(&write_job(2, "B"), &[]).await.unwrap(), 1);
    assert_older_holder_rejected(&a, &monitor).await;
    assert_eq!(FenceStats::get(&for_b.stats.stale), 0);
}

/// How the newer holder B sends its first, fenced read.
#[derive(Clone, Copy, Debug)]
enum Protocol {
    Simple,
    Extended,
}

/// G2 with the older holder first: A (token 1) has checked and written in an open
/// transaction; B's first statement, a read with token 2, must block (on the fence: a plain
/// read never waits for row locks), finish only after A's COMMIT, and see A's write, so B's
/// read-modify-write keeps A's step.
async fn newer_read_waits_for_older_commit(ep_a: Endpoint, ep_b: Endpoint, protocol: Protocol) {
    let (_, db, monitor) = setup(&format!("g2_{protocol:?}")).await;
    let a = worker(ep_a, &db).await;
    let b = worker(ep_b, &db).await;
    let b_pid = backend_pid(&b).await;
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(a.execute(&write_job(1, "A"), &[]).await.unwrap(), 1);

    let reader = tokio::spawn(async move {
        let steps: String = match protocol {
            Protocol::Extended => b.query_one(&read_job(2), &[]).await.unwrap().get(0),
            Protocol::Simple => {
                let out = b.simple_query(&read_job(2)).await.unwrap();
                let row = out.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(String::from)),
                    _ => None,
                });
                row.flatten().expect("one row")
            }
        };
        (steps, Instant::now(), b)
    });
    monitor.wait_until_blocked(b_pid).await;
    assert!(
        !reader.is_finished(),
        "B's read finished while A's transaction was open"
    );
    assert_eq!(
        monitor.high_water(JOB).await,
        None,
        "A's token is not committed yet"
    );

    let commit_sent = Instant::now();
    a.batch_execute("COMMIT").await.unwrap();
    let (seen, read_done, b) = within("B's read", reader).await.unwrap();
    assert!(
        read_done >= commit_sent,
        "B's read completed before A's COMMIT"
    );
    assert_eq!(
        seen, "A",
        "B's first read ran after A committed but did not see A's committed write ({protocol:?} protocol)"
    );
    assert_eq!(b.execute(&write_job(2, "B"), &[]).await.unwrap(), 1);
    assert_eq!(job(&monitor).await, ("done".into(), "AB".into()));
    assert_eq!(monitor.high_water(JOB).await, Some(2));
    let late = expect_code(a.execute(&write_job(1, "A"), &[]).await, STALE);
    assert_stale(&late, JOB, 1, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_newer_holder_simple_read_waits_for_older_commit_and_sees_its_write() {
    let fp = FenceProxy::start(Cluster::shared().port(), Duration::ZERO);
    newer_read_waits_for_older_commit(fp.endpoint(), fp.endpoint(), Protocol::Simple).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_newer_holder_extended_read_waits_for_older_commit_and_sees_its_write() {
    let fp = FenceProxy::start(Cluster::shared().port(), Duration::ZERO);
    newer_read_waits_for_older_commit(fp.endpoint(), fp.endpoint(), Protocol::Extended).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_token_order_holds_across_two_proxy_instances() {
    let port = Cluster::shared().port();
    let for_a = FenceProxy::start(port, Duration::ZERO);
    let for_b = FenceProxy::start(port, Duration::ZERO);
    newer_read_waits_for_older_commit(for_a.endpoint(), for_b.endpoint(), Protocol::Simple).await;
}

/// G2 with the newer holder first (and G6 when its first statement is a read): B (token 2)
/// is admitted in an open transaction; A's write with token 1 blocks behind it, and when B
/// commits, A fails with 55Z01 and none of A's work lands. With a short grace, this also
/// shows the older holder never ends the newer one: A retries its wait (a new `waitstart`)
/// at least twice, each time after the grace ran out, and B's backend is still there.
async fn older_blocked_by_newer_then_rejected(prefix: &str, b_first: String) {
    let env = FenceEnv::with_grace(prefix, SETUP, Duration::from_millis(200)).await;
    let [a, b] = workers(&env).await;
    a.query(&read_job(1), &[]).await.unwrap();
    let (a_pid, b_pid) = (backend_pid(&a).await, backend_pid(&b).await);

    b.batch_execute("BEGIN").await.unwrap();
    b.query(&b_first, &[]).await.unwrap();
    let writer = tokio::spawn(async move {
        let r = a.execute(&write_job(1, "A"), &[]).await;
        (r, a)
    });
    // A waited out its grace twice, and B, the newer holder, is still there.
    env.monitor.wait_until_waited_again(a_pid, b_pid, 2).await;
    assert!(
        !writer.is_finished(),
        "A's write finished while B's transaction was open"
    );

    assert_eq!(b.execute(&write_job(2, "B"), &[]).await.unwrap(), 1);
    b.batch_execute("COMMIT").await.unwrap();
    let (result, a) = within("A's write", writer).await.unwrap();
    assert_stale(&expect_code(result, STALE), JOB, 1, 2);
    assert_usable(&a).await;
    assert_eq!(job(&env.monitor).await, ("done".into(), "B".into()));
    assert_eq!(env.monitor.high_water(JOB).await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_older_holder_fails_after_newer_holder_commits() {
    older_blocked_by_newer_then_rejected(
        "g2_newer_first",
        format!(
            "UPDATE jobs SET state = 'taken' WHERE id = 8 {}",
            comment(JOB, 2)
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_newer_holders_open_first_read_fences_out_older_write() {
    older_blocked_by_newer_then_rejected("g6_open_read", read_job(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_newer_holders_committed_first_read_fences_out_older_write() {
    let env = FenceEnv::new("g6_committed_read", SETUP).await;
    let [a, b] = workers(&env).await;
    a.query(&read_job(1), &[]).await.unwrap();
    let seen: String = b.query_one(&read_job(2), &[]).await.unwrap().get(0);
    assert_eq!(seen, "");
    assert_eq!(
        env.monitor.high_water(JOB).await,
        Some(2),
        "B's read raised H"
    );
    let err = expect_code(a.execute(&write_job(1, "A"), &[]).await, STALE);
    assert_stale(&err, JOB, 1, 2);
    assert_eq!(job(&env.monitor).await, ("new".into(), "".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_rolled_back_fenced_write_leaves_high_water_and_data_unchanged() {
    let env = FenceEnv::new("g3_rollback", SETUP).await;
    let [c] = workers(&env).await;
    c.query(&read_job(3), &[]).await.unwrap();
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(c.execute(&write_job(5, "X"), &[]).await.unwrap(), 1);
    let inside: i64 = c
        .query_one("SELECT fencegate.high_water($1)", &[&JOB])
        .await
        .unwrap()
        .get(0);
    assert_eq!(inside, 5, "the check raised H inside the transaction");
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(env.monitor.high_water(JOB).await, Some(3));
    assert_eq!(job(&env.monitor).await, ("new".into(), "".into()));
    // H really is 3 again: a token between 3 and 5 is admitted.
    assert_eq!(c.execute(&write_job(4, "Y"), &[]).await.unwrap(), 1);
    assert_eq!(env.monitor.high_water(JOB).await, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_failing_fenced_statement_does_not_raise_high_water() {
    let env = FenceEnv::new("g3_failing", SETUP).await;
    let [c] = workers(&env).await;
    c.query(&read_job(3), &[]).await.unwrap();
    // The check passes, then the statement itself fails: both are one implicit transaction.
    let failing = format!(
        "UPDATE jobs SET steps = (1 / (id - 7))::text WHERE id = 7 {}",
        comment(JOB, 5)
    );
    expect_code(c.simple_query(&failing).await, "22012");
    assert_eq!(
        env.monitor.high_water(JOB).await,
        Some(3),
        "simple protocol"
    );
    expect_code(c.execute(&failing, &[]).await, "22012");
    assert_eq!(
        env.monitor.high_water(JOB).await,
        Some(3),
        "extended protocol"
    );
    let in_block = format!("BEGIN; {failing}; COMMIT");
    expect_code(c.simple_query(&in_block).await, "22012");
    assert_usable(&c).await;
    assert_eq!(env.monitor.high_water(JOB).await, Some(3), "explicit block");
    assert_eq!(job(&env.monitor).await, ("new".into(), "".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_rollback_to_savepoint_undoes_the_check_and_its_lock() {
    let env = FenceEnv::new("g3_savepoint", SETUP).await;
    let [a, b] = workers(&env).await;
    a.query(&read_job(3), &[]).await.unwrap();
    let high_water = "SELECT fencegate.high_water('job:7')";
    a.batch_execute("BEGIN; SAVEPOINT s").await.unwrap();
    assert_eq!(a.execute(&write_job(5, "X"), &[]).await.unwrap(), 1);
    let h: i64 = a.query_one(high_water, &[]).await.unwrap().get(0);
    assert_eq!(h, 5);
    a.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    let h: i64 = a.query_one(high_water, &[]).await.unwrap().get(0);
    assert_eq!(
        h, 3,
        "ROLLBACK TO SAVEPOINT reverted H inside the transaction"
    );

    // The resource's lock went with the savepoint: B (token 4) is not blocked by A.
    let b_write = within("B's write (not blocked by the rolled-back check)", async {
        b.execute(&write_job(4, "B"), &[]).await
    })
    .await;
    assert_eq!(b_write.unwrap(), 1);
    assert_eq!(env.monitor.high_water(JOB).await, Some(4));

    // A presents token 5 again: the check runs again (it was forgotten with the savepoint),
    // so H becomes 5 when A commits, and the rolled-back write never shows.
    assert_eq!(a.execute(&write_job(5, "A"), &[]).await.unwrap(), 1);
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(env.monitor.high_water(JOB).await, Some(5));
    assert_eq!(job(&env.monitor).await, ("done".into(), "BA".into()));
}

const ITEMS: &str = "
CREATE TABLE items (id int PRIMARY KEY, name text, n int);
INSERT INTO items SELECT i, 'item ' || i, i * 10 FROM generate_series(1, 12) i;
GRANT ALL ON items TO trust_user;
";

/// A mix of reads and writes, each carrying `annotation` (empty: none).
async fn items_scenario(client: &Client, annotation: &str) -> Vec<String> {
    let a = annotation;
    let mut seen = Vec::new();
    let multi = format!(
        "SELECT id, name FROM items WHERE id <= 3 ORDER BY id {a}; \
         UPDATE items SET n = n + 1 WHERE id <= 4 {a}; \
         DELETE FROM items WHERE id = 12 {a}; \
         INSERT INTO items SELECT id + 100, name, n FROM items WHERE id <= 2 {a}; \
         SELECT count(*), sum(n) FROM items {a}"
    );
    seen.extend(render(&client.simple_query(&multi).await.unwrap()));
    for row in client
        .query(
            &format!("SELECT id, name, n FROM items ORDER BY id {a}"),
            &[],
        )
        .await
        .unwrap()
    {
        let (id, name, n): (i32, String, i32) = (row.get(0), row.get(1), row.get(2));
        seen.push(format!("{id} {name} {n}"));
    }
    let update = format!("UPDATE items SET name = upper(name) WHERE n > $1 {a}");
    seen.push(format!(
        "updated {}",
        client.execute(&update, &[&50i32]).await.unwrap()
    ));
    let delete = format!("DELETE FROM items WHERE id > 100 {a}");
    seen.push(format!(
        "deleted {}",
        client.execute(&delete, &[]).await.unwrap()
    ));
    let tx = format!(
        "BEGIN; SELECT name FROM items WHERE id = 1 {a}; UPDATE items SET n = 0 {a}; COMMIT"
    );
    seen.extend(render(&client.simple_query(&tx).await.unwrap()));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_fenced_results_are_exactly_the_unfenced_results() {
    let cluster = Cluster::shared();
    let fp = FenceProxy::start(cluster.port(), Duration::ZERO);
    let annotation = comment("items", 9);
    let direct_db = fenced_database(cluster, "g5_direct", ITEMS).await;
    let direct = worker(cluster.endpoint(), &direct_db).await;
    let unfenced = items_scenario(&direct, "").await;
    let proxied_db = fenced_database(cluster, "g5_proxied", ITEMS).await;
    let proxied = worker(fp.endpoint(), &proxied_db).await;
    let fenced = items_scenario(&proxied, &annotation).await;
    assert_eq!(
        fenced, unfenced,
        "fenced through the proxy differs from unfenced direct"
    );
    // The checks really ran (the scenario is not vacuous): H was raised in that database.
    assert!(FenceStats::get(&fp.stats.checks) >= 5, "too few checks ran");
    let monitor = Monitor::connect(cluster, &proxied_db).await;
    assert_eq!(monitor.high_water("items").await, Some(9));
    assert!(unfenced.contains(&"complete 4".to_string()), "{unfenced:?}");
}
