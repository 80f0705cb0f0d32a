//! The decision for one statement, and the SQL the proxy sends to carry it out.

use super::annotation::{self, AnnotationError, LastComment};
use super::Fence;
use crate::config::Config;
pub use crate::config::FenceMode;
use crate::protocol::backend::data_row_values;
use crate::sql::classify::{classify_noting_comments, Class, Kind};
use crate::sql::lexer::{Lexer, Token};

/// The operator's fencing settings.
#[derive(Debug, Clone, Default)]
pub struct FencePolicy {
    /// Which statements are checked.
    pub mode: FenceMode,
    /// Milliseconds a newer holder waits behind an older holder's open transaction before
    /// that transaction is ended (0: never end it).
    pub grace_ms: u32,
    /// Tables (lower-case names) that may only be written with a token.
    pub require_token_tables: Vec<String>,
}

impl FencePolicy {
    /// The fencing policy the proxy's settings describe.
    pub fn from_config(config: &Config) -> Self {
        FencePolicy {
            mode: config.fence_mode,
            grace_ms: config.preempt_grace.as_millis().min(i32::MAX as u128) as u32,
            require_token_tables: config
                .require_token_tables
                .iter()
                .map(|t| t.to_lowercase())
                .collect(),
        }
    }
}

/// What to do before one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Relay it unchanged.
    Pass,
    /// Check this annotation first.
    Check(Fence),
    /// Check the token of the session's fencing settings, if any; `required`: fail with
    /// 55Z02 when none is set.
    CheckSettings {
        /// Policy requires a token for this statement.
        required: bool,
    },
    /// Reject it with 55Z02 for this reason.
    Invalid(String),
    /// Reject it with 55Z02 for this reason if the session's settings carry a token (a
    /// statement that cannot be fenced safely where it runs, e.g. a CALL outside a
    /// transaction block, which may COMMIT inside).
    RefuseIfToken(String),
    /// Reject it with 55Z01 without consulting the fence row: the token is below a
    /// committed high-water mark this proxy has already seen.
    Stale {
        /// The presented fence.
        fence: Fence,
        /// The known committed high-water mark (greater than the token).
        current: i64,
    },
}

impl Decision {
    /// True when something must be sent before the statement.
    pub fn needs_injection(&self) -> bool {
        !matches!(self, Decision::Pass)
    }
}

/// What the proxy learns from a statement's text once (kept per prepared statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// What the statement may do.
    pub class: Class,
    /// Its annotation, if any, or what is wrong with it.
    pub annotation: Result<Option<Fence>, AnnotationError>,
    /// It writes a table that policy says needs a token.
    pub requires_token: bool,
}

impl Analysis {
    /// What the proxy assumes of a statement whose text it has not seen: it may write and
    /// carries no annotation (settings still apply).
    pub fn unknown() -> Self {
        Analysis {
            class: Class {
                kind: Kind::Write,
                touches_settings: false,
            },
            annotation: Ok(None),
            requires_token: false,
        }
    }
}

impl FencePolicy {
    /// Reads what matters from a statement's text.
    pub fn analyze(&self, statement: &[u8]) -> Analysis {
        self.analyze_cached(statement, &mut LastComment::default())
    }

    /// [`Self::analyze`] for a session, which keeps the annotation it parsed last.
    pub fn analyze_cached(&self, statement: &[u8], last: &mut LastComment) -> Analysis {
        // One lexer pass for both: the comments are read only when the text names a key.
        let annotated = annotation::mentions_key(statement);
        let mut found = Ok(None);
        let class = classify_noting_comments(statement, |text| {
            if annotated {
                annotation::note_comment(&mut found, text, last);
            }
        });
        Analysis {
            class,
            annotation: found,
            requires_token: class.kind == Kind::Write && self.requires_token(statement),
        }
    }

    /// Decides for one statement. `settings_aware`: the session may have a token in its
    /// settings, so statements without an annotation are checked against the settings.
    pub fn decide(&self, statement: &[u8], settings_aware: bool) -> Decision {
        self.decide_analyzed(&self.analyze(statement), settings_aware)
    }

