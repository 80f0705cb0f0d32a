//! The `fencegate` command line: parse flags, set up logging, call into the library.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use fencegate::config::FenceMode;
use fencegate::config::{
    parse_duration, Config, SynchronousReplication, TargetSessionAttrs, UpstreamAuth, UpstreamTls,
};
use fencegate::fence::hook::FenceHooks;
use fencegate::fence::plan::FencePolicy;
use fencegate::fence::stats::FenceStats;
use fencegate::metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "fencegate",
    version,
    about = "PostgreSQL proxy that enforces fencing tokens"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in front of a PostgreSQL server.
    Serve(Box<ServeArgs>),
    /// Install or upgrade the `fencegate` schema in one database (idempotent).
    Migrate(MigrateArgs),
    /// Make tables refuse every write in a transaction where no fencing check admitted a
    /// current token: a trigger, so it holds however the write reaches the table, through
    /// the proxy or around it. Without TABLE: list the tables that require a token.
    Require(RequireArgs),
    /// Show each resource's high-water mark, when it last rose, its lease holder, and the
    /// sessions holding its fence lock now (pid, client, state, token, transaction age).
    Fences(FencesArgs),
    /// Start a throwaway PostgreSQL and the proxy, and show a stale lock holder's write
    /// landing directly and rejected through fencegate (exit status 0 when it is).
    Demo,
    /// Ask a running `fencegate serve` for its `/status` on the metrics endpoint: exit
    /// status 0 and one line when it answers 200, else 1 (for container health checks).
    Health(HealthArgs),
}

#[derive(Args)]
struct HealthArgs {
    /// The metrics endpoint serve listens on (0.0.0.0 is asked on 127.0.0.1) [default: the
    /// config file's metrics_listen, else 127.0.0.1:9187].
    #[arg(long, env = "FENCEGATE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// serve's TOML config file, read for its metrics_listen.
    #[arg(long, env = "FENCEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Time the whole exchange may take, e.g. 3s, 500ms [default: 3s].
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
}

#[derive(Args)]
struct MigrateArgs {
    /// The database to install into, e.g. postgres://admin@127.0.0.1:5432/app. Connect
    /// directly to PostgreSQL as a superuser (or a role that may create roles and grant
    /// pg_signal_backend): the schema is then handed to the role `fencegate_owner`.
    #[arg(long, env = "FENCEGATE_DATABASE_URL")]
    database_url: String,
    /// Grant an application role what it needs to use fencing (the schema, check,
    /// check_settings, high_water and the lease functions); repeatable.
    #[arg(long = "grant", value_name = "ROLE")]
    grant: Vec<String>,
}

#[derive(Args)]
struct RequireArgs {
    /// The database, e.g. postgres://admin@127.0.0.1:5432/app: connect directly to
    /// PostgreSQL as the tables' owner or a superuser, after `fencegate migrate`.
    #[arg(long, env = "FENCEGATE_DATABASE_URL")]
    database_url: String,
    /// Take the requirement off the tables instead.
    #[arg(long)]
    remove: bool,
    /// Tables (SQL names: schema.table, quoted for mixed case); their partitions and
    /// inheritance children are included.
    #[arg(value_name = "TABLE")]
    tables: Vec<String>,
}

#[derive(Args)]
struct FencesArgs {
    /// The database, e.g. postgres://monitor@127.0.0.1:5432/app: connect directly to
    /// PostgreSQL as a member of pg_monitor (or a superuser), after `fencegate migrate`.
    #[arg(long, env = "FENCEGATE_DATABASE_URL")]
    database_url: String,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
    /// Only this resource.
    #[arg(value_name = "RESOURCE")]
    resource: Option<String>,
}

