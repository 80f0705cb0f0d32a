//! Encoders for the messages the proxy sends on its own: injected frontend messages and
//! synthesized backend replies. Built with `pgwire`'s message types, so the wire format
//! lives in one well-tested place; only the proxy's own ASCII SQL goes through them.

use bytes::{Bytes, BytesMut};
use pgwire::messages::extendedquery::{
    Bind, Close, Describe, Execute, Parse, Sync, TARGET_TYPE_BYTE_PORTAL,
    TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::{ErrorResponse, NoticeResponse};
use pgwire::messages::simplequery::Query;
use pgwire::messages::Message;

fn encode<M: Message>(message: M) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.message_length() + 1);
    // Encoding into a BytesMut cannot fail for these fixed-layout messages; an error here
    // would mean a bug in the builder, not bad peer input.
    message
        .encode(&mut buf)
        .expect("encoding a proxy-built message");
    buf.freeze()
}

fn name(n: &str) -> Option<String> {
    (!n.is_empty()).then(|| n.to_string())
}

/// Simple Query.
pub fn query(sql: &str) -> Bytes {
    encode(Query::new(sql.to_string()))
}

/// Simple Query from raw bytes (the client's own SQL, possibly not UTF-8, with the proxy's
/// statements spliced in); `sql` must not contain NUL.
pub fn query_bytes(sql: &[u8]) -> Bytes {
    let mut query = QueryBuf::with_capacity(sql.len());
    query.push(sql);
    query.finish()
}

/// A Simple Query built in place: SQL is appended right after the message header, whose
/// length is filled in by [`QueryBuf::finish`], so a rewritten Query is never copied from a
/// buffer of its own. The SQL pushed must not contain NUL.
pub struct QueryBuf(BytesMut);

impl QueryBuf {
    /// An empty Query with room for `sql_len` bytes of SQL.
    pub fn with_capacity(sql_len: usize) -> Self {
        let mut buf = BytesMut::with_capacity(sql_len + 6);
        buf.extend_from_slice(b"Q\0\0\0\0");
        QueryBuf(buf)
    }

    /// Bytes of SQL so far.
    pub fn sql_len(&self) -> usize {
        self.0.len() - 5
    }

    /// Appends SQL.
    pub fn push(&mut self, sql: &[u8]) {
        self.0.extend_from_slice(sql);
    }

    /// The finished message.
    pub fn finish(mut self) -> Bytes {
        // The length counts itself, the SQL and the terminating NUL: all but the tag.
        let len = self.0.len() as i32;
        self.0[1..5].copy_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(&[0]);
        self.0.freeze()
    }
}

/// Parse of `sql` into statement `statement` ("" = unnamed), parameter types inferred.
pub fn parse(statement: &str, sql: &str) -> Bytes {
    encode(Parse::new(name(statement), sql.to_string(), Vec::new()))
}

/// Bind of `statement` into `portal` with text parameters and text results.
pub fn bind(portal: &str, statement: &str, params: &[Option<&str>]) -> Bytes {
    let params = params
        .iter()
        .map(|p| p.map(|s| Bytes::copy_from_slice(s.as_bytes())))
        .collect();
    encode(Bind::new(
        name(portal),
        name(statement),
        Vec::new(),
        params,
        Vec::new(),
    ))
}

/// Describe of a portal.
pub fn describe_portal(portal: &str) -> Bytes {
    encode(Describe::new(TARGET_TYPE_BYTE_PORTAL, name(portal)))
}

/// Execute of `portal`, all rows.
pub fn execute(portal: &str) -> Bytes {
    encode(Execute::new(name(portal), 0))
}

/// Close of a prepared statement.
pub fn close_statement(statement: &str) -> Bytes {
    encode(Close::new(TARGET_TYPE_BYTE_STATEMENT, name(statement)))
}

/// Close of a portal.
pub fn close_portal(portal: &str) -> Bytes {
    encode(Close::new(TARGET_TYPE_BYTE_PORTAL, name(portal)))
}

/// Sync.
pub fn sync() -> Bytes {
    encode(Sync::new())
}

/// Severity of a synthesized error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The connection ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// ErrorResponse with severity, SQLSTATE and message (and optional detail / hint).
pub fn error_response(
    severity: Severity,
    sqlstate: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) -> Bytes {
    let mut fields = vec![
        (b'S', severity.as_str().to_string()),
        (b'V', severity.as_str().to_string()),
        (b'C', sqlstate.to_string()),
        (b'M', message.to_string()),
    ];
    if let Some(d) = detail {
        fields.push((b'D', d.to_string()));
    }
    if let Some(h) = hint {
        fields.push((b'H', h.to_string()));
    }
    encode(ErrorResponse::new(fields))
}

