//! Fencing: which statements carry a token, and what the proxy sends to have PostgreSQL
//! check it. Knows nothing about sockets; the session reaches it through [`hook`].
//!
//! - [`sql`]: a lexer that splits Query strings into statements and finds keywords and
//!   comments without decoding the client's bytes.
//! - [`annotation`]: sqlcommenter comments (`fencing_resource`, `fencing_token`).
//! - [`cache`]: the per-process lower bound of high-water marks (early rejection).
//! - [`classify`]: what a statement may do (transaction control, read, write, must run
//!   outside a transaction block) and whether it may change the fencing settings.
//! - [`plan`]: the decision for one statement and the SQL that carries it out.
//! - [`schema`]: the `fencegate` schema that `migrate` installs (the authority).
//! - [`admin`]: direct connections of the administrative commands.
//! - [`migrate`]: installing the schema (`fencegate migrate`).
//! - [`require`]: tables that refuse writes without a token (`fencegate require`).
//! - [`hook`]: the per-session hook that applies the decisions to client traffic.
//! - [`prepared`]: the session's prepared statements, as the server has confirmed them.
//! - [`memo`]: the checks a session already sent in its current transaction.
//! - [`reading`]: the client encoding and string rules the session's SQL is read by.
//! - [`stats`]: counters shared by all sessions.

pub mod admin;
pub mod annotation;
pub mod cache;
pub mod classify;
pub mod hook;
pub mod memo;
pub mod migrate;
pub mod plan;
pub mod prepared;
pub mod reading;
pub mod require;
pub mod schema;
pub mod settings_memo;
pub mod sql;
pub mod stats;

use annotation::{AnnotationError, MAX_RESOURCE_LEN};

/// A resource and the fencing token presented for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    /// What the lock protects (1..=256 bytes of UTF-8).
    pub resource: String,
    /// The lock grant's token (0..=i64::MAX).
    pub token: i64,
}

impl Fence {
    /// Validates a resource and a token given as text.
    pub fn new(resource: Vec<u8>, token: &[u8]) -> Result<Fence, AnnotationError> {
        if resource.is_empty() || resource.len() > MAX_RESOURCE_LEN {
            return Err(AnnotationError::BadResource(resource.len()));
        }
        let len = resource.len();
        let resource =
            String::from_utf8(resource).map_err(|_| AnnotationError::BadResource(len))?;
        let token = parse_token(token).ok_or_else(|| {
            AnnotationError::BadToken(String::from_utf8_lossy(token).into_owned())
        })?;
        Ok(Fence { resource, token })
    }
}

/// Parses a token: decimal digits only, 0..=i64::MAX.
pub fn parse_token(text: &[u8]) -> Option<i64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse::<i64>().ok()
}

/// Finds `needle` (lower-case ASCII) in `hay`, ignoring ASCII case.
pub(crate) fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    // Runs on every Query: jump between candidate first bytes with memchr instead of
    // comparing a window at every offset.
    let last_start = match hay.len().checked_sub(needle.len()) {
        Some(n) => n,
        None => return false,
    };
    memchr::memchr2_iter(first.to_ascii_lowercase(), first.to_ascii_uppercase(), hay)
        .take_while(|&at| at <= last_start)
        .any(|at| hay[at + 1..at + needle.len()].eq_ignore_ascii_case(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_non_negative_i64() {
        assert_eq!(parse_token(b"0"), Some(0));
        assert_eq!(parse_token(b"9223372036854775807"), Some(i64::MAX));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b" 1",
            b"1.0",
            b"9223372036854775808",
            b"0x10",
        ] {
            assert_eq!(parse_token(bad), None, "{:?}", bad);
        }
    }

    #[test]
    fn case_insensitive_search() {
        assert!(contains_ignore_case(b"SET FENCING.token = 1", b"fencing."));
        assert!(!contains_ignore_case(b"fenc", b"fencing."));
    }
}
