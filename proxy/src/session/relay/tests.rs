//! Unit tests of the relay loop over socket pairs: the test plays both the client and the
//! server, so every case is deterministic and needs no PostgreSQL. What they pin down:
//! bytes pass unchanged both ways, each way a session ends is told apart, a broken client
//! frame ends only that session, drain waits for an idle transaction, a client that does
//! not read holds the server back (bounded memory), and a long CopyData is streamed.

use std::future::{poll_fn, Future};
use std::io::{ErrorKind, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::*;
use crate::session::budget::BufferBudget;
use crate::session::signals::Signals;
use crate::stream::Stream;

/// Longest a case may take; a relay that stops moving bytes fails here instead of hanging.
const GUARD: Duration = Duration::from_secs(20);

/// A frame: tag, length, body.
fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn query(sql: &str) -> Vec<u8> {
    frame(b'Q', format!("{sql}\0").as_bytes())
}

fn ready(status: u8) -> Vec<u8> {
    frame(b'Z', &[status])
}

/// The server's whole answer to a one-row `SELECT`, ending in ReadyForQuery(status).
fn select_reply(status: u8) -> Vec<u8> {
    let mut out = frame(b'T', &0i16.to_be_bytes());
    out.extend(frame(b'D', &0i16.to_be_bytes()));
    out.extend(frame(b'C', b"SELECT 1\0"));
    out.extend(ready(status));
    out
}

/// CommandComplete with `tag`, then ReadyForQuery(status).
fn completed(tag: &str, status: u8) -> Vec<u8> {
    let mut out = frame(b'C', format!("{tag}\0").as_bytes());
    out.extend(ready(status));
    out
}

/// A relay between two socket pairs, the far ends (client, server) the test holds, and the
/// signals it listens to.
fn rig() -> (Relay, UnixStream, UnixStream, Arc<Signals>) {
    rig_with(None)
}

/// [`rig`] with a session hook.
fn rig_with(hook: Option<Box<dyn SessionHook>>) -> (Relay, UnixStream, UnixStream, Arc<Signals>) {
    let (client_side, client) = UnixStream::pair().expect("socket pair");
    let (server_side, server) = UnixStream::pair().expect("socket pair");
    let relay = Relay::new(
        Conn::new(Stream::Unix(client_side)),
        Conn::new(Stream::Unix(server_side)),
        TxStatus::Idle,
        hook,
        (1 << 30, BufferBudget::new(1 << 30).share()),
        tracing::Span::none(),
    );
    (relay, client, server, Arc::new(Signals::default()))
}

/// Runs the relay and a script of the two far ends together; gives the relay's result.
async fn run_with<F: Future<Output = ()>>(
    relay: &mut Relay,
    signals: &Arc<Signals>,
    script: F,
) -> Result<End, SessionError> {
    let mut subscription = signals.subscribe();
    let both = async { tokio::join!(relay.run(&mut subscription), script).0 };
    tokio::time::timeout(GUARD, both)
        .await
        .expect("the relay kept moving")
}

async fn read_n(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    stream.read_exact(&mut got).await.expect("read");
    got
}

/// Writes `bytes` into `from` and reads as many out of `to`: what the relay passed on.
async fn pass(from: &mut UnixStream, to: &mut UnixStream, bytes: &[u8]) -> Vec<u8> {
    from.write_all(bytes).await.unwrap();
    read_n(to, bytes.len()).await
}

#[tokio::test]
async fn bytes_pass_unchanged_both_ways_and_a_closing_client_ends_the_session() {
    let (mut relay, mut client, mut server, signals) = rig();
    let sent = query("SELECT 1");
    let reply = select_reply(b'I');
    let end = run_with(&mut relay, &signals, async {
        assert_eq!(pass(&mut client, &mut server, &sent).await, sent);
        assert_eq!(pass(&mut server, &mut client, &reply).await, reply);
        client.write_all(&frame(b'X', b"")).await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_n(&mut server, 5).await, frame(b'X', b""));
    })
    .await;
    assert_eq!(end.unwrap(), End::ClientClosed);
}

