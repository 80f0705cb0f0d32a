//! The upstream over a Unix-domain socket (`--upstream /dir:port`, as libpq's `host=/dir`):
//! the server sees a socket connection, fencing works over it, and a CancelRequest is
//! forwarded through it too.

use std::time::Duration;

use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fence::{comment, expect_code, fenced_database, STALE};
use fencegate_tests::proxy::TestProxy;
use tokio_postgres::NoTls;

const SETUP: &str = "
CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO t VALUES (1, 0);
GRANT ALL ON t TO trust_user;
";

#[tokio::test]
async fn sessions_reach_postgres_over_its_socket_and_keep_every_behaviour() {
    let cluster = Cluster::shared();
    let db = fenced_database(cluster, "unixup", SETUP).await;
    let socket_dir = cluster.dir().display().to_string();
    let upstream = format!("{socket_dir}:{}", cluster.port());
    let proxy = TestProxy::plain_with(cluster.port(), move |c| c.upstream = upstream);
    let client = proxy.endpoint().connect(TRUST_USER, &db).await;

    // inet_server_addr() is NULL exactly when the server side is a Unix-domain socket.
    let row = client
        .query_one("SELECT inet_server_addr() IS NULL", &[])
        .await
        .expect("query through the socket");
    assert!(
        row.get::<_, bool>(0),
        "the upstream hop is not a Unix socket"
    );
    let direct = cluster.endpoint().connect(TRUST_USER, &db).await;
    let row = direct
        .query_one("SELECT inet_server_addr() IS NULL", &[])
        .await
        .unwrap();
    assert!(
        !row.get::<_, bool>(0),
        "the direct TCP connection looks like a socket"
    );

    // Fencing over the socket: admitted, then a stale token refused.
    let write = |token: i64| {
        format!(
            "UPDATE t SET n = n + 1 WHERE id = 1 {}",
            comment("unix:1", token)
        )
    };
    client.batch_execute(&write(3)).await.expect("token 3");
    expect_code(client.batch_execute(&write(2)).await, STALE);

    // A cancel sent to the proxy reaches the backend through the socket.
    let cancel = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel_query(NoTls).await
    });
    expect_code(client.batch_execute("SELECT pg_sleep(30)").await, "57014");
    sleeper.await.unwrap().expect("cancel request accepted");
    drop(client);
    proxy.stop().expect("proxy stops");
}
