//! The upstream host list and `target_session_attrs`, as plain data: how `upstream` is
//! spelled (libpq's comma-separated `host:port` list, or a TOML array), what each entry
//! means, and which servers each `target_session_attrs` value accepts. Choosing and
//! connecting to a host is the `upstream` module's business.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

/// Where one upstream server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// `host:port` over TCP (the host is resolved again at each connect).
    Tcp(String),
    /// The path of a Unix-domain socket file.
    Unix(PathBuf),
}

impl UpstreamAddr {
    /// The address as shown in messages, logs and metric labels: `host:port` or the socket
    /// file's path.
    pub fn label(&self) -> String {
        match self {
            UpstreamAddr::Tcp(addr) => addr.clone(),
            UpstreamAddr::Unix(path) => path.display().to_string(),
        }
    }

    /// The host name without port or brackets (the TLS server name), for TCP.
    pub fn host(&self) -> Option<&str> {
        match self {
            UpstreamAddr::Tcp(addr) => {
                let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                Some(host.trim_start_matches('[').trim_end_matches(']'))
            }
            UpstreamAddr::Unix(_) => None,
        }
    }
}

/// Reads one entry of the list: `host:port`, `host` (port 5432), `[v6]:port`, or a socket
/// directory `/dir` or `/dir:port` (the file `<dir>/.s.PGSQL.<port>`, as libpq reads
/// `host=/dir`). `None` when it is none of those.
pub fn parse_host(entry: &str) -> Option<UpstreamAddr> {
    let entry = entry.trim();
    if entry.starts_with('/') {
        let (dir, port) = match entry.rsplit_once(':') {
            Some((dir, port)) => (dir, port.parse::<u16>().ok()?),
            None => (entry, 5432),
        };
        let file = Path::new(dir).join(format!(".s.PGSQL.{port}"));
        return Some(UpstreamAddr::Unix(file));
    }
    let bracketed = entry.starts_with('[');
    match entry.rsplit_once(':') {
        // A bare IPv6 address has colons but no brackets: it needs them and a port.
        Some((host, port)) if !bracketed || host.ends_with(']') => {
            let valid_host = if bracketed {
                host.len() > 2
            } else {
                !host.is_empty() && !host.contains(':')
            };
            (valid_host && !host.contains(',') && port.parse::<u16>().is_ok_and(|p| p > 0))
                .then(|| UpstreamAddr::Tcp(entry.to_string()))
        }
        Some(_) => None,
        None if !entry.is_empty() && !bracketed => Some(UpstreamAddr::Tcp(format!("{entry}:5432"))),
        None => None,
    }
}

/// Reads the whole list (entries separated by commas, in the order to try them).
pub fn parse_hosts(list: &str) -> Result<Vec<UpstreamAddr>, String> {
    list.split(',')
        .map(|entry| {
            parse_host(entry).ok_or_else(|| {
                format!(
                    "upstream entry {:?} must be host:port, host, [v6]:port, or a socket directory /dir or /dir:port",
                    entry.trim()
                )
            })
        })
        .collect()
}

/// Which servers a new session may use, as libpq's `target_session_attrs` defines them.
/// The server's role is read from what it reports at login (`in_hot_standby` and
/// `default_transaction_read_only`, reported by PostgreSQL 14 and later), or asked of an
/// older server with one query ([`crate::session::role_query`]), as libpq does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TargetSessionAttrs {
    /// Any server that accepts the login (libpq's default).
    Any,
    /// A server whose sessions may write: not in hot standby, and
    /// `default_transaction_read_only` off (fencegate's default: fences are raised on the
    /// primary).
    #[default]
    ReadWrite,
    /// A server whose sessions are read-only by default (a standby, or a primary with
    /// `default_transaction_read_only` on).
    ReadOnly,
    /// A server not in hot standby.
    Primary,
    /// A server in hot standby.
    Standby,
    /// A standby when one is up, else any server.
    PreferStandby,
}

/// What a new session does on a primary that is not set up for synchronous replication
/// (`synchronous_standby_names` empty, or `synchronous_commit` `off` or `local` for the
/// session): there a failover can lose admitted raises of the fence
/// (docs/high-availability.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SynchronousReplication {
    /// Nothing is asked (the default: one server, or replication the operator vouches for).
    #[default]
    Ignore,
    /// Log a warning when a primary is found without it, and show it in the metrics.
    Warn,
    /// Refuse sessions on such a primary (FATAL 08001), and on one that does not say.
    Require,
}

impl SynchronousReplication {
    /// The value as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            SynchronousReplication::Ignore => "ignore",
            SynchronousReplication::Warn => "warn",
            SynchronousReplication::Require => "require",
        }
    }
}

