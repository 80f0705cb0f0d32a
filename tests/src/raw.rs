//! Raw sockets for fault tests: send arbitrary bytes (before or after a login), read what
//! comes back until the peer closes, and check for FATAL errors. Unlike [`crate::wire`], the
//! peer may misbehave here: every read has a deadline, and a reset is reported, not fatal.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use fencegate::protocol::backend::{error_field, is_fatal};

use crate::cluster::SUPERUSER;
use crate::wire::{self, msg, Message};

/// How long a peer may take to answer and close after a fault.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// What came back on a raw connection until the peer closed it.
#[derive(Debug)]
pub struct Reply {
    /// Every byte received.
    pub bytes: Vec<u8>,
    /// The peer reset the connection instead of closing it cleanly.
    pub reset: bool,
}

/// Connects, writes `bytes` in one write, optionally half-closes, and reads until the peer
/// closes. Fails the test if the peer keeps the connection open past [`CLOSE_DEADLINE`].
pub fn exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.write_all(bytes).expect("write");
    if half_close {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    read_to_close(&mut stream)
}

/// Reads until the peer closes or resets; fails the test after [`CLOSE_DEADLINE`].
pub fn read_to_close(stream: &mut TcpStream) -> Reply {
    let deadline = Instant::now() + CLOSE_DEADLINE;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "connection still open after {CLOSE_DEADLINE:?}; got {} bytes: {:?}",
            bytes.len(),
            &bytes[..bytes.len().min(200)]
        );
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => {
                return Reply {
                    bytes,
                    reset: false,
                }
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return Reply { bytes, reset: true }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Splits backend bytes into messages; fails on a partial message.
pub fn messages(mut bytes: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 5, "partial message header: {bytes:?}");
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        assert!(len >= 4 && bytes.len() > len, "partial message: {bytes:?}");
        out.push((bytes[0], bytes[5..1 + len].to_vec()));
        bytes = &bytes[1 + len..];
    }
    out
}

/// Asserts `got` is exactly one FATAL ErrorResponse with one of `codes`; returns its text.
pub fn assert_one_fatal(got: &[Message], codes: &[&str], what: &str) -> String {
    assert_eq!(
        got.len(),
        1,
        "{what}: expected one FATAL ErrorResponse, got {:?}",
        wire::render(got)
    );
    let (tag, body) = &got[0];
    assert_eq!(*tag, b'E', "{what}: {:?}", wire::render(got));
    assert!(is_fatal(body), "{what}: not FATAL: {:?}", wire::render(got));
    let code = String::from_utf8_lossy(error_field(body, b'C').unwrap_or_default()).into_owned();
    assert!(
        codes.contains(&code.as_str()),
        "{what}: SQLSTATE {code}, expected one of {codes:?}"
    );
    String::from_utf8_lossy(error_field(body, b'M').unwrap_or_default()).into_owned()
}

/// A StartupMessage for protocol `major.minor`.
pub fn startup_version(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut packet = msg::startup(params);
    packet[4..8].copy_from_slice(&((u32::from(major) << 16) | u32::from(minor)).to_be_bytes());
    packet
}

/// An SSLRequest packet.
pub fn ssl_request() -> Vec<u8> {
    [8u32.to_be_bytes(), 80_877_103u32.to_be_bytes()].concat()
}

/// A protocol 2.0 startup packet: version, then fixed-width database, user, options, unused
/// and tty fields (296 bytes in all).
pub fn startup_v2(user: &str, database: &str) -> Vec<u8> {
    let mut packet = 296u32.to_be_bytes().to_vec();
    packet.extend_from_slice(&(2u32 << 16).to_be_bytes());
    for (value, width) in [(database, 64), (user, 32), ("", 64), ("", 64), ("", 64)] {
        let mut field = value.as_bytes().to_vec();
        field.resize(width, 0);
        packet.extend(field);
    }
    assert_eq!(packet.len(), 296);
    packet
}

/// Reads one backend message from a raw stream (30 s read timeout).
pub fn read_message(stream: &mut TcpStream) -> Message {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).expect("read message header");
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0; len - 4];
    stream.read_exact(&mut body).expect("read message body");
    (header[0], body)
}

/// Reads backend messages up to and including the next ReadyForQuery; returns all of them.
pub fn read_until_ready(stream: &mut TcpStream) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        let message = read_message(stream);
        let ready = message.0 == b'Z';
        out.push(message);
        if ready {
            return out;
        }
    }
}

/// Logs in (trust) on a raw stream and returns it with the session's backend pid.
pub fn raw_session(addr: SocketAddr, db: &str) -> (TcpStream, i32) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(&msg::startup(&[("user", SUPERUSER), ("database", db)]))
        .unwrap();
    read_until_ready(&mut stream);
    stream
        .write_all(&msg::query("SELECT pg_backend_pid()"))
        .unwrap();
    let mut pid = None;
    loop {
        let (tag, body) = read_message(&mut stream);
        match tag {
            b'D' => {
                pid = Some(
                    String::from_utf8(body[6..].to_vec())
                        .unwrap()
                        .parse()
                        .unwrap(),
                )
            }
            b'Z' => break,
            _ => {}
        }
    }
    (stream, pid.expect("pg_backend_pid() row"))
}

/// Sets SO_LINGER to zero, so that dropping `stream` resets the connection (RST) instead of
/// closing it (FIN).
pub fn reset_on_drop(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER 0");
}
