//! Fencing annotations in SQL comments, in sqlcommenter form:
//! `/*fencing_resource='jobs%3A7',fencing_token='42'*/` anywhere in a statement.
//!
//! Keys and values are URL-encoded and values single-quoted (a quote inside may be escaped
//! as `\'`). Other keys (sqlcommenter's `traceparent`, `route`, ...) are ignored. A comment
//! that names either fencing key is an annotation; one that is malformed is an error the
//! client must see (SQLSTATE 55Z02), not something to skip silently.

use std::borrow::Cow;
use std::sync::LazyLock;

use memchr::memmem;

use super::Fence;
use crate::sql::lexer::{Lexer, Token};

/// Comment key for the resource.
pub const RESOURCE_KEY: &str = "fencing_resource";
/// Comment key for the token.
pub const TOKEN_KEY: &str = "fencing_token";
/// Longest resource name, in bytes.
pub const MAX_RESOURCE_LEN: usize = 256;

/// What is wrong with an annotation (reported as SQLSTATE 55Z02).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// A token with no resource.
    #[error("fencing_token is set but fencing_resource is not")]
    TokenWithoutResource,
    /// A resource with no token.
    #[error("fencing_resource is set but fencing_token is not")]
    ResourceWithoutToken,
    /// The token is not an integer in 0..=9223372036854775807.
    #[error("fencing_token must be an integer from 0 to 9223372036854775807, got {0:?}")]
    BadToken(String),
    /// The resource is empty or longer than 256 bytes, or not UTF-8.
    #[error("fencing_resource must be 1 to 256 bytes of UTF-8, got {0} bytes")]
    BadResource(usize),
    /// The resource holds a NUL byte, which no PostgreSQL text can.
    #[error("fencing_resource must not contain a NUL byte (%00)")]
    NulInResource,
    /// The comment is not `key='value'` pairs, or a value is not valid URL encoding.
    #[error("malformed sqlcommenter comment: {0}")]
    Malformed(&'static str),
    /// Two annotations in one statement disagree.
    #[error("conflicting fencing annotations in one statement")]
    Conflicting,
}

/// Finds the fencing annotation of one statement, if any.
pub fn find(statement: &[u8]) -> Result<Option<Fence>, AnnotationError> {
    if !mentions_key(statement) {
        // No comment can name a key the whole text lacks: skip the lexer.
        return Ok(None);
    }
    from_comments(Lexer::new(statement).filter_map(|token| match token {
        Token::Comment(text) => Some(text),
        _ => None,
    }))
}

/// The fencing annotation among a statement's comments (their texts, in order), if any.
pub fn from_comments<'a>(
    comments: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Fence>, AnnotationError> {
    from_comments_cached(comments, &mut LastComment::default())
}

/// [`from_comments`], reusing `last` when a comment is the one parsed last.
pub fn from_comments_cached<'a>(
    comments: impl IntoIterator<Item = &'a [u8]>,
    last: &mut LastComment,
) -> Result<Option<Fence>, AnnotationError> {
    let mut found = Ok(None);
    for text in comments {
        note_comment(&mut found, text, last);
        if found.is_err() {
            break;
        }
    }
    found
}

/// [`from_comments_cached`] one comment at a time, for a caller that meets the comments
/// as it lexes (in order): `found` starts as `Ok(None)` and keeps the first error.
pub fn note_comment(
    found: &mut Result<Option<Fence>, AnnotationError>,
    text: &[u8],
    last: &mut LastComment,
) {
    let Ok(current) = found else { return };
    let parsed = match last.cached(text) {
        // The comment parsed last named a key, so this one does: no need to search it.
        Some(parsed) => parsed.clone(),
        None if !mentions_key(text) => return,
        None => last.parse(text),
    };
    match parsed {
        Err(e) => *found = Err(e),
        Ok(fence) => match current {
            Some(prev) if *prev != fence => *found = Err(AnnotationError::Conflicting),
            _ => *current = Some(fence),
        },
    }
}

/// The annotation comment a session parsed last, with its result. A client usually sends
/// the same annotation on every statement of a transaction (or of a lock's whole lease),
/// so comparing the text replaces parsing it again.
#[derive(Debug, Default)]
pub struct LastComment {
    text: Vec<u8>,
    parsed: Option<Result<Fence, AnnotationError>>,
}

impl LastComment {
    /// Longest comment kept: an annotation is two short pairs plus sqlcommenter's others.
    const MAX_KEPT: usize = 1024;

    /// The result for `text` when it is the comment parsed last.
    fn cached(&self, text: &[u8]) -> Option<&Result<Fence, AnnotationError>> {
        self.parsed.as_ref().filter(|_| self.text == text)
    }

