//! The settings check the proxy sends for tokens given as settings (`SET [LOCAL]
//! fencing.*`, startup options), and what it learns from it.
//!
//! The first settings check of a transaction runs `fencegate.check_settings` and returns,
//! hidden from the client, the settings it read: the resource (as hex of its bytes in the
//! server encoding, so that the proxy's SQL stays ASCII) and the token. The proxy keeps
//! them as a [`SettingsMemo`] for the rest of the transaction (see `super::memo`). Each
//! later statement then carries a short statement that compares the settings in effect
//! *now* with the memo inside PostgreSQL and calls `check_settings` only when they differ.
//!
//! The comparison runs in the server on every statement because server-side code can
//! change the settings without the proxy seeing it (`set_config` in a function or a
//! trigger). What the proxy keeps is what an earlier check of this transaction admitted,
//! never a value a client could SET to stand for a check.

use crate::protocol::backend::data_row_values;

/// The settings a check admitted earlier in the current transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsMemo {
    /// `fencing.resource`, hex of its bytes in the server encoding.
    resource_hex: String,
    /// `fencing.token` as the setting's text (1 to 19 ASCII digits).
    token: String,
}

/// The settings as the statement reads them, hex of the resource's bytes.
const READ_SETTINGS: &str = "SELECT pg_catalog.current_setting('fencing.resource', true) AS r, \
     pg_catalog.current_setting('fencing.token', true) AS t";
const RESOURCE_HEX: &str =
    "pg_catalog.encode(pg_catalog.convert_to(s.r, pg_catalog.getdatabaseencoding()), 'hex')";

/// The statement (ASCII only) that checks the session's settings: `check_settings` always
/// without a memo, only when the settings differ from it with one. Its one row holds the
/// check's result (NULL when it did not run or found no token), the resource as hex and
/// the token text.
pub fn sql(grace_ms: u32, required: bool, memo: Option<&SettingsMemo>) -> String {
    let check = format!("fencegate.check_settings({grace_ms}, {required})");
    let first = match memo {
        None => check,
        Some(memo) => format!(
            "CASE WHEN s.t OPERATOR(pg_catalog.=) '{}' AND {RESOURCE_HEX} OPERATOR(pg_catalog.=) '{}' \
             THEN NULL ELSE {check} END",
            memo.token, memo.resource_hex
        ),
    };
    format!("SELECT {first}, {RESOURCE_HEX}, s.t FROM ({READ_SETTINGS}) s")
}

/// The memo a row of [`sql`]'s statement gives: `Some` only when the check ran and
/// admitted a token (its result is not NULL) and the values read are well formed.
pub fn learn(row: &[u8]) -> Option<SettingsMemo> {
    let values = data_row_values(row)?;
    let [Some(admitted), Some(resource_hex), Some(token)] = values.as_slice() else {
        return None;
    };
    let digits = |v: &[u8]| !v.is_empty() && v.iter().all(u8::is_ascii_digit);
    let hex = |v: &[u8]| v.len() % 2 == 0 && v.iter().all(u8::is_ascii_hexdigit);
    if !digits(admitted) || token.len() > 19 || !digits(token) || !hex(resource_hex) {
        return None;
    }
    if resource_hex.is_empty() || resource_hex.len() > 512 {
        return None;
    }
    Some(SettingsMemo {
        resource_hex: String::from_utf8_lossy(resource_hex).into_owned(),
        token: String::from_utf8_lossy(token).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
        out
    }

    #[test]
    fn a_row_of_an_admitting_check_is_learned() {
        let memo = learn(&row(&[Some(b"7"), Some(b"6a6f62"), Some(b"7")])).unwrap();
        assert_eq!(memo.token, "7");
        let sql = sql(5000, false, Some(&memo));
        assert!(sql.contains("s.t OPERATOR(pg_catalog.=) '7'"), "{sql}");
        assert!(sql.contains("OPERATOR(pg_catalog.=) '6a6f62'"), "{sql}");
        assert!(sql.is_ascii());
    }

    #[test]
    fn rows_that_admitted_nothing_or_are_odd_are_not_learned() {
        for values in [
            vec![None, Some(&b"6a"[..]), Some(&b"7"[..])],
            vec![Some(&b"7"[..]), None, Some(&b"7"[..])],
            vec![Some(&b"7"[..]), Some(&b"6a"[..]), Some(&b"7'"[..])],
            vec![Some(&b"7"[..]), Some(&b"6a'"[..]), Some(&b"7"[..])],
            vec![Some(&b"7"[..]), Some(&b""[..]), Some(&b"7"[..])],
            vec![Some(&b"7"[..])],
        ] {
            assert_eq!(learn(&row(&values)), None, "{values:?}");
        }
        assert_eq!(learn(b"\x00"), None);
    }
}