    /// Decides from an earlier analysis.
    pub fn decide_analyzed(&self, analysis: &Analysis, settings_aware: bool) -> Decision {
        let annotation = &analysis.annotation;
        match analysis.class.kind {
            Kind::Control => return Decision::Pass,
            Kind::NonTransactional => return match annotation {
                Ok(None) => Decision::Pass,
                Ok(Some(_)) | Err(_) => Decision::Invalid(
                    "this statement cannot run inside a transaction block, so it cannot be fenced"
                        .into(),
                ),
            },
            Kind::Prepare => return match annotation {
                Ok(None) => Decision::Pass,
                Ok(Some(_)) | Err(_) => Decision::Invalid(
                    "an annotation inside SQL PREPARE is not followed to EXECUTE: put it on the EXECUTE, or use SET LOCAL"
                        .into(),
                ),
            },
            Kind::Read if self.mode == FenceMode::Writes => return Decision::Pass,
            Kind::Read | Kind::Write | Kind::Procedure => {}
        }
        match annotation {
            Err(e) => Decision::Invalid(e.to_string()),
            Ok(Some(fence)) => Decision::Check(fence.clone()),
            Ok(None) => {
                let required = analysis.requires_token;
                match (settings_aware, required) {
                    (true, _) => Decision::CheckSettings { required },
                    (false, true) => Decision::Invalid(
                        "this statement writes to a table that requires a fencing token, and none is attached"
                            .into(),
                    ),
                    (false, false) => Decision::Pass,
                }
            }
        }
    }

    /// True when the statement names a table of `require_token_tables`.
    fn requires_token(&self, statement: &[u8]) -> bool {
        if self.require_token_tables.is_empty() {
            return false;
        }
        Lexer::new(statement).any(|t| {
            let name = match t {
                Token::Word(w) => w.to_ascii_lowercase(),
                Token::QuotedIdent(w) => w.to_ascii_lowercase(),
                _ => return false,
            };
            self.require_token_tables
                .iter()
                .any(|t| t.as_bytes() == name)
        })
    }

    /// The SQL statement (ASCII only, so valid in every client encoding) that carries out a
    /// decision, or `None` for [`Decision::Pass`]. `schema_known`: the database is known to
    /// have the schema's `check_settings` (see [`SCHEMA_PROBE`]), so settings are checked
    /// with a plain SELECT rather than a DO block that PostgreSQL compiles every time.
    pub fn sql(&self, decision: &Decision, schema_known: bool) -> Option<String> {
        match decision {
            Decision::Pass => None,
            Decision::Check(fence) => Some(self.check_sql(fence, CheckForm::Check)),
            Decision::CheckSettings { required } if schema_known => Some(format!(
                "SELECT fencegate.check_settings({}, {required})",
                self.grace_ms
            )),
            // A DO block, so that the function is only looked up when a token is set: a
            // session without a token must not fail in a database without the schema.
            Decision::CheckSettings { required } => Some(format!(
                "DO $fencegate$BEGIN IF {required} OR pg_catalog.current_setting('fencing.token', true) OPERATOR(pg_catalog.<>) '' \
                 THEN PERFORM fencegate.check_settings({}, {required}); END IF; END$fencegate$",
                self.grace_ms
            )),
            Decision::Invalid(reason) => Some(format!(
                "DO $fencegate$BEGIN RAISE EXCEPTION USING ERRCODE = '55Z02', MESSAGE = 'invalid fencing annotation: {}'; END$fencegate$",
                ascii_literal(reason)
            )),
            Decision::RefuseIfToken(reason) => Some(format!(
                "DO $fencegate$BEGIN IF pg_catalog.current_setting('fencing.token', true) OPERATOR(pg_catalog.<>) '' \
                 THEN RAISE EXCEPTION USING ERRCODE = '55Z02', MESSAGE = 'invalid fencing annotation: {}'; \
                 END IF; END$fencegate$",
                ascii_literal(reason)
            )),
            Decision::Stale { fence, current } => {
                let resource = text_expr(&fence.resource);
                let token = fence.token;
                Some(format!(
                    "DO $fencegate$BEGIN RAISE EXCEPTION USING ERRCODE = '55Z01', \
                     MESSAGE = pg_catalog.format('stale fencing token %s for resource %s: the current token is %s', \
                     {token}, pg_catalog.quote_literal({resource}), {current}), \
                     DETAIL = pg_catalog.format('presented_token=%s current_token=%s resource=%s', {token}, {current}, {resource}), \
                     HINT = '{STALE_HINT}'; END$fencegate$"
                ))
            }
        }
    }
}