/// Every flag can also be set by its `FENCEGATE_*` environment variable or in the TOML file
/// named by `--config` (key = flag name with `_`); flags win over the environment, which
/// wins over the file.
#[derive(Args, Clone)]
struct ServeArgs {
    /// TOML config file; a named file that is missing is an error.
    #[arg(long, env = "FENCEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// Address to accept clients on [default: 127.0.0.1:6432].
    #[arg(long, env = "FENCEGATE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Upstream PostgreSQL servers, tried in order: host:port, host, or a socket directory
    /// /dir[:port], separated by commas (h1:5432,h2:5432) [default: 127.0.0.1:5432].
    #[arg(long, env = "FENCEGATE_UPSTREAM")]
    upstream: Option<String>,
    /// Which server a session uses: any, read-write, read-only, primary, standby or
    /// prefer-standby, as libpq's target_session_attrs [default: read-write].
    #[arg(long, env = "FENCEGATE_TARGET_SESSION_ATTRS", value_enum)]
    target_session_attrs: Option<TargetSessionAttrs>,
    /// On a primary without synchronous replication: ignore, warn, or require (refuse
    /// sessions there) [default: ignore].
    #[arg(long, env = "FENCEGATE_SYNCHRONOUS_REPLICATION", value_enum)]
    synchronous_replication: Option<SynchronousReplication>,
    /// Maximum concurrent client sessions; one more is refused with 53300 [default: 1000].
    #[arg(long, env = "FENCEGATE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Maximum connections before their startup packet, apart from the sessions; when
    /// full the oldest is closed [default: 256].
    #[arg(long, env = "FENCEGATE_MAX_STARTUP_CONNECTIONS")]
    max_startup_connections: Option<usize>,
    /// Largest message accepted after authentication, in bytes [default: 1073741823].
    #[arg(long, env = "FENCEGATE_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Memory all sessions may hold in unfinished client messages, in bytes; a session
    /// whose message does not fit ends with FATAL 53200 [default: 268435456].
    #[arg(long, env = "FENCEGATE_MAX_BUFFERED_BYTES")]
    max_buffered_bytes: Option<usize>,
    /// PEM certificate chain for TLS towards clients (with --tls-key).
    #[arg(long, env = "FENCEGATE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "FENCEGATE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// TLS towards the upstream [default: disable].
    #[arg(long, env = "FENCEGATE_UPSTREAM_TLS", value_enum)]
    upstream_tls: Option<UpstreamTls>,
    /// Logins the server accepts without a password: auto (refused over a Unix socket),
    /// required (always refused) or any [default: auto].
    #[arg(long, env = "FENCEGATE_UPSTREAM_AUTH", value_enum)]
    upstream_auth: Option<UpstreamAuth>,
    /// CA bundle (PEM) for --upstream-tls verify-full.
    #[arg(long, env = "FENCEGATE_UPSTREAM_CA")]
    upstream_ca: Option<PathBuf>,
    /// Upstream connect timeout, e.g. 10s, 500ms [default: 10s].
    #[arg(long, env = "FENCEGATE_CONNECT_TIMEOUT", value_parser = parse_duration)]
    connect_timeout: Option<Duration>,
    /// Time open sessions get to finish after SIGINT/SIGTERM [default: 30s].
    #[arg(long, env = "FENCEGATE_SHUTDOWN_GRACE", value_parser = parse_duration)]
    shutdown_grace: Option<Duration>,
    /// Which statements with a token are checked: all (reads too) or writes [default: all].
    #[arg(long, env = "FENCEGATE_FENCE_MODE", value_enum)]
    fence_mode: Option<FenceMode>,
    /// How long a newer lock holder waits behind an older holder's open transaction before
    /// that transaction is ended; 0s never ends it [default: 5s].
    #[arg(long, env = "FENCEGATE_PREEMPT_GRACE", value_parser = parse_duration)]
    preempt_grace: Option<Duration>,
    /// A table that may only be written with a fencing token (repeatable).
    #[arg(
        long = "require-token-table",
        env = "FENCEGATE_REQUIRE_TOKEN_TABLES",
        value_delimiter = ','
    )]
    require_token_tables: Vec<String>,
    /// Threads running sessions: 1 = a single thread, 0 = one per CPU [default: 1].
    #[arg(long, env = "FENCEGATE_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9187 [default: off].
    #[arg(long, env = "FENCEGATE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// What is logged, as a tracing filter (`info`, `debug`, `fencegate=debug,info`)
    /// [default: $FENCEGATE_LOG, else info].
    #[arg(long, env = "FENCEGATE_LOG_LEVEL")]
    log_level: Option<String>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { c.$field = v; })* };
        }
        set!(
            listen,
            upstream,
            target_session_attrs,
            synchronous_replication,
            max_connections,
            max_startup_connections,
            max_message_size,
            max_buffered_bytes,
            upstream_tls,
            upstream_auth,
            connect_timeout,
            shutdown_grace,
            fence_mode,
            preempt_grace,
            worker_threads
        );
        if !self.require_token_tables.is_empty() {
            c.require_token_tables = self.require_token_tables;
        }
        if self.tls_cert.is_some() {
            c.tls_cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            c.tls_key = self.tls_key;
        }
        if self.upstream_ca.is_some() {
            c.upstream_ca = self.upstream_ca;
        }
        if self.metrics_listen.is_some() {
            c.metrics_listen = self.metrics_listen;
        }
        if self.log_level.is_some() {
            c.log_level = self.log_level;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Changes what is logged while serving.
type LogHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The log filter: `log_level` when set, else `$FENCEGATE_LOG`, else `info`.
fn log_filter(level: Option<&str>) -> EnvFilter {
    match level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|_| "info".into()),
        None => EnvFilter::try_from_env("FENCEGATE_LOG").unwrap_or_else(|_| "info".into()),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (filter, log) = tracing_subscriber::reload::Layer::new(log_filter(None));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    match cli.command {
        Command::Serve(args) => serve(*args, log),
        Command::Migrate(args) => migrate(&args.database_url, &args.grant),
        Command::Require(args) => require(&args),
        Command::Fences(args) => fences(&args),
        Command::Demo => demo(),
        Command::Health(args) => health(&args),
    }
}

