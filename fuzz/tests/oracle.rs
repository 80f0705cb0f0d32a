//! The differential oracle for fencegate's SQL reader: PostgreSQL's own scanner and parser
//! (libpg_query, through the `pg_query` crate) judge the hand-written lexer, splitter and
//! classifier on PostgreSQL's regression SQL files and on the fuzz corpora.
//!
//! Rules, each a place where fencegate could fence less than it should:
//! 1. every cut between two statements lies on a `;` that PostgreSQL's scanner sees (never
//!    inside a string, identifier, comment or dollar quote);
//! 2. every `;` PostgreSQL's scanner sees is a cut, except inside a `BEGIN ATOMIC` body
//!    (where PostgreSQL's grammar keeps it) and before nothing but comments (fencegate
//!    keeps a trailing sqlcommenter comment with the statement before it, as PostgreSQL
//!    ignores the empty statement it would otherwise be);
//! 3. a statement fencegate reads as a read (`Kind::Read`) is one PostgreSQL parses as a
//!    plain query: SELECT/VALUES/TABLE without INTO or FOR UPDATE/SHARE and without a
//!    data-modifying CTE, EXPLAIN without ANALYZE of one, COPY ... TO, or FETCH.
//!    Calling a function that writes is outside what any reader of SQL text can see (see
//!    docs/fencing.md, fence modes); the default mode fences reads too.
//!
//! The regression files come from `scripts/pg-regress --fetch-only` (scripts/test runs it
//! and sets FENCEGATE_REGRESS_SQL); without them only the corpora are checked.

use std::fs;
use std::ops::Range;
use std::path::PathBuf;

use fencegate::sql::classify::{classify, Kind};
use fencegate::sql::lexer::split_statements;
use pg_query::protobuf::{KeywordKind, ScanToken, Token};
use pg_query::NodeEnum;

/// One input's disagreements, by rule.
#[derive(Default, Debug)]
struct Findings {
    statements: usize,
    cut_off_token: Vec<String>,
    missed_cut: Vec<String>,
    read_that_writes: Vec<String>,
}