    fn parse(&mut self, text: &[u8]) -> Result<Fence, AnnotationError> {
        match &self.parsed {
            Some(parsed) if self.text == text => parsed.clone(),
            _ => {
                let parsed = parse_comment(text);
                if text.len() <= Self::MAX_KEPT {
                    self.text.clear();
                    self.text.extend_from_slice(text);
                    self.parsed = Some(parsed.clone());
                }
                parsed
            }
        }
    }
}

/// True when `text` names a fencing key anywhere: without that, no comment in it is an
/// annotation.
pub fn mentions_key(text: &[u8]) -> bool {
    // Built once: building a finder costs more than searching a statement.
    static FINDER: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"fencing_"));
    FINDER.find(text).is_some()
}

/// Parses `k1='v1',k2='v2'` and builds the fence from the fencing keys.
fn parse_comment(text: &[u8]) -> Result<Fence, AnnotationError> {
    let (mut resource, mut token) = (None, None);
    for_each_pair(text, |key, value| match &*key {
        b"fencing_resource" => resource = Some(value),
        b"fencing_token" => token = Some(value),
        _ => {}
    })?;
    let (resource, token) = match (resource, token) {
        (Some(r), Some(t)) => (r, t),
        (None, Some(_)) => return Err(AnnotationError::TokenWithoutResource),
        (Some(_), None) => return Err(AnnotationError::ResourceWithoutToken),
        (None, None) => return Err(AnnotationError::Malformed("no fencing key")),
    };
    Fence::new(resource.into_owned(), &token)
}

/// Calls `f` with each sqlcommenter pair, key and value URL-decoded. Both borrow from
/// `text` unless an escape had to be undone (annotations are parsed on every statement
/// that carries one, so the common case allocates nothing).
fn for_each_pair<'a>(
    text: &'a [u8],
    mut f: impl FnMut(Cow<'a, [u8]>, Cow<'a, [u8]>),
) -> Result<(), AnnotationError> {
    let mut rest = trim(text);
    while !rest.is_empty() {
        let eq =
            memchr::memchr(b'=', rest).ok_or(AnnotationError::Malformed("expected key='value'"))?;
        let key = url_decode(Cow::Borrowed(trim(&rest[..eq])))?;
        rest = trim(&rest[eq + 1..]);
        if rest.first() != Some(&b'\'') {
            return Err(AnnotationError::Malformed("value must be single-quoted"));
        }
        let (raw, after) = quoted_value(&rest[1..])?;
        f(key, url_decode(raw)?);
        rest = trim(after);
        match rest.first() {
            None => {}
            Some(b',') => rest = trim(&rest[1..]),
            Some(_) => return Err(AnnotationError::Malformed("expected ',' between pairs")),
        }
    }
    Ok(())
}

/// Reads a quoted value up to its closing quote, undoing `\'` escapes.
fn quoted_value(text: &[u8]) -> Result<(Cow<'_, [u8]>, &[u8]), AnnotationError> {
    let close = memchr::memchr(b'\'', text)
        .ok_or(AnnotationError::Malformed("unterminated quoted value"))?;
    if text[..close].last() != Some(&b'\\') {
        // No escape before the first quote: it closes the value.
        return Ok((Cow::Borrowed(&text[..close]), &text[close + 1..]));
    }
    let mut value = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\\' if text.get(i + 1) == Some(&b'\'') => {
                value.push(b'\'');
                i += 2;
            }
            b'\'' => return Ok((Cow::Owned(value), &text[i + 1..])),
            b => {
                value.push(b);
                i += 1;
            }
        }
    }
    Err(AnnotationError::Malformed("unterminated quoted value"))
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !first.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !last.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    s
}

