//! PgBouncer (Debian's binary) in front of the test cluster, in transaction mode, on a free
//! loopback port, for the layout fencegate → PgBouncer → PostgreSQL. As root it runs as the
//! `postgres` user (PgBouncer refuses root) through `setpriv`, which execs it, so the child
//! this harness kills is PgBouncer itself.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{free_port, Cluster};
use crate::pgbin::is_root;

/// A running PgBouncer; stopped when dropped.
pub struct PgBouncer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Where Debian installs it.
pub fn binary() -> Option<&'static str> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

impl PgBouncer {
    /// Starts PgBouncer with `pool_mode = transaction` in front of `cluster`.
    pub fn transaction_mode(cluster: &Cluster) -> PgBouncer {
        let bin = binary().expect("PgBouncer is installed (Debian's pgbouncer)");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let ini = dir.path().join("pgbouncer.ini");
        // Trust, but only for the users listed (PgBouncer wants them named).
        std::fs::write(
            dir.path().join("userlist.txt"),
            "\"trust_user\" \"\"\n\"postgres\" \"\"\n",
        )
        .unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host=127.0.0.1 port={upstream}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {dir}/userlist.txt\npool_mode = transaction\n\
                 default_pool_size = 4\nlogfile = {dir}/pgbouncer.log\n\
                 ignore_startup_parameters = extra_float_digits\n",
                upstream = cluster.port(),
                dir = dir.path().display(),
            ),
        )
        .unwrap();
        let mut cmd = if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(chown.success());
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", bin]);
            c
        } else {
            Command::new(bin)
        };
        let child = cmd
            .arg(&ini)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let mut bouncer = PgBouncer {
            child,
            port,
            _dir: dir,
        };
        bouncer.wait_ready();
        bouncer
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("pgbouncer exited: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "pgbouncer did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