fn health(args: &HealthArgs) -> anyhow::Result<()> {
    let unhealthy = |why: &dyn std::fmt::Display| -> ! {
        println!("unhealthy: {why}");
        std::process::exit(1)
    };
    let from_file = match (&args.metrics_listen, &args.config) {
        (None, Some(path)) => {
            Config::from_file(path)
                .unwrap_or_else(|e| unhealthy(&e))
                .metrics_listen
        }
        _ => None,
    };
    let listen = args.metrics_listen.or(from_file).unwrap_or_else(|| {
        let default = fencegate::health::DEFAULT_ADDR;
        default.parse().expect("constant address parses")
    });
    let timeout = args.timeout.unwrap_or(fencegate::health::DEFAULT_TIMEOUT);
    match fencegate::health::check(listen, timeout) {
        Ok(healthy) => println!("healthy: {healthy}"),
        Err(e) => unhealthy(&e),
    }
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    if runtime.block_on(fencegate::demo::run())? {
        Ok(())
    } else {
        std::process::exit(1)
    }
}

fn migrate(url: &str, grant: &[String]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let version = fencegate::schema::migrate::run_granting(url, grant)
            .await
            .context("migration failed")?;
        println!("fencegate schema version {version} is installed");
        for role in grant {
            println!("granted role {role} the use of fencing");
        }
        Ok(())
    })
}

fn fences(args: &FencesArgs) -> anyhow::Result<()> {
    use fencegate::schema::fences;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let resources = runtime.block_on(fences::read(&args.database_url, args.resource.as_deref()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&resources)?);
    } else if resources.is_empty() {
        println!("no resource has been fenced yet");
    } else {
        print!("{}", fences::render_text(&resources));
    }
    Ok(())
}

fn require(args: &RequireArgs) -> anyhow::Result<()> {
    use fencegate::schema::require;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let url = &args.database_url;
        if args.tables.is_empty() {
            anyhow::ensure!(!args.remove, "--remove needs the tables to remove it from");
            for table in require::list(url).await? {
                println!("{table}");
            }
        } else if args.remove {
            for table in require::remove(url, &args.tables).await? {
                println!("table {table} no longer requires a fencing token");
            }
        } else {
            for table in require::install(url, &args.tables).await? {
                println!("table {table} requires a fencing token");
            }
        }
        Ok(())
    })
}

