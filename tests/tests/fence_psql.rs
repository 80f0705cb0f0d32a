//! Tokens through psql, the three ways a client attaches them (SPEC §2): a sqlcommenter
//! comment in a multi-statement `-c` string, `SET` in one `-c` string, in separate `-c`s
//! and in a script with `SET LOCAL`, startup options from `PGOPTIONS`, and `\copy ... FROM
//! pstdin` fenced by `SET`. Fresh tokens are admitted and raise H; stale ones fail with
//! 55Z01 (printed with its SQLSTATE) and change nothing.
#![forbid(unsafe_code)]

use fencegate_tests::fence::jobs::{append, log_ids, steps, JOB, SETUP};
use fencegate_tests::fence::{comment, FenceEnv};

/// Asserts that a psql run (`env.psql`'s answer) failed with the stale-token error for
/// `presented`, the current token of job:7 being `current`.
fn assert_stale_run(run: (bool, String, String), presented: i64, current: i64) {
    let (ok, _, stderr) = run;
    assert!(!ok, "a stale token (presented {presented}) must fail");
    let line = format!(
        "ERROR:  55Z01: stale fencing token {presented} for resource 'job:7': the current token is {current}"
    );
    assert!(stderr.contains(&line), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_comment_in_a_multi_statement_command() {
    let env = FenceEnv::new("psql_comment", SETUP).await;
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
    assert_stale_run(env.psql(&["-c", &stale], &[], ""), 1, 2);
    assert_eq!(steps(&env.monitor).await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_set_in_one_command_string_and_in_separate_commands() {
    let env = FenceEnv::new("psql_set", SETUP).await;
    let one = |t: i64, step: &str| {
        format!(
            "SET fencing.resource = 'job:7'; SET fencing.token = {t}; {}",
            append(step)
        )
    };
    let (ok, _, stderr) = env.psql(&["-c", &one(3, "a")], &[], "");
    assert!(ok, "{stderr}");
    assert_eq!(env.monitor.high_water(JOB).await, Some(3));
    assert_stale_run(env.psql(&["-c", &one(2, "b")], &[], ""), 2, 3);

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
    assert_stale_run(separate("3".into(), "d".into()), 3, 4);
    // A script with SET LOCAL inside a transaction block.
    let script = format!(
        "BEGIN;\nSET LOCAL fencing.resource = 'job:7';\nSET LOCAL fencing.token = 3;\n{};\nCOMMIT;\n",
        append("e")
    );
    assert_stale_run(env.psql(&["-f", "-"], &[], &script), 3, 4);
    assert_eq!(steps(&env.monitor).await, "ac");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_startup_options_from_pgoptions() {
    let env = FenceEnv::new("psql_pgoptions", SETUP).await;
    let options = |t: i64| format!("-c fencing.resource=job:7 -c fencing.token={t}");
    let (ok, stdout, stderr) = env.psql(
        &["-c", &append("a"), "-c", "SHOW fencing.token"],
        &[("PGOPTIONS", &options(5))],
        "",
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "5\n");
    assert_eq!(env.monitor.high_water(JOB).await, Some(5));
    assert_stale_run(
        env.psql(
            &["-c", "SELECT steps FROM jobs"],
            &[("PGOPTIONS", &options(4))],
            "",
        ),
        4,
        5,
    );
    assert_eq!(steps(&env.monitor).await, "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_backslash_copy_with_set_token() {
    let env = FenceEnv::new("psql_copy", SETUP).await;
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
    assert_eq!(log_ids(&env.monitor).await, [1, 2]);
    assert_eq!(env.monitor.high_water(JOB).await, Some(6));
    assert_stale_run(copy(5, "3\tstale\n4\tstale\n"), 5, 6);
    assert_eq!(
        log_ids(&env.monitor).await,
        [1, 2],
        "no row of the stale copy landed"
    );
}

/// An error in the client's own statement, after the proxy inserted its check in front of
/// it, points at the same place in the client's text as it does directly: psql prints the
/// same LINE and caret (non-ASCII text before it included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_positions_point_into_the_clients_own_text() {
    let env = FenceEnv::new("fence_psql_positions", SETUP).await;
    let (ok, _, err) = env.psql(
        &["-c", &format!("SELECT 1 FROM jobs {}", comment(JOB, 5))],
        &[],
        "",
    );
    assert!(ok, "{err}");
    let with_token = |token: i64| {
        format!(
            "SELECT 'é€' AS a; SELECT nocolumn FROM jobs {}; SELECT 1",
            comment(JOB, token)
        )
    };
    // A stale token fails first: the check is in front of the statement.
    let (ok, _, stale) = env.psql(&["-c", &with_token(4)], &[], "");
    assert!(!ok && stale.contains("stale fencing token 4"), "{stale}");
    let sql = with_token(5);
    let (ok, _, proxied) = env.psql(&["-c", &sql], &[], "");
    assert!(!ok);
    let cluster = fencegate_tests::Cluster::shared();
    let mut direct = fencegate_tests::fence::psql_command(
        cluster.endpoint(),
        fencegate_tests::cluster::TRUST_USER,
        &env.db,
    );
    direct.args(["-c", &sql]);
    let (_, _, direct) = fencegate_tests::fence::run_text(&mut direct, "");
    assert!(direct.contains("LINE 1:"), "{direct}");
    assert_eq!(proxied, direct);
}
