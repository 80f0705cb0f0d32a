//! The client errors of SPEC §5 other than a stale token: 55Z03 for a fenced statement in a
//! database without the `fencegate` schema (with a hint naming `fencegate migrate`) and
//! 55Z02 for malformed annotations, by comment and by settings. After each, the same
//! connection rolls back and goes on; nothing the rejected statement would have done
//! happened.
#![forbid(unsafe_code)]

use fencegate_tests::fence::jobs::{append, env_raised_to, steps, JOB, SETUP};
use std::time::Duration;

use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fence::{
    assert_usable, comment, expect_code, FenceProxy, INVALID, NOT_INSTALLED,
};

/// A fencing proxy in front of the shared cluster and a database there (named after
/// `prefix`) with the jobs table but without the `fencegate` schema.
fn proxy_and_unfenced_database(prefix: &str) -> (&'static Cluster, FenceProxy, String) {
    let cluster = Cluster::shared();
    let fp = FenceProxy::start(cluster.port(), Duration::ZERO);
    let db = cluster.create_database(prefix);
    cluster.execute(&db, SETUP);
    (cluster, fp, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_installed_database_rejects_fenced_statements_with_migrate_hint() {
    let (cluster, fp, db) = proxy_and_unfenced_database("no_schema");
    let c = fp.endpoint().connect(TRUST_USER, &db).await;
    let fenced = format!("{} {}", append("a"), comment(JOB, 1));
    let check = |err: tokio_postgres::error::DbError| {
        let hint = err.hint().unwrap_or_default();
        assert!(hint.contains("fencegate migrate"), "hint: {hint:?}");
        assert!(hint.contains(&db), "hint names the database: {hint:?}");
        assert!(err.message().contains(&db), "{}", err.message());
    };
    check(expect_code(c.simple_query(&fenced).await, NOT_INSTALLED));
    assert_usable(&c).await;
    check(expect_code(c.execute(&fenced, &[]).await, NOT_INSTALLED));
    assert_usable(&c).await;
    c.batch_execute("BEGIN").await.unwrap();
    check(expect_code(c.query(&fenced, &[]).await, NOT_INSTALLED));
    assert_usable(&c).await;
    // Statements without a token are not affected.
    c.batch_execute(&append("c")).await.unwrap();
    c.execute(&append("d"), &[]).await.unwrap();
    c.batch_execute("SET fencing.resource = 'job:7'; SET fencing.token = 1")
        .await
        .unwrap();
    check(expect_code(
        c.batch_execute(&append("b")).await,
        NOT_INSTALLED,
    ));
    check(expect_code(
        c.execute(&append("b"), &[]).await,
        NOT_INSTALLED,
    ));
    c.batch_execute("ROLLBACK").await.unwrap();
    let steps = cluster.execute(&db, "SELECT steps FROM jobs");
    assert_eq!(steps, "cd\n");
}

/// SPEC §4/G5: statements without a token are not checked. A session that reset its
/// settings (`DISCARD ALL`, as connection pools do between clients, `RESET ALL`, or `RESET
/// fencing.token` after using a token) carries no token, so in a database without the
/// schema its statements must run as they would directly, not fail with 55Z03.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_installed_database_runs_statements_without_a_token_after_the_token_is_reset() {
    let (cluster, fp, db) = proxy_and_unfenced_database("no_schema_reset");
    for reset in [
        "DISCARD ALL",
        "RESET ALL",
        "SET fencing.resource = 'job:7'; SET fencing.token = 1; RESET fencing.token",
        "SET fencing.resource = 'job:7'; SET fencing.token = 1; RESET ALL",
    ] {
        let c = fp.endpoint().connect(TRUST_USER, &db).await;
        c.batch_execute(reset).await.unwrap();
        let simple = c.simple_query("SELECT 1").await;
        assert!(
            simple.is_ok(),
            "after {reset:?}, SELECT 1 without a token: {simple:?}"
        );
        let extended = c.execute(&append("z"), &[]).await;
        assert!(
            extended.is_ok(),
            "after {reset:?}, UPDATE without a token: {extended:?}"
        );
    }
    assert_eq!(cluster.execute(&db, "SELECT steps FROM jobs"), "zzzz\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_annotations_are_client_errors_and_the_connection_goes_on() {
    let (env, c) = env_raised_to("invalid", 3).await;
    let long = "r".repeat(257);
    let comments = [
        (
            "token without resource",
            "/*fencing_token='5'*/".to_string(),
        ),
        (
            "resource without token",
            "/*fencing_resource='job%3A7'*/".to_string(),
        ),
        ("non-integer token", comment(JOB, "5x")),
        ("negative token", comment(JOB, -5)),
        ("token beyond bigint", comment(JOB, "9223372036854775808")),
        ("empty resource", comment("", 5)),
        ("resource over 256 bytes", comment(&long, 5)),
    ];
    for (what, annotation) in &comments {
        let sql = format!("{} {annotation}", append("x"));
        let err = expect_code(c.simple_query(&sql).await, INVALID);
        assert!(
            err.message().starts_with("invalid fencing annotation"),
            "{what}: {}",
            err.message()
        );
        assert_usable(&c).await;
        expect_code(c.execute(&sql, &[]).await, INVALID);
        assert_usable(&c).await;
        c.batch_execute("BEGIN").await.unwrap();
        expect_code(c.execute(&sql, &[]).await, INVALID);
        expect_code(c.execute("SELECT 1", &[]).await, "25P02");
        assert_usable(&c).await;
    }
    let settings = [
        (
            "token without resource",
            "SET fencing.token = 5".to_string(),
        ),
        (
            "non-integer token",
            "SET fencing.resource = 'job:7'; SET fencing.token = 'five'".into(),
        ),
        (
            "negative token",
            "SET fencing.resource = 'job:7'; SET fencing.token = -5".into(),
        ),
        (
            "resource over 256 bytes",
            format!("SET fencing.resource = '{long}'; SET fencing.token = 5"),
        ),
    ];
    for (what, set) in &settings {
        c.batch_execute(set).await.unwrap();
        let err = expect_code(c.batch_execute(&append("x")).await, INVALID);
        assert!(
            err.message().starts_with("invalid fencing annotation"),
            "{what}: {}",
            err.message()
        );
        c.batch_execute("ROLLBACK; RESET ALL").await.unwrap();
        assert_usable(&c).await;
    }
    assert_eq!(steps(&env.monitor).await, "", "no invalid statement ran");
    assert_eq!(env.monitor.high_water(JOB).await, Some(3));
    // The limits themselves are valid: 256 bytes, token 0 and i64::MAX, UTF-8 names.
    let edge = "é".repeat(128);
    for (resource, token) in [(edge.as_str(), 0), ("r/ü:1", i64::MAX)] {
        c.execute(
            &format!("{} {}", append("y"), comment(resource, token)),
            &[],
        )
        .await
        .unwrap();
        assert_eq!(env.monitor.high_water(resource).await, Some(token));
    }
}
