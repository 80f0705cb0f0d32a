//! A Jepsen-style lock-set workload with teeth.
//!
//! Workers take short leases on a few resources from an in-process lease service
//! ([`fencegate_tests::lockset::LeaseService`]), each grant with a new fencing token. Each
//! resource is a row holding a set of integers. A worker reads the set in one transaction,
//! pauses (sometimes past its lease TTL, so the lease passes to another worker), then writes
//! `set ∪ {its own unique element}` in a second transaction, which also bumps the row's
//! version and appends `(resource, token, element, version)` to a history table; sometimes it
//! pauses inside that second transaction, after its first statement. Every statement carries
//! the worker's token: half the workers use sqlcommenter comments, half `SET LOCAL fencing.*`,
//! over the extended and the simple query protocol. Each worker writes through a pool of
//! [`POOL`] connections sharing its token (G7): it reads on one, writes on another, and while
//! it pauses inside the write it reads again on the first, the same token on two
//! connections at once.
//!
//! The same workload runs twice, each in a fresh database:
//! - **directly against PostgreSQL**, where the annotations are inert: the checker must find
//!   anomalies (acknowledged adds lost to stale read-modify-writes, stale tokens committing
//!   after newer ones), which proves it can fail;
//! - **through fencegate** (preemption grace [`GRACE`]): the checker must find none, and the
//!   stale holders must have been rejected (`55Z01`) or preempted.
//!
//! The checker ([`fencegate_tests::lockset::check`]) requires: (1) every acknowledged add is
//! in its resource's final set; (2) per resource, tokens in version (commit) order never go
//! down; (3) every committed history row's element is in the final set; and, as a sanity
//! check of the harness, history and rows agree.
//!
//! `FENCEGATE_JEPSEN_SEED` (default [`DEFAULT_SEED`]) seeds the workers' choices;
//! `FENCEGATE_JEPSEN_SECS` (default [`DEFAULT_SECS`]) is the length of each run.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::fence::{comment, fenced_database, FenceProxy, Monitor};
use fencegate_tests::lockset::{check, Add, Lease, LeaseService, Verdict};
use fencegate_tests::Endpoint;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Default seed of the workers' random choices.
const DEFAULT_SEED: u64 = 0x0FE4_CE6A_7E00_0001;
/// Default length of each run, in seconds.
const DEFAULT_SECS: u64 = 25;

/// Concurrent workers, each with its own pool of connections.
const WORKERS: usize = 6;
/// Connections per worker, all presenting the worker's token.
const POOL: usize = 2;
/// Resources (rows), named [`RESOURCE_NAMES`]: URL encoding, quoting and UTF-8 matter.
const RESOURCES: usize = 3;
const RESOURCE_NAMES: [&str; RESOURCES] = ["lockset:0", "lock set/1 'q'", "lockset:ü2"];
/// Lease TTL of the lease service.
const TTL: Duration = Duration::from_millis(200);
/// The proxy's preemption grace.
const GRACE: Duration = Duration::from_millis(300);
/// The first token of every resource: tokens cross 2^32 during a run, where the published
/// (advisory-lock) form of a token changes its high half.
const FIRST_TOKEN: i64 = (1 << 32) - 50;
/// A single operation that takes longer than this is a hang, and fails the test.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

const SETUP: &str = "
CREATE TABLE sets (
    id int PRIMARY KEY,
    elems int[] NOT NULL DEFAULT '{}',
    version bigint NOT NULL DEFAULT 0
);
INSERT INTO sets (id) SELECT g FROM generate_series(0, 2) g;
CREATE TABLE history (
    seq bigserial PRIMARY KEY,
    resource int NOT NULL,
    token bigint NOT NULL,
    element int NOT NULL UNIQUE,
    version bigint NOT NULL,
    UNIQUE (resource, version)
);
GRANT ALL ON sets, history TO trust_user;
GRANT ALL ON SEQUENCE history_seq_seq TO trust_user;
";

/// How a worker attaches its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attach {
    /// A sqlcommenter comment on every statement.
    Comment,
    /// `SET LOCAL fencing.resource / fencing.token` at the start of every transaction.
    SetLocal,
}