/// What a server said of itself at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerRole {
    /// `in_hot_standby = on`.
    pub in_hot_standby: bool,
    /// `default_transaction_read_only = on`.
    pub read_only: bool,
}

impl ServerRole {
    /// The role from the ParameterStatus messages of a login; `None` when the server does
    /// not report `in_hot_standby` (before PostgreSQL 14).
    pub fn from_parameters(parameters: &[(Vec<u8>, Vec<u8>)]) -> Option<ServerRole> {
        let value = |name: &[u8]| {
            parameters
                .iter()
                .rev()
                .find(|(n, _)| n.as_slice() == name)
                .map(|(_, v)| v.as_slice() == b"on")
        };
        Some(ServerRole {
            in_hot_standby: value(b"in_hot_standby")?,
            read_only: value(b"default_transaction_read_only").unwrap_or(false),
        })
    }
}

impl TargetSessionAttrs {
    /// Whether a session on a server of `role` matches; `None` for `prefer-standby`'s
    /// fallback, which takes any server when no standby is up.
    pub fn accepts(self, role: ServerRole) -> bool {
        match self {
            TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => true,
            TargetSessionAttrs::ReadWrite => !role.in_hot_standby && !role.read_only,
            TargetSessionAttrs::ReadOnly => role.in_hot_standby || role.read_only,
            TargetSessionAttrs::Primary => !role.in_hot_standby,
            TargetSessionAttrs::Standby => role.in_hot_standby,
        }
    }

    /// Whether `role` is the one this setting looks for first (for `prefer-standby`, a
    /// standby; for the others, whatever [`accepts`](Self::accepts) takes).
    pub fn prefers(self, role: ServerRole) -> bool {
        match self {
            TargetSessionAttrs::PreferStandby => role.in_hot_standby,
            other => other.accepts(role),
        }
    }

    /// The value as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

/// Deserializes `upstream` from a string (`"h1:5432,h2:5432"`) or a TOML array of
/// entries, kept as the comma-separated string.
pub fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Form {
        One(String),
        List(Vec<String>),
    }
    Ok(match Form::deserialize(d)? {
        Form::One(s) => s,
        Form::List(list) => list.join(","),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_host_port_host_or_socket_directories() {
        let tcp = |s: &str| Some(UpstreamAddr::Tcp(s.into()));
        let unix = |path: &str| Some(UpstreamAddr::Unix(PathBuf::from(path)));
        assert_eq!(parse_host("db:5433"), tcp("db:5433"));
        assert_eq!(parse_host(" db "), tcp("db:5432"));
        assert_eq!(parse_host("[::1]:5432"), tcp("[::1]:5432"));
        assert_eq!(
            parse_host("/var/run/postgresql"),
            unix("/var/run/postgresql/.s.PGSQL.5432")
        );
        assert_eq!(parse_host("/tmp:5499"), unix("/tmp/.s.PGSQL.5499"));
        for bad in [
            "", ":5432", "db:x", "/tmp:x", "db:70000", "db:0", "::1", "[::1]", "[]:5432",
        ] {
            assert_eq!(parse_host(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_list_keeps_its_order_and_names_a_bad_entry() {
        let hosts = parse_hosts("h1:5432, h2:6543,/run/pg").unwrap();
        let labels: Vec<String> = hosts.iter().map(UpstreamAddr::label).collect();
        assert_eq!(labels, ["h1:5432", "h2:6543", "/run/pg/.s.PGSQL.5432"]);
        let err = parse_hosts("h1:5432,,h2:5432").unwrap_err();
        assert!(err.contains("\"\""), "{err}");
        assert_eq!(hosts[1].host(), Some("h2"));
        assert_eq!(parse_host("[::1]:1").unwrap().host(), Some("::1"));
    }

    #[test]
    fn each_setting_accepts_the_servers_libpq_accepts() {
        let role = |in_hot_standby, read_only| ServerRole {
            in_hot_standby,
            read_only,
        };
        let (primary, ro_primary, standby) =
            (role(false, false), role(false, true), role(true, true));
        use TargetSessionAttrs::*;
        let table = [
            (Any, [true, true, true]),
            (ReadWrite, [true, false, false]),
            (ReadOnly, [false, true, true]),
            (Primary, [true, true, false]),
            (Standby, [false, false, true]),
            (PreferStandby, [true, true, true]),
        ];
        for (attrs, want) in table {
            let got = [primary, ro_primary, standby].map(|r| attrs.accepts(r));
            assert_eq!(got, want, "{}", attrs.name());
        }
        assert!(!PreferStandby.prefers(primary) && PreferStandby.prefers(standby));
        assert!(ReadWrite.prefers(primary) && !ReadWrite.prefers(standby));
    }
}
