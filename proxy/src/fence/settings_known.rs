//! What the client's own SET statements have just set, so that the first settings check of a
//! transaction need not read the settings back (schema 13, `fencegate.admit_set`).
//!
//! A client that gives its token as settings usually opens each transaction with `SET LOCAL
//! fencing.resource = '...'` and `SET LOCAL fencing.token = N`. When the proxy read both,
//! each in a Query that began inside the transaction block, and nothing else was sent
//! since, the settings in effect are what those statements set: a SET of a placeholder
//! setting runs no code of anyone's, and a failed one would have left the block aborted,
//! which the next Query's boundary would have shown. The first settings check is then
//! `CALL fencegate.admit_set(r, t, grace)`, which compares the settings with (r, t) inside
//! PostgreSQL all the same and admits them as `admit_current` does, and the transaction's
//! memo is (r, t) from the moment the check is sent, as a comment token's record is: the
//! check either admits them or fails the transaction. Were the proxy ever to misread a
//! SET, `admit_set` refuses the statement instead of admitting other settings than the
//! memo says (docs/fencing.md, "Settings the client just set").
//!
//! Only forms that PostgreSQL stores as the proxy reads them count: `SET [LOCAL | SESSION]
//! fencing.resource {= | TO} '<printable ASCII, no quote or backslash>'` and `SET [LOCAL |
//! SESSION] fencing.token {= | TO} <digits>` (or the digits quoted), the token in its
//! canonical text (no sign, no leading zero, at most `i64::MAX`). Anything else, another
//! statement included, forgets what was known; so does every message other than a Query,
//! and after an extended-protocol message nothing is learned until a Sync (an Execute of
//! COMMIT without a Sync ends the block with no ReadyForQuery to say so).

use super::settings_memo::SettingsMemo;

/// Longest resource name (SPEC: 1..=256 bytes).
const MAX_RESOURCE: usize = 256;

/// Which fencing setting a recognised SET sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    Resource,
    Token,
}

/// The settings the client's SET statements set since the last thing that may have changed
/// them.
#[derive(Debug, Default)]
pub struct KnownSettings {
    resource: Option<String>,
    token: Option<String>,
    /// The current Query began inside a transaction block and only recognised SETs have
    /// run in it so far: a SET now is sure to run inside the block.
    in_block: bool,
    /// An extended-protocol message was sent since the last Sync: what it ran (a COMMIT
    /// executed without a Sync) may have ended the block with no ReadyForQuery to say so.
    unsynced: bool,
}

impl KnownSettings {
    /// A Query begins; `in_block`: the last ReadyForQuery said the session is in a
    /// transaction block and none still to come may say otherwise.
    pub fn query_begins(&mut self, in_block: bool) {
        let in_block = in_block && !self.unsynced;
        self.in_block = in_block;
        if !in_block {
            self.forget();
        }
    }

    /// Before each statement of a Query: learns from it when it is a SET this module reads
    /// and returns true; otherwise returns false, and the caller calls [`Self::forget`]
    /// once it has decided the statement's check (which may use what is known).
    pub fn statement(&mut self, text: &[u8]) -> bool {
        let Some((setting, value)) = recognize(text).filter(|_| self.in_block) else {
            self.in_block = false;
            return false;
        };
        match setting {
            Setting::Resource => self.resource = Some(value.to_string()),
            Setting::Token => self.token = Some(value.to_string()),
        }
        true
    }

    /// An extended-protocol message other than Sync is being sent.
    pub fn extended_message(&mut self) {
        self.unsynced = true;
        self.forget();
    }

    /// A Sync is being sent: the ReadyForQuery it brings tells the status again.
    pub fn sync(&mut self) {
        self.unsynced = false;
        self.forget();
    }

    /// Something other than a SET this module reads was sent, or may run next.
    pub fn forget(&mut self) {
        self.resource = None;
        self.token = None;
    }

    /// The first settings check for what is known, and the memo it stands for, when both
    /// settings are known.
    pub fn admit_sql(&self, grace_ms: u32) -> Option<(String, SettingsMemo)> {
        let (resource, token) = (self.resource.as_deref()?, self.token.as_deref()?);
        let sql = format!("CALL fencegate.admit_set('{resource}', '{token}', {grace_ms})");
        Some((sql, SettingsMemo::from_plain(resource, token)))
    }
}

