//! `fencegate demo`: a throwaway PostgreSQL, the proxy in-process, and the FM12 scenario
//! run four times (directly and through fencegate; A paused between transactions and inside
//! one), then a side-by-side table of what each path left in the record.
//!
//! The demo succeeds (exit status 0) only when the direct path shows the corruption and the
//! proxy prevents it in both variants.

pub mod pgtemp;
pub mod scenario;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use self::pgtemp::{PgBin, PgTempError, TempCluster};
use self::scenario::{Outcome, Pause};
use crate::config::Config;
use crate::fence::hook::FenceHooks;
use crate::fence::plan::FencePolicy;
use crate::fence::stats::FenceStats;
use crate::metrics::Metrics;
use crate::session::hook::HookFactory;

/// How long a newer holder waits behind a frozen older holder in the demo.
pub const DEMO_GRACE: Duration = Duration::from_millis(1000);

/// Why the demo could not run (as opposed to running and failing its check).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The throwaway cluster.
    #[error("throwaway PostgreSQL: {0}")]
    Cluster(#[from] PgTempError),
    /// A statement that should have worked failed.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// Installing the schema.
    #[error(transparent)]
    Migrate(#[from] crate::schema::admin::AdminError),
    /// Setting up the proxy's listener.
    #[error("proxy: {0}")]
    Listen(#[from] std::io::Error),
    /// The task starting the cluster ended without an answer.
    #[error("throwaway PostgreSQL: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One run's place in the table.
struct Run {
    pause: Pause,
    direct: Outcome,
    proxied: Outcome,
}

/// Runs the demo, printing as it goes; `Ok(true)` when fencegate prevented the corruption
/// that the direct path showed, in both variants.
pub async fn run() -> Result<bool, DemoError> {
    println!("fencegate demo: starting a throwaway PostgreSQL from the installed binaries...");
    let cluster = tokio::task::spawn_blocking(|| {
        TempCluster::start(PgBin::find()?, "max_connections = 40", None)
    })
    .await??;
    let admin = scenario::connect_as(cluster.port(), "postgres", pgtemp::SUPERUSER).await?;
    let version: String = admin.query_one("SHOW server_version", &[]).await?.get(0);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let proxy_port = listener.local_addr()?.port();
    let config = Config {
        listen: listener.local_addr()?,
        upstream: format!("127.0.0.1:{}", cluster.port()),
        preempt_grace: DEMO_GRACE,
        shutdown_grace: Duration::from_secs(1),
        ..Config::default()
    };
    let stats = Arc::new(FenceStats::default());
    let hooks: Arc<dyn HookFactory> = Arc::new(FenceHooks::new(
        FencePolicy::from_config(&config),
        stats.clone(),
    ));
    let shutdown = CancellationToken::new();
    let listeners = crate::server::Listeners {
        clients: listener,
        metrics: None,
    };
    let server = tokio::spawn(crate::server::run(
        listeners,
        Arc::new(config),
        hooks,
        Arc::new(Metrics::new(stats)),
        shutdown.clone(),
    ));
    println!(
        "PostgreSQL {version} on 127.0.0.1:{}, fencegate on 127.0.0.1:{proxy_port}\n",
        cluster.port()
    );

    let mut runs = Vec::new();
    for pause in [Pause::BetweenTransactions, Pause::InsideTransaction] {
        let direct = run_once(&admin, &cluster, cluster.port(), pause, "direct").await?;
        let proxied = run_once(&admin, &cluster, proxy_port, pause, "fenced").await?;
        runs.push(Run {
            pause,
            direct,
            proxied,
        });
    }
    shutdown.cancel();
    let _ = server.await;
    drop(admin);
    drop(cluster);
    Ok(report(&runs))
}

async fn run_once(
    admin: &tokio_postgres::Client,
    cluster: &TempCluster,
    port: u16,
    pause: Pause,
    path: &str,
) -> Result<Outcome, DemoError> {
    let database = format!(
        "demo_{path}_{}",
        match pause {
            Pause::BetweenTransactions => "between",
            Pause::InsideTransaction => "inside",
        }
    );
    admin
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await?;
    crate::schema::migrate::run(&cluster.url(&database)).await?;
    scenario::connect_as(cluster.port(), &database, pgtemp::SUPERUSER)
        .await?
        .batch_execute(scenario::SETUP)
        .await?;
    Ok(scenario::run(port, &database, pause).await?)
}

fn writers(o: &Outcome) -> String {
    o.line_writers.join(", ")
}

fn verdict(o: &Outcome) -> &'static str {
    if o.only_b() {
        "intact: exactly B's work"
    } else {
        "CORRUPTED: two writers' work mixed"
    }
}

fn stale(o: &Outcome) -> String {
    match &o.stale_write {
        Ok(()) => "committed".into(),
        Err(e) => format!("failed: {e}"),
    }
}

/// Prints the table; true when the proxy prevented what the direct path showed.
fn report(runs: &[Run]) -> bool {
    println!("Worker A takes the lease on job:7, reads the job and freezes past its lease;");
    println!("worker B takes the lease, does the job and writes; A wakes up and writes too.\n");
    let mut ok = true;
    for run in runs {
        let title = match run.pause {
            Pause::BetweenTransactions => "A froze between its read and its write transaction",
            Pause::InsideTransaction => "A froze inside its open transaction",
        };
        let (d, p) = (&run.direct, &run.proxied);
        println!("{title}");
        let (blank, direct, fenced) = ("", "directly to PostgreSQL", "through fencegate");
        println!("  {blank:<24} {direct:<40} {fenced}");
        let rows = [
            (
                "tokens (A, B)",
                format!("{:?}", d.tokens),
                format!("{:?}", p.tokens),
            ),
            ("job lines written by", writers(d), writers(p)),
            (
                "job total, written by",
                format!("{}, {}", d.total, d.written_by),
                format!("{}, {}", p.total, p.written_by),
            ),
            (
                "B's first read waited",
                format!("{:.1} s", d.b_waited.as_secs_f64()),
                format!("{:.1} s", p.b_waited.as_secs_f64()),
            ),
            ("the record", verdict(d).into(), verdict(p).into()),
        ];
        for (label, direct, proxied) in rows {
            println!("  {label:<24} {direct:<40} {proxied}");
        }
        println!("  A's stale write, direct:  {}", stale(d));
        println!("  A's stale write, fenced:  {}\n", stale(p));
        ok &= !d.only_b() && p.only_b() && p.stale_write.is_err();
    }
    if ok {
        println!("Result: fencegate kept the record intact in both cases; without it, A's stale write landed.");
    } else {
        println!("Result: UNEXPECTED: the demo did not show the prevention it exists to show.");
    }
    ok
}
