//! [`Lease`]: a lock with a time-to-live from fencegate's own lease service (the
//! `fencegate.acquire/renew/release` functions that `fencegate migrate` installs), renewed
//! in the background, with a [`LostSignal`] and the [`Fence`] to attach to statements.
//!
//! The service runs on the database's clock and issues tokens that only grow per resource
//! and are always above the resource's fence high-water mark, so a fresh lease's token is
//! never born stale. The lease functions carry no token, so the pool may point at the proxy
//! or at PostgreSQL directly.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

use crate::fence::{Fence, InvalidFence};
use crate::keeper::{Keeper, LeaseStatus, LostSignal, RenewFuture};

/// How long [`LeaseRequest::acquire`] waits between attempts at most, by default.
pub const DEFAULT_POLL: Duration = Duration::from_millis(250);

/// Why a lease could not be taken or given back.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The resource is not a valid fencing resource (1 to 256 bytes, no NUL).
    #[error(transparent)]
    InvalidResource(#[from] InvalidFence),
    /// The TTL or the renewal interval is unusable.
    #[error("invalid lease request: {0}")]
    InvalidRequest(String),
    /// The database has no `fencegate` schema (or an old one without the lease service).
    #[error("the fencegate lease service is not installed in this database: run `fencegate migrate --database-url ...` once ({0})")]
    NotInstalled(#[source] sqlx::Error),
    /// Any other database error.
    #[error(transparent)]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for LeaseError {
    fn from(e: sqlx::Error) -> LeaseError {
        let code = e.as_database_error().and_then(|d| d.code());
        match code.as_deref() {
            // invalid_schema_name, undefined_function
            Some("3F000" | "42883") => LeaseError::NotInstalled(e),
            _ => LeaseError::Database(e),
        }
    }
}

/// What to ask the lease service for; see [`Lease::acquire`] for the common case.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    resource: String,
    holder: String,
    ttl: Duration,
    renew_every: Option<Duration>,
    poll_every: Duration,
}

impl LeaseRequest {
    /// A lease on `resource` for `holder` (a name unique to this process, e.g.
    /// `host:pid:random`), valid for `ttl` after each renewal.
    pub fn new(resource: impl Into<String>, holder: impl Into<String>, ttl: Duration) -> Self {
        LeaseRequest {
            resource: resource.into(),
            holder: holder.into(),
            ttl,
            renew_every: None,
            poll_every: DEFAULT_POLL,
        }
    }

    /// Renews every `every` instead of every `ttl / 3`. Must be shorter than the TTL.
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = Some(every);
        self
    }

    /// Waits at most `every` between attempts in [`acquire`](Self::acquire) (default
    /// [`DEFAULT_POLL`]; the wait is shorter when the current lease ends sooner).
    pub fn poll_every(mut self, every: Duration) -> Self {
        self.poll_every = every;
        self
    }

    /// Takes the lease if it is free or expired; `None` while someone else holds it.
    pub async fn try_acquire(&self, pool: &PgPool) -> Result<Option<Lease>, LeaseError> {
        let every = self.checked_renewal()?;
        Fence::new(self.resource.as_str(), 0)?;
        let sent = Instant::now();
        let token: Option<i64> =
            sqlx::query_scalar("SELECT fencegate.acquire($1, $2, make_interval(secs => $3))")
                .bind(&self.resource)
                .bind(&self.holder)
                .bind(self.ttl.as_secs_f64())
                .fetch_one(pool)
                .await?;
        let Some(token) = token else {
            return Ok(None);
        };
        let fence = Fence::new(self.resource.as_str(), token)?;
        let renew = renewal(pool.clone(), fence.clone(), self.holder.clone(), self.ttl);
        let keeper = Keeper::spawn(sent, sent + self.ttl, every, renew);
        Ok(Some(Lease {
            fence,
            holder: self.holder.clone(),
            ttl: self.ttl,
            pool: Some(pool.clone()),
            keeper,
        }))
    }

    /// Takes the lease, waiting (polling) for the current holder's lease to end. Wrap it
    /// in `tokio::time::timeout` to bound the wait.
    pub async fn acquire(&self, pool: &PgPool) -> Result<Lease, LeaseError> {
        loop {
            if let Some(lease) = self.try_acquire(pool).await? {
                return Ok(lease);
            }
            let left: Option<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM expires_at - clock_timestamp())::float8 \
                 FROM fencegate.lease_holder($1)",
            )
            .bind(&self.resource)
            .fetch_optional(pool)
            .await?
            .flatten();
            let left = Duration::try_from_secs_f64(left.unwrap_or(0.0)).unwrap_or_default();
            let wait = left.min(self.poll_every).max(Duration::from_millis(1));
            tokio::time::sleep(wait).await;
        }
    }

    fn checked_renewal(&self) -> Result<Duration, LeaseError> {
        if self.ttl < Duration::from_millis(10) {
            return Err(LeaseError::InvalidRequest(format!(
                "ttl must be at least 10ms, got {:?}",
                self.ttl
            )));
        }
        let every = self.renew_every.unwrap_or(self.ttl / 3);
        if every.is_zero() || every >= self.ttl {
            return Err(LeaseError::InvalidRequest(format!(
                "renewal interval {every:?} must be above zero and below the ttl {:?}",
                self.ttl
            )));
        }
        Ok(every)
    }
}