/// An ErrorResponse or NoticeResponse (`tag`) rebuilt from `body` with one field's value
/// replaced; every other field is copied byte for byte.
pub fn replace_field(tag: u8, body: &[u8], field: u8, value: &[u8]) -> Bytes {
    rebuild_fields(tag, body, 16, |code, old| {
        Some(if code == field { value } else { old })
    })
}

/// An ErrorResponse or NoticeResponse (`tag`) rebuilt from `body` without the fields whose
/// codes are in `drop`; every other field is copied byte for byte, in order.
pub fn without_fields(tag: u8, body: &[u8], drop: &[u8]) -> Bytes {
    rebuild_fields(tag, body, 0, |code, old| {
        (!drop.contains(&code)).then_some(old)
    })
}

/// Rebuilds the fields of an ErrorResponse or NoticeResponse body in order: `field` gives
/// each field's new value, or `None` to leave it out. Stops at a field without its NUL.
fn rebuild_fields<'a>(
    tag: u8,
    body: &'a [u8],
    extra: usize,
    mut field: impl FnMut(u8, &'a [u8]) -> Option<&'a [u8]>,
) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5 + extra);
    out.extend_from_slice(&[tag, 0, 0, 0, 0]);
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let Some(nul) = memchr::memchr(0, after) else {
            break;
        };
        if let Some(value) = field(code, &after[..nul]) {
            out.extend_from_slice(&[code]);
            out.extend_from_slice(value);
            out.extend_from_slice(&[0]);
        }
        rest = &after[nul + 1..];
    }
    out.extend_from_slice(&[0]);
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

/// NoticeResponse at WARNING level.
pub fn warning(sqlstate: &str, message: &str) -> Bytes {
    encode(NoticeResponse::new(vec![
        (b'S', "WARNING".into()),
        (b'V', "WARNING".into()),
        (b'C', sqlstate.into()),
        (b'M', message.into()),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::{error_field, is_fatal};
    use crate::protocol::framing::peek_tagged;
    use crate::protocol::frontend::{FrontendMessage, Target};

    fn view(bytes: &Bytes) -> FrontendMessage<'_> {
        let info = peek_tagged(bytes, 1 << 20).unwrap().unwrap();
        assert_eq!(info.total_len, bytes.len());
        FrontendMessage {
            tag: info.tag,
            body: info.body(bytes),
        }
    }

    #[test]
    fn a_query_built_in_pieces_is_the_query_of_its_text() {
        for sql in [
            &b""[..],
            b"SELECT 1",
            b"SELECT fencegate.check('a', '1'::pg_catalog.int8, 0);UPDATE t",
        ] {
            let mut want = vec![b'Q'];
            want.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
            want.extend_from_slice(sql);
            want.push(0);
            let mut built = QueryBuf::with_capacity(0);
            for piece in sql.chunks(3) {
                built.push(piece);
            }
            assert_eq!(built.sql_len(), sql.len());
            assert_eq!(built.finish(), want);
            assert_eq!(query_bytes(sql), want);
        }
    }

    #[test]
    fn built_messages_read_back() {
        assert_eq!(
            view(&query("SELECT 1")).query_text(),
            Some(&b"SELECT 1"[..])
        );
        assert_eq!(
            view(&parse("s", "SELECT $1")).parse(),
            Some((&b"s"[..], &b"SELECT $1"[..]))
        );
        assert_eq!(
            view(&bind("p", "s", &[Some("1")])).bind_names(),
            Some((&b"p"[..], &b"s"[..]))
        );
        assert_eq!(
            view(&close_portal("p")).target(),
            Some(Target::Portal(b"p"))
        );
        assert_eq!(view(&execute("")).execute_portal(), Some(&b""[..]));
        assert_eq!(&sync()[..], &[b'S', 0, 0, 0, 4]);
    }

    #[test]
    fn replace_field_keeps_the_rest_byte_for_byte() {
        let body = b"SERROR\0C42601\0Msyntax error at or near \xff\0P27\0\0";
        let e = replace_field(b'E', body, b'P', b"7");
        let info = peek_tagged(&e, 1 << 20).unwrap().unwrap();
        assert_eq!(info.total_len, e.len());
        assert_eq!(
            info.body(&e),
            b"SERROR\0C42601\0Msyntax error at or near \xff\0P7\0\0"
        );
    }

    #[test]
    fn error_response_fields() {
        let e = error_response(Severity::Fatal, "08006", "upstream gone", Some("d"), None);
        let info = peek_tagged(&e, 1 << 20).unwrap().unwrap();
        assert_eq!(info.tag, b'E');
        let body = info.body(&e);
        assert!(is_fatal(body));
        assert_eq!(error_field(body, b'C'), Some(&b"08006"[..]));
        assert_eq!(error_field(body, b'D'), Some(&b"d"[..]));
    }
}