/// The setting and value of a SET this module reads (see the module's documentation).
fn recognize(text: &[u8]) -> Option<(Setting, &str)> {
    let text = std::str::from_utf8(text).ok()?;
    let rest = keyword(text.trim_start_matches(is_space), "set")?;
    let rest = keyword(rest, "local")
        .or_else(|| keyword(rest, "session"))
        .unwrap_or(rest);
    let rest = prefix_ignore_case(rest, "fencing.")?;
    let (setting, rest) = match (
        prefix_ignore_case(rest, "resource"),
        prefix_ignore_case(rest, "token"),
    ) {
        (Some(rest), _) => (Setting::Resource, rest),
        (_, Some(rest)) => (Setting::Token, rest),
        _ => return None,
    };
    // The name ends here, or it is another name (`fencing.tokens`).
    if !(rest.starts_with('=') || rest.starts_with(is_space)) {
        return None;
    }
    let rest = rest.trim_start_matches(is_space);
    let value = match rest.strip_prefix('=') {
        Some(value) => value,
        None => keyword(rest, "to").or_else(|| quoted_after_to(rest))?,
    };
    let value = value.trim_matches(is_space);
    let value = match value.strip_prefix('\'') {
        Some(quoted) => plain_quoted(quoted)?,
        None if setting == Setting::Token => value,
        None => return None,
    };
    let valid = match setting {
        Setting::Resource => (1..=MAX_RESOURCE).contains(&value.len()),
        Setting::Token => canonical_token(value),
    };
    valid.then_some((setting, value))
}

/// PostgreSQL's whitespace between tokens.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

fn prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// `word` (any case) followed by whitespace, and the text after that whitespace.
fn keyword<'a>(text: &'a str, word: &str) -> Option<&'a str> {
    let rest = prefix_ignore_case(text, word)?;
    let after = rest.trim_start_matches(is_space);
    (after.len() < rest.len()).then_some(after)
}

/// `TO'value'`: the keyword directly followed by a quote.
fn quoted_after_to(text: &str) -> Option<&str> {
    prefix_ignore_case(text, "to").filter(|rest| rest.starts_with('\''))
}

/// The body of a quoted literal that ends the text, when it is printable ASCII without a
/// quote or backslash (so it reads the same with `standard_conforming_strings` on or off,
/// and in every encoding).
fn plain_quoted(quoted: &str) -> Option<&str> {
    let body = quoted.strip_suffix('\'')?;
    body.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'\'' && b != b'\\')
        .then_some(body)
}