fn serve(args: ServeArgs, log: LogHandle) -> anyhow::Result<()> {
    let config = args.clone().into_config()?;
    if config.log_level.is_some() {
        let _ = log.reload(log_filter(config.log_level.as_deref()));
    }
    // Accepting and signals on this thread; sessions here too with one worker thread, or on
    // their own threads (see `fencegate::workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let stats = Arc::new(FenceStats::default());
        let metrics = Arc::new(Metrics::new(stats.clone()));
        // Before anything is served: from here on SIGHUP reloads instead of terminating.
        let reloads = reload_on_hangup(args, log, metrics.clone())?;
        let listeners = fencegate::server::Listeners::bind(&config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_shutdown(shutdown.clone()));
        let hooks = FenceHooks::new(FencePolicy::from_config(&config), stats);
        fencegate::server::run_reloading(
            listeners,
            Arc::new(config),
            Arc::new(hooks),
            metrics,
            shutdown,
            Some(reloads),
        )
        .await?;
        Ok(())
    })
}

/// On every SIGHUP, reads the settings again (the flags and environment as at start, the
/// config file anew), applies the log level, and hands the rest to the server; settings
/// that do not validate are refused with a log line and the running ones stay.
fn reload_on_hangup(
    args: ServeArgs,
    log: LogHandle,
    metrics: Arc<Metrics>,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<Config>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reading the settings again");
            match args.clone().into_config() {
                Ok(config) => {
                    let _ = log.reload(log_filter(config.log_level.as_deref()));
                    if tx.send(config).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    metrics.reloads_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        error = format!("{e:#}"),
                        "reload refused: the running settings stay"
                    )
                }
            }
        }
    });
    Ok(rx)
}

async fn signal_shutdown(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::parse_from([&["fencegate", "serve"], args].concat());
        match cli.command {
            Command::Serve(args) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn require_takes_tables_and_remove() {
        let cli = Cli::parse_from([
            "fencegate",
            "require",
            "--database-url=postgres://a@h/db",
            "--remove",
            "public.orders",
            "\"Jobs\"",
        ]);
        let Command::Require(args) = cli.command else {
            panic!("not the require command")
        };
        assert_eq!(args.database_url, "postgres://a@h/db");
        assert!(args.remove);
        assert_eq!(args.tables, ["public.orders", "\"Jobs\""]);
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let c = serve_args(&[
            "--listen=127.0.0.1:7001",
            "--upstream=db:5433",
            "--max-connections=7",
            "--max-message-size=20000",
            "--upstream-tls=require",
            "--connect-timeout=3s",
            "--shutdown-grace=4s",
            "--fence-mode=writes",
            "--preempt-grace=250ms",
            "--require-token-table=orders,jobs",
            "--worker-threads=3",
            "--metrics-listen=127.0.0.1:9187",
        ])
        .into_config()
        .unwrap();
        assert_eq!(c.listen.port(), 7001);
        assert_eq!(c.upstream, "db:5433");
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.max_message_size, 20000);
        assert_eq!(c.upstream_tls, UpstreamTls::Require);
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.shutdown_grace, Duration::from_secs(4));
        assert_eq!(c.fence_mode, FenceMode::Writes);
        assert_eq!(c.preempt_grace, Duration::from_millis(250));
        assert_eq!(c.require_token_tables, ["orders", "jobs"]);
        assert_eq!(c.worker_threads, 3);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9187".parse().unwrap()));
    }

    #[test]
    fn flags_override_the_file_and_a_missing_file_is_an_error() {
        let dir = std::env::temp_dir().join(format!("fencegate-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f.toml");
        std::fs::write(&file, "upstream = 'file:1'\nmax_connections = 9\n").unwrap();
        let path = file.to_str().unwrap();
        let c = serve_args(&["--config", path, "--max-connections=3"])
            .into_config()
            .unwrap();
        assert_eq!((c.upstream.as_str(), c.max_connections), ("file:1", 3));
        assert!(serve_args(&["--config", "/nonexistent/x.toml"])
            .into_config()
            .is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
