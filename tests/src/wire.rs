//! A tiny blocking PostgreSQL wire client for byte-level comparisons.
//!
//! It speaks just enough of protocol 3.0 to log in with `trust` and then sends whatever bytes
//! a test builds (see [`msg`]) and collects the server's messages as `(tag, body)` pairs.
//! Comparing those lists for a direct connection and a proxied one shows that the proxy
//! relays bytes unchanged; [`normalize`] masks the only field that must differ (the
//! BackendKeyData secret and pid).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One backend message: its tag byte and its body (without the length word).
pub type Message = (u8, Vec<u8>);

/// How long a single read may block before the test fails with a timeout error.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A logged-in raw protocol connection.
pub struct WireClient {
    stream: TcpStream,
}

impl WireClient {
    /// Connects, sends a StartupMessage for `user`/`database` (no SSLRequest), accepts only
    /// AuthenticationOk, and returns the client with every message up to and including the
    /// first ReadyForQuery.
    pub fn connect(
        addr: SocketAddr,
        user: &str,
        database: &str,
    ) -> io::Result<(Self, Vec<Message>)> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut client = WireClient { stream };
        client.send(&msg::startup(&[("user", user), ("database", database)]))?;
        let mut startup = Vec::new();
        loop {
            let (tag, body) = client.read_message()?;
            match tag {
                b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                    return Err(io::Error::other(format!(
                        "unsupported auth request {body:?}"
                    )));
                }
                b'E' => {
                    return Err(io::Error::other(
                        String::from_utf8_lossy(&body).into_owned(),
                    ))
                }
                _ => {}
            }
            startup.push((tag, body));
            if tag == b'Z' {
                return Ok((client, startup));
            }
        }
    }

    /// Writes raw bytes (one or more frontend messages).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one backend message.
    pub fn read_message(&mut self) -> io::Result<Message> {
        let mut header = [0u8; 5];
        self.stream.read_exact(&mut header)?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=64 << 20).contains(&len) {
            return Err(io::Error::other(format!("bad message length {len}")));
        }
        let mut body = vec![0; len - 4];
        self.stream.read_exact(&mut body)?;
        Ok((header[0], body))
    }

    /// Reads messages until `n` ReadyForQuery messages have arrived; returns all of them.
    pub fn read_until_ready(&mut self, n: usize) -> io::Result<Vec<Message>> {
        let mut out = Vec::new();
        let mut ready = 0;
        while ready < n {
            let message = self.read_message()?;
            ready += usize::from(message.0 == b'Z');
            out.push(message);
        }
        Ok(out)
    }

    /// Reads messages until one with `tag` has arrived; returns all of them.
    pub fn read_until_tag(&mut self, tag: u8) -> io::Result<Vec<Message>> {
        let mut out = Vec::new();
        loop {
            let message = self.read_message()?;
            let done = message.0 == tag;
            out.push(message);
            if done {
                return Ok(out);
            }
        }
    }

    /// Sends `bytes` and reads up to the `ready`-th ReadyForQuery; any I/O error, or any
    /// ErrorResponse other than those `expected` (by SQLSTATE, in order), fails the test.
    pub fn round_expecting(
        &mut self,
        bytes: &[u8],
        ready: usize,
        expected: &[&str],
        what: &str,
    ) -> Vec<Message> {
        self.send(bytes)
            .unwrap_or_else(|e| panic!("{what}: send: {e}"));
        let replies = self
            .read_until_ready(ready)
            .unwrap_or_else(|e| panic!("{what}: read: {e}"));
        assert_eq!(
            error_codes(&replies),
            expected,
            "{what}: errors: {:?}",
            render(&replies)
        );
        replies
    }

    /// [`WireClient::round_expecting`] with no error expected.
    pub fn round(&mut self, bytes: &[u8], ready: usize, what: &str) -> Vec<Message> {
        self.round_expecting(bytes, ready, &[], what)
    }

    /// Reads until the peer closes the connection; returns what arrived before that.
    pub fn read_to_close(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Ok(message) = self.read_message() {
            out.push(message);
        }
        out
    }
}

/// Masks what legitimately differs between two connections: BackendKeyData's pid and secret.
pub fn normalize(messages: &[Message]) -> Vec<Message> {
    messages
        .iter()
        .map(|(tag, body)| match tag {
            b'K' => (*tag, vec![0; body.len()]),
            _ => (*tag, body.clone()),
        })
        .collect()
}

/// Renders messages one a line (`tag: body`, non-printable bytes escaped) for readable diffs.
pub fn render(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|(tag, body)| format!("{}: {}", *tag as char, body.escape_ascii()))
        .collect()
}

/// The messages' tags as a string (`"TDDCZ"`), for checking the shape of a reply.
pub fn tags(messages: &[Message]) -> String {
    messages.iter().map(|m| m.0 as char).collect()
}

/// The SQLSTATEs of the ErrorResponses among `messages`, in order.
pub fn error_codes(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter(|(tag, _)| *tag == b'E')
        .map(|(_, body)| {
            let code = fencegate::protocol::backend::error_field(body, b'C');
            String::from_utf8_lossy(code.unwrap_or_default()).into_owned()
        })
        .collect()
}

/// The transaction status byte of the last ReadyForQuery among `messages`.
pub fn last_status(messages: &[Message]) -> Option<u8> {
    messages
        .iter()
        .rev()
        .find(|(tag, _)| *tag == b'Z')
        .map(|(_, body)| body[0])
}

