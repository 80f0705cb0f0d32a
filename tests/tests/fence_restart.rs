//! G1 across a Postgres restart: the high-water mark is an ordinary durable row, so a token
//! older than a committed one stays rejected after the server restarts, through the proxy
//! that was running all along and through a new one; a token admitted only by a transaction
//! the restart cut off never counted.
//!
//! Restarting ends every session of the cluster, so this binary uses a private cluster
//! ([`Cluster::start`]) rather than the shared one.
#![forbid(unsafe_code)]

use std::time::Duration;

use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fence::jobs::{fenced_append, fenced_read, JOB, SETUP};
use fencegate_tests::fence::{
    assert_stale, assert_usable, expect_code, fenced_database, FenceProxy, Monitor, STALE,
};
use fencegate_tests::Endpoint;

/// A (token 1) connects through `ep` after the restart: its write and its read fail.
async fn assert_a_rejected(ep: Endpoint, db: &str) {
    let a = ep.connect(TRUST_USER, db).await;
    assert_stale(
        &expect_code(a.execute(&fenced_append(1, "A"), &[]).await, STALE),
        JOB,
        1,
        2,
    );
    assert_usable(&a).await;
    assert_stale(
        &expect_code(a.query(&fenced_read(1), &[]).await, STALE),
        JOB,
        1,
        2,
    );
    assert_usable(&a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_stale_token_rejected_after_postgres_restart() {
    let cluster = Cluster::start();
    let db = fenced_database(&cluster, "g1_pg_restart", SETUP).await;
    let fp = FenceProxy::start(cluster.port(), Duration::ZERO);
    let a = fp.endpoint().connect(TRUST_USER, &db).await;
    let b = fp.endpoint().connect(TRUST_USER, &db).await;
    let later = fp.endpoint().connect(TRUST_USER, &db).await;
    a.query(&fenced_read(1), &[]).await.unwrap();
    assert_eq!(b.execute(&fenced_append(2, "B"), &[]).await.unwrap(), 1);
    // A newer holder is admitted but has not committed when the server goes down.
    later.batch_execute("BEGIN").await.unwrap();
    later.query(&fenced_read(3), &[]).await.unwrap();

    cluster.restart();

    let old = a.execute(&fenced_append(1, "A"), &[]).await;
    assert!(
        old.is_err(),
        "a session from before the restart went on: {old:?}"
    );
    let monitor = Monitor::connect(&cluster, &db).await;
    assert_eq!(
        monitor.high_water(JOB).await,
        Some(2),
        "H is the last committed token: 2 survived the restart, 3 never committed"
    );
    assert_a_rejected(fp.endpoint(), &db).await;
    let fresh_proxy = FenceProxy::start(cluster.port(), Duration::ZERO);
    assert_a_rejected(fresh_proxy.endpoint(), &db).await;
    // Token 2 is still current; nothing of A's landed.
    let b = fresh_proxy.endpoint().connect(TRUST_USER, &db).await;
    assert_eq!(b.execute(&fenced_append(2, "b"), &[]).await.unwrap(), 1);
    assert_eq!(
        monitor
            .text("SELECT steps FROM jobs WHERE id = 7")
            .await
            .unwrap(),
        "Bb"
    );
}
