//! The fault suite (issue 14): the lock-set workload of `fencegate_tests::lockset` run by
//! worker processes (`fault_worker`) through two `fencegate serve` processes, with one kind
//! of fault per run and then all of them in one run:
//! - a worker frozen with SIGSTOP past its lease, inside a transaction and between
//!   transactions, then resumed with SIGCONT;
//! - one fencegate killed with SIGKILL and started again on the same port;
//! - PostgreSQL stopped with `pg_ctl -m immediate` and started again;
//! - partitions: a relay on each link (worker → proxy, proxy → PostgreSQL) blackholes or
//!   resets it, then heals it.
//!
//! Each fenced run must lose no acknowledged add, commit no stale token, and show only
//! documented errors (`record::DOCUMENTED`). The same workload straight to PostgreSQL, and
//! through the proxies without tokens, must show token regressions: the checker has teeth.
//! Each run lasts `FENCEGATE_FAULT_SECS` seconds (default 3) and prints its figures.
//! Runs take turns (one at a time), so that on a small machine a run's timing is its own.
#![forbid(unsafe_code)]

mod procs;
mod record;
mod relay;
mod rig;

use std::time::Duration;

use record::{missing_acknowledged, Outcome, DOCUMENTED};
use relay::Link;
use rig::{Mode, Report, Rig};

/// One run at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The seed of the workers' choices.
const SEED: u64 = 0x14FA_0175;

/// A deliberate outage length for a killed process.
const DOWN: Duration = Duration::from_millis(300);

/// Seconds per run: `FENCEGATE_FAULT_SECS`, default 3.
fn run_secs() -> u64 {
    match std::env::var("FENCEGATE_FAULT_SECS") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("FENCEGATE_FAULT_SECS={text:?}: {e}")),
        Err(_) => 3,
    }
}

/// The figures of a run, on one line.
fn figures(r: &Report) -> String {
    let rec = &r.record;
    let ops: u64 = rec.ops.values().sum();
    let errors: Vec<String> = rec
        .errors
        .iter()
        .map(|(code, n)| format!("{code}={n}"))
        .collect();
    let verdict = if r.verdict.anomalies() == 0 && r.verdict.inconsistencies.is_empty() {
        "ok".to_string()
    } else {
        r.verdict.describe(0)
    };
    format!(
        "faults[{}] {:?}: {:.1?}, operations {ops}, acknowledged {} (after the lease {}), \
         committed {}, rejected 55Z01 {}, preempted {} (57P01 seen {}), errors {{{}}}, faults {} [{}], \
         missing acknowledged {}, token regressions {}, verdict: {verdict}",
        r.name,
        r.mode,
        r.elapsed,
        rec.acked.len(),
        rec.late_acks,
        r.committed,
        rec.count("55Z01"),
        r.preempted,
        rec.count("57P01"),
        errors.join(" "),
        r.faults.len(),
        r.faults.join("; "),
        missing_acknowledged(&r.verdict),
        r.verdict.token_regressions.len(),
    )
}

/// Prints the run's figures and asserts what holds in every run: the harness is sound,
/// work got done, and every error is a documented one.
fn judge_common(r: &Report) {
    println!("{}", figures(r));
    if std::env::var_os("FENCEGATE_FAULT_LOGS").is_some() {
        for line in r.record.samples.values() {
            println!("  sample: {line}");
        }
        for (g, log) in r.proxy_logs.iter().enumerate() {
            println!("--- fencegate {g} log:\n{log}");
        }
    }
    let rec = &r.record;
    assert!(
        rec.garbled.is_empty(),
        "unreadable worker lines: {:?}",
        rec.garbled
    );
    assert!(
        r.verdict.inconsistencies.is_empty(),
        "{}: history and rows disagree (a harness bug): {}",
        r.name,
        r.verdict.describe(10)
    );
    assert!(
        rec.undocumented.is_empty(),
        "{}: undocumented errors (documented: {DOCUMENTED:?}): {:#?}",
        r.name,
        rec.undocumented
    );
    assert!(
        !rec.acked.is_empty(),
        "{}: nothing was acknowledged",
        r.name
    );
    for (resource, t) in r.tokens.iter().enumerate() {
        assert!(
            t.committed.is_none_or(|c| c <= t.granted),
            "{}: resource {resource}: a token never granted committed: {t:?}",
            r.name
        );
    }
}

/// A fenced run: [`judge_common`], nothing lost, no stale commit, and stale holders met.
fn judge_fenced(r: &Report) {
    judge_common(r);
    let logs = r.proxy_logs.join("\n");
    assert!(
        r.proxies_alive,
        "{}: a fencegate process died:\n{logs}",
        r.name
    );
    assert!(
        !logs.contains("panicked"),
        "{}: fencegate panicked:\n{logs}",
        r.name
    );
    assert_eq!(
        r.verdict.anomalies(),
        0,
        "{}: {}\nproxy logs:\n{logs}",
        r.name,
        r.verdict.describe(10)
    );
    assert_eq!(missing_acknowledged(&r.verdict), 0, "{}", r.name);
    // G1 across every fault: the fence is at least every committed token, at most granted.
    for (resource, t) in r.tokens.iter().enumerate() {
        assert!(
            t.high_water >= t.committed && t.high_water.is_some_and(|h| h <= t.granted),
            "{}: resource {resource}: {t:?}",
            r.name
        );
    }
    assert!(
        r.record.count("55Z01") > 0,
        "{}: no stale holder was refused",
        r.name
    );
}

