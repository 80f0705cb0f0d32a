//! Regression tests for ways around the fence found in review: settings spelled with quoted
//! identifiers, an annotation after the final `;`, `--` comments ended by a carriage return,
//! CALL outside a transaction block in the extended protocol, annotations in SQL PREPARE, a
//! second Parse of a named statement, the high-water cache and uncommitted values, memo
//! keys that collide, DDL bodies the statement splitter must not rewrite, and the wording of
//! a rejection after the same transaction raised the token itself.
#![forbid(unsafe_code)]

use fencegate_tests::cluster::TRUST_USER;
use fencegate_tests::fence::{assert_stale, comment, expect_code, FenceEnv};
use fencegate_tests::wire::{msg, tags, WireClient};
use tokio_postgres::error::DbError;

const SETUP: &str = "
CREATE TABLE jobs (id int PRIMARY KEY, v text NOT NULL DEFAULT '');
INSERT INTO jobs VALUES (7, '');
CREATE TABLE audit (note text);
GRANT ALL ON jobs, audit TO trust_user;
CREATE PROCEDURE bump(t text) LANGUAGE plpgsql AS $$
BEGIN UPDATE jobs SET v = v || t WHERE id = 7; END $$;
GRANT ALL ON PROCEDURE bump(text) TO trust_user;
GRANT CREATE ON SCHEMA public TO trust_user;
";

/// `sql` carrying token 3 for job:7: stale once [`at_ten`] committed H = 10.
fn stale(sql: &str) -> String {
    format!("{sql} {}", comment("job:7", 3))
}

/// A fenced environment where H(job:7) = 10 has been committed, and a client through its
/// proxy.
async fn at_ten(prefix: &str) -> (FenceEnv, tokio_postgres::Client) {
    let env = FenceEnv::new(prefix, SETUP).await;
    let client = env.client().await;
    client
        .batch_execute(&format!("SELECT 1 FROM jobs {}", comment("job:7", 10)))
        .await
        .unwrap();
    assert_eq!(env.monitor.high_water("job:7").await, Some(10));
    (env, client)
}

/// Runs `sql` on `client`, which must fail with SQLSTATE `code`.
async fn refused(client: &tokio_postgres::Client, sql: &str, code: &str) -> DbError {
    expect_code(client.batch_execute(sql).await, code)
}

