//! The number of sessions served at once (`max_connections`), a limit that a reload may
//! raise or lower while sessions are open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How many sessions are open, and how many may be.
#[derive(Debug)]
pub struct SessionLimit {
    open: AtomicUsize,
    max: AtomicUsize,
}

/// One session's place; given back when dropped.
#[derive(Debug)]
pub struct SessionPlace(Arc<SessionLimit>);

impl SessionLimit {
    /// A limit of `max` sessions.
    pub fn new(max: usize) -> Arc<SessionLimit> {
        Arc::new(SessionLimit {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    /// A place for one more session, unless `max` are open.
    pub fn try_enter(self: &Arc<Self>) -> Option<SessionPlace> {
        let max = self.max.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()
            .map(|_| SessionPlace(self.clone()))
    }

    /// Changes the limit. Sessions already open stay; while more are open than the new
    /// limit allows, new ones are refused.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for SessionPlace {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_limit_refuses_until_enough_have_left() {
        let limit = SessionLimit::new(2);
        let a = limit.try_enter().expect("first");
        let b = limit.try_enter().expect("second");
        assert!(limit.try_enter().is_none(), "third past 2");
        limit.set_max(1);
        drop(a);
        assert!(limit.try_enter().is_none(), "one open, limit 1");
        drop(b);
        let c = limit.try_enter().expect("none open");
        limit.set_max(3);
        let _d = limit.try_enter().expect("raised");
        assert_eq!(limit.open(), 2);
        drop(c);
    }
}