/// Which query protocol a worker speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// Parse/Bind/Execute with parameters (tokio-postgres `query`).
    Extended,
    /// Simple Query with literals (tokio-postgres `simple_query`), several statements per string.
    Simple,
}

fn style(worker: usize) -> (Attach, Proto) {
    match worker % 4 {
        0 => (Attach::Comment, Proto::Extended),
        1 => (Attach::SetLocal, Proto::Extended),
        2 => (Attach::Comment, Proto::Simple),
        _ => (Attach::SetLocal, Proto::Simple),
    }
}

/// What one operation does besides its statements: where it pauses.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Between the read transaction and the write transaction.
    between: Duration,
    /// Inside the write transaction, after its first statement.
    inside: Option<Duration>,
}

impl Plan {
    fn draw(rng: &mut StdRng) -> Plan {
        let ms = |rng: &mut StdRng, lo: Duration, hi: Duration| {
            Duration::from_millis(rng.random_range(lo.as_millis() as u64..=hi.as_millis() as u64))
        };
        let p: f64 = rng.random();
        let between = if p < 0.60 {
            // Quick: usually done well within the lease.
            ms(rng, Duration::ZERO, Duration::from_millis(20))
        } else if p < 0.75 {
            // Straddling: the lease may expire while the write transaction is open.
            ms(rng, TTL / 2, TTL + Duration::from_millis(20))
        } else {
            // Frozen past the TTL: another worker takes the lease and writes meanwhile.
            ms(
                rng,
                TTL + Duration::from_millis(30),
                TTL + Duration::from_millis(250),
            )
        };
        let q: f64 = rng.random();
        let inside = if q < 0.70 {
            None
        } else if q < 0.85 {
            // Slow, but shorter than the grace: a newer holder waits for it to finish.
            Some(ms(
                rng,
                Duration::from_millis(20),
                GRACE - Duration::from_millis(50),
            ))
        } else {
            // Frozen inside the transaction: a newer holder preempts it.
            Some(ms(
                rng,
                TTL + GRACE + Duration::from_millis(50),
                TTL + GRACE + Duration::from_millis(300),
            ))
        };
        Plan { between, inside }
    }
}

/// Counters of one run.
#[derive(Debug, Default)]
struct Counters {
    attempted: AtomicU64,
    acknowledged: AtomicU64,
    acked_after_takeover: AtomicU64,
    stale: AtomicU64,
    preempted: AtomicU64,
    deadlock: AtomicU64,
    serialization: AtomicU64,
    other: AtomicU64,
    reconnects: AtomicU64,
    /// Reads on a second connection of the worker while its write transaction was open.
    shared_reads: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Everything the workers of one run share.
struct RunCtx {
    endpoint: Endpoint,
    db: String,
    seed: u64,
    deadline: Instant,
    leases: LeaseService,
    counters: Counters,
    acked: Mutex<Vec<Add>>,
    errors: Mutex<Vec<String>>,
    /// How each lost connection was seen.
    losses: Mutex<Vec<String>>,
}

/// How an operation failed.
enum Failure {
    Stale,
    Preempted,
    Deadlock,
    Serialization,
    Other(String),
}

fn classify(e: &tokio_postgres::Error, client: &Client) -> Failure {
    match e.code().map(|c| c.code()) {
        Some("55Z01") => Failure::Stale,
        Some("40P01") => Failure::Deadlock,
        Some("40001") => Failure::Serialization,
        Some("57P01") => Failure::Preempted,
        _ if e.is_closed() || client.is_closed() => Failure::Preempted,
        _ => Failure::Other(format!("{} ({e:?})", describe(e))),
    }
}

/// An error with its SQLSTATE and message when the server sent one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

async fn connect(ctx: &RunCtx) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ctx
            .endpoint
            .pg_config(TRUST_USER, &ctx.db)
            .connect(tokio_postgres::NoTls)
            .await
        {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return client;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("reconnect to {}: {e}", ctx.endpoint.addr);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connect to {} ({}): {e}", ctx.endpoint.addr, ctx.db),
        }
    }
}

/// `SET LOCAL` statements attaching the lease's token, or nothing.
fn set_local(attach: Attach, lease: &Lease) -> String {
    match attach {
        Attach::SetLocal => format!(
            "SET LOCAL fencing.resource = '{}'; SET LOCAL fencing.token = {}; ",
            RESOURCE_NAMES[lease.resource].replace('\'', "''"),
            lease.token
        ),
        Attach::Comment => String::new(),
    }
}

