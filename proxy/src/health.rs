//! `fencegate health`: asks a running `fencegate serve` whether it is up, for container
//! health checks (Docker's `HEALTHCHECK`, Kubernetes' exec probes) in images without a
//! shell or curl.
//!
//! It sends `GET /status` to the metrics endpoint (`--metrics-listen`, see [`crate::metrics`])
//! over plain TCP with one deadline for the whole exchange, and calls the proxy healthy when
//! the answer is `200` with the status object. An unspecified listen address (`0.0.0.0`,
//! `[::]`) is asked on the loopback address of the same family, so `health` can be given
//! the very setting `serve` listens on.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Where `health` asks when neither a flag, the environment nor a config file names a
/// metrics address (serve's metrics endpoint is off by default; this is the port the
/// documentation and the container image use).
pub const DEFAULT_ADDR: &str = "127.0.0.1:9187";
/// Default time the whole exchange may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read: the status object is a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// What a healthy proxy reported (the command prints it after `healthy: `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthy {
    /// The address that answered.
    pub addr: SocketAddr,
    /// The proxy's version (`version` in `/status`).
    pub version: String,
    /// Client sessions open now.
    pub sessions_open: u64,
    /// Seconds since the proxy started serving.
    pub uptime_seconds: u64,
}

impl std::fmt::Display for Healthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fencegate {} at {}, {} session(s) open, up {} s",
            self.version, self.addr, self.sessions_open, self.uptime_seconds
        )
    }
}

/// Why the proxy is not healthy, as one line (the command prints it after `unhealthy: `).
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    /// Nothing accepted the connection, or it failed.
    #[error(
        "nothing answers at {0}: {1} (is `fencegate serve` running with --metrics-listen {0}?)"
    )]
    Connect(SocketAddr, std::io::Error),
    /// The connection broke or timed out before the answer was complete.
    #[error("no complete answer from {0}: {1}")]
    Io(SocketAddr, std::io::Error),
    /// An answer other than `200` with the status object.
    #[error("{0} answered {1:?}")]
    Answer(SocketAddr, String),
}

/// The address to ask for a metrics listen address: unspecified addresses become loopback.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Asks the metrics endpoint listening on `listen` for `/status`, all within `timeout`.
pub fn check(listen: SocketAddr, timeout: Duration) -> Result<Healthy, Unhealthy> {
    let addr = target(listen);
    let deadline = Instant::now() + timeout;
    let mut conn =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| Unhealthy::Connect(addr, e))?;
    let io = |e| Unhealthy::Io(addr, e);
    conn.set_write_timeout(Some(left(deadline).map_err(io)?))
        .map_err(io)?;
    let request = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while answer.len() < MAX_ANSWER {
        conn.set_read_timeout(Some(left(deadline).map_err(io)?))
            .map_err(io)?;
        match conn.read(&mut chunk).map_err(io)? {
            0 => break,
            n => answer.extend_from_slice(&chunk[..n]),
        }
    }
    parse(addr, &answer)
}

/// Time left before `deadline`, as an I/O timeout; an error once it has passed.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// Reads a complete answer: `200` and a status object.
fn parse(addr: SocketAddr, answer: &[u8]) -> Result<Healthy, Unhealthy> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    let (version, code) = (parts.next(), parts.next());
    if !matches!(version, Some(v) if v.starts_with("HTTP/1.")) || code != Some("200") {
        let shown = if status_line.is_empty() {
            "nothing"
        } else {
            status_line
        };
        return Err(Unhealthy::Answer(addr, shown.to_string()));
    }
    let status: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| Unhealthy::Answer(addr, format!("200 without a status object ({e})")))?;
    let number = |v: &serde_json::Value| v.as_u64().unwrap_or_default();
    Ok(Healthy {
        addr,
        version: status["version"].as_str().unwrap_or("?").to_string(),
        sessions_open: number(&status["sessions"]["open"]),
        uptime_seconds: number(&status["uptime_seconds"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:9187".parse().unwrap()
    }

    #[test]
    fn unspecified_addresses_are_asked_on_loopback() {
        let t = |s: &str| target(s.parse().unwrap()).to_string();
        assert_eq!(t("0.0.0.0:9187"), "127.0.0.1:9187");
        assert_eq!(t("[::]:9187"), "[::1]:9187");
        assert_eq!(t("10.1.2.3:80"), "10.1.2.3:80");
    }

    #[test]
    fn only_200_with_the_status_object_is_healthy() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n\
            {\"version\":\"0.1.0\",\"uptime_seconds\":7,\"sessions\":{\"open\":2}}";
        let healthy = parse(addr(), ok).unwrap();
        assert_eq!(
            healthy.to_string(),
            "fencegate 0.1.0 at 127.0.0.1:9187, 2 session(s) open, up 7 s"
        );
        for (answer, shown) in [
            (
                &b"HTTP/1.1 404 Not Found\r\n\r\n"[..],
                "\"HTTP/1.1 404 Not Found\"",
            ),
            (b"", "\"nothing\""),
            (b"SSH-2.0-OpenSSH\r\n", "\"SSH-2.0-OpenSSH\""),
            (
                b"HTTP/1.1 200 OK\r\n\r\n<html>",
                "\"200 without a status object",
            ),
        ] {
            let e = parse(addr(), answer).unwrap_err().to_string();
            assert!(e.starts_with("127.0.0.1:9187 answered "), "{e}");
            assert!(e.contains(shown), "{e}");
        }
    }
}
