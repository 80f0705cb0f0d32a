//! The Prometheus metrics endpoint: `GET /metrics` on `--metrics-listen`, in the text
//! exposition format (version 0.0.4), and `GET /status`, the same live state as one JSON
//! object for people and scripts.
//!
//! The figures are relaxed atomics that the sessions update as they go (connection counts
//! here, fencing counters and the check-latency histogram in [`FenceStats`]); a scrape only
//! reads them. The HTTP side is deliberately small: one request per connection, the request
//! head capped at 8 KiB and 5 seconds, at most 16 scrapes at once (more are closed
//! unanswered), `GET`/`HEAD` of `/metrics` and `/status` answered, anything else refused with a status
//! line. No HTTP crate is needed for that, and none runs on the sessions' threads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::fence::stats::{FenceStats, BUCKETS};
use crate::upstream::hosts::HostTable;

/// Largest request head read from a scraper.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time a scraper gets to send its request and read the answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes answered at once: a burst of idle connections to the endpoint must not use up
/// the file descriptors that clients and upstream connections need.
const MAX_SCRAPES: usize = 16;

/// Everything the endpoint reports, shared by the accept loop and every session.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Client connections being served now.
    pub connections_open: AtomicU64,
    /// Client connections accepted since the start.
    pub connections_total: AtomicU64,
    /// The session limit in force (`max_connections`; a reload may change it).
    pub max_connections: AtomicU64,
    /// Reloads whose settings were put into effect.
    pub reloads_applied: AtomicU64,
    /// Reloads refused because the settings did not read or validate.
    pub reloads_refused: AtomicU64,
    /// Fencing counters and check latency.
    pub fence: Arc<FenceStats>,
    /// The upstream hosts, once the server has built them.
    pub upstream: std::sync::OnceLock<Arc<HostTable>>,
    /// When the proxy started serving.
    started: Option<Instant>,
}

impl Metrics {
    /// Metrics around the fence's counters `fence` (the ones its hooks update).
    pub fn new(fence: Arc<FenceStats>) -> Self {
        Metrics {
            fence,
            started: Some(Instant::now()),
            ..Metrics::default()
        }
    }

    /// Counts a connection accepted; the guard counts it closed when dropped.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let f = &*self.fence;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let single = self.single_samples();
        for (name, kind, help, value) in single {
            metric(name, kind, help, &[("", get(value))]);
        }
        metric(
            "fencegate_rejections_total",
            "counter",
            "Statements rejected by the fence, by reason (SQLSTATE 55Z01, 55Z02, 55Z03).",
            &[
                ("{reason=\"stale\"}", get(&f.stale)),
                ("{reason=\"invalid\"}", get(&f.invalid)),
                ("{reason=\"not_installed\"}", get(&f.not_installed)),
            ],
        );
        metric(
            "fencegate_reloads_total",
            "counter",
            "Reloads (SIGHUP) by result: applied, or refused because the settings did not read or validate.",
            &[
                ("{result=\"applied\"}", get(&self.reloads_applied)),
                ("{result=\"refused\"}", get(&self.reloads_refused)),
            ],
        );
        self.render_check_duration(&mut out);
        if let Some(hosts) = self.upstream.get() {
            hosts.render(&mut out);
        }
        out
    }

    /// The metrics with one sample each: name, type, help, value.
    fn single_samples(&self) -> [(&'static str, &'static str, &'static str, &AtomicU64); 7] {
        let f = &*self.fence;
        [
            (
                "fencegate_client_connections_open",
                "gauge",
                "Client connections being served.",
                &self.connections_open,
            ),
            (
                "fencegate_client_connections_limit",
                "gauge",
                "Client connections that may be served at once (max_connections).",
                &self.max_connections,
            ),
            (
                "fencegate_client_connections_total",
                "counter",
                "Client connections accepted.",
                &self.connections_total,
            ),
            (
                "fencegate_checks_total",
                "counter",
                "Fencing checks sent to PostgreSQL in clients' transactions, and refusals of tokens already known stale.",
                &f.checks,
            ),
            (
                "fencegate_checks_admitted_total",
                "counter",
                "Fencing checks that passed: the statement behind them ran.",
                &f.admitted,
            ),
            (
                "fencegate_checks_waiting",
                "gauge",
                "Fencing checks sent to PostgreSQL whose result has not come back (waiting behind an older holder, or in flight).",
                &f.checks_waiting,
            ),
            (
                "fencegate_preemptions_total",
                "counter",
                "Sessions ended by this proxy's checks for holding an older token past the preemption grace.",
                &f.preempted,
            ),
        ]
    }

    /// The check latency histogram.
    fn render_check_duration(&self, out: &mut String) {
        let (cumulative, count, sum) = self.fence.check_seconds.snapshot();
        let name = "fencegate_check_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from sending a fencing check to its result (waits behind an older holder included).\n# TYPE {name} histogram"
        );
        for (bound, n) in BUCKETS.iter().zip(&cumulative) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

impl Metrics {
    /// The live state as one JSON object (`GET /status`).
    pub fn status_json(&self) -> String {
        let f = &*self.fence;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.map_or(0, |t| t.elapsed().as_secs()),
            "sessions": {
                "open": get(&self.connections_open),
                "limit": get(&self.max_connections),
                "accepted_total": get(&self.connections_total),
            },
            "checks": {
                "waiting": get(&f.checks_waiting),
                "sent_total": get(&f.checks),
                "admitted_total": get(&f.admitted),
            },
            "preemptions_total": get(&f.preempted),
            "rejections": {
                "stale": get(&f.stale),
                "invalid": get(&f.invalid),
                "not_installed": get(&f.not_installed),
            },
            "reloads": {
                "applied": get(&self.reloads_applied),
                "refused": get(&self.reloads_refused),
            },
            "upstream": self.upstream.get().map(|hosts| hosts.status()),
        })
        .to_string()
    }
}

