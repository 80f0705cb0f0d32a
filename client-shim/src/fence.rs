//! [`Fence`]: a (resource, token) pair and the three ways to attach it to SQL that
//! fencegate understands: a sqlcommenter comment on one statement, `SET LOCAL` for one
//! transaction, and startup `options` for a whole session.
//!
//! Everything here is pure string formatting; nothing talks to a server.
//!
//! # Which one to use with sqlx
//! Prefer [`Fence::set_local_sql`] (or [`crate::begin`] / [`crate::transaction`], which
//! issue it for you). sqlx prepares every statement it runs through `query()` and caches
//! the prepared statement per connection, keyed by the SQL text. A comment carrying the
//! token makes the text different for every token, so each new lock grant prepares new
//! statements on every pooled connection and evicts useful ones from the cache (its
//! default capacity is 100). `SET LOCAL` keeps your statements' text constant: the two
//! settings are sent once per transaction as a simple query (never prepared), and
//! PostgreSQL undoes them at COMMIT or ROLLBACK, so a pooled connection never carries a
//! token into someone else's transaction. Comments ([`Fence::tag`]) suit one-off
//! statements and drivers without a statement cache; connect options suit a connection
//! that serves one lock holder for its whole life.

use std::fmt;

/// Name of the setting (and sqlcommenter key `fencing_resource`) that carries the resource.
pub const RESOURCE_SETTING: &str = "fencing.resource";
/// Name of the setting (and sqlcommenter key `fencing_token`) that carries the token.
pub const TOKEN_SETTING: &str = "fencing.token";
/// Longest resource name fencegate accepts, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 256;

/// Why a (resource, token) pair cannot be a [`Fence`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFence {
    /// The resource is empty or longer than [`MAX_RESOURCE_BYTES`].
    #[error("fencing resource must be 1 to {MAX_RESOURCE_BYTES} bytes, got {0} bytes")]
    ResourceLength(usize),
    /// The resource contains a NUL character, which PostgreSQL text cannot hold.
    #[error("fencing resource must not contain NUL characters")]
    ResourceNul,
    /// The token is negative (tokens are 0..=i64::MAX, a PostgreSQL `bigint`).
    #[error("fencing token must be from 0 to 9223372036854775807, got {0}")]
    NegativeToken(i64),
}

/// A fencing token for one resource, as a lock service granted it.
///
/// The resource names what the lock protects (`jobs:7`); the token is the number the lock
/// service issued with the grant (etcd's revision, ZooKeeper's czxid, fencegate's lease
/// token). fencegate admits a statement carrying this fence only while no newer token for
/// the same resource has been admitted.
///
/// ```
/// use fencegate_client::Fence;
///
/// let fence = Fence::new("jobs:7", 42)?;
/// assert_eq!(
///     fence.sql_comment(),
///     "/*fencing_resource='jobs%3A7',fencing_token='42'*/"
/// );
/// assert_eq!(
///     fence.tag("UPDATE jobs SET state = 'done' WHERE id = 7;"),
///     "UPDATE jobs SET state = 'done' WHERE id = 7 /*fencing_resource='jobs%3A7',fencing_token='42'*/;"
/// );
/// assert_eq!(
///     fence.set_local_sql(),
///     "SET LOCAL fencing.resource = 'jobs:7'; SET LOCAL fencing.token = 42"
/// );
/// assert_eq!(
///     fence.connect_options(),
///     "-c fencing.resource=jobs:7 -c fencing.token=42"
/// );
/// # Ok::<(), fencegate_client::InvalidFence>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    resource: String,
    token: i64,
}

impl Fence {
    /// A fence for `resource` (1 to 256 bytes of UTF-8, no NUL) with `token` (0 or more).
    pub fn new(resource: impl Into<String>, token: i64) -> Result<Fence, InvalidFence> {
        let resource = resource.into();
        if resource.is_empty() || resource.len() > MAX_RESOURCE_BYTES {
            return Err(InvalidFence::ResourceLength(resource.len()));
        }
        if resource.contains('\0') {
            return Err(InvalidFence::ResourceNul);
        }
        if token < 0 {
            return Err(InvalidFence::NegativeToken(token));
        }
        Ok(Fence { resource, token })
    }

    /// The resource the lock protects.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The token the lock service granted.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// The sqlcommenter comment `/*fencing_resource='…',fencing_token='…'*/`.
    ///
    /// Follows the sqlcommenter spec: keys sorted, each value URL-encoded (every byte but
    /// the RFC 3986 unreserved characters `A-Z a-z 0-9 - . _ ~` becomes `%XX`), then any
    /// `'` escaped as `\'` (none are left after encoding, since `'` becomes `%27`), then
    /// single-quoted. Encoding also turns `*` and `/` into escapes, so a resource can never
    /// end the comment early.
    pub fn sql_comment(&self) -> String {
        let pairs = [
            ("fencing_resource", self.resource.clone()),
            ("fencing_token", self.token.to_string()),
        ];
        let body: Vec<String> = pairs
            .iter()
            .map(|(key, value)| format!("{key}={}", comment_value(value)))
            .collect();
        format!("/*{}*/", body.join(","))
    }

