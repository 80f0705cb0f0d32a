//! Sans-IO PostgreSQL protocol handling: no sockets, no async.
//!
//! - [`framing`]: split a byte buffer into messages, checking the length header first.
//! - [`startup`]: classify the untagged packets of the startup phase.
//! - [`frontend`]: message tags a client sends and typed views of the few the proxy reads.
//! - [`backend`]: message tags a server sends and typed views of the few the proxy reads.
//! - [`build`]: encode the messages the proxy sends itself (via `pgwire`'s types).
//!
//! Frontend and backend tags collide (`D`, `E`, `S`, `C` mean different things each way), so
//! each direction has its own module.

pub mod backend;
pub mod build;
pub mod framing;
pub mod frontend;
pub mod startup;

/// Reads a NUL-terminated string at the start of `bytes`, returning it and the rest.
/// `None` when there is no NUL: the caller treats that as a malformed message.
pub(crate) fn cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    // memchr rather than a byte loop: a Query's text is one such string, read on every
    // Query, and the loop was a twentieth of the proxy's instructions per round trip.
    let nul = memchr::memchr(0, bytes)?;
    Some((&bytes[..nul], &bytes[nul + 1..]))
}
