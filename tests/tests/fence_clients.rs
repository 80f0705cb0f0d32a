//! Tokens through real clients and every protocol path: psql (comment, SET in one `-c`
//! string and in separate `-c`s, `PGOPTIONS`, `\copy`), tokio-postgres (prepared statements
//! and portals with the comment in their SQL, `SET LOCAL` through the extended protocol,
//! pipelines, `copy_in`), and the client errors 55Z02 and 55Z03, after which the same
//! connection goes on working.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt};
use tokio_postgres::Client;

use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fence::{
    assert_stale, assert_usable, comment, expect_code, fenced_database, psql_command, render,
    run_text, FenceProxy, Monitor, INVALID, NOT_INSTALLED, STALE,
};

const JOB: &str = "job:7";

const SETUP: &str = "
CREATE TABLE jobs (id int PRIMARY KEY, steps text NOT NULL DEFAULT '');
INSERT INTO jobs VALUES (7, '');
CREATE TABLE log (id int PRIMARY KEY, note text);
GRANT ALL ON jobs, log TO trust_user;
";

struct Env {
    fp: FenceProxy,
    db: String,
    monitor: Monitor,
}

impl Env {
    async fn new(prefix: &str) -> Env {
        let cluster = Cluster::shared();
        let fp = FenceProxy::start(cluster.port(), Duration::ZERO);
        let db = fenced_database(cluster, prefix, SETUP).await;
        let monitor = Monitor::connect(cluster, &db).await;
        Env { fp, db, monitor }
    }

    async fn client(&self) -> Client {
        self.fp.endpoint().connect(TRUST_USER, &self.db).await
    }

    /// Runs psql through the proxy with `args` (see [`psql_command`]) and `stdin`.
    fn psql(&self, args: &[&str], env: &[(&str, &str)], stdin: &str) -> (bool, String, String) {
        let mut cmd = psql_command(self.fp.endpoint(), TRUST_USER, &self.db);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let (out, stdout, stderr) = run_text(&mut cmd, stdin);
        (out.status.success(), stdout, stderr)
    }

    async fn steps(&self) -> String {
        self.monitor
            .text("SELECT steps FROM jobs WHERE id = 7")
            .await
            .unwrap()
    }

