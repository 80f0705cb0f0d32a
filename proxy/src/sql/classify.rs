//! What a statement may do, judged from its leading keywords and the words it contains.
//!
//! Conservative by design: anything not recognised as read-only may write. The check
//! itself does not depend on this (every statement with a token is checked); it decides
//! which statements touch no data at all (transaction control, settings), which cannot run
//! inside a transaction block (so no check can be put in front of them), and, in the opt-in
//! writes-only mode, which statements are skipped. A SELECT that calls a writing function
//! counts as a read: the documented exception.

use super::contains_ignore_case;
use super::lexer::{Lexer, Token};

/// What a statement may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Touches no table data: BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE, SET/RESET/SHOW,
    /// DISCARD, DEALLOCATE, PREPARE/COMMIT PREPARED, LISTEN/UNLISTEN. Never checked.
    Control,
    /// May be refused by PostgreSQL inside a transaction block (its
    /// `PreventInTransactionBlock` callers: VACUUM, CREATE/DROP DATABASE and TABLESPACE,
    /// ALTER DATABASE ... TABLESPACE, ALTER SYSTEM, ... CONCURRENTLY, the SUBSCRIPTION
    /// commands; and CLUSTER and REINDEX, which are refused there for partitioned tables,
    /// something the text does not show): no check can run in the same transaction. None of
    /// them changes a table's rows.
    NonTransactional,
    /// Reads only: SELECT / VALUES / TABLE / FETCH / COPY ... TO without locking clauses or
    /// data-modifying parts.
    Read,
    /// CALL or DO: may write, and may COMMIT inside when not run in a transaction block.
    Procedure,
    /// SQL-level PREPARE of a statement (its text runs later, at EXECUTE).
    Prepare,
    /// May write: everything else.
    Write,
}

/// The classification of one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    /// What it may do.
    pub kind: Kind,
    /// It may set a fencing setting (SET of `fencing.*`, or `set_config('fencing...')`), so
    /// the session may carry fencing settings from now on.
    pub touches_settings: bool,
}

const WRITE_WORDS: &[&str] = &[
    "insert", "update", "delete", "merge", "into", "share", "truncate", "nextval", "setval",
];

/// Classifies one statement (no terminating `;`). Runs on every statement of a fenced
/// session, so it lexes once and allocates nothing unless the text mentions `fencing`.
pub fn classify(statement: &[u8]) -> Class {
    classify_noting_comments(statement, |_| {})
}

/// [`classify`], handing each comment's text to `on_comment` on the way, so that a caller
/// that also needs the comments (the annotation) lexes the statement once.
pub fn classify_noting_comments<'a>(
    statement: &'a [u8],
    mut on_comment: impl FnMut(&'a [u8]),
) -> Class {
    let mut words = Words::default();
    let mut settings = SettingsScan::default();
    for token in Lexer::new(statement) {
        if let Token::Comment(text) = token {
            on_comment(text);
            continue;
        }
        if let Token::Word(w) = token {
            words.note(w);
        }
        settings.note(token);
    }
    let w = |i: usize, kw: &str| words.first[i].eq_ignore_ascii_case(kw.as_bytes());
    let first_is = |kws: &[&str]| kws.iter().any(|kw| w(0, kw));
    let kind = if w(0, "prepare") && !w(1, "transaction") {
        Kind::Prepare
    } else if first_is(&[
        "begin",
        "start",
        "commit",
        "end",
        "rollback",
        "abort",
        "savepoint",
        "release",
        "set",
        "reset",
        "show",
        "discard",
        "deallocate",
        "prepare",
        "listen",
        "unlisten",
    ]) {
        Kind::Control
    } else if first_is(&["vacuum", "cluster", "reindex"])
        || (first_is(&["create", "drop", "alter"])
            && (words.concurrently
                || w(1, "tablespace")
                || w(1, "system")
                || w(1, "subscription")
                || (w(1, "database") && (!w(0, "alter") || words.tablespace))))
    {
        Kind::NonTransactional
    } else if first_is(&["call", "do"]) {
        Kind::Procedure
    } else if (first_is(&[
        "select", "values", "table", "with", "fetch", "move", "explain",
    ]) && !words.writes
        && !words.analyze)
        || (w(0, "copy") && !words.writes && copies_out(&words))
    {
        Kind::Read
    } else {
        Kind::Write
    };
    Class {
        kind,
        touches_settings: settings.literal || (w(0, "set") && settings.dotted),
    }
}

