use super::*;

fn fence(resource: &str, token: i64) -> Fence {
    Fence::new(resource, token).unwrap()
}

/// Asserts that `render` turns each fence of `cases` into its expected text.
fn assert_renders<const N: usize>(render: fn(&Fence) -> String, cases: [(Fence, &str); N]) {
    for (f, expected) in cases {
        assert_eq!(render(&f), expected, "{f}");
    }
}

#[test]
fn new_checks_the_limits_fencegate_enforces() {
    assert_eq!(Fence::new("", 1), Err(InvalidFence::ResourceLength(0)));
    assert_eq!(
        Fence::new("r".repeat(257), 1),
        Err(InvalidFence::ResourceLength(257))
    );
    assert!(Fence::new("r".repeat(256), 1).is_ok());
    // 128 two-byte characters are 256 bytes; one more is too long.
    assert!(Fence::new("é".repeat(128), 0).is_ok());
    assert_eq!(
        Fence::new("é".repeat(129), 0),
        Err(InvalidFence::ResourceLength(258))
    );
    assert_eq!(Fence::new("a\0b", 1), Err(InvalidFence::ResourceNul));
    assert_eq!(Fence::new("a", -1), Err(InvalidFence::NegativeToken(-1)));
    let max = fence("a", i64::MAX);
    assert_eq!((max.resource(), max.token()), ("a", i64::MAX));
    assert_eq!(max.to_string(), "a@9223372036854775807");
}

#[test]
fn comment_is_sorted_quoted_and_url_encoded() {
    assert_renders(
        Fence::sql_comment,
        [
            (
                fence("jobs:7", 42),
                "/*fencing_resource='jobs%3A7',fencing_token='42'*/",
            ),
            (
                fence("AZaz09-._~", 0),
                "/*fencing_resource='AZaz09-._~',fencing_token='0'*/",
            ),
        ],
    );
}

#[test]
fn comment_escapes_quotes_comment_ends_and_non_ascii() {
    let c = fence("it's */ a b/é%", 7).sql_comment();
    assert_eq!(
        c,
        "/*fencing_resource='it%27s%20%2A%2F%20a%20b%2F%C3%A9%25',fencing_token='7'*/"
    );
    // Nothing inside can close the comment or the quoted value.
    let inner = &c[2..c.len() - 2];
    assert!(!inner.contains("*/"), "{c}");
    assert_eq!(inner.matches('\'').count(), 4, "{c}");
}

#[test]
fn tag_appends_before_a_trailing_semicolon() {
    let f = fence("r", 1);
    let c = f.sql_comment();
    assert_eq!(f.tag("SELECT 1"), format!("SELECT 1 {c}"));
    assert_eq!(f.tag("SELECT 1;  \n"), format!("SELECT 1 {c};"));
    assert_eq!(f.tag("SELECT 1 ;"), format!("SELECT 1 {c};"));
    assert_eq!(f.tag(""), c);
}

#[test]
fn tag_keeps_existing_comments_and_escapes_line_comments() {
    let f = fence("r", 1);
    let c = f.sql_comment();
    assert_eq!(
        f.tag("SELECT 1 /*route='/x'*/"),
        format!("SELECT 1 /*route='/x'*/ {c}")
    );
    assert_eq!(f.tag("SELECT 1 -- why"), format!("SELECT 1 -- why\n{c}"));
    assert_eq!(
        f.tag("SELECT 1 -- why\nFROM t"),
        format!("SELECT 1 -- why\nFROM t {c}")
    );
}

#[test]
fn set_local_quotes_the_resource_like_quote_literal() {
    assert_renders(
        Fence::set_local_sql,
        [
        (
            fence("jobs:7", 42),
            "SET LOCAL fencing.resource = 'jobs:7'; SET LOCAL fencing.token = 42",
        ),
        (
            fence("o'brien; DROP TABLE x", 1),
            "SET LOCAL fencing.resource = 'o''brien; DROP TABLE x'; SET LOCAL fencing.token = 1",
        ),
        (
            fence(r"a\b'c", 2),
            r"SET LOCAL fencing.resource = E'a\\b''c'; SET LOCAL fencing.token = 2",
        ),
        ],
    );
}

#[test]
fn connect_options_escape_whitespace_and_backslashes() {
    assert_renders(
        Fence::connect_options,
        [
            (
                fence("jobs:7", 42),
                "-c fencing.resource=jobs:7 -c fencing.token=42",
            ),
            (
                fence("a b\tc\\d=e\u{b}", 3),
                "-c fencing.resource=a\\ b\\\tc\\\\d=e\\\u{b} -c fencing.token=3",
            ),
        ],
    );
}

#[test]
fn connect_options_split_back_as_postgres_splits_them() {
    // PostgreSQL's pg_split_opts: split on unescaped whitespace, a backslash escapes the
    // next character.
    fn split(options: &str) -> Vec<String> {
        let mut args = vec![];
        let mut cur = String::new();
        let mut chars = options.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                c if c.is_ascii_whitespace() || c == '\u{b}' => {
                    if !cur.is_empty() {
                        args.push(std::mem::take(&mut cur));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            args.push(cur);
        }
        args
    }
    let resource = " odd\\ name\n\twith\u{b}spaces ";
    let args = split(&fence(resource, 9).connect_options());
    assert_eq!(
        args,
        [
            "-c".to_string(),
            format!("fencing.resource={resource}"),
            "-c".into(),
            "fencing.token=9".into()
        ]
    );
}

#[test]
fn connect_options_query_is_percent_encoded() {
    assert_eq!(
        fence("a b", 1).connect_options_query(),
        "options=-c%20fencing.resource%3Da%5C%20b%20-c%20fencing.token%3D1"
    );
}
