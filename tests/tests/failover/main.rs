//! High availability: fencegate in front of a primary and its streaming standby (two
//! clusters on this machine, the standby made with `pg_basebackup -R`).
//!
//! - Sessions go where `target_session_attrs` sends them, whatever the order of `upstream`,
//!   and the per-host metrics say where they went.
//! - A failover (the primary crashed with `pg_ctl -m immediate`, the standby promoted):
//!   fencegate follows at the next connection, and with **synchronous** replication an
//!   admitted raise of the fence survives, so an older token stays refused on the new
//!   primary through every proxy.
//! - With **asynchronous** replication and the standby behind, the failover loses the last
//!   raise: what the test observes is what docs/high-availability.md says. Only a proxy
//!   that has seen the newer token rejected keeps refusing the older one; another proxy
//!   admits it.
//! - `synchronous_replication = warn | require` asks a primary whether its commits wait
//!   for a synchronous standby: `warn` admits and says so in a metric, `require` refuses
//!   the session until a synchronous standby is configured (synchronous.rs).
#![forbid(unsafe_code)]

mod synchronous;
mod workload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fencegate::config::{Config, TargetSessionAttrs};
use fencegate::fence::hook::FenceHooks;
use fencegate::fence::plan::FencePolicy;
use fencegate::fence::stats::FenceStats;
use fencegate::metrics::Metrics;
use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fake_upstream::FakeUpstream;
use fencegate_tests::fence::{comment, eventually, install, STALE};
use fencegate_tests::lockset::{check, Add, LeaseService};
use fencegate_tests::proxy::TestProxy;
use fencegate_tests::wire::WireClient;
use fencegate_tests::Endpoint;
use tokio_postgres::Client;

const RESOURCE: &str = "failover:job";

