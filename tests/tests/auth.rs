//! Authentication through the proxy: md5, scram-sha-256 and cleartext `password` logins
//! succeed with tokio-postgres and with psql (libpq), and failures — wrong password, unknown
//! role, unknown database — reach the client with the same severity, SQLSTATE and text as
//! when connecting directly.
//!
//! psql's connection-failure message names the server's port, which necessarily differs
//! between the two runs, so that port (and only it) is replaced before comparing.
#![forbid(unsafe_code)]

use fencegate_tests::cluster::{self, Cluster};
use fencegate_tests::endpoint::run;
use fencegate_tests::TestProxy;

/// Logs in directly and through the proxy; asserts both outcomes are equal and returns one.
async fn same_both_ways(
    user: &str,
    password: Option<&str>,
    db: Option<&str>,
) -> Result<String, String> {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let fresh = cluster.create_database("auth");
    let db = db.unwrap_or(&fresh);
    let direct = cluster.endpoint().login(user, password, db).await;
    let proxied = proxy.endpoint().login(user, password, db).await;
    assert_eq!(
        direct, proxied,
        "login as {user} through the proxy differs from direct"
    );
    direct
}

async fn method_works_and_rejects_wrong_password(user: &str, password: &str) {
    assert_eq!(
        same_both_ways(user, Some(password), None).await,
        Ok(user.to_string())
    );
    let wrong = same_both_ways(user, Some("not-the-password"), None).await;
    let expected = format!("FATAL 28P01 password authentication failed for user \"{user}\"");
    assert_eq!(wrong, Err(expected));
    psql_same_both_ways(user, password);
}

/// psql logins with the right and a wrong password, directly and through the proxy.
fn psql_same_both_ways(user: &str, password: &str) {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let db = cluster.create_database("auth_psql");
    for attempt in [password, "not-the-password"] {
        let outputs: Vec<_> = [cluster.endpoint(), proxy.endpoint()]
            .into_iter()
            .map(|ep| {
                let mut cmd = ep.command("psql", user, &db);
                cmd.args(["-X", "-A", "-t", "-c", "SELECT current_user"])
                    .env("PGPASSWORD", attempt);
                let out = run(&mut cmd, b"");
                let stderr = String::from_utf8_lossy(&out.stderr)
                    .replace(&format!("port {}", ep.port()), "port <port>");
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr,
                )
            })
            .collect();
        assert_eq!(
            outputs[0], outputs[1],
            "psql as {user} through the proxy differs from direct"
        );
        if attempt == password {
            assert_eq!(outputs[0], (Some(0), format!("{user}\n"), String::new()));
        } else {
            assert_eq!(outputs[0].0, Some(2));
            assert!(
                outputs[0]
                    .2
                    .contains("FATAL:  password authentication failed"),
                "{}",
                outputs[0].2
            );
        }
    }
}

#[tokio::test]
async fn md5_login() {
    method_works_and_rejects_wrong_password(cluster::MD5_USER, cluster::MD5_PASSWORD).await;
}

#[tokio::test]
async fn scram_sha_256_login() {
    method_works_and_rejects_wrong_password(cluster::SCRAM_USER, cluster::SCRAM_PASSWORD).await;
}

#[tokio::test]
async fn cleartext_password_login() {
    method_works_and_rejects_wrong_password(cluster::PASSWORD_USER, cluster::PASSWORD_PASSWORD)
        .await;
}

#[tokio::test]
async fn trust_login() {
    let user = cluster::TRUST_USER;
    assert_eq!(same_both_ways(user, None, None).await, Ok(user.to_string()));
}

#[tokio::test]
async fn unknown_role_and_database_are_reported_like_postgres() {
    let role = same_both_ways("no_such_role", None, None).await;
    assert_eq!(
        role,
        Err("FATAL 28000 role \"no_such_role\" does not exist".to_string())
    );
    let db = same_both_ways(cluster::SUPERUSER, None, Some("no_such_db")).await;
    assert_eq!(
        db,
        Err("FATAL 3D000 database \"no_such_db\" does not exist".to_string())
    );
}
