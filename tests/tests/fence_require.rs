//! Tables that require a fencing token (`fencegate require`, SPEC §4): the rule is a trigger
//! in the database, so every path to the table is refused in a transaction where no check
//! admitted a current token (through the proxy or around it, by functions, views, rules,
//! COPY, MERGE, prepared statements), and a transaction where one did may write. What the
//! trigger accepts as "a check admitted" cannot be forged by a client's SET. Every refusal
//! is verified by reading the table afterwards.
#![forbid(unsafe_code)]

use fencegate::schema::require;
use fencegate_tests::cluster::{Cluster, SUPERUSER, TRUST_USER};
use fencegate_tests::fence::{
    comment, expect_code, psql_command, run_text, run_under_token_settings, FenceEnv, INVALID,
};
use tokio_postgres::Client;

const SETUP: &str = "
CREATE TABLE req_t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO req_t VALUES (1, 0), (2, 0);
CREATE VIEW req_v AS SELECT id, n FROM req_t;
CREATE TABLE req_side (x int);
CREATE RULE req_side_bumps AS ON INSERT TO req_side DO ALSO UPDATE req_t SET n = n + 1;
CREATE TABLE req_other (x int);
CREATE FUNCTION req_other_bumps() RETURNS trigger LANGUAGE plpgsql AS
    $$BEGIN UPDATE req_t SET n = n + 1; RETURN NULL; END$$;
CREATE TRIGGER req_other_bumps AFTER INSERT ON req_other
    FOR EACH STATEMENT EXECUTE FUNCTION req_other_bumps();
CREATE FUNCTION req_bump() RETURNS void LANGUAGE sql AS $$UPDATE req_t SET n = n + 1$$;
CREATE FUNCTION req_bump_definer() RETURNS void LANGUAGE sql SECURITY DEFINER
    AS $$UPDATE req_t SET n = n + 1$$;
CREATE PROCEDURE req_check_commit_bump() LANGUAGE plpgsql AS
    $$BEGIN
        PERFORM fencegate.check('req', COALESCE(fencegate.high_water('req'), 1));
        COMMIT;
        UPDATE req_t SET n = n + 1;
    END$$;
CREATE TABLE req_parted (id int, n int) PARTITION BY RANGE (id);
CREATE TABLE req_part1 PARTITION OF req_parted FOR VALUES FROM (0) TO (100);
INSERT INTO req_parted VALUES (1, 0);
GRANT ALL ON req_t, req_v, req_side, req_other, req_parted, req_part1 TO trust_user;
";

/// Every way the issue named (and more) that a statement can write to `req_t`.
const WRITES: &[&str] = &[
    "UPDATE req_t SET n = n + 1",
    "INSERT INTO req_t VALUES (3, 1)",
    "INSERT INTO req_t VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET n = req_t.n + 1",
    "DELETE FROM req_t WHERE id = 2",
    "TRUNCATE req_t",
    "MERGE INTO req_t USING (SELECT 1 AS id) s ON req_t.id = s.id \
     WHEN MATCHED THEN UPDATE SET n = req_t.n + 1",
    "WITH w AS (UPDATE req_t SET n = n + 1 RETURNING 1) SELECT count(*) FROM w",
    "DO $$BEGIN UPDATE req_t SET n = n + 1; END$$",
    "PREPARE req_p AS UPDATE req_t SET n = n + 1; EXECUTE req_p",
    "UPDATE U&\"\\0072eq_t\" SET n = n + 1",
    "SELECT req_bump()",
    "SELECT req_bump_definer()",
    "UPDATE req_v SET n = n + 1",
    "INSERT INTO req_side VALUES (1)",
    "INSERT INTO req_other VALUES (1)",
    "CALL req_check_commit_bump()",
];

