#![forbid(unsafe_code)]
//! No role gains through the `fencegate` schema a right it lacks (docs/security.md): the
//! schema belongs to `fencegate_owner`, no superuser, so its SECURITY DEFINER functions
//! cannot end a superuser's session; internal functions are not callable by PUBLIC;
//! `migrate --grant ROLE` grants an application role the public interface.

use fencegate_tests::cluster::{Cluster, SUPERUSER, TRUST_USER};
use std::time::Duration;

use fencegate_tests::fence::{
    assert_stale, backend_pid, comment, expect_code, fenced_database, run_under_token_settings,
    FenceEnv,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_functions_are_not_public_and_the_owner_is_no_superuser() {
    let cluster = Cluster::shared();
    let db = fenced_database(cluster, "priv_internal", "").await;
    let admin = cluster.endpoint().connect(SUPERUSER, &db).await;
    let owners: Vec<(String, bool)> = admin
        .query(
            "SELECT DISTINCT r.rolname, r.rolsuper FROM pg_proc p \
             JOIN pg_roles r ON r.oid = p.proowner \
             WHERE p.pronamespace = 'fencegate'::regnamespace",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(owners, vec![("fencegate_owner".to_string(), false)]);
    let victim = cluster.endpoint().connect(SUPERUSER, &db).await;
    let victim_pid = backend_pid(&victim).await;
    // The finding: any role could end a superuser's session through _preempt.
    let nobody = cluster.endpoint().connect(TRUST_USER, &db).await;
    for call in [
        "SELECT fencegate._preempt('rr', 100)",
        "SELECT fencegate._check_slow('rr', 1, 0)",
        "SELECT fencegate._lock('rr', 1, true, 0)",
        "SELECT fencegate._publish('rr', 1, 0)",
        "SELECT fencegate._stale('rr', 1, 2, false)",
    ] {
        let err = expect_code(nobody.batch_execute(call).await, "42501");
        assert!(
            err.message().contains("permission denied"),
            "{call}: {err:?}"
        );
    }
    // Even the owner's own preemption cannot end a superuser session.
    admin
        .batch_execute("SET ROLE fencegate_owner")
        .await
        .unwrap();
    let ended = admin
        .query_one(&format!("SELECT pg_terminate_backend({victim_pid})"), &[])
        .await;
    match ended {
        Ok(row) => assert!(!row.get::<_, bool>(0), "fencegate_owner ended a superuser"),
        Err(e) => assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e:?}"),
    }
    victim
        .batch_execute("SELECT 1")
        .await
        .expect("the superuser session lives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_grant_gives_a_role_the_public_interface() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("priv_grant");
    cluster.execute(
        &db,
        "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fence_app') \
         THEN CREATE ROLE fence_app NOLOGIN; END IF; END$$;",
    );
    let url = format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", cluster.port());
    fencegate::schema::migrate::run_granting(&url, &["fence_app".to_string()])
        .await
        .expect("migrate --grant fence_app");
    let admin = cluster.endpoint().connect(SUPERUSER, &db).await;
    for (function, want) in [
        ("fencegate.check(text, bigint, int4)", true),
        ("fencegate.acquire(text, text, interval)", true),
        ("fencegate._preempt(text, bigint)", false),
        ("fencegate._lockers(text, oid)", false),
    ] {
        let can: bool = admin
            .query_one(
                &format!("SELECT has_function_privilege('fence_app', '{function}', 'EXECUTE')"),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(can, want, "{function}");
    }
    let missing = fencegate::schema::migrate::run_granting(&url, &["no_such_role".into()]).await;
    assert!(missing.is_err(), "granting a missing role must fail");
}

/// Every cast PostgreSQL carries out with a function, and the `||` of a non-text value.
const REVOKE_CASTS: &str = "
DO $$DECLARE f regprocedure; BEGIN
    FOR f IN SELECT DISTINCT castfunc::regprocedure FROM pg_cast WHERE castmethod = 'f'
             UNION SELECT 'anytextcat(anynonarray, text)'::regprocedure
             UNION SELECT 'textanycat(text, anynonarray)'::regprocedure LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END$$;
CREATE TABLE casts_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO casts_t VALUES (1, 0), (2, 0);
GRANT ALL ON casts_t TO trust_user;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_needs_no_cast_that_public_may_lose() {
    // pg_regress's privileges test runs REVOKE ALL ON FUNCTION int8(integer) FROM PUBLIC; the
    // check (as fencegate_owner) and the statement the proxy injects (as the client) must not
    // depend on any such cast: raise, current token, stale token, settings, preemption and a
    // REPEATABLE READ snapshot that a raise superseded all still answer as they should.
    let env = FenceEnv::with_grace("priv_casts", REVOKE_CASTS, Duration::from_millis(200)).await;
    let (monitor, client) = (&env.monitor, env.client().await);
    let bump = |id: i32, token: i64| {
        format!(
            "UPDATE casts_t SET n = n + 1 WHERE id = {id} {}",
            comment("casts", token)
        )
    };
    client.batch_execute(&bump(1, 5)).await.expect("raise to 5");
    client
        .batch_execute(&bump(1, 5))
        .await
        .expect("token 5 again");
    let big = 5_000_000_000_i64;
    let err = expect_code(client.batch_execute(&bump(1, 3)).await, "55Z01");
    assert_stale(&err, "casts", 3, 5);
    let unannotated = "UPDATE casts_t SET n = n + 1 WHERE id = 1";
    run_under_token_settings(&client, "casts", 5, unannotated, "settings token 5").await;
    // An open holder of 5 is ended by a raise to a token above 2^32 after the grace.
    let holder = env.client().await;
    let holder_pid = backend_pid(&holder).await;
    holder
        .batch_execute(&format!("BEGIN; {}", bump(2, 5)))
        .await
        .unwrap();
    client
        .batch_execute(&bump(2, big))
        .await
        .expect("preempting raise");
    monitor.wait_until_gone(holder_pid).await;
    assert_eq!(monitor.high_water("casts").await, Some(big));
    // A REPEATABLE READ snapshot taken before a raise: a serialization failure, not a
    // permission error.
    let rr = env.client().await;
    rr.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT n FROM casts_t")
        .await
        .unwrap();
    client
        .batch_execute(&bump(1, big + 1))
        .await
        .expect("raise");
    expect_code(rr.batch_execute(&bump(1, big + 1)).await, "40001");
    let n = monitor
        .text("SELECT n::text FROM casts_t WHERE id = 1")
        .await;
    assert_eq!(n.as_deref(), Some("4"));
    // The lease functions, called the way fencegate's lease service and client crate do.
    let token: i64 = client
        .query_one(
            "SELECT fencegate.acquire('casts', 'me', interval '10 s')",
            &[],
        )
        .await
        .expect("acquire")
        .get(0);
    assert_eq!(token, big + 2);
    let renewed: bool = client
        .query_one(
            "SELECT fencegate.renew('casts', 'me', $1, interval '10 s')",
            &[&token],
        )
        .await
        .expect("renew")
        .get(0);
    assert!(renewed);
}
