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

use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let ended = tokio::select! {
        end = pump(client_read, &server_write, state.clone()) => end,
        end = pump(server_read, &client_write, state.clone()) => end,
    };
    if ended == Link::Reset {
        reset(server_write.as_ref());
        reset(client_write.as_ref());
    }
}

/// Copies `from` to `to` while the link allows; returns [`Link::Reset`] when the link was
/// reset, [`Link::Up`] when either side closed.
async fn pump(
    mut from: OwnedReadHalf,
    to: &OwnedWriteHalf,
    mut state: watch::Receiver<Link>,
) -> Link {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if passable(&mut state).await == Link::Reset {
            return Link::Reset;
        }
        // Reading is cancel-safe: a state change loses no byte.
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Link::Up,
                Ok(n) => n,
            },
            _ = state.changed() => continue,
        };
        tokio::select! {
            written = write_all(to, &buf[..n]) => if written.is_err() { return Link::Up },
            _ = state.wait_for(|l| *l == Link::Reset) => return Link::Reset,
        }
    }
}

/// Writes all of `bytes` through a shared write half.
async fn write_all(to: &OwnedWriteHalf, bytes: &[u8]) -> std::io::Result<()> {
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
