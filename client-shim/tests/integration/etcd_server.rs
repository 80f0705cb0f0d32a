//! A throwaway single-member etcd server from the installed `etcd` binary (Debian's
//! `etcd-server` package): its own temporary directory, free loopback ports, readiness by
//! polling `/health`, and stopped by its PID on drop. A small watchdog process stops it if
//! the test process dies first.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fencegate_tests::cluster::free_port;

/// Environment variable naming the etcd binary to use instead of the one on `PATH`.
pub const ETCD_BIN_ENV: &str = "FENCEGATE_ETCD_BIN";

const WATCHDOG: &str = r#"
test=$1; etcd=$2; dir=$3
while kill -0 "$test" 2>/dev/null; do
    kill -0 "$etcd" 2>/dev/null || exit 0
    sleep 1
done
kill -9 "$etcd" 2>/dev/null
rm -rf "$dir"
"#;

/// A running etcd; killed and its directory removed on drop.
pub struct EtcdServer {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl EtcdServer {
    /// Starts etcd on free ports and waits until `/health` says it is healthy.
    pub async fn start() -> EtcdServer {
        let bin = find_etcd();
        for _ in 0..5 {
            let mut server = EtcdServer::spawn(&bin);
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("etcd ({}) did not start:\n{log}", bin.display()),
            }
        }
        panic!("etcd: no free ports after 5 tries");
    }

    /// The client URL, `http://127.0.0.1:port`.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn spawn(bin: &PathBuf) -> EtcdServer {
        let dir = tempfile::Builder::new()
            .prefix("fencegate-etcd-")
            .tempdir()
            .expect("etcd temp dir");
        let client = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let child = Command::new(bin)
            .args(["--name", "fencegate-test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("fencegate-test={peer}")])
            // Short raft timers: a single member elects itself at once, and the shortest
            // lease etcd grants (1.5 election timeouts, rounded up) is one second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let watchdog = Command::new("sh")
            .args(["-c", WATCHDOG, "fencegate-etcd-watchdog"])
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd watchdog");
        // Not waited for: it exits by itself once etcd is gone.
        drop(watchdog);
        EtcdServer {
            child,
            dir,
            url: client,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Polls `/health` every 50 ms for up to a minute; `Err(log)` when etcd exits or
    /// never gets healthy.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("etcd exited ({status}):\n{}", self.log()));
            }
            if let Ok(response) = http.get(format!("{}/health", self.url)).send().await {
                if response
                    .text()
                    .await
                    .unwrap_or_default()
                    .contains(r#""health":"true""#)
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(format!("etcd not healthy after 60 s:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The etcd binary: `$FENCEGATE_ETCD_BIN`, else `etcd` on `PATH`, else `/usr/bin/etcd`.
/// Panics with what to install when there is none.
fn find_etcd() -> PathBuf {
    if let Some(bin) = std::env::var_os(ETCD_BIN_ENV) {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "{ETCD_BIN_ENV}={} is not a file",
            bin.display()
        );
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("etcd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the etcd server binary is missing: install Debian's etcd-server package \
                 (`apt-get install etcd-server`, as .ci/run does) or set {ETCD_BIN_ENV} to an \
                 etcd 3.4+ binary"
            )
        })
}
