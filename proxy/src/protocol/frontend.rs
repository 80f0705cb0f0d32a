//! Messages a client sends: their tags, and typed views of the ones the proxy reads.
//!
//! Views borrow the frame's bytes and decode nothing they do not need; SQL text stays as the
//! client's raw bytes (never re-encoded, so non-UTF-8 client encodings survive).

use super::cstr;

/// Bind.
pub const BIND: u8 = b'B';
/// Close (statement or portal).
pub const CLOSE: u8 = b'C';
/// CopyData.
pub const COPY_DATA: u8 = b'd';
/// CopyDone.
pub const COPY_DONE: u8 = b'c';
/// CopyFail.
pub const COPY_FAIL: u8 = b'f';
/// Describe (statement or portal).
pub const DESCRIBE: u8 = b'D';
/// Execute.
pub const EXECUTE: u8 = b'E';
/// FunctionCall.
pub const FUNCTION_CALL: u8 = b'F';
/// Flush.
pub const FLUSH: u8 = b'H';
/// Parse.
pub const PARSE: u8 = b'P';
/// PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse (the server's last
/// authentication request says which).
pub const PASSWORD: u8 = b'p';
/// Simple Query.
pub const QUERY: u8 = b'Q';
/// Sync.
pub const SYNC: u8 = b'S';
/// Terminate.
pub const TERMINATE: u8 = b'X';

/// One complete client message: its tag and body (without the 5 header bytes).
#[derive(Debug, Clone, Copy)]
pub struct FrontendMessage<'a> {
    /// Message type byte.
    pub tag: u8,
    /// Body bytes.
    pub body: &'a [u8],
}

/// What a Close or Describe names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A prepared statement (`S`), by name; empty is the unnamed one.
    Statement(&'a [u8]),
    /// A portal (`P`), by name; empty is the unnamed one.
    Portal(&'a [u8]),
}

impl<'a> FrontendMessage<'a> {
    /// The SQL text of a Query, without its terminator.
    pub fn query_text(&self) -> Option<&'a [u8]> {
        (self.tag == QUERY).then(|| cstr(self.body).map(|(q, _)| q))?
    }

    /// `(statement name, SQL text)` of a Parse.
    pub fn parse(&self) -> Option<(&'a [u8], &'a [u8])> {
        self.leading_strings(PARSE)
    }

    /// `(portal, statement)` names of a Bind.
    pub fn bind_names(&self) -> Option<(&'a [u8], &'a [u8])> {
        self.leading_strings(BIND)
    }

    /// The first two NUL-terminated strings of a message with this tag.
    fn leading_strings(&self, tag: u8) -> Option<(&'a [u8], &'a [u8])> {
        if self.tag != tag {
            return None;
        }
        let (first, rest) = cstr(self.body)?;
        let (second, _) = cstr(rest)?;
        Some((first, second))
    }

    /// The portal name of an Execute.
    pub fn execute_portal(&self) -> Option<&'a [u8]> {
        (self.tag == EXECUTE).then(|| cstr(self.body).map(|(p, _)| p))?
    }

    /// What a Describe or Close names.
    pub fn target(&self) -> Option<Target<'a>> {
        if self.tag != DESCRIBE && self.tag != CLOSE {
            return None;
        }
        let (&kind, rest) = self.body.split_first()?;
        let (name, _) = cstr(rest)?;
        match kind {
            b'S' => Some(Target::Statement(name)),
            b'P' => Some(Target::Portal(name)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_read_names_and_text() {
        let q = FrontendMessage {
            tag: QUERY,
            body: b"select 1\0",
        };
        assert_eq!(q.query_text(), Some(&b"select 1"[..]));
        assert_eq!(q.parse(), None);
        let p = FrontendMessage {
            tag: PARSE,
            body: b"s1\0select $1\0\0\0",
        };
        assert_eq!(p.parse(), Some((&b"s1"[..], &b"select $1"[..])));
        let b = FrontendMessage {
            tag: BIND,
            body: b"\0s1\0\0\0\0\0\0\0",
        };
        assert_eq!(b.bind_names(), Some((&b""[..], &b"s1"[..])));
        let d = FrontendMessage {
            tag: DESCRIBE,
            body: b"Pportal\0",
        };
        assert_eq!(d.target(), Some(Target::Portal(b"portal")));
        let e = FrontendMessage {
            tag: EXECUTE,
            body: b"\0\0\0\0\0",
        };
        assert_eq!(e.execute_portal(), Some(&b""[..]));
    }

    #[test]
    fn malformed_bodies_give_none() {
        let q = FrontendMessage {
            tag: QUERY,
            body: b"no terminator",
        };
        assert_eq!(q.query_text(), None);
        let d = FrontendMessage {
            tag: DESCRIBE,
            body: b"",
        };
        assert_eq!(d.target(), None);
        let d = FrontendMessage {
            tag: CLOSE,
            body: b"Xname\0",
        };
        assert_eq!(d.target(), None);
    }
}
