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

const RESOURCE: &str = "pg_catalog.current_setting('fencing.resource', true)";
const TOKEN: &str = "pg_catalog.current_setting('fencing.token', true)";
const RESOURCE_HEX: &str = "pg_catalog.encode(pg_catalog.convert_to(\
     pg_catalog.current_setting('fencing.resource', true), pg_catalog.getdatabaseencoding()), 'hex')";

/// The statement (ASCII only) that checks the session's settings.
/// - Without a memo: `check_settings`, and in the same row the resource as hex and the
///   token text it read, for [`learn`].
/// - With one: `check_settings` only when the settings differ from the memo, and nothing
///   else (one column, which teaches nothing). No FROM clause, so that PostgreSQL plans it
///   quickly: this statement precedes every later statement of the transaction.
pub fn sql(grace_ms: u32, required: bool, memo: Option<&SettingsMemo>) -> String {
    let check = format!("fencegate.check_settings({grace_ms}, {required})");
    match memo {
        None => format!("SELECT {check}, {RESOURCE_HEX}, {TOKEN}"),
        Some(memo) => format!(
            "SELECT CASE WHEN {TOKEN} OPERATOR(pg_catalog.=) '{}' AND {} THEN NULL ELSE {check} END",
            memo.token,
            memo.resource_matches()
        ),
    }
}

impl SettingsMemo {
    /// The condition that the resource setting is the memo's: a plain literal for printable
    /// ASCII without quotes or backslashes (the same bytes in every server encoding), else
    /// a comparison of the hex of its bytes.
    fn resource_matches(&self) -> String {
        let bytes: Option<Vec<u8>> = (0..self.resource_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(self.resource_hex.get(i..i + 2)?, 16).ok())
            .collect();
        match bytes {
            Some(bytes)
                if bytes
                    .iter()
                    .all(|&b| (b' '..=b'~').contains(&b) && b != b'\'' && b != b'\\') =>
            {
                let text = String::from_utf8_lossy(&bytes);
                format!("{RESOURCE} OPERATOR(pg_catalog.=) '{text}'")
            }
            _ => format!(
                "{RESOURCE_HEX} OPERATOR(pg_catalog.=) '{}'",
                self.resource_hex
            ),
        }
    }
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
        assert!(sql.contains("true) OPERATOR(pg_catalog.=) '7'"), "{sql}");
        assert!(sql.contains("OPERATOR(pg_catalog.=) 'job'"), "{sql}");
        // Anything else is compared as hex, and the SQL stays ASCII.
        for hex in ["6a27", "c3a9", "5c"] {
            let odd = learn(&row(&[Some(b"7"), Some(hex.as_bytes()), Some(b"7")])).unwrap();
            let sql = super::sql(5000, false, Some(&odd));
            assert!(
                sql.contains(&format!("'hex') OPERATOR(pg_catalog.=) '{hex}'")),
                "{sql}"
            );
            assert!(sql.is_ascii());
        }
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