const SETUP: &str = "
CREATE TABLE steps (token bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
GRANT ALL ON steps TO trust_user;
";

/// Replication settings of the primary. Synchronous replication is switched on only once
/// the standby exists (a commit before that would wait for it).
const PRIMARY_SETTINGS: &str =
    "wal_level = replica\nmax_wal_senders = 5\nsynchronous_commit = on\nsynchronous_standby_names = ''\n";

/// The standby must not wait for a standby of its own once promoted.
const STANDBY_SETTINGS: &str = "synchronous_standby_names = ''\nhot_standby = on\n";

/// A primary with one database holding the fence schema and `steps`, and its standby,
/// streaming and (with `sync`) synchronous.
async fn pair(sync: bool) -> (Cluster, Cluster, String) {
    let primary = Cluster::start_with(PRIMARY_SETTINGS);
    let db = primary.create_database("failover");
    install(primary.port(), &db).await;
    primary.execute(&db, SETUP);
    // The workload's tables, made on the primary before the standby is cloned.
    primary.execute(&db, &fencegate_tests::lockset::tables(workload::RESOURCES));
    let standby = primary.standby(STANDBY_SETTINGS);
    if sync {
        primary.execute(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = '*'; SELECT pg_reload_conf();",
        );
    }
    let want = if sync { "sync" } else { "async" };
    let state = eventually("the standby to stream", || async {
        let state = primary.execute(
            "postgres",
            "SELECT string_agg(sync_state, ',') FROM pg_stat_replication WHERE state = 'streaming'",
        );
        (state.trim() == want).then_some(state)
    })
    .await;
    assert_eq!(state.trim(), want);
    (primary, standby, db)
}

/// A fencing proxy listing `upstream`, with its metrics.
fn proxy(upstream: String, attrs: TargetSessionAttrs) -> (TestProxy, Arc<Metrics>) {
    proxy_with(upstream, move |c| c.target_session_attrs = attrs)
}

/// [`proxy`] with the rest of its configuration changed by `tweak`.
fn proxy_with(upstream: String, tweak: impl FnOnce(&mut Config)) -> (TestProxy, Arc<Metrics>) {
    let stats = Arc::new(FenceStats::default());
    let metrics = Arc::new(Metrics::new(stats.clone()));
    let tweak = move |c: &mut Config| {
        c.upstream = upstream;
        tweak(c);
    };
    let hooks = FenceHooks::new(FencePolicy::from_config(&Config::default()), stats);
    let proxy = TestProxy::start_with_metrics(0, tweak, Arc::new(hooks), metrics.clone());
    (proxy, metrics)
}

fn hosts(clusters: &[&Cluster]) -> String {
    let list: Vec<String> = clusters
        .iter()
        .map(|c| format!("127.0.0.1:{}", c.port()))
        .collect();
    list.join(",")
}

/// The port of the server a session through `ep` reached, or its error.
async fn server_port(ep: &Endpoint, db: &str) -> Result<i32, String> {
    let mut config = ep.pg_config(TRUST_USER, db);
    config.connect_timeout(Duration::from_secs(20));
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) => format!("{} {}", db.code().code(), db.message()),
            None => e.to_string(),
        })?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT inet_server_port()", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn sessions_go_where_target_session_attrs_sends_them() {
    let (primary, standby, db) = pair(false).await;
    let (p, s) = (primary.port() as i32, standby.port() as i32);
    let dead = format!("127.0.0.1:{}", fencegate_tests::cluster::free_port());

    // A host that refuses connections is skipped; read-write lands on the primary.
    let (rw, rw_metrics) = proxy(
        format!("{dead},{}", hosts(&[&primary, &standby])),
        TargetSessionAttrs::ReadWrite,
    );
    assert_eq!(server_port(&rw.endpoint(), &db).await, Ok(p));
    let text = rw_metrics.render();
    let up = format!("fencegate_upstream_up{{host=\"{dead}\"}} 0");
    assert!(text.contains(&up), "{text}");
    let role = format!("fencegate_upstream_role{{host=\"127.0.0.1:{p}\",role=\"primary\"}} 1");
    assert!(text.contains(&role), "{text}");

    // Listed first, the standby costs the first session (authentication cannot be
    // replayed on another host); the next one goes straight to the primary.
    let (rw2, rw2_metrics) = proxy(hosts(&[&standby, &primary]), TargetSessionAttrs::ReadWrite);
    let first = server_port(&rw2.endpoint(), &db).await.unwrap_err();
    assert!(first.starts_with("08001"), "{first}");
    assert!(
        first.contains(&format!("127.0.0.1:{s} is standby")),
        "{first}"
    );
    for _ in 0..3 {
        assert_eq!(server_port(&rw2.endpoint(), &db).await, Ok(p));
    }
    let text = rw2_metrics.render();
    let wrong = format!("fencegate_upstream_wrong_role_total{{host=\"127.0.0.1:{s}\"}} 1");
    assert!(text.contains(&wrong), "{text}");

    // standby and prefer-standby find the standby; any takes the first host.
    let (sb, _) = proxy(hosts(&[&primary, &standby]), TargetSessionAttrs::Standby);
    assert!(server_port(&sb.endpoint(), &db).await.is_err());
    assert_eq!(server_port(&sb.endpoint(), &db).await, Ok(s));
    let (ps, _) = proxy(
        hosts(&[&primary, &standby]),
        TargetSessionAttrs::PreferStandby,
    );
    assert_eq!(server_port(&ps.endpoint(), &db).await, Ok(p), "fallback");
    assert_eq!(server_port(&ps.endpoint(), &db).await, Ok(s));
    let (any, _) = proxy(hosts(&[&standby, &primary]), TargetSessionAttrs::Any);
    assert_eq!(server_port(&any.endpoint(), &db).await, Ok(s));
}

/// Connects through `ep`, retrying while the failover is under way.
pub(crate) async fn connect_eventually(ep: &Endpoint, db: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut config = ep.pg_config(TRUST_USER, db);
        config.connect_timeout(Duration::from_secs(10));
        match config.connect(tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return client;
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no session through the proxy after the failover: {e}"),
        }
    }
}

/// A fenced write with `token`: `Ok` when admitted, else the SQLSTATE.
async fn write(client: &Client, token: i64) -> Result<(), String> {
    let sql = format!(
        "INSERT INTO steps (token) VALUES ({token}) {}",
        comment(RESOURCE, token)
    );
    client.batch_execute(&sql).await.map_err(|e| {
        e.as_db_error()
            .map_or_else(|| e.to_string(), |db| db.code().code().to_string())
    })
}

/// The high-water mark as a server holds it.
fn high_water(cluster: &Cluster, db: &str) -> String {
    let sql = format!("SELECT token FROM fencegate.fence WHERE resource = '{RESOURCE}'");
    cluster.execute(db, &sql).trim().to_string()
}

