//! Counters of fencing decisions, shared by every session of one proxy process.

use std::sync::atomic::{AtomicU64, Ordering};

/// What the fence has done since the process started.
#[derive(Debug, Default)]
pub struct FenceStats {
    /// Checks sent to PostgreSQL (by annotation or by settings).
    pub checks: AtomicU64,
    /// Statements rejected as stale (SQLSTATE 55Z01).
    pub stale: AtomicU64,
    /// Statements rejected for a malformed or missing annotation (55Z02).
    pub invalid: AtomicU64,
    /// Checks that found no `fencegate` schema (55Z03).
    pub not_installed: AtomicU64,
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
