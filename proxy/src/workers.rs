//! Session threads. Each runs its own single-threaded tokio runtime; the accept loop deals
//! new sessions to them in turn, and a session stays on its thread for its whole life.
//!
//! Why not tokio's work-stealing pool: a relayed round trip is a few microseconds of work
//! between two socket wake-ups, and on the pool those wake-ups often land on another
//! thread (futex calls, cache misses, the scheduler's bookkeeping). Measured on a 2-core
//! machine (see the README's performance section), pinned single-threaded runtimes used
//! less proxy CPU per transaction for the same throughput. PgBouncer and pgcat reach the
//! same place from the other side: one event loop per thread (or process).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The session threads of one server.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    threads: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workers {
    /// `count` session threads: 1 runs sessions on the calling runtime itself (no thread is
    /// started), N > 1 starts N threads, 0 one per CPU.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let stop = CancellationToken::new();
        if count == 1 {
            return Ok(Workers {
                handles: vec![Handle::current()],
                next: AtomicUsize::new(0),
                threads: Vec::new(),
                stop,
            });
        }
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("fencegate-worker-{i}"))
                    .spawn(move || runtime.block_on(stop.cancelled()))?,
            );
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            threads,
            stop,
        })
    }

    /// How many session threads there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Always false: there is at least one session thread.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs a session on the next thread in turn, tracked by `tracker`.
    pub fn spawn<F>(&self, tracker: &TaskTracker, session: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        tracker.spawn_on(session, &self.handles[i]);
    }

    /// Stops the threads; call once every session has ended.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let threads = self.threads;
        if threads.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_are_dealt_to_every_thread_and_the_threads_stop() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(workers.len(), 3);
        let tracker = TaskTracker::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..6 {
            let tx = tx.clone();
            workers.spawn(&tracker, async move {
                let _ = tx.send(std::thread::current().name().map(str::to_string));
            });
        }
        drop(tx);
        tracker.close();
        tracker.wait().await;
        let mut names = Vec::new();
        while let Some(name) = rx.recv().await {
            names.push(name.unwrap_or_default());
        }
        names.sort();
        names.dedup();
        assert_eq!(
            names,
            [
                "fencegate-worker-0",
                "fencegate-worker-1",
                "fencegate-worker-2"
            ]
        );
        workers.shutdown().await;
    }

    #[tokio::test]
    async fn one_thread_means_the_calling_runtime() {
        let workers = Workers::start(1).unwrap();
        let tracker = TaskTracker::new();
        let here = std::thread::current().id();
        let (tx, rx) = tokio::sync::oneshot::channel();
        workers.spawn(&tracker, async move {
            let _ = tx.send(std::thread::current().id());
        });
        assert_eq!(rx.await.unwrap(), here);
        workers.shutdown().await;
    }
}
