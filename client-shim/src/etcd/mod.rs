//! etcd adapter: a lock from etcd's lease + lock API, whose fencing token is the
//! **create revision of the lock key**.
//!
//! # How it works
//! 1. `LeaseGrant` a lease with the requested TTL; a background task keeps it alive
//!    (every third of the granted TTL) from then on, also while waiting for the lock.
//! 2. `Lock(name, lease)` waits until the lock is ours and returns the lock key,
//!    `name/<lease id>`, attached to the lease.
//! 3. `Range(key)` reads the key's `create_revision`: the token.
//!
//! etcd orders lock waiters by the create revision of their keys and grants the lock to the
//! oldest one once every older key is deleted. Revisions only grow, cluster-wide, so each
//! grant's key was created after the previous holder's key: tokens strictly increase
//! across grants of one lock name. The revision in the *response header* is not the token
//! (it is the store's revision when etcd answered, which can belong to another write).
//!
//! Releasing revokes the lease, which deletes the lock key (exactly what `Unlock` does)
//! and stops the lease in one call. A lease whose keepalive is refused, or that cannot be
//! kept alive until its TTL runs out, fires the [`LostSignal`].
//!
//! # Why the JSON gateway and not the `etcd-client` crate
//! `etcd-client` speaks gRPC through tonic and prost; its build script compiles etcd's
//! `.proto` files and needs `protoc` installed at build time, and it brings a gRPC stack
//! (tonic, h2, tower, prost) for four calls. Every etcd server since 3.3 serves the same
//! API as JSON over HTTP (`/v3/...`, the grpc-gateway that etcd ships), which needs only
//! an HTTP/1.1 client: `reqwest` without default features (no TLS stack, no HTTP/2),
//! `serde_json` and `base64`, all widely used and maintained. The trade-off: a streaming
//! keepalive is one request per renewal instead of one long stream, which at one request
//! per TTL/3 costs nothing that matters. For TLS endpoints, pass your own `reqwest::Client`
//! built with a TLS feature to [`EtcdClient::with_http`].

mod gateway;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::fence::{Fence, InvalidFence};
use crate::keeper::{Keeper, LeaseStatus, LostSignal, RenewFuture};
use gateway::Gateway;

/// Timeout of each call other than the lock wait, by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The endpoint is not an `http://` or `https://` URL.
    #[error("invalid etcd endpoint {0:?}: expected http://host:port")]
    InvalidEndpoint(String),
    /// The lock name is not a valid fencing resource (1 to 256 bytes, no NUL).
    #[error(transparent)]
    InvalidName(#[from] InvalidFence),
    /// The HTTP request failed (connection, timeout).
    #[error("etcd request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// etcd answered with an error (a gRPC status code and message).
    #[error("etcd error {code}: {message}")]
    Server {
        /// gRPC status code (5: not found, 14: unavailable, ...).
        code: i64,
        /// etcd's message.
        message: String,
    },
    /// etcd's answer did not have the expected shape.
    #[error("unexpected etcd reply: {0}")]
    Protocol(String),
    /// etcd's answer was not JSON.
    #[error("unexpected etcd reply: {path}: HTTP {status}, not JSON ({source}): {text}")]
    NotJson {
        /// The gateway path called.
        path: String,
        /// The HTTP status of the answer.
        status: reqwest::StatusCode,
        /// The parse error.
        #[source]
        source: serde_json::Error,
        /// The answer's text.
        text: String,
    },
    /// A field that etcd sends base64-encoded was not.
    #[error("unexpected etcd reply: field {field} is not base64: {source}")]
    NotBase64 {
        /// The field.
        field: String,
        /// The decoding error.
        #[source]
        source: base64::DecodeError,
    },
    /// The lock was granted but the lease was gone before its token could be read.
    #[error("the lease ended before the lock's token could be read")]
    LeaseLost,
}

/// A client of one etcd endpoint (its JSON gateway). Cheap to clone.
///
/// ```no_run
/// use std::time::Duration;
/// use fencegate_client::etcd::EtcdClient;
///
/// # async fn f(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let etcd = EtcdClient::new("http://127.0.0.1:2379")?;
/// let lock = etcd.lock("jobs:7", Duration::from_secs(10)).await?;
/// fencegate_client::transaction(&pool, lock.fence(), async |conn| {
///     sqlx::query("UPDATE jobs SET state = 'done' WHERE id = 7")
///         .execute(&mut *conn)
///         .await?;
///     Ok(())
/// })
/// .await?;
/// lock.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct EtcdClient {
    gateway: Arc<Gateway>,
}

