//! One run of the fault suite: a PostgreSQL cluster of its own, two `fencegate serve`
//! processes (or none, for the run straight to PostgreSQL), a relay on every link, the
//! lease server, and the worker processes, half of them through each proxy. The faults are
//! methods; each waits on what it needs (a park, a stopped process, a newer holder's
//! commit, the first commit after a heal), never on a guess of how long that takes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fencegate_tests::cluster::Cluster;
use fencegate_tests::fence::{fenced_database, Monitor};
use fencegate_tests::lockset::{check, Add, Verdict};

use crate::procs::{LeaseServer, ProxyProc, WorkerArgs, WorkerProc};
use crate::record::{Outcome, Parked, Record, Shared};
use crate::relay::{Link, Relay};

/// Resources (rows of `sets`).
pub const RESOURCES: usize = 2;
/// Worker processes; even ones go through proxy 0, odd ones through proxy 1.
pub const WORKERS: usize = 4;
/// Connections per worker, sharing its token.
const CONNS: usize = 2;
/// Lease time.
pub const TTL: Duration = Duration::from_millis(250);
/// fencegate's preemption grace.
const GRACE: Duration = Duration::from_millis(400);
/// A worker's statement timeout (a blackhole longer than this shows as `timeout`).
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Percent of operations a worker pauses past its lease on its own.
const PAUSE_PCT: u32 = 10;
/// How long the suite waits for any one thing it waits on.
const WAIT: Duration = Duration::from_secs(30);

/// Commits must be durable when they are acknowledged, or a crash of PostgreSQL loses
/// acknowledged adds whatever the proxy does (the throwaway cluster turns this off).
const DURABLE: &str = "synchronous_commit = on\n";

/// How the workers reach PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Through the two proxies, with tokens.
    Fenced,
    /// Through the two proxies, without tokens.
    Unfenced,
    /// Straight to PostgreSQL (the tokens are inert comments).
    Direct,
}

/// A running rig.
pub struct Rig {
    name: &'static str,
    mode: Mode,
    started: Instant,
    cluster: Cluster,
    /// Sessions ended by a preemption before the run (none: the cluster is new).
    ended_before: usize,
    db: String,
    leases: LeaseServer,
    proxies: Vec<ProxyProc>,
    /// `front[g]`: workers of group g → proxy g (or PostgreSQL, directly).
    front: Vec<Relay>,
    /// `back[g]`: proxy g → PostgreSQL.
    back: Vec<Relay>,
    workers: Vec<WorkerProc>,
    shared: Arc<Shared>,
    /// The faults injected, in order.
    faults: Vec<String>,
    _logs: tempfile::TempDir,
}

/// A worker stopped by [`Rig::freeze_start`].
#[must_use = "a frozen worker must be resumed with Rig::freeze_end"]
pub struct Frozen {
    worker: usize,
    parked: Parked,
}

/// The group (proxy) of worker `w`.
pub fn group(w: usize) -> usize {
    w % 2
}

