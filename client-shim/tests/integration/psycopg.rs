//! A non-Rust client: `examples/python/fenced_worker.py` (psycopg 3) attaches its token by
//! comment and by connection-string options through the proxy, and a stale token comes back
//! as an ordinary `psycopg.errors` exception with `sqlstate == '55Z01'`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::Env;

/// Environment variable naming the Python interpreter to use.
const PYTHON_ENV: &str = "FENCEGATE_PYTHON";

/// The first interpreter that can `import psycopg`: `$FENCEGATE_PYTHON`, else `python3` on
/// `PATH`, else Debian's `/usr/bin/python3`. Panics with what to install when none can.
fn python() -> PathBuf {
    let candidates: Vec<PathBuf> = match std::env::var_os(PYTHON_ENV) {
        Some(p) => vec![p.into()],
        None => vec!["python3".into(), "/usr/bin/python3".into()],
    };
    for candidate in &candidates {
        let ok = std::process::Command::new(candidate)
            .args(["-c", "import psycopg"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return candidate.clone();
        }
    }
    panic!(
        "psycopg 3 is missing: none of {candidates:?} can `import psycopg`. Install Debian's \
         python3-psycopg (`apt-get install python3-psycopg`, as .ci/run does) or \
         `pip install \"psycopg[binary]\"`, or set {PYTHON_ENV} to a Python that has it"
    );
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python/fenced_worker.py")
}

/// Runs the worker; returns its exit code and its JSON report.
async fn worker(
    env: &Env,
    python: &Path,
    via: &str,
    resource: &str,
    token: i64,
    result: &str,
) -> (i32, Value) {
    let mut cmd = tokio::process::Command::new(python);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.arg(script())
        .args([
            "--dsn",
            &env.proxy_url().replace("postgres://", "postgresql://"),
        ])
        .args(["--resource", resource, "--token", &token.to_string()])
        .args(["--job", "7", "--result", result, "--via", via])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the Python worker finished within 2 minutes")
        .expect("run the Python worker");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    let report = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("worker ({via}, token {token}) exited {code} without a JSON report ({e}):\nstdout: {stdout}\nstderr: {stderr}")
    });
    (code, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_worker_fences_by_comment_and_by_options() {
    let python = python();
    let env = Env::new(
        "psycopg",
        "CREATE TABLE job (id int PRIMARY KEY, result text, token bigint);
                                   INSERT INTO job VALUES (7, NULL, NULL);",
    )
    .await;
    // A space and a backslash (escaped in options) and a colon and a quote (URL-encoded).
    let resource = r"job:7 py\o'k";

    let (code, report) = worker(&env, &python, "comment", resource, 5, "c5").await;
    assert_eq!(
        (code, report["outcome"].as_str()),
        (0, Some("written")),
        "{report}"
    );
    assert_eq!(env.high_water(resource).await, Some(5));

    let (code, report) = worker(&env, &python, "comment", resource, 4, "c4").await;
    assert_eq!(code, 3, "{report}");
    assert_eq!(report["outcome"], "lock_lost");
    assert_eq!(report["sqlstate"], "55Z01");
    assert_eq!(report["exception"], "psycopg.errors.OperationalError");
    assert_eq!(
        report["detail"].as_str(),
        Some(format!("presented_token=4 current_token=5 resource={resource}").as_str())
    );

    let (code, report) = worker(&env, &python, "options", resource, 6, "o6").await;
    assert_eq!(
        (code, report["outcome"].as_str()),
        (0, Some("written")),
        "{report}"
    );
    assert_eq!(
        report["shown_resource"].as_str(),
        Some(resource),
        "options escaping"
    );
    assert_eq!(env.high_water(resource).await, Some(6));

    let (code, report) = worker(&env, &python, "options", resource, 5, "o5").await;
    assert_eq!(
        (code, report["sqlstate"].as_str()),
        (3, Some("55Z01")),
        "{report}"
    );
    let (code, report) = worker(&env, &python, "comment", resource, 5, "c5-again").await;
    assert_eq!(
        (code, report["sqlstate"].as_str()),
        (3, Some("55Z01")),
        "{report}"
    );

    let row: (String, i64) = sqlx::query_as("SELECT result, token FROM job WHERE id = 7")
        .fetch_one(&env.direct_pool().await)
        .await
        .unwrap();
    assert_eq!(
        row,
        ("o6".to_string(), 6),
        "only the admitted writes landed"
    );
}
