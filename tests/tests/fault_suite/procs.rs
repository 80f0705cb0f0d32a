//! The suite's moving parts: the lease server the worker processes reach over loopback,
//! the worker processes (`fault_worker`, tests/src/bin/fault_worker.rs), and fencegate
//! itself as a real process (`fencegate serve`), which can be killed and started again on
//! the same port. Every process is stopped by its own handle (its PID), never by name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fencegate_tests::lockset::{Lease, LeaseService};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin};
use tokio::task::JoinHandle;

use crate::record::Shared;

/// How long a process may take to become ready.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How often readiness is looked at again.
const POLL: Duration = Duration::from_millis(10);

/// The in-process lease service ([`LeaseService`]) on a loopback port: one line in, one
/// line out (`acquire R` → `granted R TOKEN TTL_MS`, `release R TOKEN` → `ok`).
pub struct LeaseServer {
    addr: SocketAddr,
    leases: Arc<LeaseService>,
    task: JoinHandle<()>,
}

impl LeaseServer {
    /// Serves leases on `resources` resources lasting `ttl`, tokens from 1.
    pub async fn start(resources: usize, ttl: Duration) -> LeaseServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind leases");
        let addr = listener.local_addr().expect("lease address");
        let leases = Arc::new(LeaseService::new(resources, ttl, 1));
        let service = leases.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_leases(stream, service.clone()));
            }
        });
        LeaseServer { addr, leases, task }
    }

    /// Where workers ask.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The last token granted for `resource`.
    pub fn last_token(&self, resource: usize) -> i64 {
        self.leases.last_token(resource)
    }
}

impl Drop for LeaseServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_leases(stream: tokio::net::TcpStream, leases: Arc<LeaseService>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let reply = match parts.as_slice() {
            ["acquire", r] => {
                let r: usize = r.parse().expect("lease resource");
                let lease = leases.acquire(r).await;
                let left = lease.expires.saturating_duration_since(Instant::now());
                format!("granted {r} {} {}\n", lease.token, left.as_millis())
            }
            ["release", r, token] => {
                leases.release(&Lease {
                    resource: r.parse().expect("lease resource"),
                    token: token.parse().expect("lease token"),
                    expires: Instant::now(),
                });
                "ok\n".to_string()
            }
            _ => panic!("lease server: unknown request {line:?}"),
        };
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// What a worker is started with.
pub struct WorkerArgs<'a> {
    /// Its number.
    pub id: usize,
    /// The port it connects to (a relay).
    pub port: u16,
    /// The database.
    pub db: &'a str,
    /// The lease server.
    pub lease: SocketAddr,
    /// Resources to choose from.
    pub resources: usize,
    /// Connections it keeps.
    pub conns: usize,
    /// Whether it attaches its token.
    pub fence: bool,
    /// Its random seed.
    pub seed: u64,
    /// Percent of operations paused past the lease.
    pub pause_pct: u32,
    /// Statement timeout of the worker.
    pub op_timeout: Duration,
}

/// A running worker process; killed on `Drop` if still running.
pub struct WorkerProc {
    id: usize,
    child: Child,
    stdin: ChildStdin,
    reader: JoinHandle<()>,
}

