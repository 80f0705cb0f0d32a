//! A small SQL lexer: enough to split a Query string into statements and to see each
//! statement's leading keywords and its comments, never enough to parse SQL.
//!
//! It works on the client's raw bytes, so it never re-encodes text. It knows PostgreSQL's
//! quoting: `'...'` (with `''`), `E'...'` (backslash escapes), `"..."` identifiers,
//! `$tag$...$tag$` dollar quotes, `--` and nested `/* */` comments, and the `BEGIN ATOMIC
//! ... END` bodies of SQL-standard functions, whose semicolons do not end the statement.
//! Bytes of multi-byte characters (>= 0x80) are treated as identifier characters; every
//! server-side encoding is ASCII-compatible, so quotes and semicolons are found correctly.

use std::ops::Range;

/// One lexical token of interest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// A keyword or unquoted identifier (original case).
    Word(&'a [u8]),
    /// A quoted identifier, without its quotes (escapes not undone).
    QuotedIdent(&'a [u8]),
    /// A string or dollar-quoted literal, without its quotes (escapes not undone).
    Literal(&'a [u8]),
    /// A comment's text, without `--` or `/*` `*/`.
    Comment(&'a [u8]),
    /// A number or parameter (`$1`).
    Number(&'a [u8]),
    /// Any other single byte: operators, punctuation (`;` included).
    Punct(u8),
}

impl Token<'_> {
    /// True for a word equal to `kw`, ignoring ASCII case.
    pub fn is_word(&self, kw: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(kw.as_bytes()))
    }
}

/// PostgreSQL's whitespace: space, tab, newline, carriage return, form feed, vertical tab.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b')
}

/// Byte classes for identifiers, as a table: the lexer runs over every fenced statement.
const IDENT_START: u8 = 1;
const IDENT_CONT: u8 = 2;
const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        if byte.is_ascii_alphabetic() || byte == b'_' || byte >= 0x80 {
            table[b] = IDENT_START | IDENT_CONT;
        } else if byte.is_ascii_digit() || byte == b'$' {
            table[b] = IDENT_CONT;
        }
        b += 1;
    }
    table
};

fn is_ident_start(b: u8) -> bool {
    CLASSES[b as usize] & IDENT_START != 0
}

fn is_ident_cont(b: u8) -> bool {
    CLASSES[b as usize] & IDENT_CONT != 0
}

/// Iterates over the tokens of `sql` (whitespace skipped). Unterminated quotes and comments
/// run to the end of the input, as the server would report them as errors anyway.
pub struct Lexer<'a> {
    sql: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer over `sql`.
    pub fn new(sql: &'a [u8]) -> Self {
        Lexer { sql, pos: 0 }
    }

    /// Byte offset of the next token.
    pub fn offset(&self) -> usize {
        self.pos
    }

    fn rest(&self) -> &'a [u8] {
        &self.sql[self.pos..]
    }

    /// Finds `needle` at or after `from`; returns its position or the end of input.
    fn find_from(&self, from: usize, needle: &[u8]) -> usize {
        self.sql[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map_or(self.sql.len(), |p| from + p)
    }

    fn quoted(&mut self, start: usize, quote: u8, backslash: bool) -> &'a [u8] {
        let mut i = start;
        while i < self.sql.len() {
            // Jump to the next byte that matters (memchr: quoted text can be long).
            let next = if backslash {
                memchr::memchr2(quote, b'\\', &self.sql[i..])
            } else {
                memchr::memchr(quote, &self.sql[i..])
            };
            let Some(offset) = next else { break };
            i += offset;
            if self.sql[i] != quote {
                i += 2; // a backslash and the byte it escapes
            } else if self.sql.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                self.pos = i + 1;
                return &self.sql[start..i];
            }
        }
        self.pos = self.sql.len();
        &self.sql[start.min(self.sql.len())..]
    }

    fn block_comment(&mut self) -> &'a [u8] {
        let start = self.pos + 2;
        let (mut i, mut depth) = (start, 1usize);
        while let Some(offset) = memchr::memchr2(b'/', b'*', self.sql.get(i..).unwrap_or(&[])) {
            i += offset;
            match (self.sql[i], self.sql.get(i + 1)) {
                (b'/', Some(b'*')) => {
                    depth += 1;
                    i += 2;
                }
                (b'*', Some(b'/')) => {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        self.pos = i;
                        return &self.sql[start..i - 2];
                    }
                }
                _ => i += 1,
            }
        }
        self.pos = self.sql.len();
        &self.sql[start.min(self.sql.len())..]
    }

    /// A dollar-quote opening tag at the current position (`$$` or `$tag$`), if any.
    fn dollar_tag(&self) -> Option<&'a [u8]> {
        let rest = self.rest();
        let after = &rest[1..];
        let len = after.iter().position(|&b| !is_ident_cont(b) || b == b'$')?;
        if after.get(len) != Some(&b'$') || (len > 0 && !is_ident_start(after[0])) {
            return None;
        }
        Some(&rest[..len + 2])
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    // Inlined into the loops that drive it (one per fenced statement): a call per token
    // cost more than the usual token's own work.
    #[inline(always)]
    fn next(&mut self) -> Option<Token<'a>> {
        while self.pos < self.sql.len() && is_space(self.sql[self.pos]) {
            self.pos += 1;
        }
        let rest = self.rest();
        let &b = rest.first()?;
        let next = rest.get(1).copied();
        let start = self.pos;
        let token = match (b, next) {
            (b'-', Some(b'-')) => {
                // PostgreSQL ends a `--` comment at a newline or a carriage return.
                let end = memchr::memchr2(b'\n', b'\r', &self.sql[start..])
                    .map_or(self.sql.len(), |p| start + p);
                self.pos = (end + 1).min(self.sql.len());
                Token::Comment(&self.sql[start + 2..end])
            }
            (b'/', Some(b'*')) => Token::Comment(self.block_comment()),
            (b'\'', _) => Token::Literal(self.quoted(start + 1, b'\'', false)),
            (b'e' | b'E', Some(b'\'')) => Token::Literal(self.quoted(start + 2, b'\'', true)),
            (b'"', _) => Token::QuotedIdent(self.quoted(start + 1, b'"', false)),
            (b'$', Some(d)) if d.is_ascii_digit() => {
                let len = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
                self.pos += 1 + len;
                Token::Number(&rest[..1 + len])
            }
            (b'$', _) => match self.dollar_tag() {
                Some(tag) => {
                    let body = start + tag.len();
                    let end = self.find_from(body, tag);
                    self.pos = (end + tag.len()).min(self.sql.len());
                    Token::Literal(&self.sql[body..end])
                }
                None => {
                    self.pos += 1;
                    Token::Punct(b)
                }
            },
            _ if is_ident_start(b) => {
                let len = rest.iter().take_while(|&&c| is_ident_cont(c)).count();
                self.pos += len;
                Token::Word(&rest[..len])
            }
            _ if b.is_ascii_digit() => {
                let len = rest
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == b'.')
                    .count();
                self.pos += len;
                Token::Number(&rest[..len])
            }
            _ => {
                self.pos += 1;
                Token::Punct(b)
            }
        };
        Some(token)
    }
}

