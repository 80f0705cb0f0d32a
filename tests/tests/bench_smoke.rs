//! The load benchmark's smoke mode, as CI runs it: `benches/run --smoke` starts its own
//! PostgreSQL, fencegate and PgBouncer, runs every workload of the matrix against every
//! target (direct, PgBouncer, fencegate, fencegate with tokens as comments and with SET
//! LOCAL) for a few transactions, and checks the answers: no pgbench errors, the fence rows
//! each token workload must leave, a stale token rejected, and the idle-memory probe. It
//! times nothing; the timed modes are run by hand (see benches/README.md).
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::Command;

#[test]
fn every_benchmark_target_answers_correctly() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(repo.join("benches/run"))
        .arg("--smoke")
        .current_dir(&repo)
        .output()
        .expect("benches/run starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("smoke: "))
        .unwrap_or_default();
    assert!(
        out.status.success() && summary.ends_with(" 0 failed") && !summary.starts_with("smoke: 0 "),
        "benches/run --smoke failed ({}); summary {summary:?}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
}
