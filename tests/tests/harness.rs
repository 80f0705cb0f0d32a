//! Checks of the test harness itself, directly against Postgres (no proxy): the cluster
//! starts, every test user can log in with its method, databases are fresh, a private
//! cluster restarts and is removed on drop, and the raw wire client works.
#![forbid(unsafe_code)]

use fencegate_tests::cluster::{self, Cluster};
use fencegate_tests::wire::{self, msg, WireClient};

#[tokio::test]
async fn shared_cluster_accepts_superuser_and_trust_user() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("harness_trust");
    for user in [cluster::SUPERUSER, cluster::TRUST_USER] {
        let client = cluster.endpoint().connect(user, &db).await;
        let row = client
            .query_one("SELECT current_user::text, current_database()::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        assert_eq!(row.get::<_, String>(1), db);
    }
}

#[tokio::test]
async fn password_users_log_in_with_their_methods() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("harness_pw");
    let users = [
        (cluster::MD5_USER, cluster::MD5_PASSWORD),
        (cluster::SCRAM_USER, cluster::SCRAM_PASSWORD),
        (cluster::PASSWORD_USER, cluster::PASSWORD_PASSWORD),
    ];
    for (user, password) in users {
        let (client, conn) = cluster
            .endpoint()
            .pg_config(user, &db)
            .password(password)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        tokio::spawn(conn);
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);

        let err = cluster
            .endpoint()
            .pg_config(user, &db)
            .password("wrong")
            .connect(tokio_postgres::NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} logged in with a wrong password"));
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
            "{user}: {err}"
        );
    }
    // The stored secrets are of the kind each method needs.
    let secrets = cluster.execute(
        "postgres",
        "SELECT rolname, CASE WHEN rolpassword LIKE 'md5%' THEN 'md5' \
         WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'scram' END \
         FROM pg_authid WHERE rolname LIKE '%\\_user' ORDER BY 1",
    );
    assert_eq!(
        secrets,
        "md5_user|md5\npassword_user|scram\nscram_user|scram\ntrust_user|\n"
    );
}

#[test]
fn databases_are_fresh_and_unique() {
    let cluster = Cluster::shared();
    let a = cluster.create_database("Harness Fresh");
    let b = cluster.create_database("Harness Fresh");
    assert_ne!(a, b);
    assert!(a.starts_with("harness_fresh_"), "{a}");
    cluster.execute(&a, "CREATE TABLE t (x int)");
    let tables = cluster.execute(
        &b,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(tables, "0\n");
}

#[tokio::test]
async fn private_cluster_restarts_and_is_removed_on_drop() {
    let cluster = Cluster::start();
    let dir = cluster.dir().to_path_buf();
    let before = cluster
        .endpoint()
        .connect(cluster::SUPERUSER, "postgres")
        .await;
    before.simple_query("SELECT 1").await.unwrap();

    cluster.restart();
    let err = before.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        err.is_closed() || err.code().is_some(),
        "old session survived a restart: {err}"
    );
    let after = cluster
        .endpoint()
        .connect(cluster::SUPERUSER, "postgres")
        .await;
    after.simple_query("SELECT 1").await.unwrap();

    assert!(dir.join("data").is_dir());
    drop(after);
    drop(cluster);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn wire_client_reads_simple_and_extended_replies() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("harness_wire");
    let (mut client, startup) =
        WireClient::connect(cluster.endpoint().addr, cluster::SUPERUSER, &db).unwrap();
    let tags: Vec<u8> = startup.iter().map(|m| m.0).collect();
    assert_eq!(tags.first(), Some(&b'R'));
    assert!(
        tags.contains(&b'S') && tags.contains(&b'K'),
        "{:?}",
        wire::render(&startup)
    );
    assert_eq!(
        wire::normalize(&startup)
            .iter()
            .find(|m| m.0 == b'K')
            .unwrap()
            .1,
        vec![0; 8]
    );

    client.send(&msg::query("SELECT 1; SELECT 2")).unwrap();
    let mut extended = msg::parse("", "SELECT $1::int + 1");
    extended.extend(msg::bind("", "", &[Some("41")]));
    extended.extend(msg::describe(b'P', ""));
    extended.extend(msg::execute("", 0));
    extended.extend(msg::sync());
    client.send(&extended).unwrap();
    let replies = client.read_until_ready(2).unwrap();
    assert_eq!(wire::tags(&replies), "TDCTDCZ12TDCZ");
    assert_eq!(
        replies[replies.len() - 3],
        (b'D', b"\0\x01\0\0\0\x0242".to_vec())
    );
    client.send(&msg::terminate()).unwrap();
    assert!(client.read_to_close().is_empty());
}
