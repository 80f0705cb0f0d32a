//! Proxy configuration: one serde struct, its documented defaults, and `validate`.
//!
//! Values come from three places, highest precedence first: command-line flags,
//! `FENCEGATE_*` environment variables (both handled by clap in `main.rs`), and an optional
//! TOML file named with `--config`. This module owns the file format and the checks; it does
//! no I/O except reading the file it is asked to read, and depends on no other module of the
//! crate: every other room may read it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod hosts;
pub use hosts::{
    parse_host, parse_hosts, ServerRole, SynchronousReplication, TargetSessionAttrs, UpstreamAddr,
};

/// Which statements carrying a token are checked (`--fence-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FenceMode {
    /// Every statement that touches data, reads included (the default; required for safe
    /// read-modify-write across transactions).
    #[default]
    All,
    /// Only statements that may write. Faster, but a newer holder's first read no longer
    /// fences out an older holder: read-modify-write across transactions can lose updates.
    Writes,
}

/// Default listen address (the port PgBouncer users expect).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
/// Most hosts `upstream` may list.
pub const MAX_UPSTREAM_HOSTS: usize = 64;
/// Default upstream PostgreSQL address.
pub const DEFAULT_UPSTREAM: &str = "127.0.0.1:5432";
/// Default cap on concurrently served client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Default cap on connections that have not yet sent their startup packet.
pub const DEFAULT_MAX_STARTUP_CONNECTIONS: usize = 256;
/// Default largest protocol message accepted after authentication: PostgreSQL's own limit
/// for a single message (1 GiB - 1), so nothing the server accepts is refused by the proxy.
/// Memory is reserved as bytes arrive, never from the length header.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = (1 << 30) - 1;
/// Default memory for unfinished client messages across all sessions: 256 MiB.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 256 << 20;
/// Default time allowed to establish the upstream TCP (and TLS) connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time open sessions get to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Default time a newer lock holder waits behind an older holder's open transaction before
/// the proxy ends that transaction.
pub const DEFAULT_PREEMPT_GRACE: Duration = Duration::from_secs(5);
/// Default number of session threads (see [`Config::worker_threads`]).
pub const DEFAULT_WORKER_THREADS: usize = 1;

/// Largest message accepted from the server: what the protocol's length field allows. The
/// limit that protects the proxy is `max_message_size`, on client input; result rows are
/// the server's to size (memory still grows only as their bytes arrive).
pub const MAX_SERVER_MESSAGE: usize = i32::MAX as usize;

/// Largest startup-phase packet (StartupMessage, SSLRequest, CancelRequest), as in PostgreSQL.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Longest Unix-domain socket path Linux takes (`sun_path` is 108 bytes, NUL included).
pub const MAX_SOCKET_PATH: usize = 107;
/// Largest message a client may send before authentication completes (PasswordMessage,
/// SASL and GSS responses); PostgreSQL caps auth tokens at 65535 bytes.
pub const MAX_AUTH_MESSAGE: usize = 65_540;

/// How the proxy talks TLS to the upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Plain TCP (the default; the usual setup for a proxy beside its database).
    #[default]
    Disable,
    /// Use TLS when the server offers it, plain TCP otherwise; no certificate check.
    Prefer,
    /// Require TLS; do not check the certificate (libpq's `sslmode=require`).
    Require,
    /// Require TLS and check the certificate chain against `upstream_ca` and the host name.
    VerifyFull,
}

/// Whether the proxy lets through a login the server accepts without asking for any
/// password (`trust`, `peer`, `ident`). fencegate relays authentication and does not
/// authenticate clients itself, so such a login is open to every client that reaches
/// `listen`, under any role name it gives: the server grants it because of where the
/// *proxy's* connection comes from (loopback, a socket, fencegate's operating-system user
/// for `peer`), not because of who the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    /// Let a passwordless login through only to a client that connected from loopback
    /// (which could reach a loopback-trusting server itself), over a TCP upstream; refuse
    /// it to every other client, and over a Unix-domain socket (where `peer` would judge
    /// fencegate's operating-system user, not the client's).
    #[default]
    Auto,
    /// Refuse every login the server accepts without a password exchange.
    Required,
    /// Let every login through as the server decides (for `trust` test setups).
    Any,
}