impl EtcdClient {
    /// A client of `endpoint` (`http://host:port`, one etcd member's client URL), with
    /// [`DEFAULT_REQUEST_TIMEOUT`] and no HTTP proxy.
    pub fn new(endpoint: &str) -> Result<EtcdClient, EtcdError> {
        let http = reqwest::Client::builder().no_proxy().build()?;
        EtcdClient::with_http(endpoint, http, DEFAULT_REQUEST_TIMEOUT)
    }

    /// A client that uses `http` (e.g. one with TLS or a proxy) and times out each call
    /// other than the lock wait after `request_timeout`.
    pub fn with_http(
        endpoint: &str,
        http: reqwest::Client,
        request_timeout: Duration,
    ) -> Result<EtcdClient, EtcdError> {
        Ok(EtcdClient {
            gateway: Arc::new(Gateway::new(endpoint, http, request_timeout)?),
        })
    }

    /// Takes the lock `name`, waiting as long as someone else holds it, on a new lease of
    /// `ttl` (rounded up to whole seconds; etcd may raise it to its minimum). `name` is
    /// also the fence's resource. Wrap the call in `tokio::time::timeout` to bound the
    /// wait: a cancelled call revokes its lease, which withdraws it from the queue.
    pub async fn lock(&self, name: &str, ttl: Duration) -> Result<EtcdLock, EtcdError> {
        Fence::new(name, 0)?;
        let ttl_secs = ttl.as_secs() as i64 + i64::from(ttl.subsec_nanos() > 0);
        let sent = Instant::now();
        let (lease, granted) = self.gateway.grant(ttl_secs.max(1)).await?;
        let granted = Duration::from_secs(granted as u64);
        let keeper = Keeper::spawn(sent, sent + granted, granted / 3, self.renewal(lease));
        let guard = LeaseGuard {
            gateway: self.gateway.clone(),
            lease,
            keeper,
            revoked: false,
        };
        let key = self.gateway.lock(name.as_bytes(), lease).await?;
        let token = self
            .gateway
            .create_revision(&key)
            .await?
            .ok_or(EtcdError::LeaseLost)?;
        if guard.keeper.status() != LeaseStatus::Held {
            return Err(EtcdError::LeaseLost);
        }
        Ok(EtcdLock {
            fence: Fence::new(name, token)?,
            key,
            guard,
        })
    }

    fn renewal(&self, lease: i64) -> impl FnMut() -> RenewFuture + Send + 'static {
        let gateway = self.gateway.clone();
        move || {
            let gateway = gateway.clone();
            Box::pin(async move {
                let ttl = gateway.keepalive(lease).await.map_err(|e| e.to_string())?;
                Ok(ttl.map(|secs| Duration::from_secs(secs as u64)))
            })
        }
    }
}

/// A held etcd lock. Its token is the lock key's create revision.
///
/// Dropping it stops the keepalive and revokes the lease in the background (best effort:
/// without a running tokio runtime the lease simply expires); [`unlock`](Self::unlock)
/// does it now.
#[derive(Debug)]
pub struct EtcdLock {
    fence: Fence,
    key: Vec<u8>,
    guard: LeaseGuard,
}

impl EtcdLock {
    /// The fence to attach to statements: the lock name and the key's create revision.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// The token: the create revision of the lock key.
    pub fn token(&self) -> i64 {
        self.fence.token()
    }

    /// The lock key (`name/<lease id in hex>`).
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The id of the etcd lease the lock key is attached to.
    pub fn lease_id(&self) -> i64 {
        self.guard.lease
    }

    /// Where the lease stands now.
    pub fn status(&self) -> LeaseStatus {
        self.guard.keeper.status()
    }

    /// A signal that fires when the lease is lost (keepalive refused, or none succeeded in
    /// time) or released.
    pub fn lost_signal(&self) -> LostSignal {
        self.guard.keeper.signal()
    }

    /// Releases the lock now by revoking its lease (which deletes the lock key).
    pub async fn unlock(mut self) -> Result<(), EtcdError> {
        self.guard.keeper.stop();
        self.guard.revoked = true;
        self.guard.gateway.revoke(self.guard.lease).await
    }
}

/// A granted lease: kept alive while it lives, revoked in the background on drop.
#[derive(Debug)]
struct LeaseGuard {
    gateway: Arc<Gateway>,
    lease: i64,
    keeper: Keeper,
    revoked: bool,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.keeper.stop();
        if self.revoked {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (gateway, lease) = (self.gateway.clone(), self.lease);
        runtime.spawn(async move {
            if let Err(e) = gateway.revoke(lease).await {
                tracing::warn!(lease, error = %e, "revoking a dropped etcd lease failed; it will expire");
            }
        });
    }
}