/// Digits that PostgreSQL keeps as written and `admit_set` compares with the token's
/// canonical text: no leading zero, at most `i64::MAX`.
fn canonical_token(value: &str) -> bool {
    !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'))
        && value.parse::<i64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_postgresql_stores_as_written_are_read() {
        for (sql, setting, value) in [
            (
                "SET LOCAL fencing.resource = 'bench-1'",
                Setting::Resource,
                "bench-1",
            ),
            (
                "set local FENCING.RESOURCE to 'job:7'",
                Setting::Resource,
                "job:7",
            ),
            ("  SET fencing.resource='a b'  ", Setting::Resource, "a b"),
            ("SET SESSION fencing.resource TO'x'", Setting::Resource, "x"),
            ("SET LOCAL fencing.token = 7", Setting::Token, "7"),
            ("SET LOCAL fencing.token TO '42'", Setting::Token, "42"),
            ("SET\tLOCAL\nfencing.token=0", Setting::Token, "0"),
            (
                "SET LOCAL fencing.token = 9223372036854775807",
                Setting::Token,
                "9223372036854775807",
            ),
        ] {
            assert_eq!(recognize(sql.as_bytes()), Some((setting, value)), "{sql}");
        }
    }

    #[test]
    fn anything_that_may_read_otherwise_is_not() {
        for sql in [
            // PostgreSQL would store these differently from the text, or the proxy could
            // not say how.
            "SET LOCAL fencing.token = 07",
            "SET LOCAL fencing.token = '007'",
            "SET LOCAL fencing.token = -7",
            "SET LOCAL fencing.token = 9223372036854775808",
            "SET LOCAL fencing.token = 7.0",
            "SET LOCAL fencing.resource = E'job'",
            "SET LOCAL fencing.resource = 'a\\b'",
            "SET LOCAL fencing.resource = 'it''s'",
            "SET LOCAL fencing.resource = job",
            "SET LOCAL fencing.resource = ''",
            "SET LOCAL fencing.resource = 'a', 'b'",
            "SET LOCAL fencing.resource = 'caf\u{e9}'",
            "SET LOCAL fencing.token = 7 /* c */",
            "SET LOCAL fencing.token TO DEFAULT",
            // Other settings, other statements.
            "SET LOCAL fencing.tokens = 7",
            "SET LOCAL fencing . token = 7",
            "SET LOCAL \"fencing\".token = 7",
            "SET LOCAL bench.token = 7",
            "SETLOCAL fencing.token = 7",
            "SET LOCAL fencing.tokento 7",
            "RESET fencing.token",
            "SELECT set_config('fencing.token', '7', true)",
        ] {
            assert_eq!(recognize(sql.as_bytes()), None, "{sql}");
        }
        let long = format!("SET LOCAL fencing.resource = '{}'", "x".repeat(257));
        assert_eq!(recognize(long.as_bytes()), None);
    }

    fn known_after(in_block: bool, statements: &[&str]) -> Option<String> {
        let mut known = KnownSettings::default();
        known.query_begins(in_block);
        for sql in statements {
            if !known.statement(sql.as_bytes()) {
                known.forget();
            }
        }
        known.admit_sql(5000).map(|(sql, _)| sql)
    }

    #[test]
    fn both_settings_set_inside_the_block_with_nothing_between_are_known() {
        let r = "SET LOCAL fencing.resource = 'job:7'";
        let t = "SET LOCAL fencing.token = 5";
        assert_eq!(
            known_after(true, &[r, t]).as_deref(),
            Some("CALL fencegate.admit_set('job:7', '5', 5000)")
        );
        assert_eq!(known_after(true, &[t]), None, "the resource is not known");
        assert_eq!(
            known_after(false, &[r, t]),
            None,
            "not inside the block for sure"
        );
        assert_eq!(known_after(true, &[r, "SELECT 1", t]), None);
        // After another statement of the same Query, a SET may run outside the block.
        assert_eq!(known_after(true, &["COMMIT", r, t]), None);
        // The later SET of one setting wins, as in PostgreSQL.
        let again = known_after(true, &[r, t, "SET LOCAL fencing.token = 6"]);
        assert_eq!(
            again.as_deref(),
            Some("CALL fencegate.admit_set('job:7', '6', 5000)")
        );
    }

    #[test]
    fn an_extended_round_without_sync_leaves_the_block_in_doubt() {
        let mut known = KnownSettings::default();
        known.extended_message(); // say, Parse/Bind/Execute of COMMIT, no Sync yet
        known.query_begins(true);
        assert!(!known.statement(b"SET LOCAL fencing.resource = 'r'"));
        known.sync();
        known.query_begins(true);
        assert!(known.statement(b"SET LOCAL fencing.resource = 'r'"));
        assert!(known.statement(b"SET LOCAL fencing.token = 1"));
        assert!(known.admit_sql(5000).is_some());
        known.extended_message();
        assert!(known.admit_sql(5000).is_none());
    }

    #[test]
    fn a_new_query_outside_the_block_forgets() {
        let mut known = KnownSettings::default();
        known.query_begins(true);
        assert!(known.statement(b"SET LOCAL fencing.resource = 'r'"));
        assert!(known.statement(b"SET LOCAL fencing.token = 1"));
        assert!(known.admit_sql(5000).is_some());
        known.query_begins(true);
        assert!(
            known.admit_sql(5000).is_some(),
            "the next Query in the block"
        );
        known.query_begins(false);
        assert!(known.admit_sql(5000).is_none());
    }
}
