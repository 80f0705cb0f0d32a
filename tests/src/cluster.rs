//! A throwaway PostgreSQL cluster for tests, with one test user per authentication method.
//!
//! Built on [`fencegate::demo::pgtemp::TempCluster`] (initdb into a temporary directory, `pg_ctl`
//! on a free loopback port, run as an unprivileged user when the tests run as root, and a
//! watchdog process that removes the cluster when the test process is gone, however it
//! ended). Each test binary shares one cluster ([`Cluster::shared`], started on first use)
//! and each test takes a fresh database from [`Cluster::create_database`], so tests run in
//! parallel threads without seeing each other's tables. Tests that stop or restart Postgres
//! start a private cluster with [`Cluster::start`], which is stopped and removed on `Drop`.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use fencegate::demo::pgtemp::TempCluster;

use crate::endpoint::{run, Endpoint};
use crate::pgbin::PgBin;

/// Superuser created by initdb (trust authentication).
pub const SUPERUSER: &str = "postgres";
/// A login role authenticated by `trust`.
pub const TRUST_USER: &str = "trust_user";
/// A login role authenticated by `md5`.
pub const MD5_USER: &str = "md5_user";
/// Password of [`MD5_USER`].
pub const MD5_PASSWORD: &str = "md5-secret";
/// A login role authenticated by `scram-sha-256`.
pub const SCRAM_USER: &str = "scram_user";
/// Password of [`SCRAM_USER`].
pub const SCRAM_PASSWORD: &str = "scram-secret";
/// A login role authenticated by `password` (cleartext over the wire).
pub const PASSWORD_USER: &str = "password_user";
/// Password of [`PASSWORD_USER`].
pub const PASSWORD_PASSWORD: &str = "cleartext-secret";

/// Settings added to the throwaway cluster's own (speed over durability).
const SETTINGS: &str = "
max_connections = 200
shared_buffers = 32MB
lc_messages = 'C'
";

const PG_HBA: &str = "
# TYPE  DATABASE  USER           ADDRESS       METHOD
local   all       scram_user                   scram-sha-256
local   all       all                          trust
host    replication all          127.0.0.1/32  trust
host    all       md5_user       127.0.0.1/32  md5
host    all       scram_user     127.0.0.1/32  scram-sha-256
host    all       password_user  127.0.0.1/32  password
host    all       all            127.0.0.1/32  trust
";

const CREATE_USERS: &str = "
CREATE ROLE trust_user LOGIN;
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'md5-secret';
SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_user LOGIN PASSWORD 'scram-secret';
CREATE ROLE password_user LOGIN PASSWORD 'cleartext-secret';
";

/// A running PostgreSQL cluster in a temporary directory.
#[derive(Debug)]
pub struct Cluster {
    inner: TempCluster,
    next_db: AtomicU32,
}

impl Cluster {
    /// The cluster shared by all tests of this binary, started on first use. It is never
    /// dropped; the watchdog stops it when the process ends.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(Cluster::start)
    }

    /// Creates and starts a private cluster; it is stopped and deleted on `Drop`.
    pub fn start() -> Cluster {
        Cluster::start_with("")
    }

    /// A private cluster with `settings` added to the usual ones (e.g. replication
    /// settings); stopped and deleted on `Drop`.
    pub fn start_with(settings: &str) -> Cluster {
        let settings = format!("{SETTINGS}\n{settings}");
        let inner = TempCluster::start(PgBin::get().clone(), &settings, Some(PG_HBA))
            .unwrap_or_else(|e| panic!("cannot start a throwaway PostgreSQL: {e}"));
        let cluster = Cluster {
            inner,
            next_db: AtomicU32::new(0),
        };
        cluster.execute("postgres", CREATE_USERS);
        cluster
    }

    /// A hot standby of this cluster (`pg_basebackup -R`, streaming replication), with
    /// `settings` added to the copied configuration; stopped and deleted on `Drop`.
    pub fn standby(&self, settings: &str) -> Cluster {
        let inner = TempCluster::start_standby(&self.inner, settings)
            .unwrap_or_else(|e| panic!("cannot start a standby: {e}\n{}", self.log()));
        Cluster {
            inner,
            next_db: AtomicU32::new(0),
        }
    }

    /// Promotes this standby to primary; returns when it accepts writes.
    pub fn promote(&self) {
        self.or_fail(self.inner.promote());
    }

    /// Stops the server as a crash would (`pg_ctl -m immediate`).
    pub fn crash(&self) {
        self.or_fail(self.inner.crash());
    }

    /// The value of `result`, or a failed test with the error and the server log.
    fn or_fail<T, E: std::fmt::Display>(&self, result: Result<T, E>) -> T {
        result.unwrap_or_else(|e| panic!("{e}\n{}", self.log()))
    }

    /// The TCP port Postgres listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.inner.port()
    }

    /// Where clients reach Postgres directly.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::loopback(self.port())
    }

    /// The cluster's directory (data, log, socket).
    pub fn dir(&self) -> &Path {
        self.inner.dir()
    }

    /// The server log so far, for failure messages.
    pub fn log(&self) -> String {
        self.inner.log()
    }

    /// A tokio-postgres URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        self.inner.url(database)
    }

    /// Creates a fresh, empty database (from `template0`) whose name starts with `prefix`,
    /// and returns its name.
    pub fn create_database(&self, prefix: &str) -> String {
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        let name = format!("{clean}_{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        self.execute(
            "postgres",
            &format!("CREATE DATABASE \"{name}\" TEMPLATE template0"),
        );
        name
    }

    /// Runs SQL as the superuser through `psql` directly against Postgres, stopping at the
    /// first error (which fails the test). Returns unaligned, tuples-only output.
    pub fn execute(&self, db: &str, sql: &str) -> String {
        let mut cmd = self.endpoint().command("psql", SUPERUSER, db);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
        let out = run(&mut cmd, sql.as_bytes());
        assert!(
            out.status.success(),
            "psql failed on {db}: {}\nSQL: {sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("psql output is UTF-8")
    }

    /// Stops the server (fast shutdown: open sessions are terminated) and waits for it.
    pub fn stop(&self) {
        self.or_fail(self.inner.stop());
    }

    /// Starts a stopped server again on the same port and waits until it accepts connections.
    pub fn start_again(&self) {
        self.or_fail(self.inner.start_again());
    }

    /// Stops and starts the server (all sessions are terminated); returns when it is ready.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }
}

/// A loopback port that was free when asked (the listener is dropped before returning).
pub fn free_port() -> u16 {
    fencegate::demo::pgtemp::free_port().expect("bind 127.0.0.1:0")
}
