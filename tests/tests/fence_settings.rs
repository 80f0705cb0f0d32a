//! Tokens given as settings (SPEC §2.2, §2.3): `SET [LOCAL] fencing.resource/token` and the
//! startup packet's `options`, scoped exactly as PostgreSQL scopes settings, and the
//! precedence comment > SET LOCAL > SET > startup.
//!
//! The probe is always a statement without an annotation: if a token is in effect it is
//! checked (55Z01 when stale), otherwise it runs unchecked and the high-water mark H, read
//! directly from Postgres, stays where it was. A second connection (`other`) raises H with
//! annotated statements to make a token stale.
#![forbid(unsafe_code)]

use std::time::Duration;

use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fence::{
    assert_stale, assert_usable, comment, expect_code, fenced_database, FenceProxy, Monitor,
    INVALID, STALE,
};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

const JOB: &str = "job:7";

const SETUP: &str = "
CREATE TABLE jobs (id int PRIMARY KEY, steps text NOT NULL DEFAULT '');
INSERT INTO jobs VALUES (7, '');
GRANT ALL ON jobs TO trust_user;
";

/// The unannotated probe: appends `x` to job 7.
const PROBE: &str = "UPDATE jobs SET steps = steps || 'x' WHERE id = 7";

const SET_5: &str = "SET fencing.resource = 'job:7'; SET fencing.token = 5";

struct Env {
    fp: FenceProxy,
    db: String,
    monitor: Monitor,
    other: Client,
}

impl Env {
    async fn new(prefix: &str) -> Env {
        let cluster = Cluster::shared();
        let fp = FenceProxy::start(cluster.port(), Duration::ZERO);
        let db = fenced_database(cluster, prefix, SETUP).await;
        let monitor = Monitor::connect(cluster, &db).await;
        let other = fp.endpoint().connect(TRUST_USER, &db).await;
        Env {
            fp,
            db,
            monitor,
            other,
        }
    }

    /// A fresh [`Env`] where H(job:7) was raised to `token`, and a client through its proxy.
    async fn raised(prefix: &str, token: i64) -> (Env, Client) {
        let env = Env::new(prefix).await;
        env.raise(token).await;
        let client = env.client().await;
        (env, client)
    }

    /// Asserts that H(job:7) is `high_water` now: `why`.
    async fn assert_high_water(&self, high_water: i64, why: &str) {
        assert_eq!(
            self.monitor.high_water(JOB).await,
            Some(high_water),
            "{why}"
        );
    }

    async fn client(&self) -> Client {
        self.fp.endpoint().connect(TRUST_USER, &self.db).await
    }

    /// Raises H(job:7) to `token` from the other connection (an annotated read).
    async fn raise(&self, token: i64) {
        let sql = format!(
            "SELECT steps FROM jobs WHERE id = 7 {}",
            comment(JOB, token)
        );
        self.other.simple_query(&sql).await.unwrap();
        assert_eq!(self.monitor.high_water(JOB).await, Some(token));
    }

    async fn steps(&self) -> String {
        self.monitor
            .text("SELECT steps FROM jobs WHERE id = 7")
            .await
            .unwrap()
    }

    /// Asserts that H(job:7) ended at `high_water` and job 7's steps at `steps`.
    async fn assert_outcome(&self, high_water: i64, steps: &str) {
        assert_eq!(self.monitor.high_water(JOB).await, Some(high_water));
        assert_eq!(self.steps().await, steps);
    }
}

/// Runs the probe on `c`, which must be refused as stale: `presented` against H = `current`.
async fn probe_is_stale(c: &Client, presented: i64, current: i64) {
    let err = expect_code(c.batch_execute(PROBE).await, STALE);
    assert_stale(&err, JOB, presented, current);
}

