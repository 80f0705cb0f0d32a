//! The lock-set workload across a failover: workers take leases from an in-process lease
//! service, sometimes pause past them (so that stale holders write), and add elements to
//! per-resource sets through two fencing proxies, reconnecting whenever their session is
//! lost. The checker of `fencegate_tests::lockset` judges the history afterwards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fencegate_tests::fence::comment;
use fencegate_tests::lockset::{Add, LeaseService};
use fencegate_tests::Endpoint;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio_postgres::Client;

use super::connect_eventually;

/// Resources, each a row of `sets` and a fence.
pub const RESOURCES: usize = 2;
/// Lease time; a paused holder sleeps past it.
const TTL: Duration = Duration::from_millis(150);

/// SQLSTATEs a worker may see across a failover: a stale token, its session ended by the
/// server's crash or by a preemption, a refusal naming a server of the wrong role or one
/// not accepting connections yet, and the connection-failure class.
const DOCUMENTED: [&str; 7] = [
    "55Z01", "57P01", "57P03", "08001", "08006", "08P01", "25006",
];

/// What the workers did.
#[derive(Default)]
pub struct Figures {
    /// Adds acknowledged (their statement returned), with the time they were.
    pub acked: Mutex<Vec<(Add, Instant)>>,
    /// Adds refused with 55Z01.
    pub rejected: AtomicU64,
    /// Adds sent with a token whose lease had expired.
    pub stale_attempts: AtomicU64,
    /// Errors by SQLSTATE (`closed` when the connection ended without one).
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Sessions opened.
    pub sessions: AtomicU64,
}

impl Figures {
    fn error(&self, code: &str) {
        *self.errors.lock().unwrap().entry(code.into()).or_default() += 1;
    }

    /// Errors not in [`DOCUMENTED`].
    pub fn undocumented(&self) -> Vec<String> {
        let errors = self.errors.lock().unwrap();
        let known = |code: &str| code == "closed" || DOCUMENTED.contains(&code);
        errors.keys().filter(|c| !known(c)).cloned().collect()
    }
}

/// The fence of resource `r`.
fn fence(r: usize) -> String {
    format!("failover:set:{r}")
}

/// One add: appends `element` to set `r` and records it in the history, in one statement
/// (its own transaction), carrying the lease's token.
async fn add(client: &Client, r: usize, token: i64, element: i32) -> Result<Add, String> {
    let sql = format!(
        "WITH u AS (UPDATE sets SET elems = array_append(elems, {element}), \
         version = version + 1 WHERE id = {r} RETURNING version) \
         INSERT INTO history SELECT {r}, {token}, {element}, version FROM u RETURNING version {}",
        comment(&fence(r), token)
    );
    let messages = client.simple_query(&sql).await.map_err(|e| {
        e.as_db_error()
            .map_or_else(|| "closed".to_string(), |db| db.code().code().to_string())
    })?;
    let version = messages.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
        _ => None,
    });
    let version = version.ok_or_else(|| "no version returned".to_string())?;
    Ok(Add {
        resource: r,
        token,
        element,
        version,
    })
}

/// One worker, until `stop`: lease, maybe pause past it, add, release.
pub async fn worker(
    id: usize,
    endpoint: Endpoint,
    db: String,
    leases: Arc<LeaseService>,
    figures: Arc<Figures>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(0xFA11_0BE5 ^ id as u64);
    let mut client = connect_eventually(&endpoint, &db).await;
    figures.sessions.fetch_add(1, Ordering::Relaxed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let r = rng.random_range(0..RESOURCES);
        let lease = leases.acquire(r).await;
        if rng.random_ratio(1, 4) {
            tokio::time::sleep(TTL + Duration::from_millis(50)).await;
        }
        if Instant::now() >= lease.expires {
            figures.stale_attempts.fetch_add(1, Ordering::Relaxed);
        }
        n += 1;
        let element = (id * 1_000_000 + n) as i32;
        match add(&client, r, lease.token, element).await {
            Ok(done) => figures.acked.lock().unwrap().push((done, Instant::now())),
            Err(code) => {
                if code == "55Z01" {
                    figures.rejected.fetch_add(1, Ordering::Relaxed);
                }
                figures.error(&code);
                if client.is_closed() {
                    client = connect_eventually(&endpoint, &db).await;
                    figures.sessions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        leases.release(&lease);
    }
}
