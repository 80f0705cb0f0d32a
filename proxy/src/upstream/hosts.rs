//! What the proxy knows of each upstream host, shared by every session: the role the host
//! reported at its last login (primary or standby, read-only by default or not), whether
//! it is in a back-off after a failed connect, and its counters for `/metrics` and
//! `/status`. From that, [`HostTable::candidates`] gives the order in which a new session
//! tries the hosts.
//!
//! Knowledge only orders the tries: every session still checks the role its own server
//! reports, so a stale entry costs at most one try, never a session on the wrong server.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{ServerRole, SynchronousReplication, TargetSessionAttrs, UpstreamAddr};

/// First back-off after a failed connect; doubled by each further failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// How long a primary's answer about synchronous replication is believed; then the next
/// session on it asks again.
const SYNCHRONOUS_KNOWN_FOR: Duration = Duration::from_secs(10);

/// One upstream host and what is known of it.
#[derive(Debug)]
pub struct Host {
    /// Where it listens.
    pub addr: UpstreamAddr,
    /// `host:port` or the socket path, for messages and metric labels.
    pub label: String,
    state: Mutex<HostState>,
    sessions: AtomicU64,
    connect_failures: AtomicU64,
    wrong_role: AtomicU64,
}

#[derive(Debug, Default)]
struct HostState {
    /// The role reported at the last login, when it is still believed.
    role: Option<ServerRole>,
    /// No new session tries the host before this (unless no other host is left).
    down_until: Option<Instant>,
    /// The next back-off.
    backoff: Option<Duration>,
    /// The last connect failed (and no login succeeded since).
    down: bool,
    /// Whether the host's commits waited for a synchronous standby, and when a session
    /// last asked.
    synchronous: Option<(bool, Instant)>,
}

/// Every configured host, in the configured order.
#[derive(Debug)]
pub struct HostTable {
    hosts: Vec<Arc<Host>>,
    attrs: TargetSessionAttrs,
}

/// A session's place on a host: counted in the host's open sessions until dropped.
#[derive(Debug)]
pub struct OnHost(Arc<Host>);

impl Drop for OnHost {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

impl OnHost {
    /// The host.
    pub fn host(&self) -> &Host {
        &self.0
    }
}

impl Host {
    fn new(addr: UpstreamAddr) -> Host {
        Host {
            label: addr.label(),
            addr,
            state: Mutex::default(),
            sessions: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            wrong_role: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connect (or the server's refusal before authentication) failed: back off.
    pub fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state();
        let backoff = state.backoff.unwrap_or(FIRST_BACKOFF);
        state.down_until = Some(Instant::now() + backoff);
        state.backoff = Some((backoff * 2).min(MAX_BACKOFF));
        state.down = true;
        state.role = None;
    }

    /// A login succeeded and the server reported `role`.
    pub fn logged_in(&self, role: Option<ServerRole>) {
        let mut state = self.state();
        *state = HostState {
            role,
            synchronous: state.synchronous,
            ..HostState::default()
        };
    }

    /// Whether a new session on the host should ask about synchronous replication: unless
    /// `mode` is `ignore`, when nothing is known or what is known is older than
    /// [`SYNCHRONOUS_KNOWN_FOR`], and under `require` whenever the last answer was no (so
    /// that the first session after the standby is back gets in).
    pub fn should_ask_synchronous(&self, mode: SynchronousReplication) -> bool {
        let known = self.state().synchronous;
        match (mode, known) {
            (SynchronousReplication::Ignore, _) => false,
            (_, None) => true,
            (SynchronousReplication::Require, Some((false, _))) => true,
            (_, Some((_, asked))) => asked.elapsed() >= SYNCHRONOUS_KNOWN_FOR,
        }
    }

    /// A session learned whether the host's commits wait for a synchronous standby
    /// (`None`: it did not say). Returns true when that changed what was known.
    pub fn synchronous_seen(&self, synchronous: Option<bool>) -> bool {
        let mut state = self.state();
        let before = state.synchronous.map(|(known, _)| known);
        state.synchronous = synchronous.map(|s| (s, Instant::now()));
        before != synchronous
    }

    fn synchronous(&self) -> Option<bool> {
        self.state().synchronous.map(|(known, _)| known)
    }

    /// A session on the host did not match `target_session_attrs`.
    pub fn wrong_role(&self, role: Option<ServerRole>) {
        self.wrong_role.fetch_add(1, Ordering::Relaxed);
        self.logged_in(role);
    }

    /// A session lost its server without a word: what was known of the host may be stale.
    pub fn connection_lost(&self) {
        self.state().role = None;
    }

    /// Counts a session on this host until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>) -> OnHost {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        OnHost(self.clone())
    }

    fn role_name(&self) -> &'static str {
        match self.state().role {
            None => "unknown",
            Some(role) => role_name(role),
        }
    }
}

/// `primary`, `primary (read-only)` or `standby`, for messages and labels.
pub fn role_name(role: ServerRole) -> &'static str {
    match (role.in_hot_standby, role.read_only) {
        (true, _) => "standby",
        (false, true) => "primary-read-only",
        (false, false) => "primary",
    }
}

