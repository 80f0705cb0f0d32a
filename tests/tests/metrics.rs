//! The Prometheus endpoint (`metrics_listen`): what a scraper reads after real traffic
//! through the proxy: connections open and accepted, checks sent and admitted, stale
//! rejections, and one latency observation per check, for the simple and the extended
//! protocol alike.
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
use fencegate_tests::fence::{comment, eventually, expect_code, fenced_database, STALE};
use fencegate_tests::proxy::TestProxy;

const SETUP: &str = "
CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
INSERT INTO t VALUES (1, 0);
GRANT ALL ON t TO trust_user;
";

/// One scrape: the HTTP status line and every sample (`name{labels}` to value).
fn scrape(addr: SocketAddr) -> (String, HashMap<String, f64>) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: fencegate\r\n\r\n")
        .expect("send the scrape");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the scrape");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap_or_default().to_string();
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

#[tokio::test]
async fn a_scrape_reports_connections_checks_rejections_and_check_latency() {
    let cluster = Cluster::shared();
    let db = fenced_database(cluster, "metrics", SETUP).await;
    let stats = Arc::new(FenceStats::default());
    let hooks = FenceHooks::new(FencePolicy::from_config(&Config::default()), stats.clone());
    let proxy = TestProxy::start_with_metrics(
        cluster.port(),
        |_| {},
        Arc::new(hooks),
        Arc::new(Metrics::new(stats)),
    );
    let metrics_addr = proxy.metrics_addr().expect("a metrics endpoint");

    let (status, before) = tokio::task::spawn_blocking(move || scrape(metrics_addr))
        .await
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(before["fencegate_client_connections_open"], 0.0);
    assert_eq!(before["fencegate_check_duration_seconds_count"], 0.0);

    let client = proxy.endpoint().connect(TRUST_USER, &db).await;
    let write = |token: i64| {
        format!(
            "UPDATE t SET n = n + 1 WHERE id = 1 {}",
            comment("metrics:1", token)
        )
    };
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
