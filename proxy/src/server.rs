//! The accept loop: one task per client connection (the sessions' and the opening
//! connections' budgets are kept by `session`), and a graceful shutdown: stop accepting, close each session as soon as
//! it has no transaction open, and after the configured grace close whatever is left.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::ServerError;
use crate::metrics::Metrics;
use crate::session::hook::HookFactory;
use crate::session::signals::Signals;
use crate::session::{self, Shared};
use crate::upstream::Upstream;
use crate::workers::Workers;

/// The sockets fencegate listens on: clients, and the metrics endpoint when configured.
/// Bound before [`run`] so that whoever starts the server learns a bind error (or a port
/// chosen by the system) before anything is served.
pub struct Listeners {
    /// Where clients connect (`listen`).
    pub clients: TcpListener,
    /// Where scrapers read `/metrics` (`metrics_listen`), if anywhere.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds `config.listen` and, when set, `config.metrics_listen`.
    pub async fn bind(config: &Config) -> Result<Listeners, ServerError> {
        let clients = TcpListener::bind(config.listen)
            .await
            .map_err(|e| ServerError::Listen(config.listen, e))?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| ServerError::MetricsListen(addr, e))?,
            ),
            None => None,
        };
        Ok(Listeners { clients, metrics })
    }
}

/// Serves clients from `listeners.clients` until `shutdown` is cancelled, then drains.
/// Counts into `metrics`, and answers scrapes on `listeners.metrics` (when there is one)
/// until the drain ends.
pub async fn run(
    listeners: Listeners,
    config: Arc<Config>,
    hooks: Arc<dyn HookFactory>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    run_reloading(listeners, config, hooks, metrics, shutdown, None).await
}

/// [`run`], also applying each new set of settings that arrives on `reloads` (see
/// [`crate::reload`]).
pub async fn run_reloading(
    listeners: Listeners,
    config: Arc<Config>,
    hooks: Arc<dyn HookFactory>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    mut reloads: Option<UnboundedReceiver<Config>>,
) -> Result<(), ServerError> {
    let mut running = (*config).clone();
    let limit_gauge = |metrics: &Metrics, max: usize| {
        metrics
            .max_connections
            .store(max as u64, std::sync::atomic::Ordering::Relaxed)
    };
    limit_gauge(&metrics, running.max_connections);
    let Listeners {
        clients: listener,
        metrics: metrics_listener,
    } = listeners;
    let _stop_scrapes = serve_metrics(metrics_listener, &metrics)?;
    let shared = shared_state(&config, hooks)?;
    let _ = metrics.upstream.set(shared.upstream.table().clone());
    let workers = Workers::start(config.worker_threads).map_err(ServerError::Workers)?;
    let sessions = TaskTracker::new();
    tracing::info!(listen = %listener.local_addr().map_err(ServerError::Accept)?,
        upstream = %config.upstream, target_session_attrs = config.target_session_attrs.name(), threads = workers.len(), "fencegate serving");
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: log and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
            new = recv(&mut reloads), if reloads.is_some() => {
                match new {
                    Some(new) => {
                        running = crate::reload::apply(&shared, &running, new);
                        limit_gauge(&metrics, running.max_connections);
                        metrics.reloads_applied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    None => reloads = None,
                }
                continue;
            }
        };
        let shared = shared.clone();
        let counted = metrics.connection_opened();
        // Every log line of a session (a rejection included) names the client's address;
        // the span is at ERROR level so that it shows whatever level is logged.
        let span = tracing::error_span!("session", client = %peer);
        workers.spawn(&sessions, async move {
            session::serve(tcp, shared, span).await;
            drop(counted);
        });
    }
    drop(listener);
    shared.signals.drain();
    sessions.close();
    tracing::info!(open = sessions.len(), grace = ?config.shutdown_grace, "shutting down");
    if tokio::time::timeout(config.shutdown_grace, sessions.wait())
        .await
        .is_err()
    {
        shared.signals.stop();
        sessions.wait().await;
    }
    workers.shutdown().await;
    Ok(())
}

/// Starts answering scrapes, when there is a metrics listener; they stop when the returned
/// guard is dropped.
fn serve_metrics(
    listener: Option<TcpListener>,
    metrics: &Arc<Metrics>,
) -> Result<tokio_util::sync::DropGuard, ServerError> {
    let scrapes = CancellationToken::new();
    if let Some(listener) = listener {
        let addr = listener.local_addr().map_err(ServerError::Accept)?;
        tracing::info!(listen = %addr, "metrics endpoint at /metrics and /status");
        tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            scrapes.clone(),
        ));
    }
    Ok(scrapes.drop_guard())
}

/// What every session shares, built from the settings at start.
fn shared_state(
    config: &Arc<Config>,
    hooks: Arc<dyn HookFactory>,
) -> Result<Arc<Shared>, ServerError> {
    Ok(Arc::new(Shared {
        upstream: Upstream::new(config)?,
        tls: std::sync::RwLock::new(crate::tls::acceptor(config)?),
        hooks,
        config: config.clone(),
        signals: Arc::new(Signals::default()),
        sessions: session::limit::SessionLimit::new(config.max_connections),
        opening: session::opening::OpeningSlots::new(config.max_startup_connections),
        buffers: session::budget::BufferBudget::new(config.max_buffered_bytes),
    }))
}

async fn recv(reloads: &mut Option<UnboundedReceiver<Config>>) -> Option<Config> {
    match reloads {
        Some(r) => r.recv().await,
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_metrics_address_is_named_in_the_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: Some(addr),
            ..Config::default()
        };
        match Listeners::bind(&config).await {
            Err(ServerError::MetricsListen(named, _)) => assert_eq!(named, addr),
            Err(other) => panic!("expected a metrics listen error, got {other}"),
            Ok(_) => panic!("bound an address that is taken"),
        }
    }

    #[tokio::test]
    async fn without_metrics_only_the_client_listener_is_bound() {
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        let listeners = Listeners::bind(&config).await.expect("bind");
        assert!(listeners.metrics.is_none());
        assert!(listeners.clients.local_addr().unwrap().port() != 0);
    }
}
