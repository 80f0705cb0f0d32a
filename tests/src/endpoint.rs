//! Where a client connects — Postgres directly or the proxy — and the client programs
//! pointed at it.
//!
//! Client tools get their connection from `PGHOST`/`PGPORT`/`PGUSER`/`PGDATABASE` (the one
//! spelling that `psql`, `pgbench`, `pg_dump` and `pg_isready` all share) after every other
//! inherited `PG*` variable is removed, so a developer's environment cannot change a test.
//! [`run`] waits for a program with a deadline and kills it (by its `Child` handle) if it
//! hangs, so a proxy that stalls fails the test instead of hanging it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pgbin::PgBin;

/// How long a client program may run before it is killed and the test fails.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

/// How often [`run`] looks whether its child has exited.
const CHILD_POLL: Duration = Duration::from_millis(5);

/// A TCP address a PostgreSQL client can connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The address.
    pub addr: SocketAddr,
}

impl Endpoint {
    /// `127.0.0.1:port`.
    pub fn loopback(port: u16) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        }
    }

    /// The host as a string (for libpq and tokio-postgres).
    pub fn host(&self) -> String {
        self.addr.ip().to_string()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A command for the client tool `program` (from the server's bindir when present),
    /// connecting here as `user` to database `db`. No password is set: use `PGPASSWORD` via
    /// `.env()` for password users.
    pub fn command(&self, program: &str, user: &str, db: &str) -> Command {
        let mut cmd = Command::new(PgBin::get().tool(program));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("PGHOST", self.host())
            .env("PGPORT", self.port().to_string())
            .env("PGUSER", user)
            .env("PGDATABASE", db)
            .env("PGPASSFILE", "/nonexistent/fencegate-no-pgpass")
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PSQLRC", "/dev/null")
            .env("LC_ALL", "C");
        cmd
    }

    /// A tokio-postgres configuration connecting here as `user` to database `db`, without
    /// TLS negotiation surprises (the default `prefer` mode is kept: the proxy and the test
    /// cluster both answer `N` unless TLS is configured).
    pub fn pg_config(&self, user: &str, db: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(self.host())
            .port(self.port())
            .user(user)
            .dbname(db)
            .connect_timeout(Duration::from_secs(10));
        config
    }

    /// Logs in (with `password` when given) and returns `current_user`, or the server's
    /// error as `SEVERITY SQLSTATE message`: for tests of authentication outcomes.
    pub async fn login(
        &self,
        user: &str,
        password: Option<&str>,
        db: &str,
    ) -> Result<String, String> {
        let mut config = self.pg_config(user, db);
        if let Some(password) = password {
            config.password(password);
        }
        let (client, connection) =
            config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| match e.as_db_error() {
                    Some(db) => format!("{} {} {}", db.severity(), db.code().code(), db.message()),
                    None => format!("client-side error: {e}"),
                })?;
        tokio::spawn(connection);
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    }

    /// Connects with tokio-postgres (no TLS) and drives the connection on a spawned task.
    pub async fn connect(&self, user: &str, db: &str) -> tokio_postgres::Client {
        let (client, connection) = self
            .pg_config(user, db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {} as {user}/{db}: {e}", self.addr));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended with error: {e}");
            }
        });
        client
    }

    /// Like [`Endpoint::connect`], and keeps every notice the server sends this client
    /// (`SQLSTATE message`), for tests that nothing of the proxy's own work shows.
    pub async fn connect_keeping_notices(
        &self,
        user: &str,
        db: &str,
    ) -> (tokio_postgres::Client, Arc<Mutex<Vec<String>>>) {
        let (client, mut connection) = self
            .pg_config(user, db)
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {} as {user}/{db}: {e}", self.addr));
        let notices = Arc::new(Mutex::new(Vec::new()));
        let kept = notices.clone();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notice(n)) => kept
                        .lock()
                        .unwrap()
                        .push(format!("{} {}", n.code().code(), n.message())),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("connection ended with error: {e}");
                        break;
                    }
                }
            }
        });
        (client, notices)
    }
}

/// Runs `cmd` with `stdin` as its standard input and captures stdout and stderr. Panics if
/// it cannot be started or runs longer than [`TOOL_TIMEOUT`] (it is killed first).
pub fn run(cmd: &mut Command, stdin: &[u8]) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    // A child that exits early closes its stdin: a failed write is not our error.
    let writer = std::thread::spawn(move || drop(input.write_all(&stdin)));
    let stdout = reader(child.stdout.take().expect("piped stdout"));
    let stderr = reader(child.stderr.take().expect("piped stderr"));
    let status = wait_or_kill(&mut child, TOOL_TIMEOUT)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {TOOL_TIMEOUT:?}; killed"));
    writer.join().expect("stdin writer");
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Waits for `child` to exit, at most `timeout`; past it, kills the child (by its handle: it
/// is not reaped yet, so its pid cannot have been reused), reaps it and returns `None`.
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(CHILD_POLL);
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs `cmd` (see [`run`]) and panics with its stderr unless it exits successfully.
pub fn run_ok(cmd: &mut Command, stdin: &[u8]) -> Output {
    let out = run(cmd, stdin);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
