//! A throwaway PostgreSQL cluster started from the installed server binaries, for
//! `fencegate demo` and the test harness.
//!
//! Binaries are found in `$FENCEGATE_PG_BINDIR`, `pg_config --bindir`, the newest
//! `/usr/lib/postgresql/<version>/bin`, or next to `initdb` on `PATH`. PostgreSQL refuses to
//! run as root, so as root the server programs run through `runuser` as the `postgres` system
//! user (or a `fencegate-pg` system user created for the purpose). The cluster listens on a
//! free loopback port with trust authentication for the superuser `postgres`, and is removed
//! on drop; a small watchdog process also removes it if this process dies first.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Environment variable naming the directory with the PostgreSQL server binaries.
pub const BINDIR_ENV: &str = "FENCEGATE_PG_BINDIR";
/// The cluster's superuser (trust authentication on loopback).
pub const SUPERUSER: &str = "postgres";
const FALLBACK_USER: &str = "fencegate-pg";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a throwaway cluster could not be made or run.
#[derive(Debug, thiserror::Error)]
pub enum PgTempError {
    /// No server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found. Install them \
         (Debian/Ubuntu: `apt-get install postgresql`) or set {BINDIR_ENV} to the directory \
         that holds initdb"
    )]
    NotInstalled,
    /// A program failed.
    #[error("{program} failed: {detail}")]
    Failed {
        /// The program.
        program: String,
        /// Its status and output.
        detail: String,
    },
    /// File system or process error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The located installation and the user that runs its server programs.
#[derive(Debug, Clone)]
pub struct PgBin {
    /// Directory with `initdb`, `pg_ctl`, `postgres` and usually the client tools.
    pub dir: PathBuf,
    /// When running as root: the unprivileged user that runs the server.
    pub run_as: Option<String>,
}

impl PgBin {
    /// Locates the installation (and, as root, the user to run it as).
    pub fn find() -> Result<PgBin, PgTempError> {
        let dir = find_bindir().ok_or(PgTempError::NotInstalled)?;
        let run_as = if is_root() {
            Some(unprivileged_user()?)
        } else {
            None
        };
        Ok(PgBin { dir, run_as })
    }

    /// A command for a server-side program, run as the unprivileged user when root.
    pub fn server(&self, program: &str) -> Command {
        let path = self.dir.join(program);
        match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }

    /// A client tool from the server's directory when present (matching versions), else
    /// the bare name for `PATH`.
    pub fn tool(&self, program: &str) -> PathBuf {
        let path = self.dir.join(program);
        if path.exists() {
            path
        } else {
            PathBuf::from(program)
        }
    }

    /// Gives `path` (recursively) to the server user, when there is one.
    pub fn chown_to_server_user(&self, path: &Path) -> Result<(), PgTempError> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(path)
            .output()?;
        check("chown", out).map(drop)
    }
}

/// A running throwaway cluster; stopped and removed on drop.
#[derive(Debug)]
pub struct TempCluster {
    bin: PgBin,
    dir: PathBuf,
    port: u16,
}

impl TempCluster {
    /// Runs initdb into a new temporary directory, appends `settings` to postgresql.conf and
    /// writes `hba` as pg_hba.conf (None: trust for everyone on loopback and the socket),
    /// then starts the server on a free port and waits until it accepts logins.
    pub fn start(
        bin: PgBin,
        settings: &str,
        hba: Option<&str>,
    ) -> Result<TempCluster, PgTempError> {
        let dir = make_dir()?;
        bin.chown_to_server_user(&dir)?;
        let mut cluster = TempCluster { bin, dir, port: 0 };
        spawn_watchdog(&cluster.bin, &cluster.dir)?;
        cluster.initdb(settings, hba)?;
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    /// Copies a running `primary` with `pg_basebackup -R` (streaming replication, the WAL
    /// streamed along) into a new temporary directory, appends `settings` to the copy's
    /// postgresql.conf, and starts it as a hot standby on a free port. The primary's
    /// pg_hba.conf must let the superuser connect for replication from loopback.
    pub fn start_standby(
        primary: &TempCluster,
        settings: &str,
    ) -> Result<TempCluster, PgTempError> {
        let dir = make_dir()?;
        primary.bin.chown_to_server_user(&dir)?;
        let mut standby = TempCluster {
            bin: primary.bin.clone(),
            dir,
            port: 0,
        };
        spawn_watchdog(&standby.bin, &standby.dir)?;
        let out = standby
            .server_command("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                SUPERUSER,
            ])
            .arg("-D")
            .arg(standby.data())
            .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"])
            .output()?;
        check("pg_basebackup", out)?;
        let conf = format!(
            "unix_socket_directories = '{}'
{settings}
",
            standby.dir.display()
        );
        append(&standby.data().join("postgresql.conf"), &conf)?;
        standby.start_on_free_port()?;
        Ok(standby)
    }

    /// Promotes a standby to primary and waits until it is one.
    pub fn promote(&self) -> Result<(), PgTempError> {
        check("pg_ctl promote", self.pg_ctl(&["promote", "-w"])?).map(drop)
    }

    /// Stops the server as a crash would (`pg_ctl -m immediate`): no checkpoint, sessions
    /// cut off; a later start recovers from the WAL.
    pub fn crash(&self) -> Result<(), PgTempError> {
        check(
            "pg_ctl stop -m immediate",
            self.pg_ctl(&["stop", "-m", "immediate", "-w"])?,
        )
        .map(drop)
    }

