#![forbid(unsafe_code)]
//! No role gains through the `fencegate` schema a right it lacks (docs/security.md): the
//! schema belongs to `fencegate_owner`, no superuser, so its SECURITY DEFINER functions
//! cannot end a superuser's session; internal functions are not callable by PUBLIC;
//! `migrate --grant ROLE` grants an application role the public interface.

use fencegate_tests::cluster::{Cluster, SUPERUSER, TRUST_USER};
use fencegate_tests::fence::{expect_code, fenced_database};

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
    let victim_pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
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
    fencegate::fence::migrate::run_granting(&url, &["fence_app".to_string()])
        .await
        .expect("migrate --grant fence_app");
    let admin = cluster.endpoint().connect(SUPERUSER, &db).await;
    for (function, want) in [
        ("fencegate.check(text, bigint, int4)", true),
        ("fencegate.acquire(text, text, interval)", true),
        ("fencegate._preempt(text, bigint)", false),
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
    let missing = fencegate::fence::migrate::run_granting(&url, &["no_such_role".into()]).await;
    assert!(missing.is_err(), "granting a missing role must fail");
}