/// Asserts that two transcripts (startup first, then one list per step, as the byte-level
/// tests record them) are equal message for message; `name` says which scenario differed.
pub fn assert_same_transcripts(name: &str, direct: &[Vec<Message>], proxied: &[Vec<Message>]) {
    for (i, (d, p)) in direct.iter().zip(proxied).enumerate() {
        let what = match i {
            0 => "startup".to_string(),
            _ => format!("step {}", i - 1),
        };
        assert_eq!(
            render(d),
            render(p),
            "{name}, {what}: direct (left) vs through the proxy (right)"
        );
    }
    assert_eq!(direct.len(), proxied.len(), "{name}: number of steps");
}

/// Builders for frontend messages.
pub mod msg {
    fn frame(tag: Option<u8>, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 5);
        out.extend(tag);
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    /// StartupMessage (protocol 3.0) with the given parameters.
    pub fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (key, value) in params {
            cstr(&mut body, key);
            cstr(&mut body, value);
        }
        body.push(0);
        frame(None, &body)
    }

    /// Query (simple protocol).
    pub fn query(sql: &str) -> Vec<u8> {
        query_bytes(sql.as_bytes())
    }

    /// Query of bytes that need not be UTF-8 (a client encoding's own).
    pub fn query_bytes(sql: &[u8]) -> Vec<u8> {
        let mut body = sql.to_vec();
        body.push(0);
        frame(Some(b'Q'), &body)
    }

    /// Parse with no parameter types given.
    pub fn parse(statement: &str, sql: &str) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, statement);
        cstr(&mut body, sql);
        body.extend_from_slice(&0u16.to_be_bytes());
        frame(Some(b'P'), &body)
    }

    /// Bind with text-format parameters (`None` = NULL) and text-format results.
    pub fn bind(portal: &str, statement: &str, params: &[Option<&str>]) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, portal);
        cstr(&mut body, statement);
        body.extend_from_slice(&0u16.to_be_bytes());
        body.extend_from_slice(&(params.len() as u16).to_be_bytes());
        for param in params {
            match param {
                Some(value) => {
                    body.extend_from_slice(&(value.len() as i32).to_be_bytes());
                    body.extend_from_slice(value.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        body.extend_from_slice(&0u16.to_be_bytes());
        frame(Some(b'B'), &body)
    }

    /// Describe of a statement (`b'S'`) or portal (`b'P'`).
    pub fn describe(kind: u8, name: &str) -> Vec<u8> {
        let mut body = vec![kind];
        cstr(&mut body, name);
        frame(Some(b'D'), &body)
    }

    /// Execute a portal, returning at most `max_rows` rows (0 = all).
    pub fn execute(portal: &str, max_rows: u32) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, portal);
        body.extend_from_slice(&max_rows.to_be_bytes());
        frame(Some(b'E'), &body)
    }

    /// Sync.
    pub fn sync() -> Vec<u8> {
        frame(Some(b'S'), &[])
    }

    /// Terminate.
    pub fn terminate() -> Vec<u8> {
        frame(Some(b'X'), &[])
    }

    /// Flush.
    pub fn flush() -> Vec<u8> {
        frame(Some(b'H'), &[])
    }

    /// CopyData carrying `data`.
    pub fn copy_data(data: &str) -> Vec<u8> {
        frame(Some(b'd'), data.as_bytes())
    }

    /// CopyDone.
    pub fn copy_done() -> Vec<u8> {
        frame(Some(b'c'), &[])
    }

    /// CopyFail with `reason`.
    pub fn copy_fail(reason: &str) -> Vec<u8> {
        let mut body = Vec::new();
        cstr(&mut body, reason);
        frame(Some(b'f'), &body)
    }

    /// Parse of `sql` as the statement `statement`, then Describe of that statement.
    pub fn parse_described(statement: &str, sql: &str) -> Vec<u8> {
        batch([parse(statement, sql), describe(b'S', statement)])
    }

    /// Bind of `statement` to `portal` with text parameters, then Describe of that portal.
    pub fn bind_described(portal: &str, statement: &str, params: &[Option<&str>]) -> Vec<u8> {
        batch([bind(portal, statement, params), describe(b'P', portal)])
    }

    /// Close of the prepared statement `name`.
    pub fn close_statement(name: &str) -> Vec<u8> {
        let mut body = vec![b'S'];
        cstr(&mut body, name);
        frame(Some(b'C'), &body)
    }

    /// Parse, Bind and Execute (all rows) of `sql` as the unnamed statement and portal, with
    /// text parameters and no Sync: to be followed by more of the same round.
    pub fn run_unnamed(sql: &str, params: &[Option<&str>]) -> Vec<u8> {
        batch([parse("", sql), bind("", "", params), execute("", 0)])
    }

    /// [`run_unnamed`] of `sql`, then Sync: one extended-protocol round.
    pub fn extended(sql: &str, params: &[Option<&str>]) -> Vec<u8> {
        batch([run_unnamed(sql, params), sync()])
    }

    /// Bind of the prepared statement `statement` to the unnamed portal, with text
    /// parameters, and Execute (all rows), no Sync.
    pub fn run_prepared(statement: &str, params: &[Option<&str>]) -> Vec<u8> {
        batch([bind("", statement, params), execute("", 0)])
    }

    /// [`run_prepared`] of `statement` with no parameters, then Sync.
    pub fn bind_and_run(statement: &str) -> Vec<u8> {
        batch([run_prepared(statement, &[]), sync()])
    }

    /// Concatenates frontend messages into one write.
    pub fn batch<B: AsRef<[u8]>>(messages: impl IntoIterator<Item = B>) -> Vec<u8> {
        messages
            .into_iter()
            .flat_map(|m| m.as_ref().to_vec())
            .collect()
    }
}
