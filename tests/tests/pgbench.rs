//! pgbench directly against Postgres and through the proxy, in each query mode.
//!
//! Each side gets a fresh database, `pgbench -i` (client-side data generation, which loads
//! `pgbench_accounts` with COPY) over that side's connection, then a TPC-B-like run with a
//! few clients. Both sides must process every transaction with none failed, and leave the
//! balances consistent (every transaction's delta lands in all four tables).
#![forbid(unsafe_code)]

use fencegate_tests::cluster::{Cluster, SUPERUSER};
use fencegate_tests::endpoint::{run_ok, Endpoint};
use fencegate_tests::TestProxy;

const CLIENTS: u64 = 4;
const TRANSACTIONS: u64 = 50;

/// The numbers pgbench reports for a run.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    processed: String,
    failed: String,
}

fn pgbench(ep: Endpoint, db: &str, args: &[&str]) -> String {
    let mut cmd = ep.command("pgbench", SUPERUSER, db);
    cmd.args(args);
    String::from_utf8(run_ok(&mut cmd, b"").stdout).expect("UTF-8 pgbench output")
}

/// The value after `label` on its line of pgbench's report.
fn field(report: &str, label: &str) -> String {
    report
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in pgbench output:\n{report}"))
        .trim()
        .to_string()
}

/// Initializes and runs pgbench in `mode` on a fresh database through `ep`; checks the data.
fn bench(cluster: &Cluster, ep: Endpoint, mode: &str) -> Report {
    let db = cluster.create_database(&format!("pgbench_{mode}"));
    pgbench(ep, &db, &["-i", "-s", "1", "-q"]);
    let counts = cluster.execute(
        &db,
        "SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_tellers), \
         (SELECT count(*) FROM pgbench_branches)",
    );
    assert_eq!(
        counts, "100000|10|1\n",
        "pgbench -i loaded the wrong row counts"
    );

    let (clients, transactions) = (CLIENTS.to_string(), TRANSACTIONS.to_string());
    let args = ["-M", mode, "-c", &clients, "-j", "2", "-t", &transactions];
    let out = pgbench(ep, &db, &args);
    let report = Report {
        processed: field(&out, "number of transactions actually processed:"),
        failed: field(&out, "number of failed transactions:"),
    };
    let sums = cluster.execute(
        &db,
        "SELECT count(*), (SELECT sum(abalance) FROM pgbench_accounts) = sum(delta), \
         (SELECT sum(tbalance) FROM pgbench_tellers) = sum(delta), \
         (SELECT sum(bbalance) FROM pgbench_branches) = sum(delta) FROM pgbench_history",
    );
    assert_eq!(
        sums,
        format!("{}|t|t|t\n", CLIENTS * TRANSACTIONS),
        "inconsistent balances"
    );
    report
}

fn same_both_ways(mode: &str) {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let direct = bench(cluster, cluster.endpoint(), mode);
    let proxied = bench(cluster, proxy.endpoint(), mode);
    let all = CLIENTS * TRANSACTIONS;
    assert_eq!(direct.processed, format!("{all}/{all}"));
    assert_eq!(direct.failed, "0 (0.000%)");
    assert_eq!(
        proxied, direct,
        "pgbench -M {mode} through the proxy differs from direct"
    );
}

#[test]
fn simple_protocol() {
    same_both_ways("simple");
}

#[test]
fn extended_protocol() {
    same_both_ways("extended");
}

#[test]
fn prepared_statements() {
    same_both_ways("prepared");
}