/// The sqlcommenter comment attaching the lease's token, or nothing.
fn annotation(attach: Attach, lease: &Lease) -> String {
    match attach {
        Attach::Comment => format!(" {}", comment(RESOURCE_NAMES[lease.resource], lease.token)),
        Attach::SetLocal => String::new(),
    }
}

fn parse_int_array(text: &str) -> BTreeSet<i32> {
    let inner = text.trim().trim_start_matches('{').trim_end_matches('}');
    inner
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("array element {s:?}: {e}"))
        })
        .collect()
}

fn int_array_literal(set: &BTreeSet<i32>) -> String {
    let items: Vec<String> = set.iter().map(|e| e.to_string()).collect();
    format!("'{{{}}}'", items.join(","))
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<&tokio_postgres::SimpleQueryRow> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

/// Transaction 1: reads the set, fenced.
async fn read_set(
    client: &Client,
    (attach, proto): (Attach, Proto),
    lease: &Lease,
) -> Result<BTreeSet<i32>, tokio_postgres::Error> {
    let id = lease.resource as i32;
    let note = annotation(attach, lease);
    match proto {
        Proto::Extended => {
            let sql = format!("SELECT elems FROM sets WHERE id = $1{note}");
            if attach == Attach::Comment {
                // One statement in its own implicit transaction.
                let row = client.query_one(&sql, &[&id]).await?;
                return Ok(row.get::<_, Vec<i32>>(0).into_iter().collect());
            }
            client
                .batch_execute(&format!("BEGIN; {}", set_local(attach, lease)))
                .await?;
            let row = client.query_one(&sql, &[&id]).await?;
            client.batch_execute("COMMIT").await?;
            Ok(row.get::<_, Vec<i32>>(0).into_iter().collect())
        }
        Proto::Simple => {
            let sql = format!(
                "BEGIN; {}SELECT elems FROM sets WHERE id = {id}{note}; COMMIT",
                set_local(attach, lease)
            );
            let messages = client.simple_query(&sql).await?;
            let found = rows(&messages);
            assert_eq!(found.len(), 1, "read of set {id}: {} rows", found.len());
            Ok(parse_int_array(found[0].get(0).expect("elems is NOT NULL")))
        }
    }
}

/// Transaction 2: writes `set ∪ {element}`, bumps the version and records the add, fenced;
/// pauses after the first statement when the plan says so. Returns the add once committed.
#[allow(clippy::too_many_arguments)]
async fn write_set(
    client: &Client,
    side: (&Client, &Counters),
    (attach, proto): (Attach, Proto),
    lease: &Lease,
    mut set: BTreeSet<i32>,
    element: i32,
    inside: Option<Duration>,
) -> Result<Add, tokio_postgres::Error> {
    let id = lease.resource as i32;
    let note = annotation(attach, lease);
    set.insert(element);
    client
        .batch_execute(&format!("BEGIN; {}", set_local(attach, lease)))
        .await?;
    let version: i64 = match proto {
        Proto::Extended => {
            let elems: Vec<i32> = set.iter().copied().collect();
            client
                .query_one(
                    &format!(
                        "UPDATE sets SET elems = $1, version = version + 1 WHERE id = $2 \
                         RETURNING version{note}"
                    ),
                    &[&elems, &id],
                )
                .await?
                .get(0)
        }
        Proto::Simple => {
            let messages = client
                .simple_query(&format!(
                    "UPDATE sets SET elems = {}, version = version + 1 WHERE id = {id} \
                     RETURNING version{note}",
                    int_array_literal(&set)
                ))
                .await?;
            let found = rows(&messages);
            assert_eq!(found.len(), 1, "update of set {id}: {} rows", found.len());
            found[0].get(0).expect("version").parse().expect("version")
        }
    };
    if let Some(pause) = inside {
        // Meanwhile another connection of the same holder reads with the same token: it
        // must not wait for this open transaction (any failure of it is the write's too).
        let (_, read) = tokio::join!(
            tokio::time::sleep(pause),
            read_set(side.0, (attach, proto), lease)
        );
        match read {
            Ok(_) => bump(&side.1.shared_reads),
            Err(e) if e.code().map(|c| c.code()) == Some("55Z01") => bump(&side.1.stale),
            Err(_) => {}
        }
    }
    match proto {
        Proto::Extended => {
            client
                .execute(
                    &format!(
                        "INSERT INTO history (resource, token, element, version) \
                         VALUES ($1, $2, $3, $4){note}"
                    ),
                    &[&id, &lease.token, &element, &version],
                )
                .await?;
            client.batch_execute("COMMIT").await?;
        }
        Proto::Simple => {
            // The INSERT and the COMMIT in one string.
            client
                .simple_query(&format!(
                    "INSERT INTO history (resource, token, element, version) \
                     VALUES ({id}, {}, {element}, {version}){note}; COMMIT",
                    lease.token
                ))
                .await?;
        }
    }
    Ok(Add {
        resource: lease.resource,
        token: lease.token,
        element,
        version,
    })
}

/// One worker: acquire, read, pause, write, until the run's deadline.
async fn worker(ctx: Arc<RunCtx>, id: usize) {
    let style = style(id);
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut pool = Vec::with_capacity(POOL);
    for _ in 0..POOL {
        pool.push(connect(&ctx).await);
    }
    let mut seq: i32 = 0;
    while Instant::now() < ctx.deadline {
        let resource = rng.random_range(0..RESOURCES);
        let plan = Plan::draw(&mut rng);
        seq += 1;
        let element = (id as i32 + 1) * 1_000_000 + seq;
        let lease = ctx.leases.acquire(resource).await;
        bump(&ctx.counters.attempted);
        let (reader, writer) = (&pool[0], &pool[1]);
        let client = writer;
        let op = async {
            let set = read_set(reader, style, &lease).await?;
            tokio::time::sleep(plan.between).await;
            let side = (reader, &ctx.counters);
            write_set(writer, side, style, &lease, set, element, plan.inside).await
        };
        let outcome = tokio::time::timeout(OP_TIMEOUT, op).await;
        let mut reconnect = false;
        match outcome {
            Ok(Ok(add)) => {
                bump(&ctx.counters.acknowledged);
                if ctx.leases.last_token(resource) > lease.token {
                    bump(&ctx.counters.acked_after_takeover);
                }
                ctx.acked.lock().unwrap().push(add);
            }
            Ok(Err(e)) => {
                match classify(&e, client) {
                    Failure::Stale => bump(&ctx.counters.stale),
                    Failure::Deadlock => bump(&ctx.counters.deadlock),
                    Failure::Serialization => bump(&ctx.counters.serialization),
                    Failure::Preempted => {
                        bump(&ctx.counters.preempted);
                        ctx.losses.lock().unwrap().push(format!(
                            "worker {id} ({style:?}) token {} on {}: {}",
                            lease.token,
                            RESOURCE_NAMES[resource],
                            describe(&e)
                        ));
                        reconnect = true;
                    }
                    Failure::Other(text) => {
                        bump(&ctx.counters.other);
                        ctx.errors.lock().unwrap().push(format!(
                            "worker {id} ({style:?}) token {} on {}: {text}",
                            lease.token, RESOURCE_NAMES[resource]
                        ));
                    }
                }
                for c in &pool {
                    if c.is_closed() || c.batch_execute("ROLLBACK").await.is_err() {
                        reconnect = true;
                    }
                }
            }
            Err(_) => {
                bump(&ctx.counters.other);
                ctx.errors.lock().unwrap().push(format!(
                    "worker {id} ({style:?}) token {} on {}: operation hung for {OP_TIMEOUT:?}",
                    lease.token, RESOURCE_NAMES[resource]
                ));
                reconnect = true;
            }
        }
        ctx.leases.release(&lease);
        if reconnect {
            bump(&ctx.counters.reconnects);
            for c in pool.iter_mut() {
                *c = connect(&ctx).await;
            }
        }
    }
}

/// The outcome of one run.
struct Outcome {
    name: &'static str,
    counters: Counters,
    errors: Vec<String>,
    losses: Vec<String>,
    verdict: Verdict,
    history_len: usize,
    final_len: usize,
    ended_sessions: usize,
    monitor: Monitor,
    leases: LeaseService,
    history: Vec<Add>,
}

fn ended_sessions(log: &str) -> usize {
    log.matches("fencegate: ended session").count()
}

/// Runs the workload for `secs` against `endpoint` (a fresh database of the shared cluster).
async fn run(name: &'static str, endpoint: Endpoint, db: String, seed: u64, secs: u64) -> Outcome {
    let cluster = Cluster::shared();
    let monitor = Monitor::connect(cluster, &db).await;
    let ended_before = ended_sessions(&cluster.log());
    let ctx = Arc::new(RunCtx {
        endpoint,
        db,
        seed,
        deadline: Instant::now() + Duration::from_secs(secs),
        leases: LeaseService::new(RESOURCES, TTL, FIRST_TOKEN),
        counters: Counters::default(),
        acked: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
        losses: Mutex::new(Vec::new()),
    });
    let started = Instant::now();
    let handles: Vec<_> = (0..WORKERS)
        .map(|id| tokio::spawn(worker(ctx.clone(), id)))
        .collect();
    for handle in handles {
        handle.await.expect("worker panicked");
    }
    let elapsed = started.elapsed();
    let (rows, history) = fencegate_tests::lockset::final_state(monitor.client(), RESOURCES).await;
    let ctx = Arc::into_inner(ctx).expect("workers are done");
    let acked = ctx.acked.into_inner().unwrap();
    let verdict = check(&rows, &history, &acked);
    let ended_sessions = ended_sessions(&cluster.log()) - ended_before;
    println!(
        "jepsen[{name}]: ran {elapsed:.1?}; final set sizes {:?}, versions {:?}",
        rows.iter().map(|r| r.elements.len()).collect::<Vec<_>>(),
        rows.iter().map(|r| r.version).collect::<Vec<_>>()
    );
    Outcome {
        name,
        counters: ctx.counters,
        errors: ctx.errors.into_inner().unwrap(),
        losses: ctx.losses.into_inner().unwrap(),
        verdict,
        history_len: history.len(),
        final_len: rows.iter().map(|r| r.elements.len()).sum(),
        ended_sessions,
        monitor,
        leases: ctx.leases,
        history,
    }
}

fn summary(o: &Outcome) -> String {
    let c = &o.counters;
    format!(
        "{:>6}: attempted {:>4}  acknowledged {:>4} (after takeover {:>3})  rejected stale {:>4}  \
         preempted {:>3} (sessions ended {:>3})  deadlock {}  serialization {}  other {}  \
         reconnects {:>3}  shared reads {:>3}  committed {:>4}  final elements {:>4}  anomalies {:>4} \
         (lost acked {}, token regressions {}, lost committed {})",
        o.name,
        get(&c.attempted),
        get(&c.acknowledged),
        get(&c.acked_after_takeover),
        get(&c.stale),
        get(&c.preempted),
        o.ended_sessions,
        get(&c.deadlock),
        get(&c.serialization),
        get(&c.other),
        get(&c.reconnects),
        get(&c.shared_reads),
        o.history_len,
        o.final_len,
        o.verdict.anomalies(),
        o.verdict.lost_acked.len(),
        o.verdict.token_regressions.len(),
        o.verdict.lost_committed.len(),
    )
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => {
            let text = text.trim();
            let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => text.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={text:?}: {e}"))
        }
        Err(_) => default,
    }
}

