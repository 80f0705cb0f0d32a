//! The proxy under test, run in-process on `127.0.0.1:0`.
//!
//! The listeners (clients, and metrics when asked for) are bound on the calling thread, so
//! their addresses are known (and connections queue) before [`TestProxy::start`] returns. `fencegate::server::run` then runs on its own
//! thread with its own tokio runtime, so blocking tests, subprocess tests (psql, pgbench) and
//! `#[tokio::test]` tests can all use it. Stopping cancels the shutdown token and waits for
//! `run` to return; a proxy that does not drain in time fails the test.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use fencegate::config::Config;
use fencegate::fence::hook::FenceHooks;
use fencegate::fence::plan::FencePolicy;
use fencegate::fence::stats::FenceStats;
use fencegate::metrics::Metrics;
use fencegate::session::hook::{HookFactory, NoHooks};
use tokio_util::sync::CancellationToken;

use crate::endpoint::Endpoint;

/// Drain time given to open sessions when a test proxy stops (short: tests should not wait
/// for the production default).
pub const TEST_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Extra time, beyond the configured grace, that `run` gets to return after shutdown.
const STOP_SLACK: Duration = Duration::from_secs(10);

/// A running proxy; stopped on `Drop`.
pub struct TestProxy {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    grace: Duration,
    done: mpsc::Receiver<Result<(), String>>,
    thread: Option<JoinHandle<()>>,
}

impl TestProxy {
    /// Starts a proxy in front of `127.0.0.1:upstream_port`. `tweak` may change the config
    /// after the harness has filled in `listen`, `upstream` and a short `shutdown_grace`.
    pub fn start(
        upstream_port: u16,
        tweak: impl FnOnce(&mut Config),
        hooks: Arc<dyn HookFactory>,
    ) -> TestProxy {
        TestProxy::start_inner(
            bind_loopback(),
            upstream_port,
            tweak,
            hooks,
            Arc::default(),
            None,
        )
    }

    /// [`Self::plain_with`], listening on `ip` (a port of the system's choosing) instead
    /// of loopback: for clients on another host ([`crate::netns::RemoteHost`]).
    pub fn plain_on(
        ip: std::net::IpAddr,
        upstream_port: u16,
        tweak: impl FnOnce(&mut Config),
    ) -> TestProxy {
        let listener = bind(SocketAddr::new(ip, 0));
        let policy = FencePolicy::from_config(&Config::default());
        let hooks = FenceHooks::new(policy, Arc::new(FenceStats::default()));
        TestProxy::start_inner(
            listener,
            upstream_port,
            tweak,
            Arc::new(hooks),
            Arc::default(),
            None,
        )
    }

    /// [`Self::start`], counting into `metrics` and serving them on a port of their own
    /// ([`Self::metrics_addr`]).
    pub fn start_with_metrics(
        upstream_port: u16,
        tweak: impl FnOnce(&mut Config),
        hooks: Arc<dyn HookFactory>,
        metrics: Arc<Metrics>,
    ) -> TestProxy {
        let metrics_listener = bind_loopback();
        TestProxy::start_inner(
            bind_loopback(),
            upstream_port,
            tweak,
            hooks,
            metrics,
            Some(metrics_listener),
        )
    }

    fn start_inner(
        listener: std::net::TcpListener,
        upstream_port: u16,
        tweak: impl FnOnce(&mut Config),
        hooks: Arc<dyn HookFactory>,
        metrics: Arc<Metrics>,
        metrics_listener: Option<std::net::TcpListener>,
    ) -> TestProxy {
        crate::init_tracing();
        let addr = listener.local_addr().expect("local_addr");
        let metrics_addr = metrics_listener
            .as_ref()
            .map(|l| l.local_addr().expect("local_addr"));
        let mut config = Config {
            listen: addr,
            metrics_listen: metrics_addr,
            upstream: format!("127.0.0.1:{upstream_port}"),
            shutdown_grace: TEST_SHUTDOWN_GRACE,
            ..Config::default()
        };
        tweak(&mut config);
        let grace = config.shutdown_grace;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("fencegate-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                let result = runtime.block_on(async move {
                    let listeners = fencegate::server::Listeners {
                        clients: tokio::net::TcpListener::from_std(listener)?,
                        metrics: metrics_listener
                            .map(tokio::net::TcpListener::from_std)
                            .transpose()?,
                    };
                    fencegate::server::run(listeners, Arc::new(config), hooks, metrics, token)
                        .await
                        .map_err(|e| std::io::Error::other(error_chain(&e)))
                });
                let _ = tx.send(result.map_err(|e| e.to_string()));
            })
            .expect("spawn proxy thread");
        TestProxy {
            addr,
            metrics_addr,
            shutdown,
            grace,
            done,
            thread: Some(thread),
        }
    }

    /// Starts a proxy as `fencegate serve` runs by default: the fencing hook is installed,
    /// so every comparison also shows that traffic without tokens passes unchanged (G5).
    pub fn plain(upstream_port: u16) -> TestProxy {
        TestProxy::plain_with(upstream_port, |_| {})
    }

    /// [`Self::plain`] with the config changed by `tweak`.
    pub fn plain_with(upstream_port: u16, tweak: impl FnOnce(&mut Config)) -> TestProxy {
        let policy = FencePolicy::from_config(&Config::default());
        let hooks = FenceHooks::new(policy, Arc::new(FenceStats::default()));
        TestProxy::start(upstream_port, tweak, Arc::new(hooks))
    }

    /// Starts a proxy with no hook at all: the bare relay.
    pub fn bare(upstream_port: u16) -> TestProxy {
        TestProxy::start(upstream_port, |_| {}, Arc::new(NoHooks))
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the metrics endpoint listens (for a proxy from [`Self::start_with_metrics`]).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Where clients reach the proxy.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint { addr: self.addr }
    }

    /// The token that shuts the proxy down (cancel it to begin a drain).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Signals shutdown and waits for `run` to return; its error (or a panic) as text.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), String> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.shutdown.cancel();
        let result = match self.done.recv_timeout(self.grace + STOP_SLACK) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Detach the thread: it cannot be stopped from here.
                return Err(format!(
                    "proxy did not stop within {:?}",
                    self.grace + STOP_SLACK
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("proxy thread panicked".into()),
        };
        let _ = thread.join();
        result
    }
}

/// An error and its causes, `: `-separated.
/// A nonblocking listener on a port of the system's choosing.
fn bind_loopback() -> std::net::TcpListener {
    bind(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// A nonblocking listener on `addr`.
fn bind(addr: SocketAddr) -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind(addr).expect("bind a listening port");
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    listener
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        let result = self.stop_inner();
        if let Err(e) = result {
            if std::thread::panicking() {
                eprintln!("test proxy on {}: {e}", self.addr);
            } else {
                panic!("test proxy on {}: {e}", self.addr);
            }
        }
    }
}