/// A COPY that sends rows out: `COPY table TO ...`, or `COPY (query) TO ...`, whose query
/// starts with a reserved word (a table cannot be named so unquoted). The query may be a
/// data-modifying one (`INSERT ... RETURNING`): the caller checks for write words.
fn copies_out(words: &Words<'_>) -> bool {
    let query = ["select", "values", "table", "with"]
        .iter()
        .any(|kw| words.first[1].eq_ignore_ascii_case(kw.as_bytes()));
    query || (words.to && !words.from)
}

/// What [`classify`] needs to know of a statement's words (comments and quoted text not
/// included).
#[derive(Default)]
struct Words<'a> {
    /// The first two words (empty when there are fewer).
    first: [&'a [u8]; 2],
    /// How many words.
    count: usize,
    /// One of [`WRITE_WORDS`] appears.
    writes: bool,
    analyze: bool,
    concurrently: bool,
    tablespace: bool,
    to: bool,
    from: bool,
}

impl<'a> Words<'a> {
    #[inline(always)]
    fn note(&mut self, word: &'a [u8]) {
        if self.count < self.first.len() {
            self.first[self.count] = word;
        }
        self.count += 1;
        let is = |kw: &str| word.eq_ignore_ascii_case(kw.as_bytes());
        match word.len() {
            2 => {
                self.to |= is("to");
            }
            4 => {
                self.from |= is("from");
            }
            7 => {
                self.analyze |= is("analyze");
            }
            10 => {
                self.tablespace |= is("tablespace");
            }
            12 => {
                self.concurrently |= is("concurrently");
            }
            _ => {}
        }
        if !self.writes && WRITE_WORDS.iter().any(|kw| is(kw)) {
            self.writes = true;
        }
    }
}

/// Whether a statement may set a fencing setting: `SET [LOCAL|SESSION] fencing.x` (any
/// spelling PostgreSQL accepts: quoted parts, spaces around the dot), or a call naming
/// `fencing.` in a string literal (`set_config('fencing.token', ...)`). Fed the
/// statement's tokens without comments, in order.
#[derive(Default)]
struct SettingsScan {
    /// The previous token was `fencing` (a word in any case, or the quoted identifier).
    after_fencing: bool,
    /// `fencing` followed by `.` somewhere (a SET of `fencing.*` when the first word is SET).
    dotted: bool,
    /// A string literal mentions `fencing.`.
    literal: bool,
}