fn url_decode(s: Cow<'_, [u8]>) -> Result<Cow<'_, [u8]>, AnnotationError> {
    if memchr::memchr(b'%', &s).is_none() {
        return Ok(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(AnnotationError::Malformed("invalid %-escape"))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(r: &str, t: i64) -> Option<Fence> {
        Some(Fence {
            resource: r.to_string(),
            token: t,
        })
    }

    #[test]
    fn finds_sqlcommenter_annotation_anywhere() {
        let sql = b"UPDATE jobs SET state='done' WHERE id=7 /*fencing_resource='jobs%3A7',fencing_token='42'*/";
        assert_eq!(find(sql).unwrap(), fence("jobs:7", 42));
        let prepended = b"/*fencing_token='5', fencing_resource='a'*/ SELECT 1";
        assert_eq!(find(prepended).unwrap(), fence("a", 5));
        let with_others = b"SELECT 1 /*action='run',fencing_resource='r%2Fx',fencing_token='0',traceparent='00-ab-cd-01'*/";
        assert_eq!(find(with_others).unwrap(), fence("r/x", 0));
    }

    #[test]
    fn ignores_comments_without_fencing_keys_and_strings_that_look_like_comments() {
        assert_eq!(find(b"SELECT 1 /*route='/x'*/ -- note").unwrap(), None);
        assert_eq!(
            find(b"SELECT '/*fencing_resource=''a'',fencing_token=''1''*/'").unwrap(),
            None
        );
    }

    #[test]
    fn escaped_quotes_and_utf8_resources() {
        let sql = "SELECT 1 /*fencing_resource='it\\'s%20%C3%A9t%C3%A9',fencing_token='9'*/";
        assert_eq!(find(sql.as_bytes()).unwrap(), fence("it's été", 9));
    }

    #[test]
    fn malformed_annotations_are_errors() {
        let cases: &[(&[u8], AnnotationError)] = &[
            (b"/*fencing_token='1'*/", AnnotationError::TokenWithoutResource),
            (b"/*fencing_resource='a'*/", AnnotationError::ResourceWithoutToken),
            (b"/*fencing_resource='a',fencing_token='x1'*/", AnnotationError::BadToken("x1".into())),
            (b"/*fencing_resource='a',fencing_token='-1'*/", AnnotationError::BadToken("-1".into())),
            (
                b"/*fencing_resource='a',fencing_token='9223372036854775808'*/",
                AnnotationError::BadToken("9223372036854775808".into()),
            ),
            (b"/*fencing_resource='',fencing_token='1'*/", AnnotationError::BadResource(0)),
            (b"/*fencing_resource=a,fencing_token='1'*/", AnnotationError::Malformed("value must be single-quoted")),
            (b"/*fencing_resource='a%zz',fencing_token='1'*/", AnnotationError::Malformed("invalid %-escape")),
            (b"/*fencing_resource='a',fencing_token='1' x*/", AnnotationError::Malformed("expected ',' between pairs")),
            (
                b"/*fencing_resource='a',fencing_token='1'*/ /*fencing_resource='a',fencing_token='2'*/",
                AnnotationError::Conflicting,
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(
                find(sql).unwrap_err(),
                *want,
                "{}",
                String::from_utf8_lossy(sql)
            );
        }
        let long = format!(
            "/*fencing_resource='{}',fencing_token='1'*/",
            "r".repeat(257)
        );
        assert_eq!(
            find(long.as_bytes()).unwrap_err(),
            AnnotationError::BadResource(257)
        );
    }

    #[test]
    fn the_same_annotation_twice_is_fine() {
        let sql = b"/*fencing_resource='a',fencing_token='1'*/ SELECT 1 /*fencing_token='1',fencing_resource='a'*/";
        assert_eq!(find(sql).unwrap(), fence("a", 1));
    }

    #[test]
    fn a_session_reuses_the_comment_it_parsed_last_and_only_that_one() {
        let mut last = LastComment::default();
        let parse = |last: &mut LastComment, sql: &[u8]| {
            let comments = Lexer::new(sql).filter_map(|token| match token {
                Token::Comment(text) => Some(text),
                _ => None,
            });
            from_comments_cached(comments, last)
        };
        let a7 = b"UPDATE t SET x = 1 /*fencing_resource='a',fencing_token='7'*/";
        let a8 = b"UPDATE t SET x = 1 /*fencing_resource='a',fencing_token='8'*/";
        let bad = b"UPDATE t SET x = 1 /*fencing_resource='a',fencing_token='x'*/";
        for _ in 0..2 {
            assert_eq!(parse(&mut last, a7).unwrap(), fence("a", 7));
        }
        assert_eq!(parse(&mut last, a8).unwrap(), fence("a", 8));
        for _ in 0..2 {
            assert_eq!(
                parse(&mut last, bad).unwrap_err(),
                AnnotationError::BadToken("x".into())
            );
        }
        assert_eq!(parse(&mut last, a7).unwrap(), fence("a", 7));
        // Too long to keep, still parsed right, and the kept one is not mistaken for it.
        let long = format!(
            "/*fencing_resource='b',fencing_token='9',traceparent='{}'*/",
            "0".repeat(LastComment::MAX_KEPT)
        );
        assert_eq!(parse(&mut last, long.as_bytes()).unwrap(), fence("b", 9));
        assert_eq!(parse(&mut last, a8).unwrap(), fence("a", 8));
    }
}