/// Logs as the harness does, but without the proxy's warning for every stale rejection
/// (hundreds per run); `RUST_LOG` overrides.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,fencegate::fence::hook=error")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_set_workload_loses_nothing_through_fencegate_and_does_directly() {
    init_tracing();
    let seed = env_u64("FENCEGATE_JEPSEN_SEED", DEFAULT_SEED);
    let secs = env_u64("FENCEGATE_JEPSEN_SECS", DEFAULT_SECS);
    println!(
        "jepsen: seed {seed:#x} (FENCEGATE_JEPSEN_SEED), {secs} s per run (FENCEGATE_JEPSEN_SECS); \
         {WORKERS} workers, {RESOURCES} resources, lease TTL {TTL:?}, preempt grace {GRACE:?}"
    );
    let cluster = Cluster::shared();

    // Directly against Postgres: the annotations are inert.
    let db = fenced_database(cluster, "jepsen_direct", SETUP).await;
    let direct = run("direct", cluster.endpoint(), db, seed, secs).await;

    // Through fencegate.
    let fp = FenceProxy::start(cluster.port(), GRACE);
    let db = fenced_database(cluster, "jepsen_proxy", SETUP).await;
    let proxy = run("proxy", fp.endpoint(), db, seed, secs).await;
    let checks = fencegate::fence::stats::FenceStats::get(&fp.stats.checks);
    let proxy_stale = fencegate::fence::stats::FenceStats::get(&fp.stats.stale);
    drop(fp);

    println!("jepsen summary (seed {seed:#x}, {secs} s per run):");
    println!("  {}", summary(&direct));
    println!("  {}", summary(&proxy));
    println!("  proxy counters: checks {checks}, stale rejections {proxy_stale}");
    for o in [&direct, &proxy] {
        if o.verdict.anomalies() > 0 || !o.verdict.inconsistencies.is_empty() {
            println!("  {} findings: {}", o.name, o.verdict.describe(5));
        }
        for e in o.errors.iter().take(10) {
            println!("  {} unexpected error: {e}", o.name);
        }
        for e in o.losses.iter().take(3) {
            println!("  {} lost connection: {e}", o.name);
        }
    }

    // The harness itself is sound in both runs.
    for o in [&direct, &proxy] {
        assert!(
            o.verdict.inconsistencies.is_empty(),
            "{}: history and rows disagree (a harness bug): {}",
            o.name,
            o.verdict.describe(10)
        );
        assert!(
            o.errors.is_empty(),
            "{}: {} unexpected errors, first: {:?}",
            o.name,
            o.errors.len(),
            o.errors.first()
        );
    }

    // Directly, the checker finds what fencing exists to prevent.
    assert!(
        !direct.verdict.lost_acked.is_empty() || !direct.verdict.token_regressions.is_empty(),
        "directly against Postgres the checker found no lost acknowledged add and no token \
         regression: the workload has no teeth ({})",
        direct.verdict.describe(5)
    );
    assert_eq!(get(&direct.counters.stale), 0, "55Z01 without a proxy");
    assert_eq!(
        get(&direct.counters.preempted),
        0,
        "sessions ended without a proxy"
    );

    // Through fencegate, nothing is lost and no stale token commits.
    assert_eq!(
        proxy.verdict.anomalies(),
        0,
        "through fencegate: {}",
        proxy.verdict.describe(10)
    );
    // ... and that is not because nothing happened: writes landed, stale holders were rejected.
    assert!(
        get(&proxy.counters.acknowledged) > 0,
        "no add was acknowledged through fencegate"
    );
    assert!(
        get(&proxy.counters.stale) > 0,
        "no stale holder was rejected through fencegate: the workload did not exercise fencing"
    );
    assert!(
        get(&proxy.counters.shared_reads) > 0,
        "no worker read on a second connection while its write was open"
    );
    // Every connection a worker lost through the proxy was a session the check ended.
    assert!(
        get(&proxy.counters.preempted) <= proxy.ended_sessions as u64,
        "workers lost {} connections through fencegate but only {} sessions were preempted; \
         first losses: {:#?}",
        get(&proxy.counters.preempted),
        proxy.ended_sessions,
        &proxy.losses[..proxy.losses.len().min(5)]
    );
    // The proxy counted exactly the stale rejections its clients saw.
    assert_eq!(
        proxy_stale,
        get(&proxy.counters.stale),
        "the proxy's stale-rejection counter disagrees with what the workers saw"
    );
    // The committed high-water marks cover every committed token and no token never granted.
    for (resource, name) in RESOURCE_NAMES.iter().enumerate() {
        let high = proxy.monitor.high_water(name).await;
        let committed = proxy
            .history
            .iter()
            .filter(|a| a.resource == resource)
            .map(|a| a.token)
            .max();
        let granted = proxy.leases.last_token(resource);
        assert!(
            high >= committed && high.unwrap_or(i64::MIN) <= granted,
            "resource {name:?}: high-water mark {high:?}, highest committed token {committed:?}, \
             last granted {granted}"
        );
    }
}
