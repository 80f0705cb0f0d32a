//! A scripted stand-in for PostgreSQL, for failures a real server will not produce on demand.
//!
//! [`FakeUpstream`] listens on `127.0.0.1:0` and serves each connection on its own thread:
//! it answers SSLRequest with `N`, accepts any StartupMessage with AuthenticationOk, the
//! ParameterStatus messages of a PostgreSQL 15 primary, BackendKeyData and
//! ReadyForQuery(`I`), then reads messages and closes the socket, without a word, on the
//! first simple Query. That is a server that dies mid-query.
//!
//! [`FakeUpstream::pre14`] plays a server older than PostgreSQL 14, which reports neither
//! `in_hot_standby` nor `default_transaction_read_only`: it answers the first Query of each
//! connection (the proxy's question of its role) with one row saying whether it is in
//! recovery, and dies on the next.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Largest packet the fake reads; anything bigger ends the connection.
const MAX_PACKET: usize = 1 << 20;
/// SSLRequest code.
const SSL_REQUEST: u32 = 80_877_103;

/// A fake server; stops accepting when dropped.
pub struct FakeUpstream {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

/// Which server the fake plays.
#[derive(Debug, Clone, Copy)]
enum Plays {
    /// PostgreSQL 15, a primary.
    Modern,
    /// PostgreSQL 13, in recovery or not.
    Pre14 { in_recovery: bool },
}

impl FakeUpstream {
    /// Starts listening; connections are served until the value is dropped.
    pub fn start() -> FakeUpstream {
        FakeUpstream::playing(Plays::Modern)
    }

    /// A server older than PostgreSQL 14 (see the module docs), a standby when
    /// `in_recovery`.
    pub fn pre14(in_recovery: bool) -> FakeUpstream {
        FakeUpstream::playing(Plays::Pre14 { in_recovery })
    }

    fn playing(plays: Plays) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake upstream");
        let addr = listener.local_addr().expect("local_addr");
        let stopping = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (stop, seen) = (stopping.clone(), queries.clone());
        let thread = std::thread::Builder::new()
            .name("fake-upstream".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let seen = seen.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = serve(stream, &seen, plays) {
                            tracing::debug!("fake upstream connection: {e}");
                        }
                    });
                }
            })
            .expect("spawn fake upstream");
        FakeUpstream {
            addr,
            stopping,
            queries,
            thread: Some(thread),
        }
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Simple Queries received so far (each one closed its connection).
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, queries: &AtomicUsize, plays: Plays) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    loop {
        let packet = read_untagged(&mut stream)?;
        let code = u32::from_be_bytes([packet[0], packet[1], packet[2], packet[3]]);
        if code == SSL_REQUEST {
            stream.write_all(b"N")?;
            continue;
        }
        break;
    }
    let mut hello = message(b'R', &0u32.to_be_bytes());
    match plays {
        Plays::Modern => {
            hello.extend(message(b'S', b"server_version\x0015.0 (fake)\x00"));
            hello.extend(message(b'S', b"in_hot_standby\x00off\x00"));
            hello.extend(message(b'S', b"default_transaction_read_only\x00off\x00"));
        }
        Plays::Pre14 { .. } => hello.extend(message(b'S', b"server_version\x0013.0 (fake)\x00")),
    }
    hello.extend(message(b'K', &[0, 0, 0x30, 0x39, 1, 2, 3, 4]));
    hello.extend(message(b'Z', b"I"));
    stream.write_all(&hello)?;
    let mut role_asked = matches!(plays, Plays::Modern);
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header)?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=MAX_PACKET).contains(&len) {
            return Err(io::Error::other(format!("bad length {len}")));
        }
        let mut body = vec![0; len - 4];
        stream.read_exact(&mut body)?;
        match header[0] {
            b'Q' if !role_asked => {
                role_asked = true;
                queries.fetch_add(1, Ordering::SeqCst);
                let in_recovery = matches!(plays, Plays::Pre14 { in_recovery: true });
                stream.write_all(&role_reply(in_recovery))?;
            }
            b'Q' => {
                queries.fetch_add(1, Ordering::SeqCst);
                // Die mid-query: no reply, just a closed socket.
                let _ = stream.shutdown(Shutdown::Both);
                return Ok(());
            }
            b'X' => return Ok(()),
            _ => {}
        }
    }
}

/// The reply to a question of the server's role: `(in recovery, read-only)` as text.
fn role_reply(in_recovery: bool) -> Vec<u8> {
    let flag: &[u8] = if in_recovery { b"t" } else { b"f" };
    let mut row = 2i16.to_be_bytes().to_vec();
    for _ in 0..2 {
        row.extend(1i32.to_be_bytes());
        row.extend(flag);
    }
    let mut columns = 2i16.to_be_bytes().to_vec();
    for name in [&b"pg_is_in_recovery\0"[..], b"current_setting\0"] {
        columns.extend(name);
        columns.extend([0u8; 6]); // table oid, column number
        columns.extend(16u32.to_be_bytes()); // bool
        columns.extend(1i16.to_be_bytes());
        columns.extend((-1i32).to_be_bytes());
        columns.extend(0i16.to_be_bytes());
    }
    let mut reply = message(b'T', &columns);
    reply.extend(message(b'D', &row));
    reply.extend(message(b'C', b"SELECT 1\0"));
    reply.extend(message(b'Z', b"I"));
    reply
}

fn read_untagged(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if !(8..=MAX_PACKET).contains(&len) {
        return Err(io::Error::other(format!("bad startup length {len}")));
    }
    let mut body = vec![0; len - 4];
    stream.read_exact(&mut body)?;
    Ok(body)
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}