impl SettingsScan {
    #[inline(always)]
    fn note(&mut self, token: Token<'_>) {
        match token {
            Token::Punct(b'.') if self.after_fencing => self.dotted = true,
            Token::Literal(l) if !self.literal => {
                self.literal = contains_ignore_case(l, b"fencing.");
            }
            _ => {}
        }
        self.after_fencing = match token {
            Token::Word(w) => w.eq_ignore_ascii_case(b"fencing"),
            Token::QuotedIdent(w) => w == b"fencing",
            _ => false,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(sql: &str) -> Kind {
        classify(sql.as_bytes()).kind
    }

    /// The statements of a block of text, one per line (blank lines skipped).
    fn statements(block: &str) -> impl Iterator<Item = &str> {
        block.lines().map(str::trim).filter(|line| !line.is_empty())
    }

    #[test]
    fn control_statements() {
        for sql in statements(
            "
            BEGIN
            begin isolation level serializable
            START TRANSACTION
            COMMIT
            END
            ROLLBACK
            rollback to savepoint a
            SAVEPOINT a
            RELEASE a
            SET x = 1
            SET LOCAL fencing.token = 5
            RESET ALL
            SHOW work_mem
            DISCARD ALL
            DEALLOCATE ALL
            PREPARE TRANSACTION 'x'
            COMMIT PREPARED 'x'
            LISTEN c
            ",
        ) {
            assert_eq!(kind(sql), Kind::Control, "{sql}");
        }
    }

    #[test]
    fn statements_that_cannot_run_in_a_block() {
        for sql in statements(
            "
            VACUUM t
            vacuum
            CREATE DATABASE x
            DROP DATABASE x
            CREATE INDEX CONCURRENTLY i ON t (a)
            DROP INDEX CONCURRENTLY i
            REINDEX TABLE CONCURRENTLY t
            ALTER SYSTEM SET work_mem = '1MB'
            CREATE TABLESPACE s LOCATION '/x'
            CLUSTER
            CLUSTER VERBOSE
            CLUSTER partitioned USING i
            REINDEX SCHEMA s
            REINDEX (CONCURRENTLY) TABLE t
            REINDEX TABLE partitioned
            ALTER TABLE p DETACH PARTITION c CONCURRENTLY
            ALTER DATABASE d SET TABLESPACE s
            ALTER SUBSCRIPTION s REFRESH PUBLICATION
            CREATE SUBSCRIPTION s CONNECTION 'x' PUBLICATION p
            DROP SUBSCRIPTION s
            DROP TABLESPACE s
            ",
        ) {
            assert_eq!(kind(sql), Kind::NonTransactional, "{sql}");
        }
        assert_eq!(kind("ALTER DATABASE d SET work_mem = '1MB'"), Kind::Write);
        assert_eq!(kind("ALTER TABLE p DETACH PARTITION c"), Kind::Write);
    }

    #[test]
    fn procedures_and_sql_prepare() {
        assert_eq!(kind("CALL p()"), Kind::Procedure);
        assert_eq!(kind("DO $$ BEGIN END $$"), Kind::Procedure);
        assert_eq!(kind("PREPARE s AS UPDATE t SET a = 1"), Kind::Prepare);
        assert_eq!(kind("PREPARE TRANSACTION 'x'"), Kind::Control);
    }

    #[test]
    fn write_words_anywhere_count() {
        let columns: Vec<String> = (0..80).map(|i| format!("1 AS c{i}")).collect();
        let sql = format!(
            "WITH x AS (SELECT {}) UPDATE t SET a = 1",
            columns.join(", ")
        );
        assert_eq!(kind(&sql), Kind::Write);
    }

    #[test]
    fn reads() {
        for sql in statements(
            "
            SELECT * FROM t WHERE a = 'update'
            select 1
            VALUES (1)
            TABLE t
            WITH x AS (SELECT 1) SELECT * FROM x
            COPY t TO STDOUT
            COPY (SELECT * FROM t) TO STDOUT
            FETCH 10 FROM c
            EXPLAIN SELECT 1
            SELECT \"update\" FROM t
            ",
        ) {
            assert_eq!(kind(sql), Kind::Read, "{sql}");
        }
    }

    #[test]
    fn writes_are_conservative() {
        for sql in statements(
            "
            UPDATE t SET a = 1
            INSERT INTO t VALUES (1)
            DELETE FROM t
            MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE
            SELECT * FROM t FOR UPDATE
            SELECT * FROM t FOR SHARE
            SELECT * FROM t FOR NO KEY UPDATE
            WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d
            SELECT * INTO new_t FROM t
            COPY t FROM STDIN
            COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT
            COPY (UPDATE t SET a = 1 RETURNING a) TO STDOUT
            COPY (DELETE FROM t RETURNING *) TO STDOUT
            COPY (MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE RETURNING *) TO STDOUT
            COPY (WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d) TO STDOUT
            COPY (SELECT * FROM t FOR UPDATE) TO STDOUT
            TRUNCATE t
            CREATE TABLE t (a int)
            ALTER TABLE t ADD b int
            LOCK TABLE t
            EXPLAIN ANALYZE DELETE FROM t
            SELECT nextval('s')
            NOTIFY c
            EXECUTE stmt(1)
            ",
        ) {
            assert_eq!(kind(sql), Kind::Write, "{sql}");
        }
    }

    #[test]
    fn settings_changes_are_noticed() {
        for sql in statements(
            "
            SET fencing.token = 5
            set local FENCING.resource = 'a'
            SET \"fencing\".\"token\" = 3
            SET fencing . token = 3
            SET SESSION fencing.token TO 3
            SELECT set_config('fencing.token', '5', true)
            ",
        ) {
            assert!(classify(sql.as_bytes()).touches_settings, "{sql}");
        }
        for sql in statements(
            "
            SET work_mem = '1MB'
            SELECT 1
            RESET work_mem
            RESET ALL
            DISCARD ALL
            RESET fencing.token
            SHOW fencing.token
            SELECT 'fencing is fun'
            ",
        ) {
            assert!(!classify(sql.as_bytes()).touches_settings, "{sql}");
        }
    }
}