/// Counts one connection as open until dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers scrapes on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let scrapes = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let Ok(permit) = scrapes.clone().try_acquire_owned() else {
            tracing::debug!("too many scrapes at once; connection closed");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, answer(stream, &metrics)).await;
            drop(permit);
        });
    }
}

/// Reads one request head and writes the response.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let complete = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break false;
        }
        // Only the new bytes (and the three before them) can complete the head.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if ends_head(&head[from..]) {
            break true;
        }
        if head.len() >= MAX_REQUEST_HEAD {
            break false;
        }
    };
    let response = if complete {
        respond(&head, metrics)
    } else {
        status_only("400 Bad Request")
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// True when `bytes` hold the blank line that ends a request head (CRLF CRLF, or bare LF
/// LF as some hand-typed requests send).
fn ends_head(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n") || bytes.windows(2).any(|w| w == b"\n\n")
}

/// The whole HTTP response to a request head (public for the fuzz target).
pub fn respond(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    // Empty lines before the request line are allowed (RFC 9112, 2.2).
    let line = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next());
    let path = target.map(|t| {
        let path = t.split(|&b| b == b'?').next().unwrap_or_default();
        origin_form(path)
    });
    match (method, path) {
        (b"GET" | b"HEAD", Some(b"/metrics")) => ok(
            method,
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics.render(),
        ),
        (b"GET" | b"HEAD", Some(b"/status")) => {
            ok(method, "application/json", &metrics.status_json())
        }
        (_, Some(b"/metrics" | b"/status")) => {
            status_only("405 Method Not Allowed\r\nAllow: GET, HEAD")
        }
        (_, Some(_)) => status_only("404 Not Found"),
        (_, None) => status_only("400 Bad Request"),
    }
}

