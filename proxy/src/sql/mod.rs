//! Reading client SQL without parsing it: where statements end, their leading keywords and
//! comments, what a statement may do, and by which rules (encoding, string syntax) the
//! session's text must be read. Works on the client's bytes, knows nothing of fencing,
//! sockets or the database.
//!
//! - [`lexer`]: splits Query strings into statements and finds keywords and comments
//!   without decoding the client's bytes.
//! - [`classify`]: what a statement may do (transaction control, read, write, must run
//!   outside a transaction block) and whether it may change the fencing settings.
//! - [`reading`]: the client encoding and string rules the session's SQL is read by.

pub mod classify;
pub mod lexer;
pub mod reading;

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
    fn case_insensitive_search() {
        assert!(contains_ignore_case(b"SET FENCING.token = 1", b"fencing."));
        assert!(!contains_ignore_case(b"fenc", b"fencing."));
    }
}