/// A hook that puts a check (`SELECT 1;`) in front of every Query and notes each count of
/// checks waiting it is told.
struct CheckEveryQuery(Arc<std::sync::Mutex<Vec<usize>>>);

impl SessionHook for CheckEveryQuery {
    fn before_client_message(&mut self, msg: &FrontendMessage<'_>, inject: &mut Injector<'_>) {
        if let Some(text) = msg.query_text() {
            let sql = [b"SELECT 1;", text].concat();
            let rewrite = crate::session::hook::Rewrite {
                hidden: vec![0],
                insertions: Vec::new(),
            };
            let rewritten = query(&String::from_utf8_lossy(&sql));
            inject
                .replace_query(Bytes::from(rewritten), rewrite)
                .expect("one Query");
        }
    }

    fn checks_waiting(&mut self, waiting: usize) {
        self.0.lock().expect("not poisoned").push(waiting);
    }
}

#[tokio::test]
async fn the_hook_hears_of_its_checks_waiting_from_sending_until_their_result() {
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (mut relay, mut client, mut server, signals) =
        rig_with(Some(Box::new(CheckEveryQuery(told.clone()))));
    let told_now = || told.lock().expect("not poisoned").clone();
    let sent = query("SELECT 1;SELECT 2");
    let check = frame(b'C', b"SELECT 1\0");
    let end = run_with(&mut relay, &signals, async {
        client.write_all(&query("SELECT 2")).await.unwrap();
        assert_eq!(read_n(&mut server, sent.len()).await, sent);
        assert_eq!(told_now(), [1], "told when sent");
        // The check's result (hidden), then the client's own statement's.
        let mut reply = frame(b'T', &0i16.to_be_bytes());
        reply.extend(frame(b'D', &0i16.to_be_bytes()));
        reply.extend(&check);
        server.write_all(&reply).await.unwrap();
        let own = select_reply(b'I');
        server.write_all(&own).await.unwrap();
        assert_eq!(read_n(&mut client, own.len()).await, own);
        assert_eq!(told_now(), [1, 0], "told when the result came, once");
        client.shutdown().await.unwrap();
    })
    .await;
    assert_eq!(end.unwrap(), End::ClientClosed);
}

#[tokio::test]
async fn a_server_that_hangs_up_is_told_apart_from_one_that_said_fatal_first() {
    for fatal_first in [false, true] {
        let (mut relay, mut client, mut server, signals) = rig();
        let fatal = frame(b'E', b"SFATAL\0VFATAL\0C57P01\0Mterminating\0\0");
        let end = run_with(&mut relay, &signals, async {
            client
                .write_all(&query("SELECT pg_sleep(9)"))
                .await
                .unwrap();
            read_n(&mut server, query("SELECT pg_sleep(9)").len()).await;
            if fatal_first {
                server.write_all(&fatal).await.unwrap();
            }
            server.shutdown().await.unwrap();
        })
        .await;
        let expected = End::ServerClosed {
            fatal_forwarded: fatal_first,
        };
        assert_eq!(end.unwrap(), expected, "FATAL first: {fatal_first}");
        if fatal_first {
            assert_eq!(read_n(&mut client, fatal.len()).await, fatal);
        }
    }
}

#[tokio::test]
async fn a_frame_with_an_impossible_length_ends_the_session_as_the_clients_fault() {
    let (mut relay, mut client, _server, signals) = rig();
    let end = run_with(&mut relay, &signals, async {
        client.write_all(b"Q\x00\x00\x00\x02").await.unwrap();
    })
    .await;
    let err = end.expect_err("a length below 4 is refused");
    assert!(
        matches!(err, SessionError::ClientProtocol(_)),
        "client's fault: {err:?}"
    );
    assert_eq!(err.sqlstate(), Some("08P01"));
}