/// How likely a host is to serve a new session well; lower is tried first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    /// Known to be what the setting looks for.
    Preferred,
    /// Nothing known (never reached, or knowledge dropped).
    Unknown,
    /// Known acceptable but not preferred (`prefer-standby`'s primaries).
    Fallback,
    /// In a back-off after a failure: tried when nothing better is left.
    BackingOff,
    /// Known not to match: a try costs the client its session, so it comes last (it
    /// may have been promoted since).
    Mismatched,
}

impl HostTable {
    /// A table of `hosts` for sessions that want `attrs`.
    pub fn new(hosts: Vec<UpstreamAddr>, attrs: TargetSessionAttrs) -> HostTable {
        HostTable {
            hosts: hosts.into_iter().map(|a| Arc::new(Host::new(a))).collect(),
            attrs,
        }
    }

    /// What sessions want.
    pub fn attrs(&self) -> TargetSessionAttrs {
        self.attrs
    }

    /// Every host, in the configured order.
    pub fn all(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    /// The hosts in the order a new session tries them: by [`Tier`], and in the
    /// configured order within a tier (libpq's order when nothing is known).
    pub fn candidates(&self) -> Vec<Arc<Host>> {
        let now = Instant::now();
        let mut ranked: Vec<(Tier, usize, Arc<Host>)> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(i, host)| (self.tier(host, now), i, host.clone()))
            .collect();
        ranked.sort_by_key(|(tier, i, _)| (*tier, *i));
        ranked.into_iter().map(|(_, _, host)| host).collect()
    }

    fn tier(&self, host: &Host, now: Instant) -> Tier {
        let state = host.state();
        if state.down_until.is_some_and(|until| until > now) {
            return Tier::BackingOff;
        }
        match state.role {
            None => Tier::Unknown,
            Some(role) if self.attrs.prefers(role) => Tier::Preferred,
            Some(role) if self.attrs.accepts(role) => Tier::Fallback,
            Some(_) => Tier::Mismatched,
        }
    }

    /// The per-host series of the Prometheus exposition.
    pub fn render(&self, out: &mut String) {
        let series: [(&str, &str, &str); 4] = [
            (
                "fencegate_upstream_up",
                "gauge",
                "1 unless the last connect to the host failed",
            ),
            (
                "fencegate_upstream_sessions",
                "gauge",
                "Client sessions open on the host",
            ),
            (
                "fencegate_upstream_connect_failures_total",
                "counter",
                "Connects to the host that failed or were refused before authentication",
            ),
            (
                "fencegate_upstream_wrong_role_total",
                "counter",
                "Sessions that reached the host and did not match target_session_attrs",
            ),
        ];
        for (i, (name, kind, help)) in series.iter().enumerate() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for host in &self.hosts {
                let value = match i {
                    0 => u64::from(!host.state().down),
                    1 => host.sessions.load(Ordering::Relaxed),
                    2 => host.connect_failures.load(Ordering::Relaxed),
                    _ => host.wrong_role.load(Ordering::Relaxed),
                };
                let _ = writeln!(out, "{name}{{host=\"{}\"}} {value}", escape(&host.label));
            }
        }
        let name = "fencegate_upstream_synchronous";
        let _ = writeln!(out, "# HELP {name} 1 when the host's commits wait for a synchronous standby, 0 when not (only hosts asked, with synchronous_replication = warn or require)\n# TYPE {name} gauge");
        for host in &self.hosts {
            if let Some(synchronous) = host.synchronous() {
                let value = u8::from(synchronous);
                let _ = writeln!(out, "{name}{{host=\"{}\"}} {value}", escape(&host.label));
            }
        }
        let name = "fencegate_upstream_role";
        let _ = writeln!(out, "# HELP {name} The role the host reported at its last login (primary, primary-read-only, standby, unknown)\n# TYPE {name} gauge");
        for host in &self.hosts {
            let role = host.role_name();
            let _ = writeln!(
                out,
                "{name}{{host=\"{}\",role=\"{role}\"}} 1",
                escape(&host.label)
            );
        }
    }

    /// The hosts as a JSON array for `/status`.
    pub fn status(&self) -> serde_json::Value {
        let hosts: Vec<serde_json::Value> = self
            .hosts
            .iter()
            .map(|host| {
                serde_json::json!({
                    "host": host.label,
                    "up": !host.state().down,
                    "role": host.role_name(),
                    "synchronous": host.synchronous(),
                    "sessions": host.sessions.load(Ordering::Relaxed),
                    "connect_failures_total": host.connect_failures.load(Ordering::Relaxed),
                    "wrong_role_total": host.wrong_role.load(Ordering::Relaxed),
                })
            })
            .collect();
        serde_json::json!({ "target_session_attrs": self.attrs.name(), "hosts": hosts })
    }
}

