//! Keeping a lease alive in the background, and telling the worker when it is gone.
//!
//! Shared by [`crate::Lease`] (fencegate's lease service) and [`crate::etcd::EtcdLock`]
//! (an etcd lease): both renew at a fixed interval, and both must say "lost" no later than
//! the lock service would let someone else in.
//!
//! The keeper tracks a **local deadline**: the instant *before* the grant or the last
//! successful renewal was sent, plus the TTL the service granted. The service starts its
//! TTL only when it handles the request, so the local deadline comes first (as long as the
//! two clocks run at the same rate). The lease is reported lost when the service refuses a
//! renewal ([`LostReason::Refused`]), or when the deadline passes without a successful
//! renewal, whatever the reason (unreachable service, exhausted connection pool, a renewal
//! that hangs): [`LostReason::Expired`]. A renewal that fails with an error is retried
//! until the deadline.
//!
//! The signal is advice to stop early, not the protection: a process that is paused
//! cannot see it. The fencing token is what keeps a paused holder's late writes out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout_at, Instant};

/// Where a lease stands, as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Held and being renewed.
    Held,
    /// Lost: stop working on the resource.
    Lost(LostReason),
    /// Given back by its holder (released, unlocked or dropped).
    Released,
}

/// Why a lease was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// The service refused a renewal: the lease had expired there, or was revoked, or
    /// someone else holds it now.
    Refused,
    /// No renewal succeeded before the lease's time ran out (see the module docs).
    Expired,
}

/// Fires when a lease is lost (or released), so a worker can stop. Cheap to clone; every
/// clone sees the same status.
///
/// ```no_run
/// # async fn f(lease: fencegate_client::Lease) {
/// let lost = lease.lost_signal();
/// tokio::select! {
///     status = lost.wait() => eprintln!("stopping: lease {status:?}"),
///     _ = async { /* the work, with lease.fence() on every statement */ } => {}
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct LostSignal {
    rx: watch::Receiver<LeaseStatus>,
}

impl LostSignal {
    /// The status now.
    pub fn status(&self) -> LeaseStatus {
        self.rx.borrow().clone()
    }

    /// True once the lease is lost or released.
    pub fn is_lost(&self) -> bool {
        self.status() != LeaseStatus::Held
    }

    /// Waits until the lease is no longer held and returns why.
    pub async fn wait(&self) -> LeaseStatus {
        let mut rx = self.rx.clone();
        let status = match rx.wait_for(|s| *s != LeaseStatus::Held).await {
            Ok(status) => status.clone(),
            // The keeper is gone without a verdict: nobody renews any more.
            Err(_) => LeaseStatus::Lost(LostReason::Expired),
        };
        status
    }
}

/// One renewal: `Ok(Some(ttl))` renewed for `ttl` from when it was sent, `Ok(None)`
/// refused by the service, `Err(text)` failed (retried until the deadline).
pub(crate) type RenewFuture =
    Pin<Box<dyn Future<Output = Result<Option<Duration>, String>> + Send>>;

/// The background renewal task of one lease; stops renewing on drop.
#[derive(Debug)]
pub(crate) struct Keeper {
    status: Arc<watch::Sender<LeaseStatus>>,
    task: JoinHandle<()>,
}

impl Keeper {
    /// Starts renewing every `every`, the first time `every` after `sent` (when the grant
    /// was sent), with `deadline` the lease's local end until a renewal moves it.
    pub(crate) fn spawn<R>(sent: Instant, deadline: Instant, every: Duration, renew: R) -> Keeper
    where
        R: FnMut() -> RenewFuture + Send + 'static,
    {
        let status = Arc::new(watch::Sender::new(LeaseStatus::Held));
        let task = tokio::spawn(run(status.clone(), sent + every, deadline, every, renew));
        Keeper { status, task }
    }

    /// A signal that follows this keeper's status.
    pub(crate) fn signal(&self) -> LostSignal {
        LostSignal {
            rx: self.status.subscribe(),
        }
    }

    /// The status now.
    pub(crate) fn status(&self) -> LeaseStatus {
        self.status.borrow().clone()
    }

