//! The upstream over a Unix-domain socket (`--upstream /dir:port`, as libpq's `host=/dir`):
//! the server sees a socket connection, fencing works over it, and a CancelRequest is
//! forwarded through it too. A login the server accepts there without a password (`trust`,
//! `peer`) is refused unless `upstream_auth = any` says otherwise, since through the proxy
//! it would admit any client; a password login over the socket works.
#![forbid(unsafe_code)]

use fencegate::config::{Config, UpstreamAuth};
use fencegate_tests::activity::cancel_when_active;
use fencegate_tests::cluster::{Cluster, SCRAM_PASSWORD, SCRAM_USER, SUPERUSER, TRUST_USER};
use fencegate_tests::fence::{comment, expect_code, fenced_database, STALE};
use fencegate_tests::proxy::TestProxy;

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
    let proxy = TestProxy::plain_with(cluster.port(), move |c| {
        c.upstream = upstream;
        c.upstream_auth = UpstreamAuth::Any;
    });
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
    let monitor = cluster.endpoint().connect(SUPERUSER, &db).await;
    let cancel = client.cancel_token();
    let canceller = tokio::spawn(async move {
        cancel_when_active(&monitor, "SELECT pg_sleep(30)", &cancel).await;
    });
    expect_code(client.batch_execute("SELECT pg_sleep(30)").await, "57014");
    canceller.await.expect("cancel request sent");
    drop(client);
    proxy.stop().expect("proxy stops");
}

/// Logs in through `proxy` to database `postgres` (see [`fencegate_tests::Endpoint::login`]).
async fn login(proxy: &TestProxy, user: &str, password: Option<&str>) -> Result<String, String> {
    proxy.endpoint().login(user, password, "postgres").await
}

fn over_socket(cluster: &Cluster, auth: Option<UpstreamAuth>) -> impl FnOnce(&mut Config) {
    let upstream = format!("{}:{}", cluster.dir().display(), cluster.port());
    move |c: &mut Config| {
        c.upstream = upstream;
        if let Some(auth) = auth {
            c.upstream_auth = auth;
        }
    }
}

#[tokio::test]
async fn a_passwordless_login_over_the_socket_is_refused_and_a_password_login_works() {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain_with(cluster.port(), over_socket(cluster, None));
    // `local all all trust`: the server would let any role in, the superuser included.
    for user in [TRUST_USER, SUPERUSER] {
        let refused = login(&proxy, user, None).await.expect_err(user);
        assert!(
            refused.starts_with("FATAL 28000 the server accepted this login without a password"),
            "{user}: {refused}"
        );
    }
    // `local all scram_user scram-sha-256`: the exchange passes through as over TCP.
    assert_eq!(
        login(&proxy, SCRAM_USER, Some(SCRAM_PASSWORD)).await,
        Ok(SCRAM_USER.to_string())
    );
    let wrong = login(&proxy, SCRAM_USER, Some("wrong")).await.unwrap_err();
    assert!(wrong.starts_with("FATAL 28P01"), "{wrong}");
    proxy.stop().expect("proxy stops");

    // `any` lets the server decide.
    let proxy = TestProxy::plain_with(
        cluster.port(),
        over_socket(cluster, Some(UpstreamAuth::Any)),
    );
    assert_eq!(
        login(&proxy, TRUST_USER, None).await,
        Ok(TRUST_USER.to_string())
    );
    proxy.stop().expect("proxy stops");
}

#[tokio::test]
async fn required_refuses_a_trusted_login_over_tcp_too_and_auto_does_not() {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain_with(cluster.port(), |c| c.upstream_auth = UpstreamAuth::Required);
    let refused = login(&proxy, TRUST_USER, None).await.unwrap_err();
    assert!(refused.starts_with("FATAL 28000 "), "{refused}");
    assert_eq!(
        login(&proxy, SCRAM_USER, Some(SCRAM_PASSWORD)).await,
        Ok(SCRAM_USER.to_string())
    );
    proxy.stop().expect("proxy stops");

    let proxy = TestProxy::plain(cluster.port());
    assert_eq!(
        login(&proxy, TRUST_USER, None).await,
        Ok(TRUST_USER.to_string())
    );
    proxy.stop().expect("proxy stops");
}