impl WorkerProc {
    /// Starts a worker whose output lines go to `shared`.
    pub fn spawn(args: &WorkerArgs<'_>, shared: Arc<Shared>) -> WorkerProc {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fault_worker"))
            .args([
                "--id",
                &args.id.to_string(),
                "--port",
                &args.port.to_string(),
            ])
            .args(["--db", args.db, "--lease", &args.lease.to_string()])
            .args(["--resources", &args.resources.to_string()])
            .args(["--conns", &args.conns.to_string()])
            .args(["--fence", if args.fence { "on" } else { "off" }])
            .args(["--seed", &args.seed.to_string()])
            .args(["--pause-pct", &args.pause_pct.to_string()])
            .args(["--op-timeout-ms", &args.op_timeout.as_millis().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start fault_worker");
        let stdin = child.stdin.take().expect("worker stdin");
        let stdout = child.stdout.take().expect("worker stdout");
        let id = args.id;
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                shared.take(id, &line);
            }
        });
        WorkerProc {
            id,
            child,
            stdin,
            reader,
        }
    }

    /// Sends one command line.
    pub async fn send(&mut self, command: &str) {
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("worker stdin");
        self.stdin.flush().await.expect("worker stdin");
    }

    /// Sends `signal` (`STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("worker running");
        send_signal(pid, signal);
    }

    /// Waits until the kernel shows the process stopped (state `T`).
    pub async fn wait_stopped(&self) {
        let pid = self.child.id().expect("worker running");
        let stat = PathBuf::from(format!("/proc/{pid}/stat"));
        let deadline = Instant::now() + READY_LIMIT;
        while !is_stopped(&stat) {
            assert!(
                Instant::now() < deadline,
                "worker {} never stopped",
                self.id
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Asks the worker to stop and waits for it (and for its last lines).
    pub async fn stop(mut self) {
        let _ = self.send("stop").await;
        let status = tokio::time::timeout(READY_LIMIT, self.child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "worker {} did not stop cleanly: {status:?}",
            self.id
        );
        let _ = (&mut self.reader).await;
    }
}

/// `kill -SIGNAL pid`.
fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// Whether `/proc/PID/stat` says the process is stopped.
fn is_stopped(stat: &Path) -> bool {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // The state follows the command name, which is in parentheses.
    let state = text.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    matches!(state, Some(Some('T' | 't')))
}

/// The `fencegate` binary of this workspace: the one `cargo test --workspace` built (for
/// the proxy's own tests) when it is newer than every source of it, else built now with
/// `cargo build -p fencegate` (once per test process; for `cargo test -p fencegate-tests`).
fn fencegate_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("test binary path");
        // target/debug/deps/<test> → target/debug/fencegate
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("target directory")
            .join("fencegate");
        let workspace = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let sources = [workspace.join("proxy"), workspace.join("Cargo.lock")];
        if built.is_none_or(|built| sources.iter().any(|p| newer_than(p, built))) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
            let status = std::process::Command::new(cargo)
                .args(["build", "--quiet", "-p", "fencegate", "--bin", "fencegate"])
                .current_dir(workspace)
                .status()
                .expect("run cargo build");
            assert!(status.success(), "cargo build -p fencegate: {status}");
        }
        assert!(bin.is_file(), "no fencegate binary at {}", bin.display());
        bin
    })
}

/// Whether `path`, or a file under it (not under `target`), changed after `time`.
fn newer_than(path: &Path, time: std::time::SystemTime) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if meta.is_file() {
        return meta.modified().is_ok_and(|m| m > time);
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return false;
    };
    entries
        .flatten()
        .filter(|e| e.file_name() != "target")
        .any(|e| newer_than(&e.path(), time))
}

/// `fencegate serve` as a process of its own, on a fixed loopback port it keeps across
/// restarts; killed on `Drop`.
pub struct ProxyProc {
    port: u16,
    upstream: SocketAddr,
    grace: Duration,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl ProxyProc {
    /// Starts `fencegate serve` on a free port in front of `upstream`, with preemption
    /// grace `grace`, logging to `log`; returns once it accepts connections.
    pub async fn start(upstream: SocketAddr, grace: Duration, log: PathBuf) -> ProxyProc {
        let mut proxy = ProxyProc {
            port: fencegate_tests::cluster::free_port(),
            upstream,
            grace,
            log,
            child: None,
        };
        proxy.spawn().await;
        proxy
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("proxy log");
        let mut child = std::process::Command::new(fencegate_bin())
            .arg("serve")
            .args(["--listen", &self.addr().to_string()])
            .args(["--upstream", &self.upstream.to_string()])
            .args(["--preempt-grace", &format!("{}ms", self.grace.as_millis())])
            .args(["--shutdown-grace", "1s", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("proxy log"))
            .stderr(log)
            .spawn()
            .expect("start fencegate serve");
        let deadline = Instant::now() + READY_LIMIT;
        while tokio::net::TcpStream::connect(self.addr()).await.is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("fencegate serve exited with {status}:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "fencegate serve never listened");
            tokio::time::sleep(POLL).await;
        }
        self.child = Some(child);
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port; returns once it accepts connections.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Whether the process is still running (it is not after a crash of its own).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        self.kill();
    }
}
