//! The memory all sessions together may hold in unfinished client messages
//! (`max_buffered_bytes`).
//!
//! A message is forwarded only once it is complete, so a client that sends the start of a
//! huge message and never the rest makes the proxy hold what it sent. One client is
//! bounded by `max_message_size`; this budget bounds them all together. Each session may
//! buffer [`FREE_PER_SESSION`] bytes of an unfinished message without asking (every
//! ordinary message fits), and takes a [`Share`] of the budget for anything beyond. When
//! the budget cannot cover what a session has buffered, that session ends with FATAL
//! 53200 and its memory is given back; every other session goes on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of an unfinished message a session buffers without taking from the budget.
pub const FREE_PER_SESSION: usize = 256 * 1024;

/// The budget shared by every session of one proxy.
#[derive(Debug)]
pub struct BufferBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BufferBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<BufferBudget> {
        Arc::new(BufferBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// The configured limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes currently taken by sessions.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// An empty share for one session.
    pub fn share(self: &Arc<Self>) -> Share {
        Share {
            budget: self.clone(),
            held: 0,
        }
    }
}

/// What one session holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Share {
    budget: Arc<BufferBudget>,
    held: usize,
}

/// The budget could not cover a session's unfinished message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted {
    /// Bytes of the unfinished message buffered in this session.
    pub buffered: usize,
    /// The budget's limit.
    pub limit: usize,
}

impl Share {
    /// Makes the share match a read buffer that now holds `buffered` bytes of an
    /// unfinished message: takes more, or gives back what is no longer needed.
    pub fn cover(&mut self, buffered: usize) -> Result<(), Exhausted> {
        let needed = buffered.saturating_sub(FREE_PER_SESSION);
        if needed > self.held {
            if !self.budget.try_take(needed - self.held) {
                return Err(Exhausted {
                    buffered,
                    limit: self.budget.limit,
                });
            }
        } else {
            self.budget.give_back(self.held - needed);
        }
        self.held = needed;
        Ok(())
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_one_limit_and_give_back_what_they_no_longer_hold() {
        let budget = BufferBudget::new(1 << 20);
        let (mut a, mut b) = (budget.share(), budget.share());
        assert!(
            a.cover(FREE_PER_SESSION).is_ok(),
            "the free part takes nothing"
        );
        assert_eq!(budget.in_use(), 0);
        assert!(a.cover(FREE_PER_SESSION + (700 << 10)).is_ok());
        assert_eq!(
            b.cover(FREE_PER_SESSION + (400 << 10)),
            Err(Exhausted {
                buffered: FREE_PER_SESSION + (400 << 10),
                limit: 1 << 20
            })
        );
        assert!(b.cover(FREE_PER_SESSION + (324 << 10)).is_ok());
        assert_eq!(budget.in_use(), 1 << 20);
        a.cover(0).unwrap();
        assert_eq!(budget.in_use(), 324 << 10);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        drop(a);
        assert_eq!(budget.in_use(), 0);
    }
}