/// A 200 response with `body` (its head only, for HEAD).
fn ok(method: &[u8], content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method == b"GET" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The path of an absolute-form target (`http://host:port/metrics`, which a server must
/// accept); other targets as they are.
fn origin_form(target: &[u8]) -> &[u8] {
    let Some(at) = target.windows(3).position(|w| w == b"://") else {
        return target;
    };
    let after_scheme = &target[at + 3..];
    match after_scheme.iter().position(|&b| b == b'/') {
        Some(slash) => &after_scheme[slash..],
        None => b"/",
    }
}

/// A response without a body: `status` is the status and any header lines after it.
fn status_only(status: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(response: &[u8]) -> String {
        let text = String::from_utf8_lossy(response);
        text.lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn only_get_and_head_of_metrics_are_answered() {
        let m = Metrics::default();
        let get = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &m);
        assert_eq!(status(&get), "HTTP/1.1 200 OK");
        assert!(String::from_utf8_lossy(&get).contains("\r\n\r\n# HELP "));
        let head = respond(b"HEAD /metrics?x=1 HTTP/1.1\r\n\r\n", &m);
        assert_eq!(status(&head), "HTTP/1.1 200 OK");
        assert!(String::from_utf8_lossy(&head).ends_with("\r\n\r\n"));
        assert_eq!(
            status(&respond(b"POST /metrics HTTP/1.1\r\n\r\n", &m)),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(
            status(&respond(b"GET / HTTP/1.1\r\n\r\n", &m)),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status(&respond(b"\r\n\r\n", &m)),
            "HTTP/1.1 400 Bad Request"
        );
        let not_allowed = respond(b"POST /metrics HTTP/1.1\r\n\r\n", &m);
        assert!(String::from_utf8_lossy(&not_allowed).contains("\r\nAllow: GET, HEAD\r\n"));
    }

    #[tokio::test]
    async fn scrapes_beyond_the_limit_are_closed_unanswered_until_one_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::default(), stop.clone()));
        // Idle connections that never send a request hold every permit.
        let mut idle = Vec::new();
        for _ in 0..MAX_SCRAPES {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let scrape = || async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
            let mut response = Vec::new();
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, s.read_to_end(&mut response)).await;
            response
        };
        assert!(
            scrape().await.is_empty(),
            "a scrape past the limit was answered"
        );
        drop(idle.pop());
        // The accept loop learns of the freed permit when the task ends (read returns 0).
        let answered = loop {
            let response = scrape().await;
            if !response.is_empty() {
                break response;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(status(&answered), "HTTP/1.1 200 OK");
        stop.cancel();
    }

    #[test]
    fn status_is_one_json_object_of_the_live_figures() {
        let m = Metrics::new(Arc::default());
        m.connections_open.store(3, Ordering::Relaxed);
        m.max_connections.store(10, Ordering::Relaxed);
        m.fence.stale.store(2, Ordering::Relaxed);
        m.fence.checks_waiting.store(4, Ordering::Relaxed);
        let response = respond(b"GET /status HTTP/1.1\r\n\r\n", &m);
        let text = String::from_utf8_lossy(&response);
        assert_eq!(status(&response), "HTTP/1.1 200 OK");
        assert!(text.contains("Content-Type: application/json"), "{text}");
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(v["sessions"]["open"], 3);
        assert_eq!(v["sessions"]["limit"], 10);
        assert_eq!(v["rejections"]["stale"], 2);
        assert_eq!(v["checks"]["waiting"], 4);
        let post = respond(b"POST /status HTTP/1.1\r\n\r\n", &m);
        assert!(status(&post).starts_with("HTTP/1.1 405"));
    }

    #[test]
    fn lenient_request_forms_are_understood() {
        let m = Metrics::default();
        for request in [
            &b"GET http://127.0.0.1:9187/metrics HTTP/1.1\r\n\r\n"[..],
            b"\r\nGET /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.0\n\n",
        ] {
            assert_eq!(
                status(&respond(request, &m)),
                "HTTP/1.1 200 OK",
                "{}",
                String::from_utf8_lossy(request)
            );
        }
        assert_eq!(
            status(&respond(b"GET http://host HTTP/1.1\r\n\r\n", &m)),
            "HTTP/1.1 404 Not Found"
        );
        assert!(ends_head(b"GET / HTTP/1.0\n\n"));
        assert!(ends_head(b"x\r\n\r\n"));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    }

    #[test]
    fn the_exposition_carries_every_figure() {
        let m = Arc::new(Metrics::default());
        let guard = m.connection_opened();
        let _closed = m.connection_opened();
        drop(_closed);
        FenceStats::bump(&m.fence.checks);
        FenceStats::bump(&m.fence.stale);
        FenceStats::bump(&m.fence.preempted);
        m.fence.check_seconds.observe(Duration::from_micros(300));
        let text = m.render();
        for line in [
            "fencegate_client_connections_open 1",
            "fencegate_client_connections_total 2",
            "fencegate_checks_total 1",
            "fencegate_checks_admitted_total 0",
            "fencegate_checks_waiting 0",
            "fencegate_preemptions_total 1",
            "fencegate_rejections_total{reason=\"stale\"} 1",
            "fencegate_rejections_total{reason=\"invalid\"} 0",
            "fencegate_check_duration_seconds_bucket{le=\"0.0002\"} 0",
            "fencegate_check_duration_seconds_bucket{le=\"0.0005\"} 1",
            "fencegate_check_duration_seconds_bucket{le=\"+Inf\"} 1",
            "fencegate_check_duration_seconds_sum 0.0003",
            "fencegate_check_duration_seconds_count 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        drop(guard);
        assert!(m
            .render()
            .lines()
            .any(|l| l == "fencegate_client_connections_open 0"));
    }
}
