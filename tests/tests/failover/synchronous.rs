//! `synchronous_replication`: what fencegate does in front of a primary whose commits do
//! not wait for a synchronous standby, and once they do.

use fencegate::config::{SynchronousReplication, TargetSessionAttrs};
use fencegate_tests::fence::eventually;

use super::{hosts, pair, proxy_with, server_port};

/// The metric line that says what fencegate knows of `port`'s replication.
fn synchronous_metric(port: u16, value: u8) -> String {
    format!("fencegate_upstream_synchronous{{host=\"127.0.0.1:{port}\"}} {value}")
}

#[tokio::test]
async fn synchronous_replication_warns_or_refuses_until_a_standby_is_synchronous() {
    let (primary, standby, db) = pair(false).await;
    let upstream = hosts(&[&primary, &standby]);
    let with = |mode| {
        proxy_with(upstream.clone(), move |c| {
            c.target_session_attrs = TargetSessionAttrs::ReadWrite;
            c.synchronous_replication = mode;
        })
    };
    let (warn, warn_metrics) = with(SynchronousReplication::Warn);
    let (require, require_metrics) = with(SynchronousReplication::Require);
    let (ignore, ignore_metrics) = with(SynchronousReplication::Ignore);
    let p = i32::from(primary.port());

    // Asynchronous: `warn` admits and says so, `require` refuses, `ignore` does not ask.
    assert_eq!(server_port(&warn.endpoint(), &db).await, Ok(p));
    let text = warn_metrics.render();
    assert!(
        text.contains(&synchronous_metric(primary.port(), 0)),
        "{text}"
    );
    let refused = server_port(&require.endpoint(), &db).await.unwrap_err();
    assert!(
        refused.starts_with("08001") && refused.contains("synchronous"),
        "{refused}"
    );
    let text = require_metrics.render();
    assert!(
        text.contains(&synchronous_metric(primary.port(), 0)),
        "{text}"
    );
    assert_eq!(server_port(&ignore.endpoint(), &db).await, Ok(p));
    let text = ignore_metrics.render();
    assert!(!text.contains("fencegate_upstream_synchronous{"), "{text}");

    // The standby becomes synchronous: `require` admits at the next session.
    primary.execute(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = '*'; SELECT pg_reload_conf();",
    );
    eventually("the standby to be synchronous", || async {
        let state = primary.execute(
            "postgres",
            "SELECT string_agg(sync_state, ',') FROM pg_stat_replication",
        );
        (state.trim() == "sync").then_some(())
    })
    .await;
    assert_eq!(server_port(&require.endpoint(), &db).await, Ok(p));
    let text = require_metrics.render();
    assert!(
        text.contains(&synchronous_metric(primary.port(), 1)),
        "{text}"
    );
}
