#![forbid(unsafe_code)]
//! fencegate in front of PgBouncer in transaction mode, the layout of users who already run
//! PgBouncer: clients → fencegate → PgBouncer → PostgreSQL. The check runs inside the
//! client's transaction, so PgBouncer keeps it on one server connection with the statements
//! it guards: comment and `SET LOCAL` tokens are enforced, a stale token is refused, and a
//! paused holder is preempted through PgBouncer.

use std::time::Duration;

use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fence::{
    assert_stale, comment, execute_all, fenced_database, FenceProxy, Monitor, STALE,
};
use fencegate_tests::pgbouncer::PgBouncer;
use tokio_postgres::Client;

const SETUP: &str = "
CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO t VALUES (1, 0);
GRANT ALL ON t TO trust_user;
";

struct Layout {
    _bouncer: PgBouncer,
    fp: FenceProxy,
    db: String,
    monitor: Monitor,
}

async fn layout(prefix: &str, grace: Duration) -> Layout {
    let cluster = Cluster::shared();
    let bouncer = PgBouncer::transaction_mode(cluster);
    let fp = FenceProxy::start(bouncer.port(), grace);
    let db = fenced_database(cluster, prefix, SETUP).await;
    let monitor = Monitor::connect(cluster, &db).await;
    Layout {
        _bouncer: bouncer,
        fp,
        db,
        monitor,
    }
}

impl Layout {
    async fn client(&self) -> Client {
        self.fp.endpoint().connect(TRUST_USER, &self.db).await
    }

    async fn value(&self) -> String {
        self.monitor
            .text("SELECT v::text FROM t WHERE id = 1")
            .await
            .unwrap_or_default()
    }
}

/// Sets `v` to `token`, carrying `token` for the resource `job`.
fn write_with_token(token: i64) -> String {
    format!("UPDATE t SET v = {token} {}", comment("job", token))
}

/// Runs `sql`, which must be refused as stale; returns the server's error.
async fn refused_stale(c: &Client, sql: &str) -> tokio_postgres::error::DbError {
    let e = c.batch_execute(sql).await.expect_err(sql);
    let err = e
        .as_db_error()
        .cloned()
        .unwrap_or_else(|| panic!("expected a server error, got {e}"));
    assert_eq!(err.code().code(), STALE, "{sql}: {err:?}");
    err
}

#[tokio::test]
async fn comment_and_set_local_tokens_are_enforced_through_pgbouncer() {
    let l = layout("bouncer_tokens", Duration::from_secs(5)).await;
    let c = l.client().await;
    c.batch_execute(&write_with_token(5))
        .await
        .expect("token 5");
    let err = refused_stale(&c, &write_with_token(4)).await;
    assert_stale(&err, "job", 4, 5);
    assert_eq!(l.value().await, "5");

    c.batch_execute(
        "BEGIN; SET LOCAL fencing.resource = 'job'; SET LOCAL fencing.token = '6'; \
         UPDATE t SET v = 6; COMMIT",
    )
    .await
    .expect("SET LOCAL token 6");
    assert_eq!(l.monitor.high_water("job").await, Some(6));
    execute_all(
        &c,
        &[
            "BEGIN",
            "SET LOCAL fencing.resource = 'job'",
            "SET LOCAL fencing.token = '5'",
        ],
    )
    .await;
    refused_stale(&c, "UPDATE t SET v = 50").await;
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(l.value().await, "6", "the stale write did not land");
}

#[tokio::test]
async fn a_paused_holder_is_preempted_through_pgbouncer() {
    let l = layout("bouncer_preempt", Duration::from_millis(500)).await;
    let old = l.client().await;
    old.batch_execute(&format!("BEGIN; {}", write_with_token(7)))
        .await
        .expect("the old holder writes, then pauses inside its transaction");
    let new = l.client().await;
    tokio::time::timeout(
        Duration::from_secs(30),
        new.batch_execute(&write_with_token(8)),
    )
    .await
    .expect("the newer holder is not blocked for good")
    .expect("the newer holder's write lands after the grace");
    assert!(
        old.batch_execute("COMMIT").await.is_err(),
        "the preempted holder cannot commit"
    );
    assert_eq!(l.value().await, "8");
    assert_eq!(l.monitor.high_water("job").await, Some(8));
}