    async fn log_ids(&self) -> Vec<i32> {
        self.monitor
            .client()
            .query("SELECT id FROM log ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

fn stale_line(presented: i64, current: i64) -> String {
    format!(
        "ERROR:  55Z01: stale fencing token {presented} for resource 'job:7': the current token is {current}"
    )
}

fn append(step: &str) -> String {
    format!("UPDATE jobs SET steps = steps || '{step}' WHERE id = 7")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_comment_in_a_multi_statement_command() {
    let env = Env::new("psql_comment").await;
    let c2 = comment(JOB, 2);
    let fresh = format!(
        "SELECT 'before:' || steps FROM jobs WHERE id = 7 {c2}; {} {c2}; \
         SELECT 'after:' || steps FROM jobs WHERE id = 7 {c2}",
        append("a")
    );
    let (ok, stdout, stderr) = env.psql(&["-c", &fresh], &[], "");
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "before:\nafter:a\n");
    assert_eq!(env.monitor.high_water(JOB).await, Some(2));
    // Token 1 now fails, and the statements before it in the same string roll back with it.
    let stale = format!("{}; {} {}", append("b"), append("c"), comment(JOB, 1));
    let (ok, _, stderr) = env.psql(&["-c", &stale], &[], "");
    assert!(!ok);
    assert!(stderr.contains(&stale_line(1, 2)), "{stderr}");
    assert_eq!(env.steps().await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_set_in_one_command_string_and_in_separate_commands() {
    let env = Env::new("psql_set").await;
    let one = |t: i64, step: &str| {
        format!(
            "SET fencing.resource = 'job:7'; SET fencing.token = {t}; {}",
            append(step)
        )
    };
    let (ok, _, stderr) = env.psql(&["-c", &one(3, "a")], &[], "");
    assert!(ok, "{stderr}");
    assert_eq!(env.monitor.high_water(JOB).await, Some(3));
    let (ok, _, stderr) = env.psql(&["-c", &one(2, "b")], &[], "");
    assert!(!ok);
    assert!(stderr.contains(&stale_line(2, 3)), "{stderr}");

    let separate = |t: String, step: String| {
        let args = [
            "-c".to_string(),
            "SET fencing.resource = 'job:7'".to_string(),
            "-c".to_string(),
            format!("SET fencing.token = {t}"),
            "-c".to_string(),
            append(&step),
        ];
        env.psql(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &[],
            "",
        )
    };
    let (ok, _, stderr) = separate("4".into(), "c".into());
    assert!(ok, "{stderr}");
    assert_eq!(env.monitor.high_water(JOB).await, Some(4));
    let (ok, _, stderr) = separate("3".into(), "d".into());
    assert!(!ok);
    assert!(stderr.contains(&stale_line(3, 4)), "{stderr}");
    // A script with SET LOCAL inside a transaction block.
    let script = format!(
        "BEGIN;\nSET LOCAL fencing.resource = 'job:7';\nSET LOCAL fencing.token = 3;\n{};\nCOMMIT;\n",
        append("e")
    );
    let (ok, _, stderr) = env.psql(&["-f", "-"], &[], &script);
    assert!(!ok);
    assert!(stderr.contains(&stale_line(3, 4)), "{stderr}");
    assert_eq!(env.steps().await, "ac");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_startup_options_from_pgoptions() {
    let env = Env::new("psql_pgoptions").await;
    let options = |t: i64| format!("-c fencing.resource=job:7 -c fencing.token={t}");
    let (ok, stdout, stderr) = env.psql(
        &["-c", &append("a"), "-c", "SHOW fencing.token"],
        &[("PGOPTIONS", &options(5))],
        "",
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "5\n");
    assert_eq!(env.monitor.high_water(JOB).await, Some(5));
    let (ok, _, stderr) = env.psql(
        &["-c", "SELECT steps FROM jobs"],
        &[("PGOPTIONS", &options(4))],
        "",
    );
    assert!(!ok, "a read with a stale startup token must fail");
    assert!(stderr.contains(&stale_line(4, 5)), "{stderr}");
    assert_eq!(env.steps().await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_backslash_copy_with_set_token() {
    let env = Env::new("psql_copy").await;
    let copy = |t: i64, data: &str| {
        let token = format!("SET fencing.token = {t}");
        env.psql(
            &[
                "-c",
                "SET fencing.resource = 'job:7'",
                "-c",
                &token,
                "-c",
                "\\copy log FROM pstdin",
            ],
            &[],
            data,
        )
    };
    let (ok, _, stderr) = copy(6, "1\tfirst\n2\tsecond\n");
    assert!(ok, "{stderr}");
    assert_eq!(env.log_ids().await, [1, 2]);
    assert_eq!(env.monitor.high_water(JOB).await, Some(6));
    let (ok, _, stderr) = copy(5, "3\tstale\n4\tstale\n");
    assert!(!ok, "a stale \\copy must fail");
    assert!(stderr.contains(&stale_line(5, 6)), "{stderr}");
    assert_eq!(
        env.log_ids().await,
        [1, 2],
        "no row of the stale copy landed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_copy_in_with_comment() {
    let env = Env::new("tp_copy").await;
    let c = env.client().await;
    let sink = c
        .copy_in::<_, Bytes>(&format!("COPY log FROM STDIN {}", comment(JOB, 6)))
        .await
        .expect("fresh COPY starts");
    pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\tfirst\n2\tsecond\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    assert_eq!(env.monitor.high_water(JOB).await, Some(6));

    let stale = c
        .copy_in::<_, Bytes>(&format!("COPY log FROM STDIN {}", comment(JOB, 5)))
        .await;
    match stale {
        Err(e) => assert_stale(&expect_code::<()>(Err(e), STALE), JOB, 5, 6),
        Ok(sink) => {
            pin_mut!(sink);
            // The COPY must not have started; if the client could send, finishing must fail.
            let _ = sink.send(Bytes::from_static(b"3\tstale\n")).await;
            let finished = sink.finish().await;
            assert_stale(&expect_code(finished, STALE), JOB, 5, 6);
        }
    }
    // No usability check on `c`: tokio-postgres itself sends CopyFail + Sync after a COPY
    // that failed before CopyInResponse, and the second ReadyForQuery desynchronises it, as
    // it does directly against Postgres (e.g. `COPY` without INSERT privilege).
    assert_eq!(
        env.log_ids().await,
        [1, 2],
        "no row of the stale copy landed"
    );
    assert_eq!(env.monitor.high_water(JOB).await, Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_statements_and_portals_with_comment() {
    let env = Env::new("tp_prepared").await;
    let c = env.client().await;
    let fresh = c
        .prepare(&format!(
            "UPDATE jobs SET steps = steps || $1 WHERE id = 7 {}",
            comment(JOB, 2)
        ))
        .await
        .unwrap();
    let stale = c
        .prepare(&format!(
            "UPDATE jobs SET steps = steps || $1 WHERE id = 7 {}",
            comment(JOB, 1)
        ))
        .await
        .unwrap();
    assert_eq!(c.execute(&fresh, &[&"a"]).await.unwrap(), 1);
    assert_eq!(env.monitor.high_water(JOB).await, Some(2));
    for _ in 0..2 {
        // A failed check leaves the prepared statements intact: both can run again.
        assert_stale(
            &expect_code(c.execute(&stale, &[&"x"]).await, STALE),
            JOB,
            1,
            2,
        );
        assert_usable(&c).await;
        assert_eq!(c.execute(&fresh, &[&"b"]).await.unwrap(), 1);
    }
    // A named portal read in pieces, in a transaction, with the comment in its SQL.
    let mut c = c;
    let tx = c.transaction().await.unwrap();
    let portal = tx
        .bind(
            &format!("SELECT g FROM generate_series(1, 5) g {}", comment(JOB, 2)),
            &[],
        )
        .await
        .unwrap();
    let first: Vec<i32> = tx
        .query_portal(&portal, 2)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rest: Vec<i32> = tx
        .query_portal(&portal, 0)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!((first, rest), (vec![1, 2], vec![3, 4, 5]));
    tx.commit().await.unwrap();
    // A stale portal fails at its Bind or at its first Execute (where the check goes is
    // the proxy's choice), and never returns a row.
    let tx = c.transaction().await.unwrap();
    let stale_portal = async {
        let portal = tx
            .bind(&format!("SELECT 1 {}", comment(JOB, 1)), &[])
            .await?;
        tx.query_portal(&portal, 1).await
    };
    assert_stale(&expect_code(stale_portal.await, STALE), JOB, 1, 2);
    drop(tx);
    assert_usable(&c).await;
    assert_eq!(env.steps().await, "abb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_set_local_in_a_transaction() {
    let env = Env::new("tp_set_local").await;
    let mut c = env.client().await;
    let update = "UPDATE jobs SET steps = steps || $1 WHERE id = 7";
    for (token, step) in [(3, "a"), (2, "b")] {
        let tx = c.transaction().await.unwrap();
        tx.execute("SET LOCAL fencing.resource = 'job:7'", &[])
            .await
            .unwrap();
        tx.execute(&format!("SET LOCAL fencing.token = {token}"), &[])
            .await
            .unwrap();
        let result = tx.execute(update, &[&step]).await;
        if token == 3 {
            assert_eq!(result.unwrap(), 1);
            tx.commit().await.unwrap();
        } else {
            assert_stale(&expect_code(result, STALE), JOB, 2, 3);
        }
    }
    assert_usable(&c).await;
    // Outside those transactions no token is in effect: the statement is not checked.
    assert_eq!(c.execute(update, &[&"c"]).await.unwrap(), 1);
    assert_eq!(env.monitor.high_water(JOB).await, Some(3));
    assert_eq!(env.steps().await, "ac");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_fails_only_the_stale_statement() {
    let env = Env::new("pipeline").await;
    let c = env.client().await;
    c.simple_query(&format!("SELECT 1 {}", comment(JOB, 2)))
        .await
        .unwrap();
    let insert = |note: &str, token: Option<i64>| {
        let a = token.map(|t| comment(JOB, t)).unwrap_or_default();
        format!("INSERT INTO log VALUES ($1, '{note}') {a}")
    };
    let fresh = c.prepare(&insert("fresh", Some(2))).await.unwrap();
    let stale = c.prepare(&insert("stale", Some(1))).await.unwrap();
    let plain = c.prepare(&insert("plain", None)).await.unwrap();
    let count = c
        .prepare(&format!("SELECT count(*) FROM log {}", comment(JOB, 3)))
        .await
        .unwrap();
    // All Bind/Execute/Sync rounds are written before any reply is read.
    let (r1, r2, r3, r4, r5, r6) = futures_util::join!(
        c.execute(&fresh, &[&1i32]),
        c.execute(&plain, &[&2i32]),
        c.execute(&stale, &[&3i32]),
        c.execute(&fresh, &[&4i32]),
        c.query_one(&count, &[]),
        c.execute(&plain, &[&6i32]),
    );
    assert_eq!((r1.unwrap(), r2.unwrap(), r4.unwrap()), (1, 1, 1));
    assert_stale(&expect_code(r3, STALE), JOB, 1, 2);
    assert_eq!(r5.unwrap().get::<_, i64>(0), 3);
    assert_eq!(r6.unwrap(), 1);
    assert_eq!(env.log_ids().await, [1, 2, 4, 6]);
    assert_eq!(env.monitor.high_water(JOB).await, Some(3));

    // The same with simple Queries, each its own transaction.
    let sql = |id: i32, token: Option<i64>| {
        let a = token.map(|t| comment(JOB, t)).unwrap_or_default();
        format!("INSERT INTO log VALUES ({id}, 'simple') {a}; SELECT count(*) FROM log")
    };
    let queries = [
        sql(10, Some(3)),
        sql(11, Some(2)),
        sql(12, None),
        sql(13, Some(4)),
    ];
    let (s1, s2, s3, s4) = futures_util::join!(
        c.simple_query(&queries[0]),
        c.simple_query(&queries[1]),
        c.simple_query(&queries[2]),
        c.simple_query(&queries[3]),
    );
    assert_eq!(
        render(&s1.unwrap()),
        [
            "complete 1",
            "columns [\"count\"]",
            "row [Some(\"5\")]",
            "complete 1"
        ]
    );
    assert_stale(&expect_code(s2, STALE), JOB, 2, 3);
    assert_eq!(render(&s3.unwrap())[2], "row [Some(\"6\")]");
    assert_eq!(render(&s4.unwrap())[2], "row [Some(\"7\")]");
    assert_eq!(env.log_ids().await, [1, 2, 4, 6, 10, 12, 13]);
    assert_eq!(env.monitor.high_water(JOB).await, Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_installed_database_rejects_fenced_statements_with_migrate_hint() {
    let cluster = Cluster::shared();
    let fp = FenceProxy::start(cluster.port(), Duration::ZERO);
    let db = cluster.create_database("no_schema");
    cluster.execute(&db, SETUP);
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
    let cluster = Cluster::shared();
    let fp = FenceProxy::start(cluster.port(), Duration::ZERO);
    let db = cluster.create_database("no_schema_reset");
    cluster.execute(&db, SETUP);
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
    let env = Env::new("invalid").await;
    let c = env.client().await;
    c.simple_query(&format!("SELECT 1 {}", comment(JOB, 3)))
        .await
        .unwrap();
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
    assert_eq!(env.steps().await, "", "no invalid statement ran");
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