impl FencePolicy {
    /// The statement (ASCII only) that checks `fence`, in the given form.
    ///
    /// Built on every check the proxy sends, so pieces are pushed into one buffer rather
    /// than formatted: the same text as `format!` would give, for a fraction of the cost.
    pub fn check_sql(&self, fence: &Fence, form: CheckForm) -> String {
        let mut sql = String::with_capacity(256 + 2 * fence.resource.len());
        sql.push_str(match form {
            CheckForm::Check | CheckForm::CheckAsking => "SELECT fencegate.check(",
            CheckForm::Current => "CALL fencegate.admit_current(",
        });
        push_text_expr(&mut sql, &fence.resource);
        // The token as a quoted literal without a type: PostgreSQL gives it the type of the
        // parameter (bigint, as the function was created), which names no type to look up.
        // A bare integer below 2^31 would be cast with int8(integer), which a database may
        // have revoked from PUBLIC; a type name, even `pg_catalog.int8`, costs a lookup
        // (4.6 thousand instructions per check, benches/README.md), and a bare `int8` would
        // be looked up in the session's search_path, where a client may have put its own.
        sql.push_str(", '");
        push_int(&mut sql, fence.token);
        sql.push_str("', ");
        push_int(&mut sql, i64::from(self.grace_ms));
        sql.push(')');
        if form == CheckForm::CheckAsking {
            sql.push_str(", ");
            sql.push_str(PROCEDURES_PROBE);
        }
        sql
    }
}

/// Appends `n` in decimal, as `format!("{n}")` writes it.
fn push_int(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// How a token check is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckForm {
    /// `fencegate.check`.
    Check,
    /// `fencegate.check`, and in a second column whether the database has schema 11's
    /// procedures ([`PROCEDURES_PROBE`]).
    CheckAsking,
    /// `CALL fencegate.admit_current` (schema 11), for a token the session saw admitted: the
    /// same decision with one read of the fence row instead of two (docs/fencing.md), and
    /// as a CALL, which PostgreSQL neither plans nor runs as a query.
    Current,
}

/// Whether the session's database has the procedures the proxy sends: schema 11's
/// (`admit_current`, `settings_unchanged`) and schema 13's (`admit_set`, the two-argument
/// `settings_unchanged`). `None` until a check's row said. A database migrated by an older
/// fencegate is checked with `check` and comparisons written out until it is migrated.
pub type Procedures = Option<bool>;

/// The column a check carries while [`Procedures`] is unknown: true when all of them are
/// there (a migration installs them all at once; the tests that stand for older schemas
/// drop one of schema 11's). Its type names are qualified: a bare `text`
/// is looked up in the session's pg_temp and search_path, where a type of the client's own
/// would make the function seem missing (`fence_search_path.rs`).
pub const PROCEDURES_PROBE: &str =
    "pg_catalog.to_regprocedure('fencegate.settings_unchanged(pg_catalog.text,pg_catalog.text,integer,boolean)') IS NOT NULL \
     AND pg_catalog.to_regprocedure('fencegate.admit_current(pg_catalog.text,bigint,integer)') IS NOT NULL \
     AND pg_catalog.to_regprocedure('fencegate.admit_set(pg_catalog.text,bigint,integer)') IS NOT NULL \
     AND pg_catalog.to_regprocedure('fencegate.settings_unchanged(pg_catalog.text,pg_catalog.text)') IS NOT NULL";