/// Job 7's value, read directly.
async fn value(env: &FenceEnv) -> String {
    env.monitor
        .text("SELECT v FROM jobs WHERE id = 7")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_with_quoted_identifiers_and_spaces_are_checked() {
    let (env, client) = at_ten("review_quoted_settings").await;
    for set in [
        "SET \"fencing\".\"resource\" = 'job:7'; SET \"fencing\".\"token\" = 3",
        "SET fencing . resource = 'job:7'; SET fencing . token = 3",
    ] {
        let sql = format!("{set}; UPDATE jobs SET v = 'stale' WHERE id = 7");
        let err = expect_code(client.batch_execute(&sql).await, "55Z01");
        assert_stale(&err, "job:7", 3, 10);
        client.batch_execute("RESET ALL").await.unwrap();
    }
    assert_eq!(value(&env).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotation_after_the_final_semicolon_is_checked() {
    let (env, client) = at_ten("review_trailing").await;
    let trailing = stale("UPDATE jobs SET v = 'stale' WHERE id = 7;");
    let err = refused(&client, &trailing, "55Z01").await;
    assert_stale(&err, "job:7", 3, 10);
    assert_eq!(value(&env).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_comment_ended_by_carriage_return_hides_nothing() {
    let (_env, client) = at_ten("review_cr").await;
    client
        .batch_execute("SET fencing.resource = 'job:7'; SET fencing.token = 3")
        .await
        .unwrap();
    let err = expect_code(
        client
            .batch_execute("-- note\rUPDATE jobs SET v = 'stale' WHERE id = 7")
            .await,
        "55Z01",
    );
    assert_stale(&err, "job:7", 3, 10);
    // Results stay aligned: the client sees its own three results.
    client.batch_execute("RESET ALL").await.unwrap();
    client
        .batch_execute("SET fencing.token = 11")
        .await
        .unwrap();
    client
        .batch_execute("SET fencing.resource = 'job:7'")
        .await
        .unwrap();
    let rows = client
        .simple_query("SELECT 1 --c\r; SELECT 2\n; SELECT 3")
        .await
        .unwrap();
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_with_a_token_needs_a_transaction_block_in_the_extended_protocol() {
    let (env, client) = at_ten("review_call").await;
    let fresh = format!("CALL bump('B') {}", comment("job:7", 11));
    // Outside a block the procedure could COMMIT midway and release the fence: refused.
    let statement = client.prepare(&fresh).await.unwrap();
    expect_code(client.execute(&statement, &[]).await, "55Z02");
    // Inside one it is checked and runs.
    client.batch_execute("BEGIN").await.unwrap();
    client.execute(&statement, &[]).await.unwrap();
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(value(&env).await, "B");
    assert_eq!(env.monitor.high_water("job:7").await, Some(11));
    // The simple protocol makes it atomic by itself (the check goes in front of it).
    refused(&client, &stale("CALL bump('A')"), "55Z01").await;
    assert_eq!(value(&env).await, "B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_with_an_annotation_is_refused() {
    let (env, client) = at_ten("review_prepare").await;
    let prepare = stale("PREPARE p AS UPDATE jobs SET v = 'stale' WHERE id = 7");
    refused(&client, &prepare, "55Z02").await;
    // The annotation on EXECUTE is checked.
    client
        .batch_execute("PREPARE q AS UPDATE jobs SET v = 'x' WHERE id = 7")
        .await
        .unwrap();
    refused(&client, &stale("EXECUTE q"), "55Z01").await;
    assert_eq!(value(&env).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_second_parse_does_not_replace_the_first() {
    let (env, client) = at_ten("review_reparse").await;
    // tokio-postgres names statements itself; use two raw Parse messages instead.
    let bytes = msg::batch([
        msg::parse("s", &stale("UPDATE jobs SET v = 'stale' WHERE id = 7")),
        msg::parse("s", "SELECT 1"),
        msg::sync(),
        msg::bind_and_run("s"),
    ]);
    let (mut raw, _) = WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).unwrap();
    // Parse ok, duplicate Parse fails (42P05); then the check fails (55Z01).
    let what = "Parse s twice, then Bind s";
    let replies = raw.round_expecting(&bytes, 2, &["42P05", "55Z01"], what);
    assert_eq!(tags(&replies), "1EZEZ");
    drop(client);
    assert_eq!(value(&env).await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncommitted_mark_is_never_cached() {
    let env = FenceEnv::new("review_cache", SETUP).await;
    let client = env.client().await;
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(&format!("SELECT 1 FROM jobs {}", comment("c1", 9)))
        .await
        .unwrap();
    expect_code(
        client
            .batch_execute(&format!("SELECT 1 FROM jobs {}", comment("c1", 5)))
            .await,
        "55Z01",
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(env.monitor.high_water("c1").await, None);
    // A holder with token 7 is admitted: nothing above it ever committed.
    client
        .batch_execute(&format!(
            "UPDATE jobs SET v = 'seven' WHERE id = 7 {}",
            comment("c1", 7)
        ))
        .await
        .unwrap();
    assert_eq!(env.monitor.high_water("c1").await, Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_cannot_forge_each_others_check_record() {
    let env = FenceEnv::new("review_memo", SETUP).await;
    let client = env.client().await;
    client
        .batch_execute(&format!("SELECT 1 FROM jobs {}", comment("b", 100)))
        .await
        .unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute(&format!("SELECT 1 FROM jobs {}", comment("x;1:b=5;", 3)))
        .await
        .unwrap();
    let err = expect_code(
        client
            .batch_execute(&format!(
                "UPDATE jobs SET v = 'stale' WHERE id = 7 {}",
                comment("b", 5)
            ))
            .await,
        "55Z01",
    );
    assert_stale(&err, "b", 5, 100);
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(value(&env).await, "");
}

/// Runs the DDL `ddl` on `client`; the body PostgreSQL stored (read with `definition`)
/// must not have the proxy's check in it.
async fn stored_as_written(
    env: &FenceEnv,
    client: &tokio_postgres::Client,
    ddl: &str,
    definition: &str,
) {
    client.batch_execute(ddl).await.unwrap();
    let stored = env.monitor.text(definition).await.unwrap();
    assert!(!stored.contains("fencegate"), "{stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_and_function_bodies_are_not_rewritten() {
    let env = FenceEnv::new("review_ddl", SETUP).await;
    let client = env.client().await;
    client
        .batch_execute("CREATE TABLE mine (a int)")
        .await
        .unwrap();
    let rule = format!(
        "CREATE RULE r AS ON UPDATE TO mine DO ALSO (INSERT INTO audit VALUES ('a'); \
         INSERT INTO audit VALUES ('b') {})",
        comment("job:7", 1)
    );
    let rule_definition = "SELECT definition FROM pg_rules WHERE rulename = 'r'";
    stored_as_written(&env, &client, &rule, rule_definition).await;
    let function = format!(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC \
         SELECT count(*)::int FROM jobs j WHERE j.v <> 'end'; SELECT 1 {}; END",
        comment("job:7", 1)
    );
    let function_definition = "SELECT pg_get_functiondef('f'::regproc)";
    stored_as_written(&env, &client, &function, function_definition).await;
}

/// Under REPEATABLE READ and SERIALIZABLE the transaction's snapshot may predate a newer
/// holder's commit: a check must not compare against the H it shows. A check whose
/// snapshot is older than the fence row fails (40001, serialization failure, or 55Z01),
/// whatever token it carries, and nothing of it is written (the write here touches no row
/// the newer holder wrote, so only the check can stop it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_older_than_the_fence_row_admits_no_token() {
    let (env, _client) = at_ten("review_isolation").await;
    for (level, token) in [
        ("REPEATABLE READ", 10),
        ("REPEATABLE READ", 12),
        ("SERIALIZABLE", 10),
    ] {
        let older = env.client().await;
        older
            .batch_execute(&format!(
                "BEGIN ISOLATION LEVEL {level}; SELECT count(*) FROM jobs"
            ))
            .await
            .unwrap();
        // A newer holder commits after the snapshot was taken.
        let newer_token = env.monitor.high_water("job:7").await.unwrap_or(10) + 1;
        env.client()
            .await
            .batch_execute(&format!(
                "UPDATE jobs SET v = v || 'n' WHERE id = 7 {}",
                comment("job:7", newer_token)
            ))
            .await
            .unwrap();
        let result = older
            .batch_execute(&format!(
                "INSERT INTO audit VALUES ('OLD') {}",
                comment("job:7", token)
            ))
            .await;
        let err = result.expect_err(&format!(
            "{level}, token {token}: a check in a snapshot older than H={newer_token} admitted it"
        ));
        let code = err.as_db_error().map(|e| e.code().code().to_string());
        assert!(
            matches!(code.as_deref(), Some("40001") | Some("55Z01")),
            "{level}, token {token}: {err:?}"
        );
        older.batch_execute("ROLLBACK").await.unwrap();
    }
    let stale = env
        .monitor
        .text("SELECT count(*)::text FROM audit WHERE note = 'OLD'")
        .await;
    assert_eq!(stale.as_deref(), Some("0"));
}

/// A transaction that raised H itself and then presents an older token is told that its own
/// newer token came first (the row holds its uncommitted value, which is not "the current
/// token"). Rolled back to a savepoint, the raise, its note and the lock are gone together,
/// and the older token is admitted against the committed H.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_below_one_this_transaction_raised_is_rejected_until_a_savepoint_undoes_the_raise()
{
    let (env, _client) = at_ten("own_raise").await;
    let c = env.client().await;
    let append = |s: &str, token: i64| {
        format!(
            "UPDATE jobs SET v = v || '{s}' WHERE id = 7 {}",
            comment("job:7", token)
        )
    };
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&append("a", 12)).await.unwrap();
    let err = expect_code(c.batch_execute(&append("b", 11)).await, "55Z01");
    assert_eq!(
        err.message(),
        "stale fencing token 11 for resource 'job:7': token 12 was admitted earlier in this transaction"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(env.monitor.high_water("job:7").await, Some(10));

    c.batch_execute("BEGIN; SAVEPOINT s").await.unwrap();
    c.batch_execute(&append("c", 12)).await.unwrap();
    c.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    c.batch_execute(&append("d", 11)).await.unwrap();
    // 11 raised H again in this transaction, and a 9 is told so.
    let err = expect_code(c.batch_execute(&append("e", 9)).await, "55Z01");
    assert!(
        err.message()
            .ends_with("token 11 was admitted earlier in this transaction"),
        "{}",
        err.message()
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(value(&env).await, "");
    assert_eq!(env.monitor.high_water("job:7").await, Some(10));

    c.batch_execute(&append("f", 9))
        .await
        .map(|_| ())
        .unwrap_err();
    let err = expect_code(c.batch_execute(&append("g", 9)).await, "55Z01");
    assert_stale(&err, "job:7", 9, 10);
}