    /// Stops renewing; a held lease becomes [`LeaseStatus::Released`]. Returns the status
    /// before the call.
    pub(crate) fn stop(&self) -> LeaseStatus {
        self.task.abort();
        let mut before = LeaseStatus::Held;
        self.status.send_if_modified(|s| {
            before = s.clone();
            let held = *s == LeaseStatus::Held;
            if held {
                *s = LeaseStatus::Released;
            }
            held
        });
        before
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn run<R>(
    status: Arc<watch::Sender<LeaseStatus>>,
    mut next: Instant,
    mut deadline: Instant,
    every: Duration,
    mut renew: R,
) where
    R: FnMut() -> RenewFuture + Send + 'static,
{
    let retry = (every / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let reason = loop {
        tokio::select! {
            biased;
            _ = sleep_until(deadline) => break LostReason::Expired,
            _ = sleep_until(next) => {}
        }
        let sent = Instant::now();
        match timeout_at(deadline, renew()).await {
            Err(_) => break LostReason::Expired,
            Ok(Ok(Some(ttl))) => {
                deadline = sent + ttl;
                next = sent + every;
            }
            Ok(Ok(None)) => break LostReason::Refused,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease renewal failed; retrying until the lease runs out");
                next = Instant::now() + retry;
            }
        }
    };
    tracing::warn!(?reason, "lease lost");
    status.send_if_modified(|s| {
        let held = *s == LeaseStatus::Held;
        if held {
            *s = LeaseStatus::Lost(reason);
        }
        held
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The signal's verdict, failing the test if none comes within a (virtual) second.
    async fn verdict(signal: &LostSignal) -> LeaseStatus {
        tokio::time::timeout(ms(1000), signal.wait())
            .await
            .expect("no verdict within a second")
    }

    /// A keeper whose renewals answer from `answer(call_number)`.
    fn keeper(
        ttl: Duration,
        every: Duration,
        answer: impl Fn(u32) -> Result<Option<Duration>, String> + Send + Sync + 'static,
    ) -> (Keeper, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let answer = Arc::new(answer);
        let now = Instant::now();
        let keeper = Keeper::spawn(now, now + ttl, every, move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            Box::pin(async move { answer(n) })
        });
        (keeper, calls)
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_it_held_until_refused() {
        let (k, calls) = keeper(ms(300), ms(100), |n| Ok((n < 5).then_some(ms(300))));
        let signal = k.signal();
        tokio::time::sleep(ms(450)).await;
        assert_eq!(signal.status(), LeaseStatus::Held, "renewed past the ttl");
        let started = Instant::now();
        assert_eq!(
            verdict(&signal).await,
            LeaseStatus::Lost(LostReason::Refused)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        assert!(started.elapsed() <= ms(200));
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_are_retried_then_expire_at_the_deadline() {
        let (k, calls) = keeper(ms(300), ms(100), |_| Err("unreachable".into()));
        let started = Instant::now();
        assert_eq!(
            verdict(&k.signal()).await,
            LeaseStatus::Lost(LostReason::Expired)
        );
        assert_eq!(
            started.elapsed(),
            ms(300),
            "lost exactly at the local deadline"
        );
        // First try at 100 ms, then every 25 ms until 300 ms.
        assert!(
            calls.load(Ordering::SeqCst) >= 8,
            "{}",
            calls.load(Ordering::SeqCst)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_renewal_expires_at_the_deadline() {
        let now = Instant::now();
        let k = Keeper::spawn(now, now + ms(300), ms(100), || {
            Box::pin(std::future::pending())
        });
        assert_eq!(
            verdict(&k.signal()).await,
            LeaseStatus::Lost(LostReason::Expired)
        );
        assert_eq!(now.elapsed(), ms(300));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_moves_from_when_the_renewal_was_sent() {
        // Each renewal takes 50 ms to answer and grants 120 ms: the lease lasts until
        // sent + 120 ms, not answered + 120 ms.
        let now = Instant::now();
        let k = Keeper::spawn(now, now + ms(200), ms(100), || {
            Box::pin(async {
                tokio::time::sleep(ms(50)).await;
                Ok(Some(ms(120)))
            })
        });
        let signal = k.signal();
        tokio::time::sleep(ms(160)).await;
        assert_eq!(signal.status(), LeaseStatus::Held);
        // The second renewal, sent at 200 ms, would answer at 250 ms: after the deadline
        // (100 + 120 ms), so the lease expires at 220 ms.
        assert_eq!(
            verdict(&signal).await,
            LeaseStatus::Lost(LostReason::Expired)
        );
        assert_eq!(now.elapsed(), ms(220));
    }

    #[tokio::test(start_paused = true)]
    async fn stop_marks_released_and_stops_renewing() {
        let (k, calls) = keeper(ms(300), ms(100), |_| Ok(Some(ms(300))));
        let signal = k.signal();
        tokio::time::sleep(ms(150)).await;
        assert_eq!(k.stop(), LeaseStatus::Held);
        assert_eq!(verdict(&signal).await, LeaseStatus::Released);
        let before = calls.load(Ordering::SeqCst);
        tokio::time::sleep(ms(1000)).await;
        assert_eq!(calls.load(Ordering::SeqCst), before);
        assert_eq!(k.status(), LeaseStatus::Released);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_stays_lost_after_stop() {
        let (k, _) = keeper(ms(300), ms(100), |_| Ok(None));
        assert_eq!(
            verdict(&k.signal()).await,
            LeaseStatus::Lost(LostReason::Refused)
        );
        assert_eq!(k.stop(), LeaseStatus::Lost(LostReason::Refused));
        assert_eq!(k.status(), LeaseStatus::Lost(LostReason::Refused));
    }
}