/// A held lease from fencegate's lease service.
///
/// While it lives, a background task renews it every `ttl / 3`. Attach
/// [`fence`](Self::fence) to the statements that depend on holding it, and watch
/// [`lost_signal`](Self::lost_signal) to stop early once it is lost. Dropping it stops the
/// renewal and releases it in the background (best effort: when no tokio runtime is
/// running any more, it simply expires); [`release`](Self::release) does it now and says
/// whether it was still held.
///
/// ```no_run
/// use std::time::Duration;
/// use fencegate_client::{Lease, FenceError};
///
/// # async fn f(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let lease = Lease::acquire(&pool, "jobs:7", "worker-1", Duration::from_secs(10)).await?;
/// let lost = lease.lost_signal();
/// let work = fencegate_client::transaction(&pool, lease.fence(), async |conn| {
///     sqlx::query("UPDATE jobs SET state = 'done' WHERE id = 7")
///         .execute(&mut *conn)
///         .await?;
///     Ok(())
/// });
/// tokio::select! {
///     status = lost.wait() => eprintln!("lease {status:?}: stopping"),
///     result = work => match result {
///         Err(FenceError::LockLost { .. }) => eprintln!("a newer holder took over"),
///         other => other?,
///     },
/// }
/// lease.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Lease {
    fence: Fence,
    holder: String,
    ttl: Duration,
    /// `None` once released, so that drop does not release again.
    pool: Option<PgPool>,
    keeper: Keeper,
}

impl Lease {
    /// Takes the lease on `resource` for `holder`, waiting while someone else holds it.
    /// Shorthand for [`LeaseRequest::new`]`(..).acquire(pool)`.
    pub async fn acquire(
        pool: &PgPool,
        resource: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, LeaseError> {
        LeaseRequest::new(resource, holder, ttl).acquire(pool).await
    }

    /// Takes the lease if it is free; `None` while someone else holds it.
    /// Shorthand for [`LeaseRequest::new`]`(..).try_acquire(pool)`.
    pub async fn try_acquire(
        pool: &PgPool,
        resource: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, LeaseError> {
        LeaseRequest::new(resource, holder, ttl)
            .try_acquire(pool)
            .await
    }

    /// The fence to attach to statements: this lease's resource and token.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// The token the service granted.
    pub fn token(&self) -> i64 {
        self.fence.token()
    }

    /// The resource.
    pub fn resource(&self) -> &str {
        self.fence.resource()
    }

    /// The holder name the lease was taken with.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The TTL each renewal asks for.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Where the lease stands now.
    pub fn status(&self) -> LeaseStatus {
        self.keeper.status()
    }

    /// A signal that fires when the lease is lost (a renewal was refused, or none
    /// succeeded in time) or released.
    pub fn lost_signal(&self) -> LostSignal {
        self.keeper.signal()
    }

    /// Stops renewing and gives the lease back. `Ok(true)` when it was still held,
    /// `Ok(false)` when it had already been lost.
    pub async fn release(mut self) -> Result<bool, LeaseError> {
        self.keeper.stop();
        let pool = self.pool.take().expect("a lease is released once");
        Ok(release(&pool, &self.fence, &self.holder).await?)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let before = self.keeper.stop();
        let Some(pool) = self.pool.take() else {
            return;
        };
        if before != LeaseStatus::Held {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(fence = %self.fence, "no runtime to release a dropped lease; it will expire");
            return;
        };
        let (fence, holder) = (self.fence.clone(), std::mem::take(&mut self.holder));
        runtime.spawn(async move {
            if let Err(e) = release(&pool, &fence, &holder).await {
                tracing::warn!(%fence, error = %e, "releasing a dropped lease failed; it will expire");
            }
        });
    }
}

async fn release(pool: &PgPool, fence: &Fence, holder: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT fencegate.release($1, $2, $3)")
        .bind(fence.resource())
        .bind(holder)
        .bind(fence.token())
        .fetch_one(pool)
        .await
}

/// The keeper's renewal call: `Some(ttl)` while the service extends the lease.
fn renewal(
    pool: PgPool,
    fence: Fence,
    holder: String,
    ttl: Duration,
) -> impl FnMut() -> RenewFuture + Send + 'static {
    move || {
        let (pool, fence, holder) = (pool.clone(), fence.clone(), holder.clone());
        Box::pin(async move {
            let renewed: bool =
                sqlx::query_scalar("SELECT fencegate.renew($1, $2, $3, make_interval(secs => $4))")
                    .bind(fence.resource())
                    .bind(&holder)
                    .bind(fence.token())
                    .bind(ttl.as_secs_f64())
                    .fetch_one(&pool)
                    .await
                    .map_err(|e| e.to_string())?;
            Ok(renewed.then_some(ttl))
        })
    }
}