/// The proxy's settings. Every field has a documented default; unknown keys are an error.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address clients connect to. Default `127.0.0.1:6432`.
    pub listen: SocketAddr,
    /// Upstream PostgreSQL servers, tried in order: `host:port`, `host` (port 5432), or a
    /// Unix-domain socket directory `/dir` or `/dir:port`, separated by commas as libpq
    /// writes them (`h1:5432,h2:5432`), or as a TOML array (see [`Config::upstream_hosts`]).
    /// Default `127.0.0.1:5432`.
    #[serde(deserialize_with = "hosts::string_or_list")]
    pub upstream: String,
    /// Which server a new session uses, as libpq's `target_session_attrs`: the first host
    /// of `upstream` that matches. Default `read-write` (fences are raised on the primary);
    /// libpq's default is `any`.
    pub target_session_attrs: TargetSessionAttrs,
    /// Whether a primary must be set up for synchronous replication: `ignore` (default),
    /// `warn`, `require`.
    pub synchronous_replication: SynchronousReplication,
    /// Maximum concurrent client sessions (connections past their startup packet); one
    /// more is refused with 53300. Default 1000.
    pub max_connections: usize,
    /// Maximum connections still before their startup packet (or TLS handshake), kept
    /// apart from `max_connections`; when full, the oldest is closed to make room, so
    /// silent sockets cannot keep real clients out. Default 256.
    pub max_startup_connections: usize,
    /// Largest message a client may send after authentication, in bytes. Default 1 GiB - 1.
    pub max_message_size: usize,
    /// Bytes all sessions together may hold in unfinished client messages, beyond 256 KiB
    /// each; a session whose message does not fit ends with FATAL 53200. Default 256 MiB.
    pub max_buffered_bytes: usize,
    /// PEM certificate chain for TLS towards clients. TLS is offered only when both
    /// `tls_cert` and `tls_key` are set; otherwise SSLRequest is answered `N`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// TLS towards the upstream server. Default `disable`.
    pub upstream_tls: UpstreamTls,
    /// PEM CA bundle used by `upstream_tls = "verify-full"`.
    pub upstream_ca: Option<PathBuf>,
    /// Which logins the server may accept without a password exchange. Default `auto`.
    pub upstream_auth: UpstreamAuth,
    /// Upstream connect timeout. Default 10 s. In TOML: `connect_timeout = "10s"`.
    #[serde(with = "duration_str")]
    pub connect_timeout: Duration,
    /// How long open sessions may run after a shutdown signal before they are closed.
    /// Default 30 s.
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// Which statements carrying a token are checked: `all` (default; reads included) or
    /// `writes` (statements that may write only; see the README for what that gives up).
    pub fence_mode: FenceMode,
    /// How long a newer holder waits behind an older holder's open transaction before that
    /// transaction is ended. Default 5 s; `0s` never ends it.
    #[serde(with = "duration_str")]
    pub preempt_grace: Duration,
    /// Tables that may only be written by statements carrying a token (unqualified names,
    /// matched case-insensitively); a write without one is rejected with 55Z02.
    pub require_token_tables: Vec<String>,
    /// Threads that run sessions, each a single-threaded event loop that keeps its
    /// sessions (see the `workers` module): 1 runs everything on one thread, 0 one per CPU.
    /// Default 1 (see the README's performance section for the measurements behind it).
    pub worker_threads: usize,
    /// Where to serve Prometheus metrics (`GET /metrics`); none by default.
    pub metrics_listen: Option<SocketAddr>,
    /// What is logged: a `tracing` filter such as `info` or `fencegate=debug,info`. Default:
    /// the `FENCEGATE_LOG` environment variable, else `info`.
    pub log_level: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("constant address parses"),
            upstream: DEFAULT_UPSTREAM.to_string(),
            target_session_attrs: TargetSessionAttrs::ReadWrite,
            synchronous_replication: SynchronousReplication::Ignore,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_startup_connections: DEFAULT_MAX_STARTUP_CONNECTIONS,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            tls_cert: None,
            tls_key: None,
            upstream_tls: UpstreamTls::Disable,
            upstream_ca: None,
            upstream_auth: UpstreamAuth::Auto,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            fence_mode: FenceMode::All,
            preempt_grace: DEFAULT_PREEMPT_GRACE,
            require_token_tables: Vec::new(),
            worker_threads: DEFAULT_WORKER_THREADS,
            metrics_listen: None,
            log_level: None,
        }
    }
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `log_level` is not a tracing filter.
    #[error("log_level {level:?}: {source}")]
    LogLevel {
        /// The value given.
        level: String,
        /// Why it does not parse.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The named config file could not be read (a named file that is missing is an error).
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this struct.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range or settings contradict each other.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Parses TOML text into a configuration (defaults for absent keys).
    pub fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and parses a TOML config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Checks ranges and combinations. Call after all sources are merged.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: &str| Err(ConfigError::Invalid(s.to_string()));
        if self.max_connections == 0 {
            return invalid("max_connections must be at least 1");
        }
        if let Some(level) = &self.log_level {
            if let Err(source) = tracing_subscriber::EnvFilter::try_new(level) {
                return Err(ConfigError::LogLevel {
                    level: level.clone(),
                    source,
                });
            }
        }
        if self.max_startup_connections == 0 {
            return invalid("max_startup_connections must be at least 1");
        }
        if self.worker_threads > 1024 {
            return invalid("worker_threads must be at most 1024 (0 means one per CPU)");
        }
        if self.max_buffered_bytes < 1 << 20 {
            return invalid("max_buffered_bytes must be at least 1048576 bytes (1 MiB)");
        }
        if self.max_message_size < MAX_STARTUP_PACKET {
            return invalid("max_message_size must be at least 10000 bytes");
        }
        if self.max_message_size > i32::MAX as usize {
            return invalid(
                "max_message_size cannot exceed 2147483647 (the protocol's length field)",
            );
        }
        let hosts = self.upstream_hosts().map_err(ConfigError::Invalid)?;
        for host in &hosts {
            match host {
                UpstreamAddr::Unix(_)
                    if matches!(
                        self.upstream_tls,
                        UpstreamTls::Require | UpstreamTls::VerifyFull
                    ) =>
                {
                    return invalid(
                        "PostgreSQL does not use TLS over Unix-domain sockets: upstream_tls must be disable or prefer with a socket directory",
                    );
                }
                UpstreamAddr::Unix(path) if path.as_os_str().len() > MAX_SOCKET_PATH => {
                    return Err(ConfigError::Invalid(format!(
                        "the upstream socket path {} is longer than the {MAX_SOCKET_PATH} bytes a Unix-domain socket address holds",
                        path.display()
                    )));
                }
                _ => {}
            }
        }
        if hosts.len() > MAX_UPSTREAM_HOSTS {
            return invalid("upstream lists more than 64 hosts");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert and tls_key must be set together");
        }
        if self.upstream_tls == UpstreamTls::VerifyFull && self.upstream_ca.is_none() {
            return invalid("upstream_tls = verify-full needs upstream_ca");
        }
        if self.connect_timeout.is_zero() {
            return invalid("connect_timeout must be positive");
        }
        if self.preempt_grace > Duration::from_secs(24 * 3600) {
            return invalid("preempt_grace must be at most 24h");
        }
        if !self.preempt_grace.is_zero() && self.preempt_grace < Duration::from_millis(100) {
            return invalid("preempt_grace must be 0 (off) or at least 100ms");
        }
        Ok(())
    }

    /// The upstream servers, in the order to try them (see [`hosts::parse_host`] for
    /// what each entry means); an error names the entry that is none of those.
    pub fn upstream_hosts(&self) -> Result<Vec<UpstreamAddr>, String> {
        parse_hosts(&self.upstream)
    }

    /// Whether a login the server accepts without a password exchange is refused to a
    /// client connected from `client` (see [`UpstreamAuth`]).
    /// `host` is the server the session goes to.
    pub fn requires_upstream_auth(&self, client: IpAddr, host: &UpstreamAddr) -> bool {
        match self.upstream_auth {
            UpstreamAuth::Required => true,
            UpstreamAuth::Any => false,
            UpstreamAuth::Auto => matches!(host, UpstreamAddr::Unix(_)) || !is_loopback(client),
        }
    }
}

