//! Pieces of the Jepsen-style lock-set workload (`tests/tests/jepsen.rs`): an in-process
//! lease service that hands out fencing tokens, and the checker that judges a run's history.
//!
//! # The lease service
//! Per resource, one lease with a fixed TTL and a token counter that only grows. A holder
//! that pauses past its TTL keeps its (now stale) token: nothing stops it from using it,
//! which is exactly the failure mode fencing tokens exist for.
//!
//! # The checker
//! Each resource is a row holding a set of integers and a version counter; every committed
//! add also appends `(resource, token, element, version)` to a history table in the same
//! transaction, with `version` the row's counter after the add. From the final rows, the
//! history and the adds the workers saw acknowledged (their COMMIT succeeded), the checker
//! reports:
//! - **lost acknowledged adds**: an acknowledged element missing from its resource's final set;
//! - **token regressions**: in version (commit) order, a history row whose token is lower than
//!   the token of an earlier row of the same resource, i.e. a stale holder committed after a
//!   newer one;
//! - **lost committed adds**: a history row whose element is missing from the final set;
//! - **inconsistencies**: the history does not match the rows (versions not exactly
//!   `1..=final version`, duplicate elements, an acknowledged add without its history row, a
//!   final element that no history row added). These mean the harness itself is broken, not
//!   the system under test, and must never occur in any run.
//!
//! [`final_state`] reads the rows and the history a run left (the tables `sets` and
//! `history`, as every workload of this kind creates them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a waiting [`LeaseService::acquire`] looks at the lease again.
const POLL: Duration = Duration::from_millis(2);

/// A lease service with one lease per resource (`0..resources`).
#[derive(Debug)]
pub struct LeaseService {
    ttl: Duration,
    slots: Vec<Mutex<Slot>>,
}

#[derive(Debug)]
struct Slot {
    /// The last token granted for this resource.
    last_token: i64,
    /// The current holder's token and when its lease expires.
    holder: Option<(i64, Instant)>,
}

/// A granted lease: the resource, its fencing token and when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The resource index.
    pub resource: usize,
    /// The fencing token, greater than every token granted before for this resource.
    pub token: i64,
    /// When the lease expires (the token stays usable, and stale, after that).
    pub expires: Instant,
}

impl LeaseService {
    /// A service for `resources` resources whose leases last `ttl`; the first token granted
    /// for each resource is `first_token`.
    pub fn new(resources: usize, ttl: Duration, first_token: i64) -> LeaseService {
        LeaseService {
            ttl,
            slots: (0..resources)
                .map(|_| {
                    Mutex::new(Slot {
                        last_token: first_token - 1,
                        holder: None,
                    })
                })
                .collect(),
        }
    }

    /// The lease TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Waits until the lease on `resource` is free or expired, then grants it with a new token.
    pub async fn acquire(&self, resource: usize) -> Lease {
        loop {
            if let Some(lease) = self.try_acquire(resource) {
                return lease;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Grants the lease on `resource` if it is free or expired.
    pub fn try_acquire(&self, resource: usize) -> Option<Lease> {
        let mut slot = self.slots[resource].lock().unwrap();
        let now = Instant::now();
        match slot.holder {
            Some((_, expires)) if expires > now => None,
            _ => {
                slot.last_token += 1;
                let expires = now + self.ttl;
                slot.holder = Some((slot.last_token, expires));
                Some(Lease {
                    resource,
                    token: slot.last_token,
                    expires,
                })
            }
        }
    }

    /// Gives the lease back if `lease` is still the current grant (a stale holder's release
    /// changes nothing).
    pub fn release(&self, lease: &Lease) {
        let mut slot = self.slots[lease.resource].lock().unwrap();
        if matches!(slot.holder, Some((token, _)) if token == lease.token) {
            slot.holder = None;
        }
    }

    /// The last token granted for `resource`.
    pub fn last_token(&self, resource: usize) -> i64 {
        self.slots[resource].lock().unwrap().last_token
    }
}

/// One committed add, as recorded in the history table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Add {
    /// The resource index.
    pub resource: usize,
    /// The fencing token the add was made with.
    pub token: i64,
    /// The element added.
    pub element: i32,
    /// The row's version after the add.
    pub version: i64,
}

impl fmt::Display for Add {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "resource {} token {} element {} version {}",
            self.resource, self.token, self.element, self.version
        )
    }
}

/// The final state of one resource's row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalRow {
    /// The set.
    pub elements: BTreeSet<i32>,
    /// The version counter.
    pub version: i64,
}

