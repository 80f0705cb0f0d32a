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
//!
//! The first settings check of a later transaction is sent with what the session believes
//! the settings are ([`SettingsBelief`], what the last such check admitted): `CALL
//! fencegate.admit_settings` admits them with one read of the fence row when they are still
//! in effect and says so, else checks the settings in effect as the first check does.
//!
//! The comparison is `CALL fencegate.settings_unchanged` (schema 11), a procedure whose
//! plans PostgreSQL keeps for the session and which it neither plans nor runs as a query,
//! when the database has it; else the same comparison written out as a statement, which
//! PostgreSQL parses and plans each time. Whether a database has it, the session learns
//! from its first check: until it knows, that check's row also says whether the database
//! has schema 11's procedures ([`PROCEDURES_PROBE`]).

use super::plan::{push_hex, Procedures, PROCEDURES_PROBE};
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

/// How [`sql`]'s check with a belief begins.
const WITH_BELIEF: &str = "CALL fencegate.admit_settings(";

/// What a session believes its settings are, across transactions, for the first settings
/// check of each ([`sql`]): what the last check that said so admitted. A belief only
/// chooses the path: PostgreSQL compares it with the settings in effect, and where they
/// differ checks those as without it; the transaction's memo takes the belief only from a
/// row saying it was admitted there.
#[derive(Debug, Default)]
pub struct SettingsBelief {
    held: Option<SettingsMemo>,
    /// The belief the last `admit_settings` was sent with. Rows come back in the order the
    /// calls were sent, and a belief changes only on such a row or on the row of a check
    /// sent without one, so a row's call was sent with this one.
    sent: Option<SettingsMemo>,
}

impl SettingsBelief {
    /// [`sql`] with this belief, noting it when the statement carries it.
    pub fn sql(
        &mut self,
        grace_ms: u32,
        required: bool,
        memo: Option<&SettingsMemo>,
        has_compare: Procedures,
    ) -> String {
        let sql = sql(grace_ms, required, memo, self.held.as_ref(), has_compare);
        if sql.starts_with(WITH_BELIEF) {
            self.sent = self.held.clone();
        }
        sql
    }

    /// What a row of a settings check teaches ([`learn`], or an `admit_settings` row: the
    /// belief it was sent with when the settings were that, else that the belief is gone).
    /// `None` for a row of neither shape.
    pub fn learn(&mut self, row: &[u8]) -> Option<Learned> {
        if let Some(learned) = learn(row) {
            if let Some(memo) = &learned.memo {
                self.held = Some(memo.clone());
            }
            return Some(learned);
        }
        let memo = match matched(row)? {
            true => self.sent.clone(),
            false => None,
        };
        if memo.is_none() {
            self.held = None;
        }
        Some(Learned {
            memo,
            has_compare: None,
        })
    }
}

