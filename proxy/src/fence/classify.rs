//! What a statement may do, judged from its leading keywords and the words it contains.
//!
//! Conservative by design: anything not recognised as read-only may write. The check
//! itself does not depend on this (every statement with a token is checked); it decides
//! which statements touch no data at all (transaction control, settings), which cannot run
//! inside a transaction block (so no check can be put in front of them), and, in the opt-in
//! writes-only mode, which statements are skipped. A SELECT that calls a writing function
//! counts as a read: the documented exception.

use super::contains_ignore_case;
use super::sql::{Lexer, Token};

/// What a statement may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Touches no table data: BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE, SET/RESET/SHOW,
    /// DISCARD, DEALLOCATE, PREPARE/COMMIT PREPARED, LISTEN/UNLISTEN. Never checked.
    Control,
    /// Must be the only statement of its transaction (VACUUM, CREATE DATABASE, CREATE INDEX
    /// CONCURRENTLY, ...): no check can run in the same transaction.
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

/// Classifies one statement (no terminating `;`).
pub fn classify(statement: &[u8]) -> Class {
    let tokens: Vec<Token<'_>> = Lexer::new(statement)
        .filter(|t| !matches!(t, Token::Comment(_)))
        .collect();
    let words: Vec<&[u8]> = tokens
        .iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(*w),
            _ => None,
        })
        .collect();
    let word = |i: usize| {
        words
            .get(i)
            .map(|w| w.to_ascii_lowercase())
            .unwrap_or_default()
    };
    let has = |kw: &str| words.iter().any(|w| w.eq_ignore_ascii_case(kw.as_bytes()));
    let first = word(0);
    let kind = match first.as_slice() {
        b"prepare" if word(1) != b"transaction" => Kind::Prepare,
        b"begin" | b"start" | b"commit" | b"end" | b"rollback" | b"abort" | b"savepoint"
        | b"release" | b"set" | b"reset" | b"show" | b"discard" | b"deallocate" | b"prepare"
        | b"listen" | b"unlisten" => Kind::Control,
        b"vacuum" => Kind::NonTransactional,
        b"cluster" if words.len() == 1 || (words.len() == 2 && word(1) == b"verbose") => {
            Kind::NonTransactional
        }
        b"reindex" if matches!(word(1).as_slice(), b"schema" | b"database" | b"system") => {
            Kind::NonTransactional
        }
        b"create" | b"drop" | b"reindex" | b"alter"
            if has("concurrently")
                || matches!(
                    word(1).as_slice(),
                    b"database" | b"tablespace" | b"system" | b"subscription"
                ) =>
        {
            Kind::NonTransactional
        }
        b"call" | b"do" => Kind::Procedure,
        b"select" | b"values" | b"table" | b"with" | b"fetch" | b"move" | b"explain"
            if !WRITE_WORDS.iter().any(|w| has(w)) && !has("analyze") =>
        {
            Kind::Read
        }
        b"copy" if has("to") && !has("from") => Kind::Read,
        _ => Kind::Write,
    };
    Class {
        kind,
        touches_settings: sets_fencing_setting(&tokens),
    }
}

/// True when the statement may set a fencing setting: `SET [LOCAL|SESSION] fencing.x`
/// (any spelling PostgreSQL accepts: quoted parts, spaces around the dot), or a call
/// naming `fencing.` in a string literal (`set_config('fencing.token', ...)`).
fn sets_fencing_setting(tokens: &[Token<'_>]) -> bool {
    let is_fencing = |t: &Token<'_>| match t {
        Token::Word(w) => w.eq_ignore_ascii_case(b"fencing"),
        Token::QuotedIdent(w) => *w == b"fencing",
        _ => false,
    };
    let literal = tokens
        .iter()
        .any(|t| matches!(t, Token::Literal(l) if contains_ignore_case(l, b"fencing.")));
    let dotted = tokens
        .windows(2)
        .any(|w| is_fencing(&w[0]) && w[1] == Token::Punct(b'.'));
    let first_is_set = tokens.first().is_some_and(|t| t.is_word("set"));
    literal || (first_is_set && dotted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(sql: &str) -> Kind {
        classify(sql.as_bytes()).kind
    }

    #[test]
    fn control_statements() {
        for sql in [
            "BEGIN",
            "begin isolation level serializable",
            "START TRANSACTION",
            "COMMIT",
            "END",
            "ROLLBACK",
            "rollback to savepoint a",
            "SAVEPOINT a",
            "RELEASE a",
            "SET x = 1",
            "SET LOCAL fencing.token = 5",
            "RESET ALL",
            "SHOW work_mem",
            "DISCARD ALL",
            "DEALLOCATE ALL",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "LISTEN c",
        ] {
            assert_eq!(kind(sql), Kind::Control, "{sql}");
        }
    }

    #[test]
    fn statements_that_cannot_run_in_a_block() {
        for sql in [
            "VACUUM t",
            "vacuum",
            "CREATE DATABASE x",
            "DROP DATABASE x",
            "CREATE INDEX CONCURRENTLY i ON t (a)",
            "DROP INDEX CONCURRENTLY i",
            "REINDEX TABLE CONCURRENTLY t",
            "ALTER SYSTEM SET work_mem = '1MB'",
            "CREATE TABLESPACE s LOCATION '/x'",
            "CLUSTER",
            "CLUSTER VERBOSE",
            "REINDEX SCHEMA s",
        ] {
            assert_eq!(kind(sql), Kind::NonTransactional, "{sql}");
        }
        assert_eq!(kind("CLUSTER t USING i"), Kind::Write);
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
        for sql in [
            "SELECT * FROM t WHERE a = 'update'",
            "select 1",
            "VALUES (1)",
            "TABLE t",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "COPY t TO STDOUT",
            "FETCH 10 FROM c",
            "EXPLAIN SELECT 1",
            "SELECT \"update\" FROM t",
        ] {
            assert_eq!(kind(sql), Kind::Read, "{sql}");
        }
    }

    #[test]
    fn writes_are_conservative() {
        for sql in [
            "UPDATE t SET a = 1",
            "INSERT INTO t VALUES (1)",
            "DELETE FROM t",
            "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "SELECT * INTO new_t FROM t",
            "COPY t FROM STDIN",
            "TRUNCATE t",
            "CREATE TABLE t (a int)",
            "ALTER TABLE t ADD b int",
            "LOCK TABLE t",
            "EXPLAIN ANALYZE DELETE FROM t",
            "SELECT nextval('s')",
            "NOTIFY c",
            "EXECUTE stmt(1)",
        ] {
            assert_eq!(kind(sql), Kind::Write, "{sql}");
        }
    }

    #[test]
    fn settings_changes_are_noticed() {
        for sql in [
            "SET fencing.token = 5",
            "set local FENCING.resource = 'a'",
            "SET \"fencing\".\"token\" = 3",
            "SET fencing . token = 3",
            "SET SESSION fencing.token TO 3",
            "SELECT set_config('fencing.token', '5', true)",
        ] {
            assert!(classify(sql.as_bytes()).touches_settings, "{sql}");
        }
        for sql in [
            "SET work_mem = '1MB'",
            "SELECT 1",
            "RESET work_mem",
            "RESET ALL",
            "DISCARD ALL",
            "RESET fencing.token",
            "SHOW fencing.token",
            "SELECT 'fencing is fun'",
        ] {
            assert!(!classify(sql.as_bytes()).touches_settings, "{sql}");
        }
    }
}