/// Crashes the primary, promotes the standby, and waits until it takes writes.
fn fail_over(primary: &Cluster, standby: &Cluster) {
    primary.crash();
    standby.promote();
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby
        .execute("postgres", "SELECT pg_is_in_recovery()")
        .trim()
        != "f"
    {
        assert!(Instant::now() < deadline, "the standby was not promoted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn with_synchronous_replication_a_failover_keeps_the_fence() {
    let (primary, standby, db) = pair(true).await;
    let upstream = hosts(&[&primary, &standby]);
    let (a, _) = proxy(upstream.clone(), TargetSessionAttrs::ReadWrite);
    let (b, b_metrics) = proxy(upstream, TargetSessionAttrs::ReadWrite);
    let on_a = a.endpoint().connect(TRUST_USER, &db).await;
    write(&on_a, 5).await.unwrap();
    write(&on_a, 10).await.unwrap();
    // The commit that raised the fence to 10 returned only once the standby had it.
    assert_eq!(high_water(&standby, &db), "10");

    fail_over(&primary, &standby);
    let err = on_a.batch_execute("SELECT 1").await.unwrap_err();
    assert!(err.is_closed() || err.as_db_error().is_some(), "{err}");

    // Proxy B has never seen token 10 rejected: the promoted standby refuses 9 itself.
    let on_b = connect_eventually(&b.endpoint(), &db).await;
    let port: i32 = on_b
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port, standby.port() as i32, "B follows the new primary");
    assert_eq!(write(&on_b, 9).await, Err(STALE.to_string()));
    let again = connect_eventually(&a.endpoint(), &db).await;
    assert_eq!(write(&again, 9).await, Err(STALE.to_string()));
    write(&again, 10).await.unwrap();
    write(&on_b, 11).await.unwrap();
    assert_eq!(high_water(&standby, &db), "11");
    let text = b_metrics.render();
    let old = format!(
        "fencegate_upstream_up{{host=\"127.0.0.1:{}\"}} 0",
        primary.port()
    );
    assert!(text.contains(&old), "{text}");
}

#[tokio::test]
async fn with_asynchronous_replication_a_failover_can_lose_the_last_raise() {
    let (primary, standby, db) = pair(false).await;
    let upstream = hosts(&[&primary, &standby]);
    let (a, _) = proxy(upstream.clone(), TargetSessionAttrs::ReadWrite);
    let (b, _) = proxy(upstream, TargetSessionAttrs::ReadWrite);
    let on_a = a.endpoint().connect(TRUST_USER, &db).await;
    write(&on_a, 5).await.unwrap();
    eventually("the standby to replay the raise to 5", || async {
        (high_water(&standby, &db) == "5").then_some(())
    })
    .await;

    // The standby falls behind: it stops receiving WAL (a slow or cut link).
    standby.execute(
        "postgres",
        "ALTER SYSTEM SET primary_conninfo = ''; SELECT pg_reload_conf();",
    );
    eventually("the standby to stop streaming", || async {
        let n = standby.execute("postgres", "SELECT count(*) FROM pg_stat_wal_receiver");
        (n.trim() == "0").then_some(())
    })
    .await;
    // Acknowledged on the primary only: token 10, and 9 refused (A learns that H = 10).
    write(&on_a, 10).await.unwrap();
    assert_eq!(write(&on_a, 9).await, Err(STALE.to_string()));
    assert_eq!(high_water(&standby, &db), "5");

    fail_over(&primary, &standby);
    assert_eq!(high_water(&standby, &db), "5", "the raise to 10 is lost");
    // A remembers H = 10 and refuses 9 without asking the new primary ...
    let again = connect_eventually(&a.endpoint(), &db).await;
    assert_eq!(write(&again, 9).await, Err(STALE.to_string()));
    // ... but B never saw it: the stale holder's write is admitted (the hazard the docs
    // describe, and the reason to run fenced traffic on synchronous replication).
    let on_b = connect_eventually(&b.endpoint(), &db).await;
    assert_eq!(write(&on_b, 9).await, Ok(()));
    let rows = standby.execute(
        &db,
        "SELECT string_agg(token::text, ',' ORDER BY at) FROM steps",
    );
    assert_eq!(
        rows.trim(),
        "5,9",
        "the write with 10 went with the lost WAL"
    );
}

/// A server older than PostgreSQL 14 reports neither `in_hot_standby` nor
/// `default_transaction_read_only`: fencegate asks it with one query, as libpq does, and
/// the client sees neither the question nor its answer.
#[tokio::test]
async fn a_server_older_than_14_is_asked_what_it_is() {
    for (in_recovery, attrs, admitted, asked) in [
        (false, TargetSessionAttrs::ReadWrite, true, 1),
        (true, TargetSessionAttrs::ReadWrite, false, 1),
        (true, TargetSessionAttrs::Standby, true, 1),
        (true, TargetSessionAttrs::Any, true, 0),
    ] {
        let fake = FakeUpstream::pre14(in_recovery);
        let (proxy, _) = proxy(format!("127.0.0.1:{}", fake.port()), attrs);
        let case = format!("in recovery {in_recovery}, {}", attrs.name());
        let addr = proxy.addr();
        let login = tokio::task::spawn_blocking(move || WireClient::connect(addr, TRUST_USER, "x"))
            .await
            .expect("login thread");
        match login {
            Ok((_, messages)) => {
                assert!(admitted, "{case}: admitted");
                let tags: Vec<u8> = messages.iter().map(|(tag, _)| *tag).collect();
                assert_eq!(tags, b"RSKZ", "{case}: the client sees only the login");
            }
            Err(e) => {
                assert!(!admitted, "{case}: refused: {e}");
                let text = e.to_string();
                assert!(
                    text.contains("08001") && text.contains("standby"),
                    "{case}: {text}"
                );
            }
        }
        assert_eq!(fake.queries(), asked, "{case}: questions asked");
    }
}

/// Issue 16's failover test: the lock-set workload through two proxies listing both hosts,
/// stale holders among its workers; the primary crashes mid-run and the standby is promoted.
/// With synchronous replication the checker finds no acknowledged add lost and no stale
/// commit, adds are acknowledged again within seconds, and stale tokens stay refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_set_workload_survives_a_synchronous_failover() {
    let (primary, standby, db) = pair(true).await;
    let upstream = hosts(&[&primary, &standby]);
    let (a, _) = proxy(upstream.clone(), TargetSessionAttrs::ReadWrite);
    let (b, _) = proxy(upstream, TargetSessionAttrs::ReadWrite);
    let leases = Arc::new(LeaseService::new(
        workload::RESOURCES,
        Duration::from_millis(150),
        1,
    ));
    let figures = Arc::new(workload::Figures::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|id| {
            let endpoint = if id % 2 == 0 {
                a.endpoint()
            } else {
                b.endpoint()
            };
            let run = workload::worker(
                id,
                endpoint,
                db.clone(),
                leases.clone(),
                figures.clone(),
                stop.clone(),
            );
            tokio::spawn(run)
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let crashed = Instant::now();
    tokio::task::block_in_place(|| fail_over(&primary, &standby));
    let promoted_at = Instant::now();
    let promoted = promoted_at - crashed;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(60), worker)
            .await
            .expect("a worker did not stop")
            .expect("a worker panicked");
    }

    let acked = figures.acked.lock().unwrap().clone();
    let before = acked.iter().filter(|(_, at)| *at < crashed).count();
    let first_after = acked
        .iter()
        .filter(|(_, at)| *at > promoted_at)
        .map(|(_, at)| at.duration_since(promoted_at))
        .min();
    let on_new = connect_eventually(&a.endpoint(), &db).await;
    let (rows, history) = fencegate_tests::lockset::final_state(&on_new, workload::RESOURCES).await;
    let acked: Vec<Add> = acked.into_iter().map(|(add, _)| add).collect();
    let verdict = check(&rows, &history, &acked);
    let summary = format!(
        "acknowledged {} ({before} before the crash), rejected {} (stale attempts {}), \
         sessions {}, errors {:?}; the crash and promotion took {promoted:?}, the first \
         add after it was acknowledged {first_after:?} later; history {}; verdict: {}",
        acked.len(),
        figures.rejected.load(Ordering::Relaxed),
        figures.stale_attempts.load(Ordering::Relaxed),
        figures.sessions.load(Ordering::Relaxed),
        figures.errors.lock().unwrap(),
        history.len(),
        verdict.describe(5),
    );
    eprintln!("synchronous failover under the lock-set workload: {summary}");
    assert_eq!(verdict.anomalies(), 0, "{summary}");
    assert!(verdict.inconsistencies.is_empty(), "{summary}");
    assert!(figures.undocumented().is_empty(), "{summary}");
    assert!(
        before > 0 && acked.len() > before,
        "adds before and after: {summary}"
    );
    assert!(first_after < Some(Duration::from_secs(15)), "{summary}");
    assert!(
        figures.rejected.load(Ordering::Relaxed) > 0,
        "no stale holder was refused: {summary}"
    );
}
