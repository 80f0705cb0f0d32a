//! fencegate: a PostgreSQL wire-protocol proxy that enforces fencing tokens.
//!
//! # Layout
//! Each module is a room that owns one kind of decision; docs/architecture.md says which
//! room a change belongs in.
//!
//! - [`config`]: the settings struct, its defaults and validation. Depends on nothing else.
//! - [`error`]: error types; each says which side (client, upstream, internal) failed.
//! - [`protocol`]: sans-IO message handling: frame splitting with length checks, typed views
//!   of the few messages the proxy must look inside, and builders for what it sends itself.
//! - [`sql`]: reading client SQL without parsing it: statement boundaries, keywords,
//!   comments, what a statement may do, the session's encoding and string rules.
//! - [`fence`]: the fencing decisions: which statements carry a token and what the proxy
//!   sends to have PostgreSQL check it (sans-IO, except its adapter to the session hook).
//! - [`schema`]: the database side: the `fencegate` schema (the authority), `migrate` and
//!   `require`.
//! - [`stream`]: one byte-stream type for TCP, Unix-domain sockets and TLS.
//! - [`tls`]: loading certificates and building rustls configurations.
//! - [`upstream`]: connecting to PostgreSQL and forwarding cancels.
//! - [`session`]: one client connection: negotiation and authentication relay, the steady
//!   state relay loop, and the queue of expected server replies that lets the proxy inject
//!   its own messages and hide their results. Knows fencing only through its hook trait.
//! - [`workers`]: the session threads, one single-threaded runtime each.
//! - [`server`]: the accept loop, the connection limit and the shutdown drain.
//! - [`reload`]: what a SIGHUP changes while serving, and what needs a restart.
//! - [`metrics`]: the Prometheus endpoint (connection counts, fencing counters, check
//!   latency).
//! - [`health`]: `fencegate health`, asking a running proxy's `/status` (container checks).
//! - [`demo`]: `fencegate demo`, the FM12 scenario directly and through the proxy, and
//!   [`demo::pgtemp`], throwaway PostgreSQL clusters (demo, tests).
//!
//! Dependencies point one way, from the top of this list's last entries to its first:
//! `server` → `session` → (`upstream`, `stream`, `tls`, `protocol`) → `config`;
//! `fence` → (`session::hook`, `sql`, `schema`'s SQLSTATEs, `protocol`) → `config`;
//! `sql`, `protocol` and `config` depend on no other room. `session` never names `fence`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod demo;
pub mod error;
pub mod fence;
pub mod health;
pub mod metrics;
pub mod protocol;
pub mod reload;
pub mod schema;
pub mod server;
pub mod session;
pub mod sql;
pub mod stream;
pub mod tls;
pub mod upstream;
pub mod workers;