/// The statement (ASCII only) that checks the session's settings.
/// - Without a memo, with a `belief` (what an earlier transaction's memo held) in a
///   database with schema 11: `CALL admit_settings`, which admits the belief when the
///   settings are the belief's and says so in its row ([`matched`]), else runs
///   `check_settings`.
/// - Without a memo otherwise: `check_settings`, and in the same row the resource as hex and the
///   token text it read, for [`learn`]; while `has_compare` is unknown, also whether the
///   database has `settings_unchanged`.
/// - With one: `check_settings` only when the settings differ from the memo, and nothing
///   that teaches anything: `CALL settings_unchanged` (no row) where the database has it
///   and the resource is a plain literal, else the comparison written out (one column),
///   with no FROM clause so that PostgreSQL plans it quickly.
pub fn sql(
    grace_ms: u32,
    required: bool,
    memo: Option<&SettingsMemo>,
    belief: Option<&SettingsMemo>,
    has_compare: Procedures,
) -> String {
    let check = format!("fencegate.check_settings({grace_ms}, {required})");
    match memo {
        None if has_compare.is_none() => {
            format!("SELECT {check}, {RESOURCE_HEX}, {TOKEN}, {PROCEDURES_PROBE}")
        }
        None => match (has_compare, belief.and_then(SettingsMemo::believable)) {
            (Some(true), Some((token, resource))) => format!(
                "{WITH_BELIEF}'{token}', '{resource}', {grace_ms}, {required}, NULL)"
            ),
            _ => format!("SELECT {check}, {RESOURCE_HEX}, {TOKEN}"),
        },
        Some(memo) => match (has_compare, memo.plain_resource()) {
            (Some(true), Some(resource)) if grace_ms == DEFAULT_GRACE_MS && !required => {
                format!(
                    "CALL fencegate.settings_unchanged('{}', '{resource}')",
                    memo.token
                )
            }
            (Some(true), Some(resource)) => format!(
                "CALL fencegate.settings_unchanged('{}', '{resource}', {grace_ms}, {required})",
                memo.token
            ),
            _ => format!(
                "SELECT CASE WHEN {TOKEN} OPERATOR(pg_catalog.=) '{}' AND {} THEN NULL ELSE {check} END",
                memo.token,
                memo.resource_matches()
            ),
        },
    }
}

/// The grace the two-argument `settings_unchanged` (schema 13) passes on: the default.
const DEFAULT_GRACE_MS: u32 = 5000;

impl SettingsMemo {
    /// The memo of a resource that is printable ASCII without quote or backslash, and a
    /// token's canonical text (see `super::settings_known`).
    pub fn from_plain(resource: &str, token: &str) -> SettingsMemo {
        let mut resource_hex = String::with_capacity(2 * resource.len());
        push_hex(&mut resource_hex, resource.as_bytes());
        SettingsMemo {
            resource_hex,
            token: token.to_string(),
        }
    }

    /// The token and resource as `admit_settings` takes them, when they can be: the token
    /// in canonical text (what `admit_settings` compares the setting with) and the resource
    /// as a plain literal.
    fn believable(&self) -> Option<(&str, String)> {
        let canonical = self.token == "0" || !self.token.starts_with('0');
        if !canonical {
            return None;
        }
        Some((self.token.as_str(), self.plain_resource()?))
    }