/// Splits a Query string into statements: byte ranges without the terminating `;`.
///
/// Semicolons inside parentheses (a CREATE RULE action list) and inside the `BEGIN ATOMIC
/// ... END` body of a `CREATE [OR REPLACE] FUNCTION|PROCEDURE` do not end a statement. In a
/// body, as in PostgreSQL's grammar, only `CASE ... END` nests (psql also counts `BEGIN`,
/// which a column named `begin` then fools); `case` and `end` after `.` or `AS` are names.
/// A segment with nothing but comments (a sqlcommenter tag written after the final `;`)
/// belongs to the statement before it, since PostgreSQL skips such segments; one before any
/// statement is dropped, like an empty statement.
pub fn split_statements(sql: &[u8]) -> Vec<Range<usize>> {
    statements(sql).collect()
}

/// [`split_statements`] as an iterator, which allocates nothing for the usual Query of one
/// statement.
pub fn statements(sql: &[u8]) -> Statements {
    match lone_statement(sql) {
        Some(statement) => Statements::One(Some(statement)),
        None => Statements::Many(split_lexed(sql).into_iter()),
    }
}

/// The statements of a Query string (see [`statements`]).
pub enum Statements {
    /// A lone statement, found without the lexer.
    One(Option<Range<usize>>),
    /// What the lexer found.
    Many(std::vec::IntoIter<Range<usize>>),
}

impl Iterator for Statements {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        match self {
            Statements::One(statement) => statement.take(),
            Statements::Many(statements) => statements.next(),
        }
    }
}

/// [`split_statements`] the long way, through the lexer.
fn split_lexed(sql: &[u8]) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut lexer = Lexer::new(sql);
    let mut start = 0;
    let mut statement = Statement::default();
    loop {
        let before = lexer.offset();
        let Some(tok) = lexer.next() else { break };
        match tok {
            Token::Punct(b';') if statement.may_end() => {
                statement.close(start..before, &mut out);
                start = lexer.offset();
                statement = Statement::default();
            }
            Token::Comment(_) => statement.note_comment(),
            _ => statement.push(tok),
        }
    }
    statement.close(start..sql.len(), &mut out);
    out
}

/// What a statement held between its start and the `;` that ends it.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Content {
    /// Nothing yet (or whitespace).
    #[default]
    Empty,
    /// Only comments: it belongs to the statement before it.
    Comments,
    /// Tokens (comments among them do not matter).
    Tokens,
}

