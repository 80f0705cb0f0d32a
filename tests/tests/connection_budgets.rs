#![forbid(unsafe_code)]
//! Connection budgets (docs/security.md, "Budgets"): sockets that never send a startup
//! packet cannot keep real clients out (they have a budget of their own, and the oldest
//! makes room for a newer one), and sessions past `max_connections` are refused with
//! 53300 as PostgreSQL refuses them, instead of waiting unanswered.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::TestProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_sockets_do_not_keep_a_client_out() {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let silent: Vec<TcpStream> = (0..1010)
        .map(|_| TcpStream::connect(proxy.addr()).expect("open a silent socket"))
        .collect();
    let started = Instant::now();
    let client = tokio::time::timeout(
        Duration::from_secs(3),
        proxy.endpoint().connect(TRUST_USER, "postgres"),
    )
    .await
    .expect("a real client could not log in within 3 s behind 1,010 silent sockets");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    println!(
        "logged in after {:?} with {} silent sockets open",
        started.elapsed(),
        silent.len()
    );
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_limit_are_refused_with_53300() {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain_with(cluster.port(), |c| c.max_connections = 2);
    let first = proxy.endpoint().connect(TRUST_USER, "postgres").await;
    let second = proxy.endpoint().connect(TRUST_USER, "postgres").await;
    let third = proxy
        .endpoint()
        .pg_config(TRUST_USER, "postgres")
        .connect(tokio_postgres::NoTls)
        .await;
    let err = third
        .err()
        .expect("a third session past max_connections = 2");
    assert_eq!(err.code().map(|c| c.code()), Some("53300"), "{err:?}");
    drop(first);
    // The place is free once the first session has ended.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match proxy
            .endpoint()
            .pg_config(TRUST_USER, "postgres")
            .connect(tokio_postgres::NoTls)
            .await
        {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                c.query_one("SELECT 1", &[]).await.unwrap();
                break;
            }
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e:?}");
                assert!(Instant::now() < deadline, "the freed place never came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    second.query_one("SELECT 1", &[]).await.unwrap();
}
