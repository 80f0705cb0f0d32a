//! Fencing decisions: which statements carry a token, and what the proxy sends to have
//! PostgreSQL check it. Reads SQL through [`crate::sql`]; knows nothing about sockets, the
//! async runtime or database clients; the session reaches it through [`hook`], the one
//! file that adapts it to [`crate::session::hook`].
//!
//! - [`annotation`]: sqlcommenter comments (`fencing_resource`, `fencing_token`).
//! - [`plan`]: the decision for one statement and the SQL that carries it out.
//! - [`cache`]: the per-process lower bound of high-water marks (early rejection).
//! - [`memo`]: the checks a session already sent in its current transaction.
//! - [`seen`]: the tokens a session saw admitted (the cheaper check for a current token).
//! - [`settings_memo`]: the fencing settings a check of this transaction admitted.
//! - [`settings_known`]: the fencing settings the client's own SETs have just set.
//! - [`prepared`]: the session's prepared statements, as the server has confirmed them.
//! - [`hook`]: the per-session hook that applies the decisions to client traffic.
//! - [`stats`]: counters shared by all sessions.
//!
//! The database side (the schema, `migrate`, `require`) is [`crate::schema`].

pub mod annotation;
pub mod cache;
pub mod hook;
pub mod memo;
pub mod plan;
pub mod prepared;
pub mod seen;
pub mod settings_known;
pub mod settings_memo;
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
        if resource.contains(&0) {
            return Err(AnnotationError::NulInResource);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_is_1_to_256_bytes_of_utf8_without_nul() {
        assert!(Fence::new(b"job:7".to_vec(), b"1").is_ok());
        assert!(Fence::new(vec![b'x'; 256], b"1").is_ok());
        for bad in [vec![], vec![b'x'; 257], b"a\0b".to_vec(), vec![0xff]] {
            assert!(Fence::new(bad.clone(), b"1").is_err(), "{bad:?}");
        }
        assert_eq!(
            Fence::new(b"a\0b".to_vec(), b"1"),
            Err(AnnotationError::NulInResource)
        );
    }

    #[test]
    fn tokens_are_non_negative_i64() {
        assert_eq!(parse_token(b"0"), Some(0));
        assert_eq!(parse_token(b"9223372036854775807"), Some(i64::MAX));
        for bad in ["", "-1", "+1", " 1", "1.0", "9223372036854775808", "0x10"] {
            assert_eq!(parse_token(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