/// The answer to [`PROCEDURES_PROBE`] in the row of a [`CheckForm::CheckAsking`] check.
pub fn procedures_answer(row: &[u8]) -> Option<bool> {
    match data_row_values(row)?.as_slice() {
        [Some(admitted), Some(answer)] if admitted.iter().all(u8::is_ascii_digit) => {
            match *answer {
                b"t" => Some(true),
                b"f" => Some(false),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A statement the proxy sends after a settings check in the DO form while it does not yet
/// know whether the database has the schema: it returns a row (hidden, like every reply to
/// the proxy's own statements) only when `fencegate.check_settings` exists. Any row from
/// the proxy's own statements proves the same, since all that return rows call the schema.
pub const SCHEMA_PROBE: &str = "SELECT 1 WHERE pg_catalog.to_regprocedure('fencegate.check_settings(integer,boolean)') IS NOT NULL";

/// The hint of every 55Z01 rejection (the same text as the schema's check raises).
pub const STALE_HINT: &str =
    "The lock was taken over by a newer holder. Do not retry: stop working on this resource.";

/// A SQL expression for `text` that reads the same in every client encoding, with
/// `standard_conforming_strings` on or off, and inside a `$fencegate$` DO block: a plain
/// literal when the text is printable ASCII without quote, backslash or dollar (the usual
/// resource name, and the cheapest for PostgreSQL to parse and plan), else its UTF-8 bytes
/// in hex, decoded by the server.
fn text_expr(text: &str) -> String {
    let mut out = String::new();
    push_text_expr(&mut out, text);
    out
}

/// Appends [`text_expr`] of `text` to `out`.
fn push_text_expr(out: &mut String, text: &str) {
    let plain = text
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && !matches!(b, b'\'' | b'\\' | b'$'));
    if plain {
        out.push('\'');
        out.push_str(text);
        out.push('\'');
    } else {
        out.push_str("pg_catalog.convert_from(pg_catalog.decode('");
        push_hex(out, text.as_bytes());
        out.push_str("', 'hex'), 'UTF8')");
    }
}

/// Appends `bytes` in lowercase hex, two digits each.
pub(super) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Printable ASCII with quotes doubled, `$` dropped and backslashes replaced, for a literal
/// inside the dollar-quoted DO block (read the same with standard_conforming_strings off).
fn ascii_literal(text: &str) -> String {
    text.chars()
        .filter(|&c| c != '$')
        .map(|c| if c == '\\' { '?' } else { c })
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .flat_map(|c| std::iter::repeat_n(c, if c == '\'' { 2 } else { 1 }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_plain_literals_only_when_that_reads_the_same_everywhere() {
        assert_eq!(text_expr("jobs:42 (eu-west/1)"), "'jobs:42 (eu-west/1)'");
        for odd in ["it's", "a\\b", "$x$", "caf\u{e9}", "tab\there"] {
            let expr = text_expr(odd);
            assert!(
                expr.starts_with("pg_catalog.convert_from("),
                "{odd:?} -> {expr}"
            );
            assert!(expr.bytes().all(|b| b.is_ascii_graphic() || b == b' '));
        }
        assert_eq!(
            text_expr("it's"),
            "pg_catalog.convert_from(pg_catalog.decode('69742773', 'hex'), 'UTF8')"
        );
    }

    /// The check as it was first written, with `format!`.
    fn check_sql_formatted(p: &FencePolicy, fence: &Fence, form: CheckForm) -> String {
        let resource = if fence
            .resource
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && !matches!(b, b'\'' | b'\\' | b'$'))
        {
            format!("'{}'", fence.resource)
        } else {
            let hex: String = fence.resource.bytes().map(|b| format!("{b:02x}")).collect();
            format!("pg_catalog.convert_from(pg_catalog.decode('{hex}', 'hex'), 'UTF8')")
        };
        let args = format!("({resource}, '{}', {})", fence.token, p.grace_ms);
        match form {
            CheckForm::CheckAsking => format!("SELECT fencegate.check{args}, {PROCEDURES_PROBE}"),
            CheckForm::Check => format!("SELECT fencegate.check{args}"),
            CheckForm::Current => format!("CALL fencegate.admit_current{args}"),
        }
    }

    #[test]
    fn the_built_check_is_the_formatted_one() {
        for grace_ms in [0, 7, 5000, u32::MAX] {
            let p = FencePolicy {
                grace_ms,
                ..FencePolicy::default()
            };
            for token in [0, 1, 9, 10, 42, 1_000_000, i64::MAX, -1, i64::MIN] {
                for resource in ["bench:1", "it's", "caf\u{e9}", "a\\b$", "\u{7f}~ "] {
                    let fence = Fence {
                        resource: resource.into(),
                        token,
                    };
                    for form in [CheckForm::Check, CheckForm::CheckAsking, CheckForm::Current] {
                        assert_eq!(
                            p.check_sql(&fence, form),
                            check_sql_formatted(&p, &fence, form)
                        );
                    }
                }
            }
        }
    }

    fn policy() -> FencePolicy {
        FencePolicy {
            mode: FenceMode::All,
            grace_ms: 5000,
            require_token_tables: vec!["orders".into()],
        }
    }

    #[test]
    fn decisions() {
        let p = policy();
        let annotated = b"UPDATE jobs SET a = 1 /*fencing_resource='j',fencing_token='3'*/";
        assert_eq!(
            p.decide(annotated, false),
            Decision::Check(Fence {
                resource: "j".into(),
                token: 3
            })
        );
        let read = b"SELECT * FROM jobs /*fencing_resource='j',fencing_token='3'*/";
        assert!(matches!(p.decide(read, false), Decision::Check(_)));
        let writes_only = FencePolicy {
            mode: FenceMode::Writes,
            ..policy()
        };
        assert_eq!(writes_only.decide(read, false), Decision::Pass);
        assert_eq!(p.decide(b"SELECT 1", false), Decision::Pass);
        assert_eq!(
            p.decide(b"SELECT 1", true),
            Decision::CheckSettings { required: false }
        );
        assert_eq!(
            p.decide(b"BEGIN /*fencing_resource='j',fencing_token='3'*/", true),
            Decision::Pass
        );
        assert!(matches!(
            p.decide(b"UPDATE x SET a = 1 /*fencing_token='3'*/", false),
            Decision::Invalid(_)
        ));
        assert!(matches!(
            p.decide(
                b"VACUUM t /*fencing_resource='j',fencing_token='3'*/",
                false
            ),
            Decision::Invalid(_)
        ));
        assert_eq!(p.decide(b"VACUUM t", true), Decision::Pass);
    }

    #[test]
    fn table_policy() {
        let p = policy();
        assert!(matches!(
            p.decide(b"INSERT INTO public.orders VALUES (1)", false),
            Decision::Invalid(_)
        ));
        assert!(matches!(
            p.decide(b"UPDATE \"orders\" SET a = 1", false),
            Decision::Invalid(_)
        ));
        assert_eq!(
            p.decide(b"UPDATE orders SET a = 1", true),
            Decision::CheckSettings { required: true }
        );
        assert_eq!(p.decide(b"SELECT * FROM orders", false), Decision::Pass);
        assert_eq!(p.decide(b"UPDATE other SET a = 1", false), Decision::Pass);
    }

    #[test]
    fn sql_is_ascii_and_escaped() {
        let p = policy();
        let sql = p
            .sql(
                &Decision::Check(Fence {
                    resource: "été'; --".into(),
                    token: 7,
                }),
                false,
            )
            .unwrap();
        assert!(sql.is_ascii());
        assert!(sql.contains("'c3a974c3a9273b202d2d'"), "{sql}");
        let sql = p
            .sql(&Decision::Invalid("bad 'x' $fencegate$ é".into()), false)
            .unwrap();
        assert!(sql.is_ascii());
        assert!(sql.contains("bad ''x'' fencegate ?"), "{sql}");
        assert_eq!(p.sql(&Decision::Pass, true), None);
        let settings = Decision::CheckSettings { required: false };
        assert!(p.sql(&settings, false).unwrap().starts_with("DO "));
        assert_eq!(
            p.sql(&settings, true).unwrap(),
            "SELECT fencegate.check_settings(5000, false)"
        );
        let stale = Decision::Stale {
            fence: Fence {
                resource: "é".into(),
                token: 1,
            },
            current: 9,
        };
        let sql = p.sql(&stale, true).unwrap();
        assert!(
            sql.is_ascii() && sql.contains("'55Z01'") && sql.contains("'c3a9'"),
            "{sql}"
        );
    }
}
