//! A fault-injecting TCP relay on loopback, put on every link of the fault suite (worker →
//! proxy, proxy → PostgreSQL) so that a test can cut a link and heal it.
//!
//! The relay was chosen over network namespaces (`tests/src/netns.rs`) because it needs no
//! root, no `ip`/`iptables` and no kernel support, runs the same on any machine the suite
//! runs on, cuts exactly one link (not every connection of a host), and changes state at a
//! point the test chooses, so a run is repeatable.
//!
//! A link is in one of three states:
//! - [`Link::Up`]: bytes are relayed both ways.
//! - [`Link::Blackhole`]: nothing is relayed and nothing is refused. Bytes wait in the
//!   kernel's buffers as packets wait for retransmission, so when the link heals each stream
//!   goes on intact, as TCP does after a partition that ends before its timeouts. A new
//!   connection is accepted but reaches nothing until the link heals (a SYN lost, then
//!   retransmitted).
//! - [`Link::Reset`]: every connection on the link is reset (RST, via `SO_LINGER` 0), and so
//!   is every new one, until the link is up again.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The state of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Relaying.
    Up,
    /// Holding every byte until the link is up again.
    Blackhole,
    /// Resetting every connection.
    Reset,
}

/// A relay from a loopback port of its own to `target`; stopped on `Drop`.
pub struct Relay {
    addr: SocketAddr,
    state: watch::Sender<Link>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Listens on `127.0.0.1:0` (bound before this returns) and relays to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (state, watch) = watch::channel(Link::Up);
        let accept = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                conns.spawn(relay(client, target, watch.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Relay {
            addr,
            state,
            accept,
        }
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Puts the link in `link`'s state.
    pub fn set(&self, link: Link) {
        self.state.send_replace(link);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.set(Link::Reset);
        self.accept.abort();
    }
}

/// Resets `stream` (RST instead of FIN) by closing it with a zero linger time.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Waits until the link is not blackholed; its state then.
async fn passable(state: &mut watch::Receiver<Link>) -> Link {
    match state.wait_for(|l| *l != Link::Blackhole).await {
        Ok(link) => *link,
        Err(_) => Link::Reset,
    }
}

/// One relayed connection.
async fn relay(client: TcpStream, target: SocketAddr, mut state: watch::Receiver<Link>) {
    if passable(&mut state).await == Link::Reset {
        reset(&client);
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        // The target refused: so does the link, as a host that is down would.
        reset(&client);
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    // Both directions share the two sockets (no split halves: a write half sends FIN when
    // dropped, which would turn a reset into an orderly close).
    let ended = tokio::select! {
        end = pump(&client, &server, state.clone()) => end,
        end = pump(&server, &client, state.clone()) => end,
    };
    if ended == Link::Reset {
        reset(&server);
        reset(&client);
    }
}

/// Copies `from` to `to` while the link allows; returns [`Link::Reset`] when the link was
/// reset, [`Link::Up`] when either side closed.
async fn pump(from: &TcpStream, to: &TcpStream, mut state: watch::Receiver<Link>) -> Link {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if passable(&mut state).await == Link::Reset {
            return Link::Reset;
        }
        // Waiting for readability is cancel-safe: a state change loses no byte.
        tokio::select! {
            ready = from.readable() => if ready.is_err() { return Link::Up },
            _ = state.changed() => continue,
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => return Link::Up,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Link::Up,
        };
        tokio::select! {
            written = write_all(to, &buf[..n]) => if written.is_err() { return Link::Up },
            _ = state.wait_for(|l| *l == Link::Reset) => return Link::Reset,
        }
    }
}

/// Writes all of `bytes` to a socket shared with the other direction.
async fn write_all(to: &TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        to.writable().await?;
        match to.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server on loopback.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(bytes).await?;
        let mut back = vec![0; bytes.len()];
        stream.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn a_blackhole_holds_the_bytes_and_a_reset_resets() {
        let relay = Relay::start(echo().await).await;
        let mut stream = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"up").await.unwrap(), b"up");

        relay.set(Link::Blackhole);
        stream.write_all(b"held").await.unwrap();
        let mut back = [0u8; 4];
        // Asserts that nothing arrives: a short wait is the only way to see that.
        let early = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut back));
        assert!(early.await.is_err(), "bytes crossed a blackholed link");
        relay.set(Link::Up);
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(
            &back, b"held",
            "the stream did not go on intact after the heal"
        );

        relay.set(Link::Reset);
        let err = stream
            .read(&mut back)
            .await
            .expect_err("read after a reset");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        let mut fresh = TcpStream::connect(relay.addr()).await.unwrap();
        assert!(
            round_trip(&mut fresh, b"x").await.is_err(),
            "new connection not reset"
        );

        relay.set(Link::Up);
        let mut healed = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut healed, b"again").await.unwrap(), b"again");
    }
}