    /// The binaries this cluster runs.
    pub fn bin(&self) -> &PgBin {
        &self.bin
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (data directory in `data/`, log in `postgres.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A connection URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Stops the server (fast shutdown: sessions are terminated).
    pub fn stop(&self) -> Result<(), PgTempError> {
        check("pg_ctl stop", self.pg_ctl(&["stop", "-m", "fast", "-w"])?).map(drop)
    }

    /// Starts the stopped server again on the same port.
    pub fn start_again(&self) -> Result<(), PgTempError> {
        check("pg_ctl start", self.pg_ctl_start()?)?;
        self.wait_ready()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn initdb(&self, settings: &str, hba: Option<&str>) -> Result<(), PgTempError> {
        let out = self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data())
            .args([
                "-U",
                SUPERUSER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()?;
        check("initdb", out)?;
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n{settings}\n",
            self.dir.display()
        );
        append(&self.data().join("postgresql.conf"), &conf)?;
        let hba = hba.unwrap_or("local all all trust\nhost all all 127.0.0.1/32 trust\n");
        std::fs::write(self.data().join("pg_hba.conf"), hba)?;
        Ok(())
    }

    fn start_on_free_port(&mut self) -> Result<(), PgTempError> {
        for _ in 0..5 {
            self.port = free_port()?;
            let out = self.pg_ctl_start()?;
            if out.status.success() {
                return self.wait_ready();
            }
            if !self.log().contains("could not bind") {
                return check("pg_ctl start", out).map(drop);
            }
        }
        Err(PgTempError::Failed {
            program: "pg_ctl start".into(),
            detail: "no free port after 5 tries".into(),
        })
    }

    fn pg_ctl_start(&self) -> Result<Output, PgTempError> {
        let log = self.dir.join("postgres.log");
        let opts = format!("-p {}", self.port);
        let timeout = START_TIMEOUT.as_secs().to_string();
        let log = log.to_string_lossy().into_owned();
        self.pg_ctl(&["start", "-w", "-t", &timeout, "-o", &opts, "-l", &log])
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<Output, PgTempError> {
        Ok(self
            .server_command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(args)
            .output()?)
    }

    fn server_command(&self, program: &str) -> Command {
        let mut cmd = self.bin.server(program);
        cmd.current_dir(&self.dir);
        cmd
    }

    /// Polls until a TCP connection to the port succeeds and `pg_isready` agrees.
    fn wait_ready(&self) -> Result<(), PgTempError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = Command::new(self.bin.tool("pg_isready"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    SUPERUSER,
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(PgTempError::Failed {
                    program: "pg_isready".into(),
                    detail: format!("server not ready after {START_TIMEOUT:?}:\n{}", self.log()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port that was free when asked.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// True when the effective user is root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

fn check(program: &str, out: Output) -> Result<Output, PgTempError> {
    if out.status.success() {
        return Ok(out);
    }
    Err(PgTempError::Failed {
        program: program.to_string(),
        detail: format!(
            "{}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(text.as_bytes())
}

fn make_dir() -> std::io::Result<PathBuf> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fencegate-pg-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Waits while this process lives, then stops the cluster and removes its directory; ends
/// by itself when the directory is removed first (normal drop).
const WATCHDOG: &str = r#"
pid=$1; dir=$2; shift 2
while kill -0 "$pid" 2>/dev/null && [ -d "$dir" ]; do sleep 1; done
if [ -d "$dir" ]; then
    "$@" stop -D "$dir/data" -m immediate -w >/dev/null 2>&1
    rm -rf "$dir"
fi
"#;

fn spawn_watchdog(bin: &PgBin, dir: &Path) -> std::io::Result<()> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .arg("fencegate-pg-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir);
    if let Some(user) = &bin.run_as {
        cmd.args(["runuser", "-u", user, "--"]);
    }
    cmd.arg(bin.dir.join("pg_ctl"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    // Dropping the handle neither kills nor waits for it.
    drop(cmd.spawn()?);
    Ok(())
}

fn has_initdb(dir: &Path) -> bool {
    dir.join("initdb").is_file()
}

fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        let dir = PathBuf::from(dir);
        return has_initdb(&dir).then_some(dir);
    }
    pg_config_bindir()
        .or_else(newest_debian_bindir)
        .or_else(path_bindir)
}

fn pg_config_bindir() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    (out.status.success() && has_initdb(&dir)).then_some(dir)
}

fn newest_debian_bindir() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: f64 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_initdb(&bin).then_some((version, bin))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, bin)| bin)
}

fn path_bindir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .find(|dir| has_initdb(dir))
        .map(|dir| {
            // Follow a symlinked initdb to the real installation, where the other tools live.
            let real = std::fs::canonicalize(dir.join("initdb")).unwrap_or(dir.join("initdb"));
            real.parent().map(Path::to_path_buf).unwrap_or(dir)
        })
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .args(["-u", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn unprivileged_user() -> Result<String, PgTempError> {
    if user_exists("postgres") {
        return Ok("postgres".to_string());
    }
    if !user_exists(FALLBACK_USER) {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
            ])
            .arg(FALLBACK_USER)
            .output()?;
        if !user_exists(FALLBACK_USER) {
            check("useradd", out)?;
        }
    }
    Ok(FALLBACK_USER.to_string())
}