impl Rig {
    /// Starts everything and returns once every worker is connected.
    pub async fn start(name: &'static str, mode: Mode, seed: u64) -> Rig {
        let cluster = tokio::task::block_in_place(|| Cluster::start_with(DURABLE));
        let db = fenced_database(
            &cluster,
            "faults",
            &fencegate_tests::lockset::tables(RESOURCES),
        )
        .await;
        let pg = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.port()));
        let logs = tempfile::tempdir().expect("log directory");
        let (mut proxies, mut front, mut back) = (Vec::new(), Vec::new(), Vec::new());
        for g in 0..2 {
            if mode == Mode::Direct {
                front.push(Relay::start(pg).await);
                continue;
            }
            back.push(Relay::start(pg).await);
            let log = logs.path().join(format!("fencegate-{g}.log"));
            let proxy = ProxyProc::start(back[g].addr(), GRACE, log).await;
            front.push(Relay::start(proxy.addr()).await);
            proxies.push(proxy);
        }
        let leases = LeaseServer::start(RESOURCES, TTL).await;
        let shared = Arc::new(Shared::default());
        let workers = (0..WORKERS)
            .map(|id| {
                let args = WorkerArgs {
                    id,
                    port: front[group(id)].addr().port(),
                    db: &db,
                    lease: leases.addr(),
                    resources: RESOURCES,
                    conns: CONNS,
                    fence: mode != Mode::Unfenced,
                    seed,
                    pause_pct: PAUSE_PCT,
                    op_timeout: OP_TIMEOUT,
                };
                WorkerProc::spawn(&args, shared.clone())
            })
            .collect();
        let rig = Rig {
            name,
            mode,
            started: Instant::now(),
            ended_before: ended_sessions(&cluster.log()),
            cluster,
            db,
            leases,
            proxies,
            front,
            back,
            workers,
            shared,
            faults: Vec::new(),
            _logs: logs,
        };
        rig.shared
            .until("ready workers", WAIT, |r| {
                (r.ready.len() == WORKERS).then_some(())
            })
            .await;
        rig
    }

    /// Waits until some worker of `groups` has an add acknowledged after `since`.
    pub async fn progress(&self, after: &str, since: Instant, groups: &[usize]) {
        let what = format!("acknowledged add after {after}");
        self.shared
            .until(&what, WAIT, |r| {
                (r.acks_since(since, |w| groups.contains(&group(w))) > 0).then_some(())
            })
            .await;
    }

    /// Freezes worker `w` with SIGSTOP past its lease, parked `inside` its transaction or
    /// between transactions, keeps it stopped until a newer holder of its resource has
    /// committed, then resumes it with SIGCONT; returns how its operation ended.
    pub async fn freeze(&mut self, w: usize, inside: bool) -> Outcome {
        let frozen = self.freeze_start(w, inside).await;
        self.freeze_end(frozen).await
    }

    /// The first half of [`Self::freeze`]: returns once worker `w` is stopped, so that
    /// other faults can happen while it is.
    pub async fn freeze_start(&mut self, w: usize, inside: bool) -> Frozen {
        let place = if inside {
            "inside a transaction"
        } else {
            "between transactions"
        };
        let parks = self.shared.read(|r| r.parked.get(&w).map_or(0, Vec::len));
        self.workers[w]
            .send(if inside {
                "freeze inside"
            } else {
                "freeze between"
            })
            .await;
        let parked = self
            .shared
            .until("park", WAIT, |r| r.parked.get(&w)?.get(parks).copied())
            .await;
        self.workers[w].signal("STOP");
        self.workers[w].wait_stopped().await;
        // Read when it wakes up: it is parked until then.
        self.workers[w].send("go").await;
        self.faults.push(format!("SIGSTOP worker {w} {place}"));
        Frozen { worker: w, parked }
    }

    /// The second half of [`Self::freeze`].
    pub async fn freeze_end(&mut self, frozen: Frozen) -> Outcome {
        let (w, resource, token) = (frozen.worker, frozen.parked.resource, frozen.parked.token);
        self.shared
            .until("commit by a newer holder", WAIT, |r| {
                r.acked
                    .iter()
                    .any(|(a, _, _)| a.resource == resource && a.token > token)
                    .then_some(())
            })
            .await;
        let done = self.shared.read(|r| r.outcomes.get(&w).map_or(0, Vec::len));
        self.workers[w].signal("CONT");
        self.shared
            .until("frozen operation's end", WAIT, |r| {
                r.outcomes.get(&w)?.get(done).map(|(o, _)| o.clone())
            })
            .await
    }

    /// Kills proxy `g` with SIGKILL, leaves it down for `down` (a deliberate fault
    /// duration), starts it again on the same port, and waits for its workers' next commit.
    pub async fn kill_proxy(&mut self, g: usize, down: Duration) {
        self.proxies[g].kill();
        tokio::time::sleep(down).await;
        self.proxies[g].restart().await;
        let healed = Instant::now();
        self.faults
            .push(format!("SIGKILL fencegate {g}, restarted"));
        self.progress("the proxy's restart", healed, &[g]).await;
    }

    /// Stops PostgreSQL with `pg_ctl -m immediate`, leaves it down for `down` (a
    /// deliberate fault duration), starts it again, and waits for the next commit.
    pub async fn crash_postgres(&mut self, down: Duration) {
        tokio::task::block_in_place(|| self.cluster.crash());
        tokio::time::sleep(down).await;
        tokio::task::block_in_place(|| self.cluster.start_again());
        let healed = Instant::now();
        self.faults
            .push("pg_ctl stop -m immediate, started again".into());
        self.progress("PostgreSQL's restart", healed, &[0, 1]).await;
    }

    /// Cuts link `g` (the workers' side when `front`, else the proxy's side) into `link`'s
    /// state for `cut` (a deliberate fault duration), heals it and waits for group g's next
    /// commit.
    pub async fn partition(&mut self, g: usize, front: bool, link: Link, cut: Duration) {
        let (relays, side) = if front {
            (&self.front, "worker→proxy")
        } else {
            (&self.back, "proxy→postgres")
        };
        relays[g].set(link);
        tokio::time::sleep(cut).await;
        relays[g].set(Link::Up);
        let healed = Instant::now();
        self.faults
            .push(format!("{link:?} {side} link {g} for {cut:?}"));
        self.progress("the link healed", healed, &[g]).await;
    }

    /// Lets the workload run until `secs` after the start (a deliberate run length), stops
    /// the workers and judges the run.
    pub async fn finish(mut self, secs: u64) -> Report {
        let end = self.started + Duration::from_secs(secs);
        tokio::time::sleep_until(end.into()).await;
        let elapsed = self.started.elapsed();
        for worker in self.workers {
            worker.stop().await;
        }
        let monitor = Monitor::connect(&self.cluster, &self.db).await;
        let (rows, history) =
            fencegate_tests::lockset::final_state(monitor.client(), RESOURCES).await;
        let record = Arc::into_inner(self.shared)
            .expect("worker readers are done")
            .into_record();
        let acked: Vec<Add> = record.acked.iter().map(|(a, _, _)| *a).collect();
        let verdict = check(&rows, &history, &acked);
        let logs = self.proxies.iter().map(ProxyProc::log_text).collect();
        let proxies_alive = self.proxies.iter_mut().all(ProxyProc::running);
        let mut tokens = Vec::new();
        for r in 0..RESOURCES {
            let committed = history.iter().filter(|a| a.resource == r).map(|a| a.token);
            tokens.push(Tokens {
                committed: committed.max(),
                high_water: monitor.high_water(&format!("faults:set:{r}")).await,
                granted: self.leases.last_token(r),
            });
        }
        let preempted = ended_sessions(&self.cluster.log()) - self.ended_before;
        Report {
            name: self.name,
            mode: self.mode,
            elapsed,
            record,
            verdict,
            committed: history.len(),
            tokens,
            preempted,
            proxies_alive,
            faults: self.faults,
            proxy_logs: logs,
        }
    }
}

/// A finished run.
pub struct Report {
    pub name: &'static str,
    pub mode: Mode,
    pub elapsed: Duration,
    pub record: Record,
    pub verdict: Verdict,
    pub committed: usize,
    /// Per resource: the tokens at the end.
    pub tokens: Vec<Tokens>,
    /// Sessions the proxies' preemption ended (PostgreSQL's log).
    pub preempted: usize,
    /// Whether every proxy process was still running at the end.
    pub proxies_alive: bool,
    pub faults: Vec<String>,
    pub proxy_logs: Vec<String>,
}

/// One resource's tokens at the end of a run.
#[derive(Debug)]
pub struct Tokens {
    /// The highest token of a committed add.
    pub committed: Option<i64>,
    /// The fence's high-water mark (none when no check ever ran).
    pub high_water: Option<i64>,
    /// The last token the lease service granted.
    pub granted: i64,
}

/// How many sessions a proxy's preemption ended, from PostgreSQL's log.
fn ended_sessions(log: &str) -> usize {
    log.matches("fencegate: ended session").count()
}
