//! The Prometheus endpoint (`metrics_listen`): what a scraper reads after real traffic
//! through the proxy: connections open and accepted, checks sent and admitted, stale
//! rejections, and one latency observation per check, for the simple and the extended
//! protocol alike; and `/status`'s count of checks waiting, while one waits behind a lock
//! and after it ends, however it ends.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use fencegate::config::Config;
use fencegate::fence::hook::FenceHooks;
use fencegate::fence::plan::FencePolicy;
use fencegate::fence::stats::FenceStats;
use fencegate::metrics::Metrics;
use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fence::{comment, eventually, expect_code, fenced_database, Monitor, STALE};
use fencegate_tests::proxy::TestProxy;
use fencegate_tests::raw::{raw_session, read_until_ready};
use fencegate_tests::wire::msg;

const SETUP: &str = "
CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO t VALUES (1, 0);
GRANT ALL ON t TO trust_user;
";

/// `GET path` on the metrics endpoint: the HTTP status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: fencegate\r\n\r\n").as_bytes())
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, body.to_string())
}

/// One scrape: the HTTP status line and every sample (`name{labels}` to value).
fn scrape(addr: SocketAddr) -> (String, HashMap<String, f64>) {
    let (status, body) = get(addr, "/metrics");
    let samples = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("a sample line");
            (name.to_string(), value.parse().expect("a numeric value"))
        })
        .collect();
    (status, samples)
}

/// A fenced database (set up with [`SETUP`], named after `prefix`) and a fencing proxy in
/// front of it that serves metrics.
async fn fenced_proxy_with_metrics(prefix: &str) -> (String, TestProxy) {
    let cluster = Cluster::shared();
    let db = fenced_database(cluster, prefix, SETUP).await;
    let stats = Arc::new(FenceStats::default());
    let hooks = FenceHooks::new(FencePolicy::from_config(&Config::default()), stats.clone());
    let proxy = TestProxy::start_with_metrics(
        cluster.port(),
        |_| {},
        Arc::new(hooks),
        Arc::new(Metrics::new(stats)),
    );
    (db, proxy)
}

/// Increments row 1's counter, carrying (`resource`, `token`).
fn increment(resource: &str, token: i64) -> String {
    format!(
        "UPDATE t SET n = n + 1 WHERE id = 1 {}",
        comment(resource, token)
    )
}

#[tokio::test]
async fn a_scrape_reports_connections_checks_rejections_and_check_latency() {
    let (db, proxy) = fenced_proxy_with_metrics("metrics").await;
    let metrics_addr = proxy.metrics_addr().expect("a metrics endpoint");

    let (status, before) = tokio::task::spawn_blocking(move || scrape(metrics_addr))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(before["fencegate_client_connections_open"], 0.0);
    assert_eq!(before["fencegate_check_duration_seconds_count"], 0.0);

    let client = proxy.endpoint().connect(TRUST_USER, &db).await;
    let write = |token: i64| increment("metrics:1", token);
    // Simple protocol: admitted, admitted, stale.
    client.batch_execute(&write(5)).await.expect("token 5");
    client.batch_execute(&write(7)).await.expect("token 7");
    let stale = client.batch_execute(&write(5)).await;
    expect_code(stale, STALE);
    // Extended protocol (Parse, Bind, Execute): admitted.
    client
        .execute(&write(7), &[])
        .await
        .expect("token 7, extended");

    let (_, after) = tokio::task::spawn_blocking(move || scrape(metrics_addr))
        .await
        .unwrap();
    let get = |name: &str| after.get(name).copied().unwrap_or(f64::NAN);
    assert_eq!(get("fencegate_client_connections_open"), 1.0);
    assert_eq!(get("fencegate_client_connections_total"), 1.0);
    assert_eq!(get("fencegate_checks_total"), 4.0);
    assert_eq!(get("fencegate_checks_admitted_total"), 3.0);
    assert_eq!(get("fencegate_rejections_total{reason=\"stale\"}"), 1.0);
    assert_eq!(get("fencegate_rejections_total{reason=\"invalid\"}"), 0.0);
    assert_eq!(get("fencegate_check_duration_seconds_count"), 4.0);
    assert_eq!(
        get("fencegate_check_duration_seconds_bucket{le=\"+Inf\"}"),
        4.0
    );
    let sum = get("fencegate_check_duration_seconds_sum");
    assert!(sum > 0.0 && sum < 60.0, "sum of check latencies: {sum}");

    drop(client);
    eventually("the gauge to count the closed connection", || async move {
        let (_, now) = tokio::task::spawn_blocking(move || scrape(metrics_addr))
            .await
            .unwrap();
        (now["fencegate_client_connections_open"] == 0.0).then_some(())
    })
    .await;
    proxy.stop().expect("proxy stops");
}

