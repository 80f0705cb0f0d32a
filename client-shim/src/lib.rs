//! fencegate-client: the client side of fencegate for Rust and sqlx.
//!
//! A worker that holds a distributed lock attaches the lock's fencing token to its SQL and
//! connects to fencegate instead of PostgreSQL; fencegate rejects the statements of a
//! holder whose token is older than one it has admitted (SQLSTATE `55Z01`). This crate
//! formats the token for fencegate, turns its rejections into typed errors, and gets
//! tokens from fencegate's own lease service or from etcd.
//!
//! ```no_run
//! use std::time::Duration;
//! use fencegate_client::{Lease, FenceError};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! // Connect to fencegate, not to PostgreSQL.
//! let pool = sqlx::PgPool::connect("postgres://app@127.0.0.1:6432/shop").await?;
//! let lease = Lease::acquire(&pool, "jobs:7", "worker-1", Duration::from_secs(10)).await?;
//! let done = fencegate_client::transaction(&pool, lease.fence(), async |conn| {
//!     sqlx::query("UPDATE jobs SET state = 'done' WHERE id = 7")
//!         .execute(&mut *conn)
//!         .await?;
//!     Ok(())
//! })
//! .await;
//! match done {
//!     Ok(()) => {}
//!     // A newer holder got in while we were paused: stop, never retry.
//!     Err(FenceError::LockLost { .. }) => return Ok(()),
//!     Err(e) => return Err(e.into()),
//! }
//! lease.release().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`fence`]: [`Fence`] and its three forms (comment, `SET LOCAL`, connect options);
//!   pure formatting, with the reason `SET LOCAL` is the one to use with sqlx.
//! - [`error`]: [`FenceError`] and [`classify`], which read `55Z01`/`55Z02`/`55Z03`.
//! - [`tx`]: fenced transactions on sqlx ([`begin`], [`transaction`]).
//! - [`keeper`]: background renewal shared by all leases, and the [`LostSignal`].
//! - [`lease`]: [`Lease`] on fencegate's built-in lease service.
//! - [`etcd`]: [`etcd::EtcdLock`], a lock on etcd whose token is the lock key's revision.
//!
//! Tokens from other lock services (ZooKeeper/Curator, Hazelcast, Redisson): see
//! `docs/lock-services.md`; wrap them with [`Fence::new`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod etcd;
pub mod fence;
pub mod keeper;
pub mod lease;
pub mod tx;

pub use error::{classify, FenceError};
pub use fence::{Fence, InvalidFence};
pub use keeper::{LeaseStatus, LostReason, LostSignal};
pub use lease::{Lease, LeaseError, LeaseRequest};
pub use tx::{begin, transaction};
