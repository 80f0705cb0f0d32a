//! The tokens a session has seen admitted, so that its next check of the same token can
//! take the cheaper path for a token believed current (`fencegate.check_current`).
//!
//! A belief chooses a path, never a verdict: `check_current` decides exactly what
//! `fencegate.check` decides (docs/fencing.md, "A token seen admitted before"), it only
//! reads the fence row once instead of twice when the token still equals H. So a wrong
//! belief (a check whose transaction rolled back, a fence that went back) costs nothing but
//! the path it chose.
//!
//! What a check did, the session learns from the reply tracker's outcomes
//! ([`crate::session::hook::CheckDone`]), one per timed check and in the order they were
//! sent: the first inserted statement of a rewritten Query, or the Execute of an injected
//! extended-protocol check. [`SeenAdmitted::sent`] queues what each was; a check that ran
//! without error is believed, one that failed drops the belief.

use std::collections::VecDeque;

use super::Fence;

/// The most (resource, token) pairs a session believes at once; the oldest goes first.
pub const MAX_BELIEVED: usize = 64;

/// The most timed checks awaiting their outcome that are kept track of; past that a
/// session (which then has that many checks in flight) learns nothing more until they end.
const MAX_PENDING: usize = 1024;

/// Per-session beliefs about which tokens are current.
#[derive(Debug, Default)]
pub struct SeenAdmitted {
    /// What each timed check in flight was: the fence of a token check, or `None`.
    pending: VecDeque<Option<Fence>>,
    /// Timed checks sent whose outcome has not come (those in `pending` and any sent while
    /// it was full).
    outstanding: usize,
    /// A check was sent while `pending` was full: outcomes cannot be matched to checks
    /// until every outstanding one has come.
    overflowed: bool,
    believed: VecDeque<Fence>,
}

impl SeenAdmitted {
    /// A timed check was sent: a check of `fence`, or (`None`) something else.
    pub fn sent(&mut self, fence: Option<Fence>) {
        self.outstanding += 1;
        if self.overflowed || self.pending.len() >= MAX_PENDING {
            self.overflowed = true;
            return;
        }
        self.pending.push_back(fence);
    }

    /// The oldest timed check in flight ended; `ok`: it ran without error.
    pub fn done(&mut self, ok: bool) {
        if self.outstanding == 0 {
            return;
        }
        self.outstanding -= 1;
        let check = self.pending.pop_front().flatten();
        if self.overflowed {
            if self.outstanding == 0 {
                self.overflowed = false;
                self.pending.clear();
            }
            return;
        }
        if let Some(fence) = check {
            self.believed.retain(|f| f.resource != fence.resource);
            if ok {
                if self.believed.len() >= MAX_BELIEVED {
                    self.believed.pop_front();
                }
                self.believed.push_back(fence);
            }
        }
    }

    /// A check of `fence` admitted it earlier in this session, and none since failed.
    pub fn is_believed(&self, fence: &Fence) -> bool {
        self.believed.iter().any(|f| f == fence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(resource: &str, token: i64) -> Fence {
        Fence {
            resource: resource.into(),
            token,
        }
    }

    #[test]
    fn outcomes_are_matched_to_checks_in_order() {
        let mut s = SeenAdmitted::default();
        s.sent(Some(fence("a", 1)));
        s.sent(None);
        s.sent(Some(fence("b", 2)));
        assert!(!s.is_believed(&fence("a", 1)), "not before its outcome");
        s.done(true);
        s.done(false);
        s.done(false);
        assert!(s.is_believed(&fence("a", 1)));
        assert!(!s.is_believed(&fence("b", 2)));
        // A failed check of a believed fence drops the belief; a newer token replaces it.
        s.sent(Some(fence("a", 1)));
        s.done(false);
        assert!(!s.is_believed(&fence("a", 1)));
        s.sent(Some(fence("a", 1)));
        s.done(true);
        s.sent(Some(fence("a", 3)));
        s.done(true);
        assert!(!s.is_believed(&fence("a", 1)));
        assert!(s.is_believed(&fence("a", 3)));
        // An outcome with nothing in flight (never expected) changes nothing.
        s.done(true);
        assert!(s.is_believed(&fence("a", 3)));
    }

    #[test]
    fn beliefs_and_checks_in_flight_are_bounded() {
        let mut s = SeenAdmitted::default();
        for i in 0..(MAX_BELIEVED as i64 + 10) {
            s.sent(Some(fence(&format!("r{i}"), i)));
            s.done(true);
        }
        assert_eq!(s.believed.len(), MAX_BELIEVED);
        assert!(!s.is_believed(&fence("r0", 0)), "the oldest went first");
        assert!(s.is_believed(&fence(
            &format!("r{}", MAX_BELIEVED + 9),
            MAX_BELIEVED as i64 + 9
        )));
        let mut s = SeenAdmitted::default();
        for _ in 0..MAX_PENDING + 5 {
            s.sent(Some(fence("x", 1)));
        }
        assert_eq!(s.pending.len(), MAX_PENDING);
        for _ in 0..MAX_PENDING + 5 {
            s.done(true);
        }
        assert!(
            !s.is_believed(&fence("x", 1)),
            "nothing learned once outcomes could not be matched"
        );
        s.sent(Some(fence("x", 1)));
        s.done(true);
        assert!(
            s.is_believed(&fence("x", 1)),
            "matched again once all had ended"
        );
    }
}
