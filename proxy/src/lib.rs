//! fencegate: a PostgreSQL wire-protocol proxy that enforces fencing tokens.
//!
//! # Layout
//! - [`config`]: the settings struct, its defaults and validation.
//! - [`demo`]: `fencegate demo`, the FM12 scenario directly and through the proxy.
//! - [`error`]: error types; each says which side (client, upstream, internal) failed.
//! - [`pgtemp`]: throwaway PostgreSQL clusters from the installed binaries (demo, tests).
//! - [`server`]: the accept loop, the connection limit and the shutdown drain.
//! - [`metrics`]: the Prometheus endpoint (connection counts, fencing counters, check
//!   latency).
//! - [`workers`]: the session threads, one single-threaded runtime each.
//! - [`protocol`]: sans-IO message handling: frame splitting with length checks, typed views
//!   of the few messages the proxy must look inside, and builders for what it sends itself.
//! - [`fence`]: fencing-token extraction and statement classification (sans-IO).
//! - [`session`]: one client connection: negotiation and authentication relay, the steady
//!   state relay loop, and the queue of expected server replies that lets the proxy inject
//!   its own messages and hide their results.
//! - [`upstream`]: connecting to PostgreSQL (TCP with optional TLS, or a Unix-domain socket)
//!   and forwarding cancels.
//! - [`tls`]: loading certificates and building rustls configurations.
//!
//! Dependencies point one way: `server` → `session` → (`protocol`, `upstream`, `tls`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod demo;
pub mod error;
pub mod fence;
pub mod metrics;
pub mod pgtemp;
pub mod protocol;
pub mod server;
pub mod session;
pub mod stream;
pub mod tls;
pub mod upstream;
pub mod workers;