/// A psql script as the server would receive it: meta-command lines dropped, an inline
/// `\g`-style terminator made a `;`, COPY's inline data dropped.
fn as_server_text(script: &str) -> String {
    let mut out = String::with_capacity(script.len());
    let mut in_copy_data = false;
    for line in script.lines() {
        if in_copy_data {
            in_copy_data = line != "\\.";
            continue;
        }
        if line.trim_start().starts_with('\\') {
            continue;
        }
        let lower = line.to_ascii_lowercase();
        if lower.contains("from stdin") && lower.trim_end().ends_with(';') {
            in_copy_data = true;
        }
        match line.find(" \\g").or_else(|| line.find(" \\crosstabview")) {
            Some(at) => out.push_str(&format!("{};", &line[..at])),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn is_comment(t: &ScanToken) -> bool {
    t.token == Token::SqlComment as i32 || t.token == Token::CComment as i32
}

fn is_word(sql: &str, t: &ScanToken, word: &str) -> bool {
    t.keyword_kind != KeywordKind::NoKeyword as i32
        && sql[t.start as usize..t.end as usize].eq_ignore_ascii_case(word)
}

/// The `;` tokens PostgreSQL's grammar treats as statement ends: outside parentheses (a
/// rule's `DO INSTEAD (a; b)`) and outside BEGIN ATOMIC bodies.
fn server_cuts(sql: &str, tokens: &[ScanToken]) -> Vec<usize> {
    let (mut cuts, mut atomic_depth, mut parens) = (Vec::new(), 0usize, 0usize);
    let significant: Vec<&ScanToken> = tokens.iter().filter(|t| !is_comment(t)).collect();
    for (i, t) in significant.iter().enumerate() {
        let next_is = |w: &str| significant.get(i + 1).is_some_and(|n| is_word(sql, n, w));
        if t.token == Token::Ascii40 as i32 {
            parens += 1;
        } else if t.token == Token::Ascii41 as i32 {
            parens = parens.saturating_sub(1);
        } else if (is_word(sql, t, "begin") && next_is("atomic"))
            || (atomic_depth > 0 && is_word(sql, t, "case"))
        {
            atomic_depth += 1;
        } else if atomic_depth > 0 && is_word(sql, t, "end") {
            atomic_depth -= 1;
        } else if t.token == Token::Ascii59 as i32 && atomic_depth == 0 && parens == 0 {
            cuts.push(t.start as usize);
        }
    }
    cuts
}

fn excerpt(sql: &str, at: usize) -> String {
    let start = sql.floor_char_boundary(at.saturating_sub(60));
    let end = sql.ceil_char_boundary((at + 60).min(sql.len()));
    sql[start..end].replace('\n', " ")
}

fn check(sql: &str, findings: &mut Findings) {
    let Ok(scan) = pg_query::scan(sql) else {
        return; // PostgreSQL's scanner refuses it too (an unterminated quote)
    };
    let tokens = scan.tokens;
    let semicolons: Vec<usize> = tokens
        .iter()
        .filter(|t| t.token == Token::Ascii59 as i32)
        .map(|t| t.start as usize)
        .collect();
    let ours: Vec<Range<usize>> = split_statements(sql.as_bytes());
    findings.statements += ours.len();
    // Rule 1: each gap between two of our statements holds a real `;`.
    for pair in ours.windows(2) {
        let gap = pair[0].end..pair[1].start;
        if !semicolons.iter().any(|s| gap.contains(s)) {
            findings.cut_off_token.push(excerpt(sql, gap.start));
        }
    }
    // Rule 2: each server cut lies outside our statements, or before only comments.
    for cut in server_cuts(sql, &tokens) {
        let Some(inside) = ours.iter().find(|r| r.start <= cut && cut < r.end) else {
            continue;
        };
        let after = tokens
            .iter()
            .filter(|t| (t.start as usize) > cut && (t.start as usize) < inside.end);
        if after.clone().any(|t| !is_comment(t)) {
            findings.missed_cut.push(excerpt(sql, cut));
        }
    }
    // Rule 3: what we call a read, PostgreSQL parses as a plain query.
    for range in &ours {
        let text = &sql[range.clone()];
        if classify(text.as_bytes()).kind != Kind::Read {
            continue;
        }
        if let Ok(parsed) = pg_query::parse(text) {
            let plain = parsed.protobuf.stmts.iter().all(|s| {
                s.stmt
                    .as_ref()
                    .and_then(|n| n.node.as_ref())
                    .is_some_and(is_plain_query)
            });
            if !plain {
                findings.read_that_writes.push(excerpt(text, 0));
            }
        }
    }
}

/// A statement PostgreSQL runs without writing (functions it calls aside).
fn is_plain_query(node: &NodeEnum) -> bool {
    let tree = format!("{node:?}");
    let modifies = ["InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"]
        .iter()
        .any(|n| tree.contains(n));
    let top = match node {
        NodeEnum::SelectStmt(_) => true,
        NodeEnum::ExplainStmt(e) => !tree.contains("defname: \"analyze\"") && e.query.is_some(),
        NodeEnum::CopyStmt(c) => !c.is_from,
        NodeEnum::FetchStmt(_) => true,
        _ => false,
    };
    let into = tree.contains("into_clause: Some");
    let locking = !tree.contains("locking_clause: []") && tree.contains("locking_clause");
    top && !modifies && !into && !locking
}

/// Every input the oracle reads: regression files (when fetched) and the fuzz corpora.
fn inputs() -> Vec<(String, String)> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::var("FENCEGATE_REGRESS_SQL") {
        dirs.push(dir.into());
    } else {
        eprintln!("oracle: FENCEGATE_REGRESS_SQL not set; checking the fuzz corpora only");
    }
    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    dirs.extend(["sql", "annotation"].map(|t| corpus.join(t)));
    let mut out = Vec::new();
    for dir in dirs {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for path in entries.map(|e| e.expect("entry").path()) {
            if let Ok(text) = String::from_utf8(fs::read(&path).expect("read")) {
                out.push((path.display().to_string(), as_server_text(&text)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_sql_reader_agrees_with_postgresqls_scanner_and_parser() {
    let inputs = inputs();
    let (mut total, mut failures) = (Findings::default(), Vec::new());
    for (name, sql) in &inputs {
        let mut findings = Findings::default();
        check(sql, &mut findings);
        total.statements += findings.statements;
        for (rule, list) in [
            ("cut off a `;` token", &findings.cut_off_token),
            ("missed a statement end", &findings.missed_cut),
            (
                "read that PostgreSQL parses as a write",
                &findings.read_that_writes,
            ),
        ] {
            failures.extend(list.iter().map(|at| format!("{name}: {rule}: …{at}…")));
        }
    }
    eprintln!(
        "oracle: {} inputs, {} statements, {} disagreements",
        inputs.len(),
        total.statements,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