    /// `sql` with [`sql_comment`](Self::sql_comment) appended, for a statement sent on its own.
    ///
    /// The comment goes after the statement text, before one trailing `;` if there is one
    /// (trailing whitespace is dropped), as sqlcommenter places it. When the last line
    /// holds `--`, the comment starts on a new line so that a line comment cannot swallow it.
    ///
    /// SQL that already has comments still gets the fencing comment appended: fencegate
    /// reads a fencing annotation from any comment in the statement and ignores other
    /// sqlcommenter keys (`traceparent`, `route`, ...), so existing comments are kept as
    /// they are. If the statement already carries a *fencing* annotation, both must agree
    /// or fencegate rejects the statement with `55Z02` (conflicting annotations).
    ///
    /// In a string with several statements the comment belongs to the last one only;
    /// use [`set_local_sql`](Self::set_local_sql) to fence a whole transaction.
    pub fn tag(&self, sql: &str) -> String {
        let mut body = sql.trim_end();
        let semicolon = body.ends_with(';');
        if semicolon {
            body = body[..body.len() - 1].trim_end();
        }
        let last_line = body.rsplit('\n').next().unwrap_or("");
        let separator = if last_line.contains("--") { "\n" } else { " " };
        let mut out = String::with_capacity(body.len() + 80);
        out.push_str(body);
        if !body.is_empty() {
            out.push_str(separator);
        }
        out.push_str(&self.sql_comment());
        if semicolon {
            out.push(';');
        }
        out
    }

    /// The two statements that set this fence for the current transaction:
    /// `SET LOCAL fencing.resource = '…'; SET LOCAL fencing.token = …`.
    ///
    /// Send them as one simple query right after `BEGIN` (sqlx: `raw_sql`, which does not
    /// prepare). The resource is quoted as PostgreSQL's `quote_literal` does: quotes are
    /// doubled, and a resource with a backslash becomes an `E'…'` literal with the
    /// backslash doubled, so it reads the same whatever `standard_conforming_strings` is.
    pub fn set_local_sql(&self) -> String {
        format!(
            "SET LOCAL {RESOURCE_SETTING} = {}; SET LOCAL {TOKEN_SETTING} = {}",
            quote_literal(&self.resource),
            self.token
        )
    }

    /// The value of libpq's `options` connection parameter that sets this fence for the
    /// whole session: `-c fencing.resource=… -c fencing.token=…`.
    ///
    /// Whitespace and backslashes in the resource are escaped with a backslash, as libpq
    /// documents for `options` (PostgreSQL splits the string on unescaped whitespace). This
    /// is the *value*: in a URL it still needs percent-encoding (see
    /// [`connect_options_query`](Self::connect_options_query)), in a `key=value` conninfo
    /// string it needs single quotes with `\'` and `\\` escaped.
    pub fn connect_options(&self) -> String {
        format!(
            "-c {RESOURCE_SETTING}={} -c {TOKEN_SETTING}={}",
            escape_option(&self.resource),
            self.token
        )
    }

    /// [`connect_options`](Self::connect_options) as a URL query parameter,
    /// `options=…` percent-encoded, to append to a `postgres://` URL after `?` or `&`.
    /// libpq and sqlx both decode it to the exact `options` value.
    ///
    /// ```
    /// # let fence = fencegate_client::Fence::new("jobs:7 eu", 42).unwrap();
    /// let url = format!("postgres://app@127.0.0.1:6432/shop?{}", fence.connect_options_query());
    /// assert_eq!(
    ///     url,
    ///     "postgres://app@127.0.0.1:6432/shop?options=-c%20fencing.resource%3Djobs%3A7%5C%20eu%20-c%20fencing.token%3D42"
    /// );
    /// ```
    pub fn connect_options_query(&self) -> String {
        format!("options={}", url_encode(&self.connect_options()))
    }
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.resource, self.token)
    }
}

/// A sqlcommenter value: URL-encoded, `'` escaped as `\'`, single-quoted.
fn comment_value(value: &str) -> String {
    format!("'{}'", url_encode(value).replace('\'', "\\'"))
}

/// Percent-encodes every byte except the RFC 3986 unreserved characters.
pub(crate) fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A string literal as PostgreSQL's `quote_literal` writes it.
fn quote_literal(text: &str) -> String {
    let doubled = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", doubled.replace('\\', "\\\\"))
    } else {
        format!("'{doubled}'")
    }
}

/// Escapes a value inside libpq's `options`: backslash and whitespace get a backslash.
fn escape_option(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\\' || c.is_ascii_whitespace() || c == '\u{b}' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