/// Parses durations written as `250ms`, `10s`, `5m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 10s, 5m"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" | "min" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {text:?} is too long")),
        other => Err(format!("invalid duration unit {other:?} in {text:?}")),
    }
}

mod duration_str {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// True for 127.0.0.0/8, ::1 and those addresses mapped into IPv6 (`::ffff:127.0.0.1`,
/// as a dual-stack listener reports an IPv4 client).
pub fn is_loopback(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn toml_overrides_and_rejects_unknown_keys() {
        let c =
            Config::from_toml("listen = '127.0.0.1:7000'\nconnect_timeout = '250ms'\n").unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.upstream, DEFAULT_UPSTREAM);
        assert!(Config::from_toml("lisen = '127.0.0.1:7000'").is_err());
    }

    #[test]
    fn passwordless_logins_are_for_loopback_clients_over_tcp_by_default() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let tcp = parse_host("db:5432").unwrap();
        let socket = parse_host("/run/postgresql").unwrap();
        let auto = Config::default();
        assert!(auto.requires_upstream_auth(local, &socket));
        assert!(!auto.requires_upstream_auth(local, &tcp));
        assert!(auto.requires_upstream_auth(remote, &tcp));
        for address in ["::1", "::ffff:127.0.0.9", "127.3.2.1"] {
            assert!(!auto.requires_upstream_auth(address.parse().unwrap(), &tcp));
        }
        for address in ["::ffff:192.0.2.7", "2001:db8::1", "0.0.0.0"] {
            assert!(auto.requires_upstream_auth(address.parse().unwrap(), &tcp));
        }
        let any: Config = toml::from_str("upstream = \"/tmp\"\nupstream_auth = \"any\"").unwrap();
        assert!(!any.requires_upstream_auth(remote, &socket));
        let required: Config = toml::from_str("upstream_auth = \"required\"").unwrap();
        assert!(required.requires_upstream_auth(local, &tcp));
    }

    #[test]
    fn a_socket_path_too_long_for_the_kernel_is_refused() {
        let long = Config {
            upstream: format!("/{}", "d".repeat(100)),
            ..Config::default()
        };
        let err = long.validate().unwrap_err().to_string();
        assert!(err.contains("longer than the 107 bytes"), "{err}");
        let short = Config {
            upstream: "/run/postgresql:5433".into(),
            ..Config::default()
        };
        short.validate().unwrap();
    }

    #[test]
    fn validate_catches_contradictions() {
        let c = Config {
            tls_cert: Some("a.pem".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            upstream_tls: UpstreamTls::VerifyFull,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            max_connections: 0,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        // Found by fuzz/ (config target): minutes that overflow a u64 of seconds.
        assert!(parse_duration("1000000000000000000min").is_err());
    }

    #[test]
    fn missing_named_file_is_an_error() {
        assert!(Config::from_file(Path::new("/nonexistent/fencegate.toml")).is_err());
    }

    #[test]
    fn upstream_is_a_list_in_a_string_or_a_toml_array() {
        let c = Config::from_toml(
            "upstream = ['h1:5432', '/run/pg:5433']\ntarget_session_attrs = 'prefer-standby'",
        )
        .unwrap();
        assert_eq!(c.upstream, "h1:5432,/run/pg:5433");
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::PreferStandby);
        assert_eq!(c.upstream_hosts().unwrap().len(), 2);
        c.validate().unwrap();
        let c = Config::from_toml("upstream = 'h1:5432,h2'").unwrap();
        assert_eq!(
            c.upstream_hosts().unwrap()[1],
            parse_host("h2:5432").unwrap()
        );
        assert_eq!(
            Config::default().target_session_attrs,
            TargetSessionAttrs::ReadWrite
        );
        let bad = Config {
            upstream: "h1:5432,h2:x".into(),
            ..Config::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("\"h2:x\""), "{err}");
        let tls_over_unix = Config {
            upstream: "h1:5432,/tmp".into(),
            upstream_tls: UpstreamTls::Require,
            ..Config::default()
        };
        assert!(tls_over_unix.validate().is_err());
        let prefer = Config {
            upstream_tls: UpstreamTls::Prefer,
            ..tls_over_unix
        };
        assert!(prefer.validate().is_ok());
    }
}
