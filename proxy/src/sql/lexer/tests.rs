//! Lexer and statement-splitting cases, including the tricky quoting rules.

use super::*;

fn split(sql: &str) -> Vec<&str> {
    split_statements(sql.as_bytes())
        .into_iter()
        .map(|r| sql[r].trim())
        .collect()
}

fn words(sql: &str) -> Vec<String> {
    Lexer::new(sql.as_bytes())
        .filter_map(|t| match t {
            Token::Word(w) => Some(String::from_utf8_lossy(w).to_lowercase()),
            _ => None,
        })
        .collect()
}

#[test]
fn splits_on_top_level_semicolons_only() {
    assert_eq!(split("select 1; select 2"), ["select 1", "select 2"]);
    assert_eq!(split("select ';' ; select 2;"), ["select ';'", "select 2"]);
    assert_eq!(split("select 'it''s;'; x"), ["select 'it''s;'", "x"]);
    assert_eq!(split(r"select E'\';'; x"), [r"select E'\';'", "x"]);
    assert_eq!(split(r"select '\'; x"), [r"select '\'", "x"]);
    assert_eq!(
        split(r#"select 1 as "a;""b"; x"#),
        [r#"select 1 as "a;""b""#, "x"]
    );
    assert_eq!(split("select $$;$$; x"), ["select $$;$$", "x"]);
    assert_eq!(split("select $f$ $$; $f$; x"), ["select $f$ $$; $f$", "x"]);
    assert_eq!(split("select $1; x"), ["select $1", "x"]);
    assert_eq!(split("select a$b from t; x"), ["select a$b from t", "x"]);
}

#[test]
fn comments_hide_semicolons_and_nest() {
    assert_eq!(split("select 1 -- ; no\n; x"), ["select 1 -- ; no", "x"]);
    assert_eq!(
        split("select /* a /* b; */ ; */ 1; x"),
        ["select /* a /* b; */ ; */ 1", "x"]
    );
}

#[test]
fn empty_statements_are_skipped() {
    assert_eq!(split(""), Vec::<&str>::new());
    assert_eq!(split(" ; ;/* c */;"), Vec::<&str>::new());
    assert_eq!(split("select 1;;select 2;"), ["select 1", "select 2"]);
}

#[test]
fn begin_atomic_bodies_keep_their_semicolons() {
    let sql = "create function f() returns int language sql begin atomic select 1; select case when true then 2 end; end; select 3";
    let parts = split(sql);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[1], "select 3");
    // A transaction BEGIN is not a function body.
    assert_eq!(split("begin; select 1; end"), ["begin", "select 1", "end"]);
}

#[test]
fn unterminated_input_does_not_panic() {
    for sql in [
        "select 'abc",
        "select \"abc",
        "select $$abc",
        "select /* abc",
        "select E'\\",
        "$",
        "$a",
        "e",
        "-",
    ] {
        let _ = split(sql);
        let _ = words(sql);
    }
}

#[test]
fn tokens_report_words_comments_and_literals() {
    let toks: Vec<_> = Lexer::new(b"UPDATE t SET x='a' /*k='v'*/ -- tail\n").collect();
    assert!(toks[0].is_word("update"));
    assert!(toks.contains(&Token::Literal(b"a")));
    assert!(toks.contains(&Token::Comment(b"k='v'")));
    assert!(toks.contains(&Token::Comment(b" tail")));
    assert_eq!(words("select \"Quoted\" from x"), ["select", "from", "x"]);
}

#[test]
fn non_utf8_bytes_are_identifier_bytes() {
    let sql = b"select '\xff;' as \xe9t\xe9; select 2";
    assert_eq!(split_statements(sql).len(), 2);
}

#[test]
fn line_comments_end_at_carriage_return_too() {
    assert_eq!(
        split("-- note\rUPDATE t SET a = 1"),
        ["-- note\rUPDATE t SET a = 1"]
    );
    assert_eq!(
        split("SELECT 1 --c\r; SELECT 2"),
        ["SELECT 1 --c", "SELECT 2"]
    );
    assert_eq!(split("SELECT 1;\x0b;SELECT 2"), ["SELECT 1", "SELECT 2"]);
}

#[test]
fn a_trailing_comment_segment_belongs_to_the_statement_before() {
    let sql = "UPDATE t SET a = 1; /*fencing_token='1'*/";
    assert_eq!(split(sql), [sql]);
    assert_eq!(split("/* lead */; SELECT 1"), ["SELECT 1"]);
    assert_eq!(
        split("SELECT 1; /*x*/; SELECT 2"),
        ["SELECT 1; /*x*/", "SELECT 2"]
    );
}

#[test]
fn rule_action_lists_and_dotted_end_do_not_split() {
    let rule = "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (1); INSERT INTO b VALUES (2))";
    assert_eq!(split(&format!("{rule}; SELECT 1")), [rule, "SELECT 1"]);
    let body = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT r.end FROM rng r; SELECT 1; END";
    assert_eq!(split(&format!("{body}; SELECT 2")), [body, "SELECT 2"]);
}

#[test]
fn begin_atomic_only_opens_a_body_in_a_routine_definition() {
    // A column named `begin` followed by an alias `atomic` in another CREATE.
    let sql =
        "CREATE TEMP TABLE x AS SELECT s.begin atomic FROM (SELECT 1 AS begin) s; COMMIT; BEGIN";
    assert_eq!(split(sql).len(), 3, "{:?}", split(sql));
    let sql = "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END; COMMIT";
    assert_eq!(split(sql).len(), 2, "{:?}", split(sql));
    // Inside a body only CASE ... END nests; `begin` is a name, and so are `case` and
    // `end` after `.` or AS.
    let sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT begin FROM t; \
               SELECT CASE WHEN true THEN 1 END AS end, r.case FROM r; END; COMMIT; BEGIN";
    assert_eq!(split(sql).len(), 3, "{:?}", split(sql));
}

#[test]
fn inner_semicolons_are_reported() {
    assert!(has_inner_semicolon(
        b"CREATE RULE r AS ON INSERT TO t DO ALSO (SELECT 1; SELECT 2)"
    ));
    assert!(!has_inner_semicolon(b"SELECT ';' /* ; */ -- ;\n"));
    assert!(!has_inner_semicolon(
        b"UPDATE t SET v = 1; /* trailing tag */"
    ));
}

#[test]
fn the_lone_statement_shortcut_agrees_with_the_lexer() {
    let bodies = [
        "SELECT 1",
        "UPDATE t SET a = 'x;y' WHERE b = $$;$$ /*fencing_resource='r',fencing_token='1'*/",
        "UPDATE t SET a = 'x' /*fencing_resource='r',fencing_token='1'*/",
        "SELECT $q$a$q$, \"b\", E'c\\'' FROM t -- -",
        "SELECT \"a;b\" FROM t",
        "INSERT INTO t VALUES (1, E'\\';')",
        "SELECT 1 /* c; */",
        "  \n SELECT 1",
        "create function f() returns int language sql begin atomic select 1; end",
        "SELECT 1 -- c; d",
        "SELECT '--'",
        "-- c\nSELECT 1",
        "/* c */ SELECT 1",
        "",
        "  ",
    ];
    let tails = [
        "",
        ";",
        "; ",
        ";\n",
        " ;;\t\x0b;",
        "; SELECT 2",
        "; /*fencing_token='1'*/",
        "\n",
    ];
    let mut shortcuts = 0;
    for body in bodies {
        for tail in tails {
            let sql = format!("{body}{tail}");
            if let Some(range) = lone_statement(sql.as_bytes()) {
                shortcuts += 1;
                assert_eq!(split_lexed(sql.as_bytes()), vec![range], "{sql:?}");
            }
        }
    }
    assert!(
        shortcuts >= 18,
        "the shortcut was taken only {shortcuts} times"
    );
    // A `;` inside a line comment ending in a newline is no terminator: the lexer decides.
    let sql = b"UPDATE t SET a = 1 -- fencing_token='1';\n";
    assert_eq!(lone_statement(sql), None);
    assert_eq!(
        split_statements(sql),
        vec![Range {
            start: 0,
            end: sql.len()
        }]
    );
}