/// A label value as the exposition format writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_hosts;

    const PRIMARY: ServerRole = ServerRole {
        in_hot_standby: false,
        read_only: false,
    };
    const STANDBY: ServerRole = ServerRole {
        in_hot_standby: true,
        read_only: true,
    };

    fn order(table: &HostTable) -> Vec<String> {
        table.candidates().iter().map(|h| h.label.clone()).collect()
    }

    #[test]
    fn known_matches_first_then_unknown_then_backing_off_then_mismatched() {
        let hosts = parse_hosts("a:1,b:1,c:1,d:1").unwrap();
        let table = HostTable::new(hosts, TargetSessionAttrs::ReadWrite);
        assert_eq!(order(&table), ["a:1", "b:1", "c:1", "d:1"], "libpq's order");
        let [a, b, c, d] = [0, 1, 2, 3].map(|i| table.all()[i].clone());
        a.wrong_role(Some(STANDBY));
        b.connect_failed();
        d.logged_in(Some(PRIMARY));
        assert_eq!(order(&table), ["d:1", "c:1", "b:1", "a:1"]);
        c.connection_lost();
        b.logged_in(Some(PRIMARY));
        assert_eq!(order(&table), ["b:1", "d:1", "c:1", "a:1"]);
        assert_eq!(a.wrong_role.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn prefer_standby_takes_a_primary_only_after_unknown_hosts() {
        let hosts = parse_hosts("p:1,s:1,u:1").unwrap();
        let table = HostTable::new(hosts, TargetSessionAttrs::PreferStandby);
        table.all()[0].logged_in(Some(PRIMARY));
        table.all()[1].logged_in(Some(STANDBY));
        assert_eq!(order(&table), ["s:1", "u:1", "p:1"]);
    }

    #[test]
    fn back_off_doubles_up_to_its_limit_and_a_login_clears_it() {
        let table = HostTable::new(parse_hosts("a:1").unwrap(), TargetSessionAttrs::Any);
        let a = &table.all()[0];
        for _ in 0..10 {
            a.connect_failed();
        }
        assert_eq!(a.state().backoff, Some(MAX_BACKOFF));
        assert!(a.state().down);
        a.logged_in(None);
        assert!(!a.state().down && a.state().backoff.is_none());
    }

    #[test]
    fn metrics_and_status_name_every_host() {
        let table = HostTable::new(
            parse_hosts("a:1,/tmp").unwrap(),
            TargetSessionAttrs::ReadWrite,
        );
        let guard = table.all()[0].enter();
        table.all()[1].connect_failed();
        let mut text = String::new();
        table.render(&mut text);
        assert!(
            text.contains("fencegate_upstream_sessions{host=\"a:1\"} 1"),
            "{text}"
        );
        assert!(text.contains("fencegate_upstream_up{host=\"/tmp/.s.PGSQL.5432\"} 0"));
        assert!(text.contains("fencegate_upstream_role{host=\"a:1\",role=\"unknown\"} 1"));
        drop(guard);
        let status = table.status();
        assert_eq!(status["hosts"][0]["sessions"], 0);
        assert_eq!(status["hosts"][1]["connect_failures_total"], 1);
        assert_eq!(status["target_session_attrs"], "read-write");
    }
}
