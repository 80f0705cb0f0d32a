//! Shutdown signals for running sessions: "drain" (close at the next quiescent point) and
//! "stop" (close now), broadcast by the accept loop.
//!
//! A session checks them on every wake-up of its relay, so checking must cost next to
//! nothing: two atomic loads. Polling a `CancellationToken` future instead takes two mutexes
//! per token and wake-up, which profiling showed as a tenth of the proxy's own work per
//! round trip. The price is a small registry of session wakers, touched only when a session
//! starts, ends, or (rarely) its task's waker changes, and when a signal is raised.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};

/// The signals of one server, shared by its sessions.
#[derive(Debug, Default)]
pub struct Signals {
    drain: AtomicBool,
    stop: AtomicBool,
    next_id: AtomicU64,
    wakers: Mutex<HashMap<u64, Waker>>,
}

impl Signals {
    /// Asks every session to close once it has no transaction open.
    pub fn drain(&self) {
        self.raise(&self.drain);
    }

    /// Closes every session now.
    pub fn stop(&self) {
        self.raise(&self.stop);
    }

    fn raise(&self, flag: &AtomicBool) {
        flag.store(true, Ordering::SeqCst);
        let wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        for waker in wakers.values() {
            waker.wake_by_ref();
        }
    }

    /// A handle for one session; dropping it unregisters the session.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        Subscription {
            signals: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            waker: None,
        }
    }
}

/// What a session sees of the signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// Close at the next quiescent point.
    pub drain: bool,
    /// Close now.
    pub stop: bool,
}

/// One session's registration with [`Signals`].
#[derive(Debug)]
pub struct Subscription {
    signals: Arc<Signals>,
    id: u64,
    waker: Option<Waker>,
}

impl Subscription {
    /// Makes sure a signal raised from now on wakes the task polling with `cx`, then reads
    /// the signals (registering first, so a signal raised in between is not missed).
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Raised {
        let current = cx.waker();
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(current)) {
            self.waker = Some(current.clone());
            self.signals
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(self.id, current.clone());
        }
        Raised {
            drain: self.signals.drain.load(Ordering::SeqCst),
            stop: self.signals.stop.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.waker.is_some() {
            self.signals
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn raising_a_signal_wakes_every_subscribed_session_once_and_is_seen() {
        let signals = Arc::new(Signals::default());
        let counts: Vec<_> = (0..3)
            .map(|_| Arc::new(Count(AtomicUsize::new(0))))
            .collect();
        let mut subs: Vec<_> = counts.iter().map(|_| signals.subscribe()).collect();
        for (sub, count) in subs.iter_mut().zip(&counts) {
            let waker = Waker::from(count.clone());
            let raised = sub.poll(&mut Context::from_waker(&waker));
            assert_eq!(
                raised,
                Raised {
                    drain: false,
                    stop: false
                }
            );
        }
        drop(subs.pop()); // an ended session is not woken
        signals.drain();
        let woken: Vec<_> = counts.iter().map(|c| c.0.load(Ordering::SeqCst)).collect();
        assert_eq!(woken, [1, 1, 0]);
        let waker = Waker::from(counts[0].clone());
        let raised = subs[0].poll(&mut Context::from_waker(&waker));
        assert_eq!(
            raised,
            Raised {
                drain: true,
                stop: false
            }
        );
        signals.stop();
        assert_eq!(counts[1].0.load(Ordering::SeqCst), 2);
        let waker = Waker::from(counts[1].clone());
        assert!(subs[1].poll(&mut Context::from_waker(&waker)).stop);
    }

    #[test]
    fn a_session_subscribing_after_a_signal_sees_it() {
        let signals = Arc::new(Signals::default());
        signals.drain();
        let mut sub = signals.subscribe();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count);
        assert!(sub.poll(&mut Context::from_waker(&waker)).drain);
    }
}