/// A stale holder's operation must not have committed through the fence.
fn assert_refused(run: &str, outcome: &Outcome) {
    assert!(
        matches!(outcome, Outcome::Failed(code) if DOCUMENTED.contains(&code.as_str())),
        "{run}: the frozen holder's operation ended {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_its_lease_is_fenced_out() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start("freeze", Mode::Fenced, SEED).await;
    let inside = rig.freeze(0, true).await;
    let between = rig.freeze(1, false).await;
    let report = rig.finish(run_secs()).await;
    judge_fenced(&report);
    assert_refused("freeze inside", &inside);
    assert_refused("freeze between", &between);
    assert!(
        report.preempted > 0,
        "the holder frozen inside was never preempted"
    );
    // Preempted while frozen: its session is gone when it wakes (tokio-postgres reads the
    // FATAL 57P01 while idle and reports the connection closed) ...
    assert!(
        matches!(&inside, Outcome::Failed(c) if c == "closed" || c == "57P01"),
        "frozen inside: {inside:?}"
    );
    // ... and the one frozen between transactions is refused at its first statement.
    assert!(
        matches!(&between, Outcome::Failed(c) if c == "55Z01"),
        "frozen between: {between:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fencegate_killed_and_restarted_loses_nothing() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start("proxy-kill", Mode::Fenced, SEED).await;
    rig.kill_proxy(0, DOWN).await;
    rig.kill_proxy(1, DOWN).await;
    judge_fenced(&rig.finish(run_secs()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_and_restart_loses_nothing() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start("pg-crash", Mode::Fenced, SEED).await;
    rig.crash_postgres(DOWN).await;
    judge_fenced(&rig.finish(run_secs()).await);
}

/// Cuts every link once each way; the last blackhole outlasts the workers' timeout.
async fn partitions(rig: &mut Rig) {
    let short = Duration::from_millis(800);
    rig.partition(0, true, Link::Blackhole, short).await;
    rig.partition(1, true, Link::Reset, short).await;
    rig.partition(1, false, Link::Blackhole, short).await;
    rig.partition(0, false, Link::Reset, short).await;
    let long = rig::OP_TIMEOUT + Duration::from_secs(1);
    rig.partition(1, false, Link::Blackhole, long).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_cut_and_healed_lose_nothing() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start("partition", Mode::Fenced, SEED).await;
    partitions(&mut rig).await;
    let report = rig.finish(run_secs()).await;
    judge_fenced(&report);
    assert!(
        report.record.count("timeout") > 0,
        "no worker saw a timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_faults_in_one_run_lose_nothing() {
    let _turn = TURN.lock().await;
    let mut rig = Rig::start("mixed", Mode::Fenced, SEED ^ 1).await;
    // Worker 2 (proxy 0) stays frozen inside its transaction across a kill of the other
    // proxy and a partition of its own proxy's clients.
    let frozen = rig.freeze_start(2, true).await;
    rig.kill_proxy(1, DOWN).await;
    rig.partition(0, true, Link::Blackhole, Duration::from_millis(600))
        .await;
    let inside = rig.freeze_end(frozen).await;
    rig.crash_postgres(DOWN).await;
    // Worker 3 (proxy 1) stays frozen between transactions across a reset of its proxy's
    // server link and a kill of the other proxy.
    let frozen = rig.freeze_start(3, false).await;
    rig.partition(1, false, Link::Reset, Duration::from_millis(300))
        .await;
    rig.kill_proxy(0, DOWN).await;
    let between = rig.freeze_end(frozen).await;
    let report = rig.finish(run_secs()).await;
    judge_fenced(&report);
    assert_refused("freeze inside", &inside);
    assert_refused("freeze between", &between);
}

/// A run without the fence: the frozen holders commit, and the checker says so.
async fn unfenced(name: &'static str, mode: Mode) {
    let mut rig = Rig::start(name, mode, SEED).await;
    let inside = rig.freeze(0, true).await;
    let between = rig.freeze(1, false).await;
    let report = rig.finish(run_secs()).await;
    judge_common(&report);
    for frozen in [inside, between] {
        let Outcome::Acked(add) = frozen else {
            panic!("{name}: without the fence a frozen holder commits, but: {frozen:?}");
        };
        assert!(
            report
                .verdict
                .token_regressions
                .iter()
                .any(|r| r.stale == add),
            "{name}: the frozen holder's commit [{add}] is no token regression: {}",
            report.verdict.describe(5)
        );
    }
    assert!(
        !report.verdict.token_regressions.is_empty(),
        "{name}: no token regression without the fence: the checker has no teeth ({})",
        report.verdict.describe(5)
    );
    assert!(
        missing_acknowledged(&report.verdict) > 0,
        "{name}: no acknowledged add lost without the fence"
    );
    assert_eq!(
        report.record.count("55Z01"),
        0,
        "{name}: 55Z01 without tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fencing_the_checker_finds_anomalies() {
    let _turn = TURN.lock().await;
    unfenced("direct", Mode::Direct).await;
    unfenced("no-token", Mode::Unfenced).await;
}