/// The session's `fencing.token` from `SHOW` (never checked: it touches no data).
async fn token_setting(c: &Client) -> String {
    let out = c.simple_query("SHOW fencing.token").await.unwrap();
    out.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(String::from),
            _ => None,
        })
        .expect("SHOW returns a row")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_token_is_checked_then_ends_with_its_transaction() {
    let env = Env::new("set_local_scope").await;
    let c = env.client().await;
    c.batch_execute("BEGIN; SET LOCAL fencing.resource = 'job:7'; SET LOCAL fencing.token = 5")
        .await
        .unwrap();
    c.batch_execute(PROBE).await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    env.assert_high_water(5, "SET LOCAL token checked").await;
    assert_eq!(token_setting(&c).await, "");
    env.raise(7).await;
    // The next transaction carries no token: the probe is not checked (5 would be stale).
    c.batch_execute(PROBE).await.unwrap();
    c.batch_execute(&format!("BEGIN; {PROBE}; COMMIT"))
        .await
        .unwrap();
    env.assert_outcome(7, "xxx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_set_token_persists_across_transactions() {
    let env = Env::new("set_session_scope").await;
    let c = env.client().await;
    c.batch_execute(SET_5).await.unwrap();
    c.batch_execute(PROBE).await.unwrap();
    assert_eq!(env.monitor.high_water(JOB).await, Some(5));
    c.batch_execute(&format!("BEGIN; {PROBE}; COMMIT"))
        .await
        .unwrap();
    env.raise(7).await;
    probe_is_stale(&c, 5, 7).await;
    // Reads are checked too, and in a later explicit transaction.
    c.batch_execute("BEGIN").await.unwrap();
    let err = expect_code(c.query("SELECT steps FROM jobs", &[]).await, STALE);
    assert_stale(&err, JOB, 5, 7);
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(token_setting(&c).await, "5");
    // With a stale session token every statement fails, `SELECT 1` included, until the
    // client stops presenting it.
    expect_code(c.query("SELECT 1", &[]).await, STALE);
    c.batch_execute("RESET ALL").await.unwrap();
    assert_usable(&c).await;
    assert_eq!(env.steps().await, "xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_reset_all_and_discard_all_clear_the_token() {
    let (env, c) = Env::raised("set_reset", 7).await;
    for clear in ["RESET fencing.token", "RESET ALL", "DISCARD ALL"] {
        c.batch_execute(SET_5).await.unwrap();
        probe_is_stale(&c, 5, 7).await;
        c.batch_execute(clear).await.unwrap();
        c.batch_execute(PROBE)
            .await
            .unwrap_or_else(|e| panic!("after {clear} the token still applies: {e}"));
        assert_eq!(token_setting(&c).await, "", "{clear}");
    }
    // A token left without its resource is a client error, not silently ignored.
    c.batch_execute(SET_5).await.unwrap();
    c.batch_execute("RESET fencing.resource").await.unwrap();
    expect_code(c.batch_execute(PROBE).await, INVALID);
    c.batch_execute("ROLLBACK; RESET ALL").await.unwrap();
    assert_usable(&c).await;
    env.assert_outcome(7, "xxx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_undoes_the_set_of_its_transaction() {
    let (env, c) = Env::raised("set_rollback", 7).await;
    // A plain SET inside a transaction that rolls back is undone.
    c.batch_execute(&format!("BEGIN; {SET_5}; ROLLBACK"))
        .await
        .unwrap();
    assert_eq!(token_setting(&c).await, "");
    c.batch_execute(PROBE).await.unwrap();
    // Also when the transaction was aborted by the stale token itself.
    c.batch_execute(&format!("BEGIN; {SET_5}")).await.unwrap();
    expect_code(c.batch_execute(PROBE).await, STALE);
    c.batch_execute("ROLLBACK").await.unwrap();
    c.batch_execute(PROBE).await.unwrap();
    // ROLLBACK TO SAVEPOINT undoes a SET LOCAL made after the savepoint.
    c.batch_execute(
        "BEGIN; SAVEPOINT s; SET LOCAL fencing.resource = 'job:7'; SET LOCAL fencing.token = 5; \
         ROLLBACK TO SAVEPOINT s",
    )
    .await
    .unwrap();
    c.batch_execute(PROBE).await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    // A SET in a committed transaction stays.
    c.batch_execute(&format!("BEGIN; {SET_5}; COMMIT"))
        .await
        .unwrap();
    expect_code(c.batch_execute(PROBE).await, STALE);
    env.assert_outcome(7, "xxx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_overrides_set_and_set_local_overrides_set() {
    let (env, c) = Env::raised("set_precedence", 3).await;
    c.batch_execute(SET_5).await.unwrap();
    // The comment's token 1 is checked, not the session's fresh 5.
    let stale = format!("{PROBE} {}", comment(JOB, 1));
    let err = expect_code(c.batch_execute(&stale).await, STALE);
    assert_stale(&err, JOB, 1, 3);
    let err = expect_code(c.execute(&stale, &[]).await, STALE);
    assert_stale(&err, JOB, 1, 3);
    // And the other way round: a fresh comment wins over a stale session token.
    c.batch_execute("SET fencing.token = 1").await.unwrap();
    c.batch_execute(&format!("{PROBE} {}", comment(JOB, 4)))
        .await
        .unwrap();
    assert_eq!(env.monitor.high_water(JOB).await, Some(4));
    expect_code(c.batch_execute(PROBE).await, STALE);
    // SET LOCAL 6 beats the session's stale 1 for one transaction only.
    c.batch_execute(&format!(
        "BEGIN; SET LOCAL fencing.token = 6; {PROBE}; COMMIT"
    ))
    .await
    .unwrap();
    assert_eq!(env.monitor.high_water(JOB).await, Some(6));
    probe_is_stale(&c, 1, 6).await;
    assert_eq!(env.steps().await, "xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_options_token_applies_to_the_session_below_set() {
    let env = Env::new("set_startup").await;
    let mut config = env.fp.endpoint().pg_config(TRUST_USER, &env.db);
    config.options("-c fencing.resource=job:7 -c fencing.token=5");
    let (c, connection) = config.connect(NoTls).await.expect("connect with options");
    tokio::spawn(connection);
    c.batch_execute(PROBE).await.unwrap();
    env.assert_high_water(5, "startup token checked").await;
    assert_eq!(token_setting(&c).await, "5");
    env.raise(7).await;
    let err = expect_code(c.query("SELECT steps FROM jobs", &[]).await, STALE);
    assert_stale(&err, JOB, 5, 7);
    probe_is_stale(&c, 5, 7).await;
    // SET overrides the startup value; RESET goes back to it.
    c.batch_execute("SET fencing.token = 8").await.unwrap();
    c.batch_execute(PROBE).await.unwrap();
    assert_eq!(env.monitor.high_water(JOB).await, Some(8));
    c.batch_execute("RESET fencing.token").await.unwrap();
    probe_is_stale(&c, 5, 8).await;
    assert_eq!(env.steps().await, "xx");
}

/// Under a connection-string token, statements that PostgreSQL refuses inside a
/// transaction block run exactly as they do directly (no check is put in front of them);
/// the same statements with a comment are refused with 55Z02. Partitioned tables: CLUSTER
/// and REINDEX are refused in a block there, which the statement's text does not show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_cannot_run_in_a_block_run_under_a_session_token() {
    let env = Env::new("set_nonblock").await;
    env.monitor
        .client()
        .batch_execute(
            "CREATE TABLE parts (id int, a int) PARTITION BY RANGE (id);
             CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (100);
             CREATE INDEX parts_a ON parts (a);
             INSERT INTO parts VALUES (1, 1);
             ALTER TABLE parts OWNER TO trust_user;
             ALTER TABLE parts_1 OWNER TO trust_user;
             ALTER TABLE jobs OWNER TO trust_user;
             GRANT CREATE ON SCHEMA public TO trust_user;",
        )
        .await
        .unwrap();
    let mut config = env.fp.endpoint().pg_config(TRUST_USER, &env.db);
    config.options("-c fencing.resource=job:7 -c fencing.token=5");
    let (c, connection) = config.connect(NoTls).await.expect("connect with options");
    tokio::spawn(connection);
    for sql in [
        "CLUSTER parts USING parts_a",
        "REINDEX TABLE parts",
        "REINDEX TABLE CONCURRENTLY jobs",
        "CREATE INDEX CONCURRENTLY jobs_steps ON jobs (steps)",
        "DROP INDEX CONCURRENTLY jobs_steps",
        "VACUUM jobs",
    ] {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} under a session token: {e:?}"));
    }
    let err = expect_code(
        c.batch_execute(&format!("VACUUM jobs {}", comment(JOB, 5)))
            .await,
        INVALID,
    );
    assert!(err.message().contains("cannot be fenced"), "{err:?}");
    // Ordinary statements of the same session are still checked.
    c.batch_execute(PROBE).await.unwrap();
    assert_eq!(env.monitor.high_water(JOB).await, Some(5));
}

/// Under a session token every data statement gets a check in front of it in the same
/// Query string; what PostgreSQL says while it parses the whole string is about the
/// client's text and reaches the client as it would directly: a syntax error with its
/// position, and parse-time notices (found by `scripts/pg-regress --fenced`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parse_time_errors_and_notices_under_a_session_token_are_the_clients() {
    let env = Env::new("set_parse_time").await;
    let long = "a".repeat(70);
    let mut seen = Vec::new();
    for endpoint in [Cluster::shared().endpoint(), env.fp.endpoint()] {
        let mut config = endpoint.pg_config(TRUST_USER, &env.db);
        config.options("-c fencing.resource=job:7 -c fencing.token=5");
        let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = notices.clone();
        let (c, mut connection) = config.connect(NoTls).await.expect("connect");
        tokio::spawn(async move {
            let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = futures_util::StreamExt::next(&mut stream).await {
                if let tokio_postgres::AsyncMessage::Notice(n) = message {
                    sink.lock().unwrap().push(n.message().to_string());
                }
            }
        });
        let err = c
            .batch_execute("SELECT steps FROM jobs WHERE")
            .await
            .expect_err("a syntax error");
        let db = err.as_db_error().expect("server error");
        let position = format!("{:?}", db.position());
        c.batch_execute(&format!("SELECT 1 AS {long}"))
            .await
            .unwrap();
        c.batch_execute("SELECT 1").await.unwrap();
        let notices = notices.lock().unwrap().clone();
        seen.push((
            db.code().code().to_string(),
            position,
            db.where_().map(str::to_string),
            notices,
        ));
    }
    assert_eq!(seen[0], seen[1], "directly, then through fencegate");
    assert!(!seen[1].3.is_empty(), "the truncation notice: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_by_server_side_code_are_checked_again() {
    // The proxy remembers what the first settings check of a transaction admitted, but
    // PostgreSQL compares the settings in effect with it before every statement (with
    // `CALL fencegate.settings_unchanged`): a function that calls set_config (which the proxy cannot
    // see) does not slip a stale token or another resource past the check.
    let env = Env::new("settings_server_side").await;
    assert_server_side_changes_are_checked(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_compared_without_the_procedure_of_schema_11() {
    // A database whose schema predates `settings_unchanged` (as one migrated by an older
    // fencegate): the proxy learns that from its first settings check and compares the
    // settings with a statement of its own instead, with the same result.
    let env = Env::new("settings_old_schema").await;
    env.monitor
        .client()
        .batch_execute("DROP PROCEDURE fencegate.settings_unchanged(text, text, int4, boolean)")
        .await
        .unwrap();
    assert_server_side_changes_are_checked(&env).await;
}

async fn assert_server_side_changes_are_checked(env: &Env) {
    env.monitor
        .client()
        .batch_execute(
            "CREATE FUNCTION switch_to(r text, t text) RETURNS text LANGUAGE sql \
             AS $$ SELECT set_config('fencing.resource', r, true) || set_config('fencing.token', t, true) $$;
             GRANT EXECUTE ON FUNCTION switch_to(text, text) TO trust_user",
        )
        .await
        .unwrap();
    env.raise(5).await;
    let other_job = "job:8";
    env.other
        .batch_execute(&format!("SELECT 1 {}", comment(other_job, 9)))
        .await
        .unwrap();
    let c = env.client().await;
    for (to_resource, to_token, current) in [(JOB, 4, 5), (other_job, 5, 9)] {
        c.batch_execute("BEGIN; SET LOCAL fencing.resource = 'job:7'; SET LOCAL fencing.token = 5")
            .await
            .unwrap();
        c.batch_execute(PROBE).await.expect("token 5 is current");
        c.batch_execute(PROBE)
            .await
            .expect("the same settings again");
        c.batch_execute(&format!("SELECT switch_to('{to_resource}', '{to_token}')"))
            .await
            .unwrap();
        let err = expect_code(c.batch_execute(PROBE).await, STALE);
        assert_stale(&err, to_resource, to_token, current);
        c.batch_execute("ROLLBACK").await.unwrap();
    }
    env.assert_outcome(5, "").await;
}
