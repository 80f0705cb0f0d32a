#![forbid(unsafe_code)]
//! The operator's view (`fencegate fences`, the views `fencegate.fences` and
//! `fencegate.holders`): a resource's high-water mark and lease, and the sessions holding
//! its fence lock, as they are at the moment; readable by pg_monitor members, not by
//! every role.

use fencegate::schema::fences::{self, Holder, Resource};
use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fence::{backend_pid, comment, expect_code, fenced_database, FenceProxy};
use std::time::Duration;

const SETUP: &str = "
CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO t VALUES (1, 0);
GRANT ALL ON t TO trust_user;
";

/// Roles are the cluster's: only the test that uses this one makes it.
const OPS_ROLE: &str = "
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fence_ops') THEN
    CREATE ROLE fence_ops LOGIN;
  END IF;
END $$;
GRANT pg_monitor TO fence_ops;
";

fn find<'a>(all: &'a [Resource], name: &str) -> &'a Resource {
    all.iter()
        .find(|r| r.resource == name)
        .unwrap_or_else(|| panic!("{name} not listed: {all:#?}"))
}

fn only_holder(r: &Resource) -> &Holder {
    assert_eq!(r.holders.len(), 1, "{r:#?}");
    &r.holders[0]
}

#[tokio::test]
async fn the_view_shows_high_water_leases_and_the_sessions_holding_the_fence() {
    let cluster = Cluster::shared();
    let fp = FenceProxy::start(cluster.port(), Duration::from_secs(5));
    let db = fenced_database(cluster, "operator", SETUP).await;
    let url = cluster.url(&db);
    let client = fp.endpoint().connect(TRUST_USER, &db).await;
    client
        .batch_execute(&format!("UPDATE t SET v = 1 {}", comment("job", 5)))
        .await
        .expect("raise H to 5");

    // A holder of the current token, its transaction left open.
    client
        .batch_execute(&format!("BEGIN; SELECT v FROM t {}", comment("job", 5)))
        .await
        .expect("hold");
    let holder_pid = backend_pid(&client).await;
    let all = fences::read(&url, None).await.expect("read the view");
    let job = find(&all, "job");
    assert_eq!(job.high_water, Some(5));
    assert!(job.raised_at.is_some());
    let h = only_holder(job);
    assert_eq!(
        (h.pid, h.role.as_str(), h.token),
        (holder_pid, "holding", Some(5))
    );
    assert_eq!(h.state.as_deref(), Some("idle in transaction"));
    assert_eq!(
        h.client_addr.as_deref(),
        Some("127.0.0.1/32"),
        "the proxy's address"
    );
    assert!(h.xact_age_seconds.is_some_and(|s| s >= 0.0), "{h:?}");
    client.batch_execute("COMMIT").await.unwrap();

    // A raise in progress: H is still 5 for everyone else, the raiser shows with 6.
    client
        .batch_execute(&format!("BEGIN; UPDATE t SET v = 2 {}", comment("job", 6)))
        .await
        .expect("raise to 6");
    let job = fences::read(&url, Some("job")).await.expect("read");
    assert_eq!(job.len(), 1);
    assert_eq!(job[0].high_water, Some(5), "not committed yet");
    let h = only_holder(&job[0]);
    assert_eq!((h.role.as_str(), h.token), ("raising", Some(6)));
    client.batch_execute("COMMIT").await.unwrap();
    let job = fences::read(&url, Some("job")).await.expect("read");
    assert_eq!(job[0].high_water, Some(6));
    assert!(job[0].holders.is_empty(), "nobody holds it once committed");

    // A lease, on a resource never fenced.
    cluster.execute(
        &db,
        "SELECT fencegate.acquire('nightly', 'worker-1', interval '30 seconds');",
    );
    let nightly = fences::read(&url, Some("nightly")).await.expect("read");
    assert_eq!(nightly[0].lease_holder.as_deref(), Some("worker-1"));
    assert!(nightly[0].lease_expires_at.is_some());
    assert_eq!(nightly[0].high_water, None);
}

#[tokio::test]
async fn pg_monitor_members_read_the_view_and_other_roles_do_not() {
    let cluster = Cluster::shared();
    let db = fenced_database(cluster, "operator_rights", OPS_ROLE).await;
    let ops = cluster.endpoint().connect("fence_ops", &db).await;
    ops.query("SELECT * FROM fencegate.holders", &[])
        .await
        .expect("pg_monitor reads holders");
    ops.query("SELECT * FROM fencegate.fences", &[])
        .await
        .expect("pg_monitor reads fences");
    let app = cluster.endpoint().connect(TRUST_USER, &db).await;
    for view in ["fencegate.holders", "fencegate.fences"] {
        let err = app.query(&format!("SELECT * FROM {view}"), &[]).await;
        expect_code(err, "42501");
    }
}