/// A stale holder's commit after a newer holder's commit on the same resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regression {
    /// The earlier commit with the highest token so far.
    pub newer: Add,
    /// The later commit with a lower token.
    pub stale: Add,
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Acknowledged adds whose element is not in the final set.
    pub lost_acked: Vec<Add>,
    /// Commits with a token lower than an earlier commit's on the same resource.
    pub token_regressions: Vec<Regression>,
    /// Committed adds (history rows) whose element is not in the final set.
    pub lost_committed: Vec<Add>,
    /// Mismatches between history, rows and acknowledgements: a broken harness.
    pub inconsistencies: Vec<String>,
}

impl Verdict {
    /// Number of anomalies of the system under test (inconsistencies not included).
    pub fn anomalies(&self) -> usize {
        self.lost_acked.len() + self.token_regressions.len() + self.lost_committed.len()
    }

    /// A few examples of each finding, for failure messages.
    pub fn describe(&self, limit: usize) -> String {
        let mut out = format!(
            "{} lost acknowledged adds, {} token regressions, {} lost committed adds, {} inconsistencies",
            self.lost_acked.len(),
            self.token_regressions.len(),
            self.lost_committed.len(),
            self.inconsistencies.len()
        );
        for add in self.lost_acked.iter().take(limit) {
            out.push_str(&format!("\n  lost acknowledged add: {add}"));
        }
        for r in self.token_regressions.iter().take(limit) {
            out.push_str(&format!(
                "\n  token regression: [{}] committed after [{}]",
                r.stale, r.newer
            ));
        }
        for add in self.lost_committed.iter().take(limit) {
            out.push_str(&format!("\n  lost committed add: {add}"));
        }
        for text in self.inconsistencies.iter().take(limit) {
            out.push_str(&format!("\n  inconsistency: {text}"));
        }
        out
    }
}

/// Judges a run: `rows[r]` is resource r's final row, `history` every committed add (any
/// order), `acked` the adds whose COMMIT the workers saw succeed.
pub fn check(rows: &[FinalRow], history: &[Add], acked: &[Add]) -> Verdict {
    let mut verdict = Verdict::default();
    let mut by_resource: BTreeMap<usize, Vec<Add>> = BTreeMap::new();
    let mut by_element: HashMap<i32, Add> = HashMap::new();
    for add in history {
        if add.resource >= rows.len() {
            verdict
                .inconsistencies
                .push(format!("history row for an unknown resource: {add}"));
            continue;
        }
        if let Some(first) = by_element.insert(add.element, *add) {
            verdict
                .inconsistencies
                .push(format!("element added twice: [{first}] and [{add}]"));
        }
        by_resource.entry(add.resource).or_default().push(*add);
    }

    for (resource, row) in rows.iter().enumerate() {
        let mut adds = by_resource.remove(&resource).unwrap_or_default();
        adds.sort_by_key(|a| a.version);
        let versions: Vec<i64> = adds.iter().map(|a| a.version).collect();
        let expected: Vec<i64> = (1..=row.version).collect();
        if versions != expected {
            verdict.inconsistencies.push(format!(
                "resource {resource}: history versions are not exactly 1..={} ({} rows)",
                row.version,
                adds.len()
            ));
        }
        // (2) tokens in commit order never go down.
        let mut highest: Option<Add> = None;
        for add in &adds {
            match highest {
                Some(newer) if add.token < newer.token => verdict
                    .token_regressions
                    .push(Regression { newer, stale: *add }),
                Some(newer) if add.token == newer.token => {}
                _ => highest = Some(*add),
            }
        }
        // (3) every committed add survives.
        for add in &adds {
            if !row.elements.contains(&add.element) {
                verdict.lost_committed.push(*add);
            }
        }
        for element in &row.elements {
            match by_element.get(element) {
                Some(add) if add.resource == resource => {}
                _ => verdict.inconsistencies.push(format!(
                    "resource {resource}: final element {element} was added by no history row of it"
                )),
            }
        }
    }

    // (1) every acknowledged add survives, and was recorded as it was acknowledged.
    for ack in acked {
        match rows.get(ack.resource) {
            Some(row) if row.elements.contains(&ack.element) => {}
            _ => verdict.lost_acked.push(*ack),
        }
        match by_element.get(&ack.element) {
            Some(add) if add == ack => {}
            Some(add) => verdict
                .inconsistencies
                .push(format!("acknowledged [{ack}] but history says [{add}]")),
            None => verdict
                .inconsistencies
                .push(format!("acknowledged [{ack}] has no history row")),
        }
    }
    verdict
}

