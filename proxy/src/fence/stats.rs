//! Counters of fencing decisions and a histogram of check latency, shared by every session
//! of one proxy process (exposed by [`crate::metrics`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the fence has done since the process started.
#[derive(Debug, Default)]
pub struct FenceStats {
    /// Checks sent to PostgreSQL (by annotation or by settings, and refusals the proxy
    /// decided itself but delivers in the client's transaction).
    pub checks: AtomicU64,
    /// Checks that completed: the statement behind them was allowed to run.
    pub admitted: AtomicU64,
    /// Statements rejected as stale (SQLSTATE 55Z01).
    pub stale: AtomicU64,
    /// Statements rejected for a malformed or missing annotation (55Z02).
    pub invalid: AtomicU64,
    /// Checks that found no `fencegate` schema (55Z03).
    pub not_installed: AtomicU64,
    /// Sessions that checks ended because they held an older token past the grace
    /// (preemption), as the checks reported them (a NOTICE with SQLSTATE FG100).
    pub preempted: AtomicU64,
    /// From sending a check to its result, whatever the result.
    pub check_seconds: Histogram,
    /// Checks sent whose result has not come back, across all sessions (a gauge: each
    /// session adds its own through a [`WaitingShare`], which takes it back when dropped).
    pub checks_waiting: AtomicU64,
}

impl FenceStats {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One session's part of [`FenceStats::checks_waiting`]: moved to the session's own count
/// as that changes, and withdrawn when the session's hook is dropped, however the session
/// ended (client or server gone, an error, a refusal), so the gauge never keeps the checks
/// of a session that is no more.
#[derive(Debug)]
pub struct WaitingShare {
    stats: Arc<FenceStats>,
    mine: u64,
}

impl WaitingShare {
    /// A share of `stats`' gauge, holding nothing yet.
    pub fn new(stats: Arc<FenceStats>) -> Self {
        WaitingShare { stats, mine: 0 }
    }

    /// This session now has `waiting` checks waiting: one relaxed atomic add of the
    /// difference (none when unchanged).
    pub fn set(&mut self, waiting: usize) {
        let waiting = u64::try_from(waiting).unwrap_or(u64::MAX);
        let gauge = &self.stats.checks_waiting;
        match waiting.cmp(&self.mine) {
            std::cmp::Ordering::Greater => gauge.fetch_add(waiting - self.mine, Ordering::Relaxed),
            std::cmp::Ordering::Less => gauge.fetch_sub(self.mine - waiting, Ordering::Relaxed),
            std::cmp::Ordering::Equal => return,
        };
        self.mine = waiting;
    }
}

impl Drop for WaitingShare {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// Upper bounds of the latency buckets, in seconds: a check is one round trip inside
/// PostgreSQL when uncontended (well under a millisecond), and waits up to the preemption
/// grace (5 s by default) behind an older holder.
pub const BUCKETS: [f64; 14] = [
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A latency histogram with fixed buckets, updated with relaxed atomics (no lock on the
/// session threads).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound of [`BUCKETS`] and above the one before, then
    /// those above the last bound (not cumulative; the exposition sums them). The count is
    /// their sum, so a scrape racing an observation still reads monotonic buckets with
    /// `+Inf` equal to the count.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Cumulative counts per bound of [`BUCKETS`], the total count and the sum in seconds,
    /// as the Prometheus exposition wants them.
    pub fn snapshot(&self) -> (Vec<u64>, u64, f64) {
        let mut running = 0;
        let mut cumulative: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| {
                running += b.load(Ordering::Relaxed);
                running
            })
            .collect();
        let count = cumulative.pop().unwrap_or_default();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (cumulative, count, sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(150));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_secs(60));
        let (cumulative, count, sum) = h.snapshot();
        assert_eq!(&cumulative[..4], [1, 1, 3, 3]);
        assert_eq!(cumulative[BUCKETS.len() - 1], 3, "60 s is only in +Inf");
        assert_eq!(count, 4);
        assert!((sum - 60.00185).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn each_session_withdraws_its_own_waiting_checks_when_dropped() {
        let stats = Arc::new(FenceStats::default());
        let waiting = || FenceStats::get(&stats.checks_waiting);
        let mut a = WaitingShare::new(stats.clone());
        let mut b = WaitingShare::new(stats.clone());
        a.set(2);
        b.set(1);
        assert_eq!(waiting(), 3);
        a.set(1);
        assert_eq!(waiting(), 2);
        drop(b);
        assert_eq!(waiting(), 1, "b's check withdrawn, a's kept");
        a.set(3);
        drop(a);
        assert_eq!(waiting(), 0);
    }
}