#[tokio::test]
async fn a_drain_waits_for_the_open_transaction_and_a_stop_does_not() {
    let (mut relay, mut client, mut server, signals) = rig();
    let end = run_with(&mut relay, &signals, async {
        pass(&mut client, &mut server, &query("BEGIN")).await;
        pass(&mut server, &mut client, &completed("BEGIN", b'T')).await;
        signals.drain();
        // Still open: the client's next statement and its answer go through.
        let select = query("SELECT 1");
        assert_eq!(pass(&mut client, &mut server, &select).await, select);
        pass(&mut server, &mut client, &select_reply(b'T')).await;
        pass(&mut client, &mut server, &query("COMMIT")).await;
        pass(&mut server, &mut client, &completed("COMMIT", b'I')).await;
    })
    .await;
    assert_eq!(end.unwrap(), End::Drained, "ends once idle");

    let (mut relay, _client, _server, signals) = rig();
    relay.tracker = ReplyTracker::new(TxStatus::InBlock);
    let end = run_with(&mut relay, &signals, async { signals.stop() }).await;
    assert_eq!(
        end.unwrap(),
        End::Drained,
        "a stop ends even an open transaction"
    );
}

/// Polls a future once, after giving the runtime's I/O driver a turn.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    tokio::task::yield_now().await;
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}

#[tokio::test(flavor = "current_thread")]
async fn a_client_that_does_not_read_holds_the_server_back() {
    let (mut relay, mut client, server, signals) = rig();
    // The client asks for a large result and then reads nothing.
    client.write_all(&query("SELECT big")).await.unwrap();
    let mut server = server.into_std().unwrap();
    server.set_nonblocking(true).unwrap();
    let row = frame(b'D', &[0u8; 8190]);
    let (mut accepted, mut unsent) = (0usize, &row[..]);
    let mut subscription = signals.subscribe();
    for _ in 0..400 {
        loop {
            match server.write(unsent) {
                Ok(n) => {
                    accepted += n;
                    unsent = &unsent[n..];
                    if unsent.is_empty() {
                        unsent = &row[..];
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("server write: {e}"),
            }
        }
        let mut run = Box::pin(relay.run(&mut subscription));
        assert!(poll_once(&mut run).await.is_pending(), "the relay goes on");
    }
    // Without the bound each round would move a socket buffer's worth (~40 MiB in all).
    assert!(
        accepted < 8 << 20,
        "the server could write {accepted} bytes to a client that reads nothing"
    );
    assert!(
        relay.to_client.len() < HIGH_WATER + (1 << 20),
        "queued for the client"
    );
}

#[tokio::test]
async fn a_long_copy_data_is_streamed_before_it_is_complete() {
    let (mut relay, mut client, mut server, signals) = rig();
    let copy = query("COPY t FROM STDIN");
    let whole = 4 << 20;
    let end = run_with(&mut relay, &signals, async {
        client.write_all(&copy).await.unwrap();
        read_n(&mut server, copy.len()).await;
        server.write_all(&frame(b'G', &[0, 0, 0])).await.unwrap();
        read_n(&mut client, 8).await;
        // Half of one CopyData message: the server must see it before the rest is sent.
        let header = [&[b'd'][..], &((whole + 4) as i32).to_be_bytes()].concat();
        let half = [header.clone(), vec![b'x'; whole / 2]].concat();
        let (sent, got) = tokio::join!(client.write_all(&half), read_n(&mut server, half.len()));
        sent.unwrap();
        assert_eq!(
            got, half,
            "the first half, header first, reached the server"
        );
        let rest = vec![b'x'; whole / 2];
        let (sent, got) = tokio::join!(client.write_all(&rest), read_n(&mut server, rest.len()));
        sent.unwrap();
        assert_eq!(got, rest);
        client.shutdown().await.unwrap();
    })
    .await;
    assert_eq!(end.unwrap(), End::ClientClosed);
}