/// The tables of a lock-set workload over resources `0..resources` (a run of its own
/// reads them back with [`final_state`]), granted to `trust_user`.
pub fn tables(resources: usize) -> String {
    format!(
        "CREATE TABLE sets (id int PRIMARY KEY, elems int[] NOT NULL DEFAULT '{{}}',
                           version bigint NOT NULL DEFAULT 0);
         INSERT INTO sets (id) SELECT g FROM generate_series(0, {}) g;
         CREATE TABLE history (resource int NOT NULL, token bigint NOT NULL,
                               element int NOT NULL UNIQUE, version bigint NOT NULL,
                               UNIQUE (resource, version));
         GRANT ALL ON sets, history TO trust_user;",
        resources - 1
    )
}

/// The final rows of resources `0..resources` and the history, read with `client` (directly
/// from PostgreSQL, or from the surviving primary after a failover).
pub async fn final_state(
    client: &tokio_postgres::Client,
    resources: usize,
) -> (Vec<FinalRow>, Vec<Add>) {
    let mut rows = vec![FinalRow::default(); resources];
    for row in client
        .query("SELECT id, elems, version FROM sets ORDER BY id", &[])
        .await
        .expect("read sets")
    {
        let id: i32 = row.get(0);
        rows[id as usize] = FinalRow {
            elements: row.get::<_, Vec<i32>>(1).into_iter().collect(),
            version: row.get(2),
        };
    }
    let history = client
        .query("SELECT resource, token, element, version FROM history", &[])
        .await
        .expect("read history")
        .into_iter()
        .map(|r| Add {
            resource: r.get::<_, i32>(0) as usize,
            token: r.get(1),
            element: r.get(2),
            version: r.get(3),
        })
        .collect();
    (rows, history)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(resource: usize, token: i64, element: i32, version: i64) -> Add {
        Add {
            resource,
            token,
            element,
            version,
        }
    }

    fn row(elements: &[i32], version: i64) -> FinalRow {
        FinalRow {
            elements: elements.iter().copied().collect(),
            version,
        }
    }

    #[test]
    fn a_clean_history_passes() {
        let history = [add(0, 1, 10, 1), add(0, 1, 11, 2), add(0, 3, 12, 3)];
        let v = check(&[row(&[10, 11, 12], 3)], &history, &history[1..]);
        assert_eq!(v.anomalies(), 0, "{}", v.describe(5));
        assert!(v.inconsistencies.is_empty(), "{}", v.describe(5));
    }

    #[test]
    fn a_stale_overwrite_is_found() {
        // Token 1 read {}, token 2 added 20, stale token 1 then wrote {} ∪ {10}.
        let history = [add(0, 2, 20, 1), add(0, 1, 10, 2)];
        let v = check(&[row(&[10], 2)], &history, &history);
        assert_eq!(v.lost_acked, vec![history[0]]);
        assert_eq!(v.lost_committed, vec![history[0]]);
        assert_eq!(
            v.token_regressions,
            vec![Regression {
                newer: history[0],
                stale: history[1]
            }]
        );
        assert!(v.inconsistencies.is_empty(), "{}", v.describe(5));
    }

    #[test]
    fn harness_mismatches_are_inconsistencies() {
        let history = [add(0, 1, 10, 1), add(0, 1, 10, 3)];
        let v = check(&[row(&[10, 99], 2)], &history, &[add(0, 1, 11, 2)]);
        assert_eq!(v.inconsistencies.len(), 4, "{}", v.describe(10));
    }

    #[tokio::test]
    async fn leases_expire_and_tokens_grow() {
        let ttl = Duration::from_millis(30);
        let leases = LeaseService::new(1, ttl, 41);
        let a = leases.acquire(0).await;
        assert_eq!(a.token, 41);
        assert!(leases.try_acquire(0).is_none(), "held lease granted twice");
        let started = Instant::now();
        let b = leases.acquire(0).await;
        assert!(started.elapsed() >= ttl / 2);
        assert_eq!(b.token, 42);
        leases.release(&a); // stale: no effect
        assert!(leases.try_acquire(0).is_none());
        leases.release(&b);
        assert_eq!(leases.try_acquire(0).map(|l| l.token), Some(43));
        assert_eq!(leases.last_token(0), 43);
    }
}
