//! Checks for the SQL readers: the lexer and splitter, the classifier, the annotation and
//! the decision made from them, and the check statement built from that decision.

use fencegate::config::FenceMode;
use fencegate::fence::plan::{Decision, FencePolicy};
use fencegate::fence::{annotation, Fence};
use fencegate::sql::classify::{classify, Kind};
use fencegate::sql::lexer::{has_inner_semicolon, split_statements, Lexer, Token};
use fencegate::sql::reading::ReadingRules;

/// Statements come out in order, disjoint and inside the text; the lexer ends, yielding
/// at most one token per byte; every statement can be classified.
pub fn sql(text: &[u8]) {
    let mut end = 0;
    for range in split_statements(text) {
        assert!(range.start >= end && range.start <= range.end && range.end <= text.len());
        end = range.end;
        let statement = &text[range];
        let _ = classify(statement);
        let _ = has_inner_semicolon(statement);
    }
    let mut lexer = Lexer::new(text);
    let (mut tokens, mut offset) = (0usize, 0usize);
    while lexer.next().is_some() {
        tokens += 1;
        assert!(tokens <= text.len(), "more tokens than bytes");
        assert!(lexer.offset() >= offset, "the lexer went back");
        offset = lexer.offset();
    }
    let mut rules = ReadingRules::at_startup(None);
    rules.before_statement(true);
    rules.after_statement(text);
    let _ = rules.unreadable();
}

/// The annotation and the decision, in both modes and with and without session settings:
/// - the one-pass analysis finds the same annotation as [`annotation::find`];
/// - a statement that may read or write with a valid annotation is checked with exactly
///   that fence (never passed unchecked), and one that may write with session settings is
///   never passed either;
/// - the check statement is ASCII, one statement with no comment, whatever the resource.
pub fn annotation(statement: &[u8]) {
    let found = annotation::find(statement);
    let _ = annotation::mentions_key(statement);
    for mode in [FenceMode::All, FenceMode::Writes] {
        let policy = FencePolicy {
            mode,
            grace_ms: 5000,
            require_token_tables: vec!["accounts".into()],
        };
        let analysis = policy.analyze(statement);
        assert_eq!(
            analysis.annotation, found,
            "two readings of one annotation differ"
        );
        let kind = analysis.class.kind;
        for settings_aware in [false, true] {
            let decision = policy.decide_analyzed(&analysis, settings_aware);
            match (&found, kind) {
                (Ok(Some(fence)), Kind::Write | Kind::Procedure) => {
                    assert_eq!(decision, Decision::Check(fence.clone()), "{kind:?}");
                }
                (Ok(Some(fence)), Kind::Read) if mode == FenceMode::All => {
                    assert_eq!(decision, Decision::Check(fence.clone()));
                }
                (Ok(None), Kind::Write) if settings_aware => {
                    assert!(
                        decision != Decision::Pass,
                        "a write passed a fenced session"
                    );
                }
                _ => {}
            }
            for schema_known in [false, true] {
                if let Some(check) = policy.sql(&decision, schema_known) {
                    assert_one_plain_statement(&check);
                }
            }
        }
        if let Ok(Some(fence)) = &found {
            assert_one_plain_statement(&check_of(&policy, fence));
        }
    }
}

fn check_of(policy: &FencePolicy, fence: &Fence) -> String {
    policy
        .sql(&Decision::Check(fence.clone()), true)
        .expect("a check has SQL")
}

/// What the proxy sends cannot be split or commented out by what a client chose.
fn assert_one_plain_statement(sql: &str) {
    assert!(sql.is_ascii() && !sql.contains('\0'), "{sql:?}");
    assert_eq!(split_statements(sql.as_bytes()).len(), 1, "{sql:?}");
    let comment = Lexer::new(sql.as_bytes()).any(|t| matches!(t, Token::Comment(_)));
    assert!(!comment, "a comment in the proxy's own statement: {sql:?}");
}