    /// The resource as it reads in a plain literal: printable ASCII without quotes or
    /// backslashes (the same bytes in every server encoding), else `None`.
    fn plain_resource(&self) -> Option<String> {
        let bytes: Option<Vec<u8>> = (0..self.resource_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(self.resource_hex.get(i..i + 2)?, 16).ok())
            .collect();
        let bytes = bytes?;
        let plain = bytes
            .iter()
            .all(|&b| (b' '..=b'~').contains(&b) && b != b'\'' && b != b'\\');
        plain.then(|| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The condition that the resource setting is the memo's: a plain literal where
    /// [`Self::plain_resource`] allows, else a comparison of the hex of its bytes.
    fn resource_matches(&self) -> String {
        match self.plain_resource() {
            Some(text) => format!("{RESOURCE} OPERATOR(pg_catalog.=) '{text}'"),
            None => format!(
                "{RESOURCE_HEX} OPERATOR(pg_catalog.=) '{}'",
                self.resource_hex
            ),
        }
    }
}

/// What a first settings check's row teaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// What the check admitted, when it admitted a token.
    pub memo: Option<SettingsMemo>,
    /// Whether the database has `settings_unchanged`, when the row says.
    pub has_compare: Procedures,
}

/// What a row of [`sql`]'s first check teaches: the memo only when the check ran and
/// admitted a token (its result is not NULL) and the values read are well formed; whether
/// the database has `settings_unchanged` when the row carries the fourth column. `None` for a
/// row of any other shape.
pub fn learn(row: &[u8]) -> Option<Learned> {
    let values = data_row_values(row)?;
    let (admitted, resource_hex, token, has_compare) = match values.as_slice() {
        [a, r, t] => (*a, *r, *t, None),
        [a, r, t, Some(h)] if matches!(*h, b"t" | b"f") => (*a, *r, *t, Some(*h == b"t")),
        _ => return None,
    };
    let digits = |v: &[u8]| !v.is_empty() && v.iter().all(u8::is_ascii_digit);
    let hex = |v: &[u8]| v.len() % 2 == 0 && v.iter().all(u8::is_ascii_hexdigit);
    let memo = match (admitted, resource_hex, token) {
        (Some(admitted), Some(resource_hex), Some(token))
            if digits(admitted)
                && token.len() <= 19
                && digits(token)
                && hex(resource_hex)
                && !resource_hex.is_empty()
                && resource_hex.len() <= 512 =>
        {
            Some(SettingsMemo {
                resource_hex: String::from_utf8_lossy(resource_hex).into_owned(),
                token: String::from_utf8_lossy(token).into_owned(),
            })
        }
        _ => None,
    };
    Some(Learned { memo, has_compare })
}

/// The row of `CALL admit_settings`: whether the settings were the belief, which it then
/// admitted. `None` for a row of any other shape.
fn matched(row: &[u8]) -> Option<bool> {
    match data_row_values(row)?.as_slice() {
        [Some(b"t")] => Some(true),
        [Some(b"f")] => Some(false),
        _ => None,
    }
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

    fn memo_of(values: &[Option<&[u8]>]) -> SettingsMemo {
        learn(&row(values)).and_then(|l| l.memo).expect("a memo")
    }

    #[test]
    fn a_row_of_an_admitting_check_is_learned() {
        let memo = memo_of(&[Some(&b"7"[..]), Some(&b"6a6f62"[..]), Some(&b"7"[..])]);
        assert_eq!(memo.token, "7");
        for has_compare in [None, Some(false)] {
            let sql = sql(5000, false, Some(&memo), None, has_compare);
            assert!(sql.contains("true) OPERATOR(pg_catalog.=) '7'"), "{sql}");
            assert!(sql.contains("OPERATOR(pg_catalog.=) 'job'"), "{sql}");
        }
        // Anything else is compared as hex, and the SQL stays ASCII.
        for hex in ["6a27", "c3a9", "5c"] {
            let odd = memo_of(&[Some(&b"7"[..]), Some(hex.as_bytes()), Some(&b"7"[..])]);
            let sql = super::sql(5000, false, Some(&odd), None, Some(true));
            assert!(
                sql.contains(&format!("'hex') OPERATOR(pg_catalog.=) '{hex}'")),
                "{sql}"
            );
            assert!(sql.is_ascii());
        }
    }

    #[test]
    fn the_comparison_is_the_function_where_the_database_has_it() {
        let memo = memo_of(&[Some(&b"7"[..]), Some(&b"6a6f62"[..]), Some(&b"7"[..])]);
        assert_eq!(
            sql(5000, true, Some(&memo), None, Some(true)),
            "CALL fencegate.settings_unchanged('7', 'job', 5000, true)"
        );
        // The first check asks whether it exists only while the session does not know.
        assert!(sql(5000, false, None, None, None).ends_with("IS NOT NULL"));
        for known in [Some(true), Some(false)] {
            assert!(!sql(5000, false, None, None, known).contains("to_regprocedure"));
        }
        for (flag, has) in [(&b"t"[..], true), (&b"f"[..], false)] {
            let learned = learn(&row(&[
                Some(&b"7"[..]),
                Some(&b"6a"[..]),
                Some(&b"7"[..]),
                Some(flag),
            ]))
            .unwrap();
            assert_eq!(learned.has_compare, Some(has));
            assert!(learned.memo.is_some());
            // Known even when nothing was admitted (no token set).
            let learned = learn(&row(&[None, None, None, Some(flag)])).unwrap();
            assert_eq!((learned.memo, learned.has_compare), (None, Some(has)));
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
        ] {
            assert_eq!(
                learn(&row(&values)).and_then(|l| l.memo),
                None,
                "{values:?}"
            );
        }
        for odd in [
            vec![Some(&b"7"[..])],
            vec![
                Some(&b"7"[..]),
                Some(&b"6a"[..]),
                Some(&b"7"[..]),
                Some(&b"x"[..]),
            ],
            vec![Some(&b"7"[..]), Some(&b"6a"[..]), Some(&b"7"[..]), None],
        ] {
            assert_eq!(learn(&row(&odd)), None, "{odd:?}");
        }
        assert_eq!(learn(b"\x00"), None);
    }

    #[test]
    fn a_belief_is_sent_to_admit_settings_only_where_it_can_be_compared() {
        let job = memo_of(&[Some(&b"7"[..]), Some(&b"6a6f62"[..]), Some(&b"7"[..])]);
        assert_eq!(
            sql(5000, false, None, Some(&job), Some(true)),
            "CALL fencegate.admit_settings('7', 'job', 5000, false, NULL)"
        );
        // Not without schema 11, and not for a token or resource it cannot compare as
        // written: then the first check reads and returns the settings, as without a belief.
        let zero = memo_of(&[Some(&b"7"[..]), Some(&b"6a6f62"[..]), Some(&b"07"[..])]);
        let quote = memo_of(&[Some(&b"7"[..]), Some(&b"6a27"[..]), Some(&b"7"[..])]);
        for (belief, has) in [
            (&job, None),
            (&job, Some(false)),
            (&zero, Some(true)),
            (&quote, Some(true)),
        ] {
            let sql = sql(5000, false, None, Some(belief), has);
            assert!(
                sql.starts_with("SELECT fencegate.check_settings(5000, false), "),
                "{sql}"
            );
        }
        // A memo of the transaction comes first: then only the comparison.
        assert!(sql(5000, false, Some(&job), Some(&job), Some(true))
            .starts_with("CALL fencegate.settings_unchanged("));
        assert_eq!(matched(&row(&[Some(&b"t"[..])])), Some(true));
        assert_eq!(matched(&row(&[Some(&b"f"[..])])), Some(false));
        for odd in [
            vec![None],
            vec![Some(&b"7"[..])],
            vec![Some(&b"t"[..]), Some(&b"t"[..])],
        ] {
            assert_eq!(matched(&row(&odd)), None, "{odd:?}");
        }
    }

    #[test]
    fn a_belief_comes_from_admitting_rows_and_goes_with_a_mismatch() {
        let mut belief = SettingsBelief::default();
        let first = belief.sql(5000, false, None, Some(true));
        assert!(
            first.starts_with("SELECT fencegate.check_settings("),
            "{first}"
        );
        let job = row(&[Some(&b"7"[..]), Some(&b"6a6f62"[..]), Some(&b"7"[..])]);
        assert!(belief.learn(&job).unwrap().memo.is_some());
        // The next transaction: the belief is sent, and its row says it was admitted.
        assert!(belief
            .sql(5000, false, None, Some(true))
            .starts_with(WITH_BELIEF));
        let admitted = belief.learn(&row(&[Some(&b"t"[..])])).unwrap();
        assert_eq!(admitted.memo.map(|m| m.token), Some("7".to_string()));
        // Then the settings were something else: no memo, and no belief any more.
        assert!(belief
            .sql(5000, false, None, Some(true))
            .starts_with(WITH_BELIEF));
        assert_eq!(belief.learn(&row(&[Some(&b"f"[..])])).unwrap().memo, None);
        let again = belief.sql(5000, false, None, Some(true));
        assert!(
            again.starts_with("SELECT fencegate.check_settings("),
            "{again}"
        );
        // A row of no settings check teaches nothing.
        assert_eq!(belief.learn(&row(&[Some(&b"1"[..])])), None);
    }
}