/// What [`split_lexed`] knows of the statement it is in.
#[derive(Default)]
struct Statement<'a> {
    content: Content,
    /// Its first four tokens: words as written, any other token as empty.
    head: [&'a [u8]; 4],
    tokens: usize,
    /// It is a `CREATE [OR REPLACE] FUNCTION|PROCEDURE`, whose `BEGIN ATOMIC` body may
    /// hold `;`.
    routine: bool,
    /// `BEGIN ATOMIC` and `CASE` opened and not yet closed by `END`.
    atomic_depth: usize,
    /// Parentheses opened and not yet closed.
    parens: usize,
    prev: Option<Token<'a>>,
    before_prev_dot: bool,
}

impl<'a> Statement<'a> {
    /// Whether a `;` here ends the statement (not inside parentheses or an atomic body).
    fn may_end(&self) -> bool {
        self.atomic_depth == 0 && self.parens == 0
    }

    fn note_comment(&mut self) {
        if self.content == Content::Empty {
            self.content = Content::Comments;
        }
    }

    /// Adds the statement's `range` to `out`, or, holding only comments, extends the one
    /// before it.
    fn close(&self, range: Range<usize>, out: &mut Vec<Range<usize>>) {
        match (self.content, out.last_mut()) {
            (Content::Tokens, _) => out.push(range),
            (Content::Comments, Some(last)) => last.end = range.end,
            (Content::Comments, None) | (Content::Empty, _) => {}
        }
    }

    /// Takes the next token that is neither a comment nor a terminating `;`.
    fn push(&mut self, tok: Token<'a>) {
        match tok {
            Token::Punct(b'(') => self.parens += 1,
            Token::Punct(b')') => self.parens = self.parens.saturating_sub(1),
            _ => {}
        }
        self.content = Content::Tokens;
        if self.tokens < self.head.len() {
            self.head[self.tokens] = match tok {
                Token::Word(w) => w,
                _ => b"",
            };
            let word = |i: usize, w: &str| self.head[i].eq_ignore_ascii_case(w.as_bytes());
            let kind = |i: usize| word(i, "function") || word(i, "procedure");
            self.routine =
                word(0, "create") && (kind(1) || (word(1, "or") && word(2, "replace") && kind(3)));
        }
        self.tokens += 1;
        if self.routine {
            self.track_atomic_body(tok);
        }
        self.before_prev_dot = self.prev == Some(Token::Punct(b'.'));
        self.prev = Some(tok);
    }

    /// Counts `BEGIN ATOMIC` and `CASE` against `END` in a routine's body.
    fn track_atomic_body(&mut self, tok: Token<'a>) {
        let prev = self.prev;
        let after_dot = prev == Some(Token::Punct(b'.'));
        let opens_body = self.atomic_depth == 0
            && !self.before_prev_dot
            && prev.is_some_and(|p| p.is_word("begin"))
            && tok.is_word("atomic");
        let keyword = self.atomic_depth > 0 && !after_dot && !prev.is_some_and(|p| p.is_word("as"));
        if opens_body || (keyword && tok.is_word("case")) {
            self.atomic_depth += 1;
        } else if keyword && tok.is_word("end") {
            self.atomic_depth -= 1;
        }
    }
}

/// The usual Query string, one statement with at most `;` and whitespace after it, found
/// without the lexer: its range, as [`split_statements`] would give it. `None` when the
/// lexer must decide: a `;` with more text after it, a `--` (a `;` inside a line comment
/// is no terminator), or text that is blank or starts with a comment.
///
/// Where else that first `;` could stand (an unterminated quote, block comment or
/// parenthesis, a `BEGIN ATOMIC` body without its `END`), PostgreSQL rejects the whole
/// string as a syntax error before running any of it, so the range is immaterial.
fn lone_statement(sql: &[u8]) -> Option<Range<usize>> {
    let end = match memchr::memchr(b';', sql) {
        // Like the lexer's ranges: up to the end of the last token before the `;`.
        Some(i) if sql[i..].iter().all(|&b| b == b';' || is_space(b)) => {
            sql[..i].iter().rposition(|&b| !is_space(b))? + 1
        }
        Some(_) => return None,
        None => sql.len(),
    };
    let text = &sql[..end];
    let first = text.iter().find(|&&b| !is_space(b))?;
    // Not `memmem::find`, which builds a searcher on every call: a `-` is rare in SQL.
    let line_comment = memchr::memchr_iter(b'-', text).any(|at| text.get(at + 1) == Some(&b'-'));
    let plain = !matches!(first, b'-' | b'/') && !line_comment;
    plain.then_some(0..end)
}

/// True when a statement (a range from [`split_statements`]) has a `;` inside it, outside
/// quotes and comments, with more than comments after it: a rule action list or a routine
/// body (or text the splitter joined wrongly).
pub fn has_inner_semicolon(statement: &[u8]) -> bool {
    if memchr::memchr(b';', statement).is_none() {
        return false;
    }
    let mut semicolon = false;
    for token in Lexer::new(statement) {
        match token {
            Token::Punct(b';') => semicolon = true,
            Token::Comment(_) => {}
            _ if semicolon => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests;
