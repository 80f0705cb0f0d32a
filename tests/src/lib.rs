//! Test harness for fencegate's integration tests.
//!
//! # Layout
//! - [`activity`]: wait until a query is running (`pg_stat_activity`), then cancel it.
//! - [`compare`]: run one scenario directly and through the proxy, require equal results.
//! - [`pgbin`]: the installed PostgreSQL binaries, located once per test process.
//! - [`cluster`]: a throwaway PostgreSQL cluster (on `fencegate::demo::pgtemp`) with the test users
//!   and their authentication methods; one shared per test binary, a fresh database per test.
//! - [`fake_upstream`]: a scripted fake server, for faults a real Postgres will not produce.
//! - [`inject`]: a no-op injecting hook, to prove the reply queue hides what it injects.
//! - [`fence`]: helpers for the fencing tests (schema install, tokens, SQLSTATEs).
//! - [`memo`]: the table and token-carrying statements of the check-memo tests.
//! - [`lockset`]: the lock service and workload of the Jepsen-style test.
//! - [`endpoint`]: where a client connects (Postgres directly or the proxy), and how to build
//!   `psql`/`pgbench`/`pg_dump` commands and tokio-postgres configs for it.
//! - [`netns`]: a second host in a network namespace, for clients not on loopback.
//! - [`pgbouncer`]: PgBouncer in transaction mode in front of the cluster.
//! - [`proxy`]: the proxy started in-process on `127.0.0.1:0`, on its own runtime thread.
//! - [`wire`]: a small blocking raw-protocol client for byte-level comparisons.
//! - [`transcript`]: byte-level scenarios compared directly and through an injecting proxy.
//! - [`raw`]: raw sockets for fault tests: arbitrary bytes, reads with deadlines, resets.
//!
//! Every integration test runs the same client once against Postgres directly and once
//! through the proxy, and compares what the client saw.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod activity;
pub mod cluster;
pub mod compare;
pub mod endpoint;
pub mod fake_upstream;
pub mod fence;
pub mod inject;
pub mod lockset;
pub mod memo;
pub mod netns;
pub mod pgbin;
pub mod pgbouncer;
pub mod proxy;
pub mod raw;
pub mod transcript;
pub mod wire;

pub use cluster::Cluster;
pub use endpoint::Endpoint;
pub use proxy::TestProxy;

/// Installs a tracing subscriber once per test binary, filtered by `RUST_LOG` (default: warn),
/// writing through the test harness so output is shown only for failing tests.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}