/// `checks.waiting` in `/status` now.
async fn checks_waiting(addr: SocketAddr) -> u64 {
    let (status, body) = tokio::task::spawn_blocking(move || get(addr, "/status"))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    v["checks"]["waiting"]
        .as_u64()
        .unwrap_or_else(|| panic!("no checks.waiting in {body}"))
}

/// How a check blocked behind a row lock stops waiting.
#[derive(Debug, Clone, Copy)]
enum End {
    /// The lock is released: the check completes and its statement runs.
    Released,
    /// The client closes its connection mid-wait.
    ClientGone,
    /// The session's backend is terminated mid-wait (the server closes the connection).
    BackendTerminated,
}

#[tokio::test]
async fn status_counts_a_check_waiting_behind_a_lock_until_it_or_its_session_ends() {
    let (db, proxy) = fenced_proxy_with_metrics("waiting").await;
    let status = proxy.metrics_addr().expect("a metrics endpoint");
    let addr = proxy.addr();
    let monitor = Monitor::connect(Cluster::shared(), &db).await;
    let write = |token: i64| increment("waiting:1", token);
    // Token 1 creates the fence row that the checks below must update to raise H.
    let client = proxy.endpoint().connect(TRUST_USER, &db).await;
    client.batch_execute(&write(1)).await.expect("token 1");
    assert_eq!(checks_waiting(status).await, 0, "nothing waits when idle");

    let cases = [End::Released, End::ClientGone, End::BackendTerminated];
    for (end, token) in cases.into_iter().zip(2..) {
        // Another session holds the fence row locked: the check raising H must wait.
        monitor
            .client()
            .batch_execute(
                "BEGIN; SELECT 1 FROM fencegate.fence WHERE resource = 'waiting:1' FOR UPDATE",
            )
            .await
            .expect("lock the fence row");
        let (mut session, pid) = raw_session(addr, &db);
        session
            .write_all(&msg::query(&write(token)))
            .expect("send the fenced statement");
        monitor.wait_until_blocked(pid).await;
        let waiting = checks_waiting(status).await;
        assert!(
            waiting >= 1,
            "{end:?}: checks.waiting {waiting} while one waits"
        );
        let (_, samples) = tokio::task::spawn_blocking(move || scrape(status))
            .await
            .unwrap();
        let gauge = samples.get("fencegate_checks_waiting").copied();
        assert!(
            gauge >= Some(1.0),
            "{end:?}: fencegate_checks_waiting {gauge:?}"
        );
        match end {
            End::Released => {
                monitor
                    .client()
                    .batch_execute("COMMIT")
                    .await
                    .expect("commit");
                let replies = tokio::task::spawn_blocking(move || read_until_ready(&mut session))
                    .await
                    .unwrap();
                assert!(
                    replies.iter().all(|(tag, _)| *tag != b'E'),
                    "token {token} was refused: {replies:?}"
                );
                assert_eq!(monitor.high_water("waiting:1").await, Some(token));
            }
            End::ClientGone => drop(session),
            End::BackendTerminated => {
                let ended = monitor
                    .text(&format!("SELECT pg_terminate_backend({pid})::text"))
                    .await;
                assert_eq!(ended.as_deref(), Some("true"), "terminate backend {pid}");
                monitor.wait_until_gone(pid).await;
            }
        }
        eventually(&format!("{end:?}: checks.waiting back to 0"), || async {
            (checks_waiting(status).await == 0).then_some(())
        })
        .await;
        monitor
            .client()
            .batch_execute("COMMIT")
            .await
            .expect("end the locking transaction");
    }
    proxy.stop().expect("proxy stops");
}