/// The table as the superuser reads it directly.
async fn contents(env: &FenceEnv) -> Vec<(i32, i32)> {
    env.monitor
        .client()
        .query("SELECT id, n FROM req_t ORDER BY id", &[])
        .await
        .expect("read req_t")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn required_env(prefix: &str) -> FenceEnv {
    let env = FenceEnv::new(prefix, SETUP).await;
    let url = Cluster::shared().url(&env.db);
    let done = require::install(&url, &["req_t".into(), "req_parted".into()])
        .await
        .expect("fencegate require");
    assert_eq!(done, ["req_t", "req_parted", "req_part1"]);
    env
}

/// Runs `sql` and asserts the trigger refused it (55Z02 naming the table).
async fn assert_refused(client: &Client, sql: &str) {
    let err = expect_code(client.batch_execute(sql).await, INVALID);
    assert!(
        err.message().contains("requires a fencing token")
            && err.message().contains("no fencing check admitted one"),
        "{sql}: {err:?}"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    client.batch_execute("DEALLOCATE ALL").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_to_a_required_table_is_refused_without_a_token() {
    let env = required_env("req_paths").await;
    let before = contents(&env).await;
    let proxied = env.client().await;
    let direct = Cluster::shared()
        .endpoint()
        .connect(TRUST_USER, &env.db)
        .await;
    for client in [&proxied, &direct] {
        for sql in WRITES {
            assert_refused(client, sql).await;
        }
        // A check for a token that is not current admits nothing either.
        client
            .batch_execute(&format!("UPDATE req_side SET x = 0 {}", comment("req", 7)))
            .await
            .expect("raise req to 7 on a table that requires nothing");
        let stale = expect_code(
            client
                .batch_execute("BEGIN; SELECT fencegate.check('req', 3); UPDATE req_t SET n = 9")
                .await,
            "55Z01",
        );
        assert!(
            stale.message().contains("stale fencing token 3"),
            "{stale:?}"
        );
        client.batch_execute("ROLLBACK").await.unwrap();
    }
    assert_eq!(
        contents(&env).await,
        before,
        "a refused write changed req_t"
    );
    // COPY both ways, with psql as users run it.
    for copy in [
        "COPY (UPDATE req_t SET n = n + 1 RETURNING id) TO STDOUT;\n",
        "COPY req_t FROM STDIN;\n5\t5\n\\.\n",
    ] {
        let mut psql = psql_command(env.fp.endpoint(), TRUST_USER, &env.db);
        let (out, _, stderr) = run_text(&mut psql, copy);
        assert!(!out.status.success(), "{copy}");
        assert!(stderr.contains("ERROR:  55Z02"), "{copy}: {stderr}");
    }
    assert_eq!(contents(&env).await, before, "COPY changed req_t");
    // Partitions are covered, written through the parent or directly.
    for sql in [
        "UPDATE req_parted SET n = 1",
        "UPDATE req_part1 SET n = 1",
        "TRUNCATE req_part1",
    ] {
        assert_refused(&direct, sql).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_token_admits_the_write_on_every_path() {
    let env = required_env("req_admit").await;
    let proxied = env.client().await;
    let token = comment("req", 1);
    for sql in [
        format!("UPDATE req_t SET n = n + 1 {token}"),
        format!("DO $$BEGIN UPDATE req_t SET n = n + 1; END$$ {token}"),
        format!("SELECT req_bump() {token}"),
        format!("UPDATE req_v SET n = n + 1 {token}"),
    ] {
        proxied.batch_execute(&sql).await.expect(&sql);
    }
    let what = "token as a setting";
    run_under_token_settings(&proxied, "req", 1, "UPDATE req_t SET n = n + 1", what).await;
    // A later migration keeps the checks' proofs on.
    fencegate_tests::fence::install(Cluster::shared().port(), &env.db).await;
    // Around the proxy: the check called by the application itself.
    let direct = Cluster::shared()
        .endpoint()
        .connect(TRUST_USER, &env.db)
        .await;
    direct
        .batch_execute(
            "BEGIN; SELECT fencegate.check('req', 1); UPDATE req_t SET n = n + 1; \
             INSERT INTO req_parted VALUES (2, 0); COMMIT",
        )
        .await
        .expect("direct check, then writes");
    assert_eq!(contents(&env).await, [(1, 6), (2, 6)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_client_can_set_never_stands_for_a_check() {
    let env = required_env("req_forge").await;
    let before = contents(&env).await;
    let direct = Cluster::shared()
        .endpoint()
        .connect(TRUST_USER, &env.db)
        .await;
    // An admitted transaction's proof, copied.
    let proof: String = {
        direct
            .batch_execute("BEGIN; SELECT fencegate.check('req', 1)")
            .await
            .unwrap();
        let row = direct
            .query_one("SELECT current_setting('fencegate.admitted')", &[])
            .await
            .unwrap();
        direct.batch_execute("ROLLBACK").await.unwrap();
        row.get(0)
    };
    assert_eq!(proof.len(), 64, "{proof}");
    let other = Cluster::shared()
        .endpoint()
        .connect(TRUST_USER, &env.db)
        .await;
    for client in [&direct, &other] {
        for forged in [proof.as_str(), "x", ""] {
            let set = format!("SET fencegate.admitted = '{forged}'");
            assert_refused(client, &format!("{set}; UPDATE req_t SET n = 5")).await;
            assert_refused(
                client,
                &format!(
                    "BEGIN; SET LOCAL fencegate.admitted = '{forged}'; UPDATE req_t SET n = 5"
                ),
            )
            .await;
            client
                .batch_execute("RESET fencegate.admitted")
                .await
                .unwrap();
        }
    }
    // A check rolled back to a savepoint taken before it leaves nothing behind: its locks
    // are gone, and so is the proof.
    assert_refused(
        &direct,
        "BEGIN; SAVEPOINT s; SELECT fencegate.check('req', 1); ROLLBACK TO s; \
         UPDATE req_t SET n = 5",
    )
    .await;
    // The internals that make the proof are not the client's to call.
    expect_code(
        direct
            .batch_execute("SELECT fencegate._proof('guess')")
            .await,
        "42501",
    );
    expect_code(
        direct
            .batch_execute("SELECT value FROM fencegate.meta WHERE key = 'proof_key'")
            .await,
        "42501",
    );
    assert_eq!(
        contents(&env).await,
        before,
        "a forged proof wrote to req_t"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_is_explicit_and_the_requirement_can_be_removed() {
    let env = required_env("req_maint").await;
    let cluster = Cluster::shared();
    let admin = cluster.endpoint().connect(SUPERUSER, &env.db).await;
    // A superuser is no member of fencegate_maintenance by being one.
    assert_refused(&admin, "UPDATE req_t SET n = 1").await;
    // ... but may switch such triggers off for its session (a superuser-only setting).
    admin
        .batch_execute(
            "SET session_replication_role = replica; UPDATE req_t SET n = 1; \
             RESET session_replication_role",
        )
        .await
        .expect("replica role writes without a token");
    let role = format!("req_maint_{}", std::process::id());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} NOLOGIN; GRANT ALL ON req_t TO {role}; \
             GRANT fencegate_maintenance TO {role}"
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "SET ROLE {role}; UPDATE req_t SET n = 2; RESET ROLE"
        ))
        .await
        .expect("a member of fencegate_maintenance writes without a token");
    admin
        .batch_execute(&format!("REVOKE fencegate_maintenance FROM {role}"))
        .await
        .unwrap();
    assert_refused(&admin, &format!("SET ROLE {role}; UPDATE req_t SET n = 3")).await;
    admin.batch_execute("RESET ROLE").await.unwrap();
    let url = cluster.url(&env.db);
    assert_eq!(
        require::list(&url).await.unwrap(),
        ["req_part1", "req_parted", "req_t"]
    );
    // Idempotent, and removable.
    require::install(&url, &["req_t".into()]).await.unwrap();
    require::remove(&url, &["req_t".into()]).await.unwrap();
    assert_eq!(
        require::list(&url).await.unwrap(),
        ["req_part1", "req_parted"]
    );
    let direct = cluster.endpoint().connect(TRUST_USER, &env.db).await;
    direct
        .batch_execute("UPDATE req_t SET n = 4")
        .await
        .expect("no longer required");
    assert_eq!(contents(&env).await, [(1, 4), (2, 4)]);
    admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await
        .unwrap();
    // What is not a table is refused with a clear message, and nothing changes.
    for (name, says) in [("req_v", "is a view"), ("no_such_table", "does not exist")] {
        let err = require::install(&url, &[name.into()]).await.unwrap_err();
        assert!(err.to_string().contains(says), "{name}: {err}");
    }
}
