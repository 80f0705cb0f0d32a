//! The accept loop: one task per client connection, a semaphore bounding how many are
//! served at once, and a graceful shutdown: stop accepting, close each session as soon as
//! it has no transaction open, and after the configured grace close whatever is left.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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

/// Serves clients from `listener` until `shutdown` is cancelled, then drains. Counts into
/// `metrics`, and answers scrapes on `config.metrics_listen` (when set) until the drain
/// ends.
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    hooks: Arc<dyn HookFactory>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let scrapes = CancellationToken::new();
    let _stop_scrapes = scrapes.clone().drop_guard();
    if let Some(addr) = config.metrics_listen {
        let metrics_listener = TcpListener::bind(addr)
            .await
            .map_err(|e| ServerError::MetricsListen(addr, e))?;
        tracing::info!(listen = %addr, "metrics endpoint at /metrics");
        tokio::spawn(crate::metrics::serve(
            metrics_listener,
            metrics.clone(),
            scrapes,
        ));
    }
    let shared = Arc::new(Shared {
        upstream: Upstream::new(&config)?,
        tls: crate::tls::acceptor(&config)?,
        hooks,
        config: config.clone(),
        signals: Arc::new(Signals::default()),
    });
    let workers = Workers::start(config.worker_threads).map_err(ServerError::Workers)?;
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let sessions = TaskTracker::new();
    tracing::info!(listen = %listener.local_addr().map_err(ServerError::Accept)?,
        upstream = %config.upstream, threads = workers.len(), "fencegate serving");
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
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
        };
        let shared = shared.clone();
        let counted = metrics.connection_opened();
        // Every log line of a session (a rejection included) names the client's address;
        // the span is at ERROR level so that it shows whatever level is logged.
        let span = tracing::error_span!("session", client = %peer);
        workers.spawn(&sessions, async move {
            session::serve(tcp, shared, span).await;
            drop(counted);
            drop(permit);
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
