//! Reloading the settings while serving (SIGHUP): which settings change live, and what is
//! refused until a restart. The caller reads and validates the new settings (flags and
//! environment as at start, the config file read again); [`apply`] puts them into effect.
//!
//! Live: `max_connections` (sessions already open stay), the client TLS certificate and
//! key (read again at every reload, so a renewed file at the same path takes effect),
//! `fence_mode`, `preempt_grace` and `require_token_tables` (for sessions that start after
//! the reload; an open session keeps the policy it started with), and `log_level` (the
//! caller owns the log subscriber). Everything else needs a restart: a reload that changes
//! it logs a warning naming the setting and keeps the running value.

use crate::config::Config;
use crate::session::Shared;

/// Settings a reload changes while serving.
pub const LIVE: &[&str] = &[
    "max_connections",
    "tls_cert",
    "tls_key",
    "fence_mode",
    "preempt_grace",
    "require_token_tables",
    "log_level",
];

/// The names of the settings that differ between `a` and `b`.
pub fn changed(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    // Destructured in full so that a new setting cannot be added without deciding here
    // whether it is compared (every one is).
    macro_rules! compare {
        ($($field:ident),*) => {
            let Config { $($field),* } = a;
            $(if *$field != b.$field { out.push(stringify!($field)); })*
        };
    }
    compare!(
        listen,
        upstream,
        target_session_attrs,
        synchronous_replication,
        max_connections,
        max_startup_connections,
        max_message_size,
        max_buffered_bytes,
        tls_cert,
        tls_key,
        upstream_tls,
        upstream_ca,
        upstream_auth,
        connect_timeout,
        shutdown_grace,
        fence_mode,
        preempt_grace,
        require_token_tables,
        worker_threads,
        metrics_listen,
        log_level
    );
    out
}

/// Puts `new` into effect where it may change live and returns the settings now in
/// effect: `running` with the live settings of `new`. Logs each change, each refusal, and
/// a certificate that cannot be loaded (the running one then stays).
pub fn apply(shared: &Shared, running: &Config, new: Config) -> Config {
    let mut effective = running.clone();
    for field in changed(running, &new) {
        if LIVE.contains(&field) {
            tracing::info!(setting = field, "reload: changed");
        } else {
            tracing::warn!(
                setting = field,
                "reload: {field} cannot change while serving; restart fencegate to change it (the running value stays)"
            );
        }
    }
    effective.max_connections = new.max_connections;
    shared.sessions.set_max(new.max_connections);
    effective.fence_mode = new.fence_mode;
    effective.preempt_grace = new.preempt_grace;
    effective.require_token_tables = new.require_token_tables.clone();
    effective.log_level = new.log_level.clone();
    shared.hooks.reconfigure(&effective);
    let tls_wanted = Config {
        tls_cert: new.tls_cert.clone(),
        tls_key: new.tls_key.clone(),
        ..effective.clone()
    };
    match crate::tls::acceptor(&tls_wanted) {
        Ok(acceptor) => {
            if let Ok(mut tls) = shared.tls.write() {
                *tls = acceptor;
            }
            effective.tls_cert = new.tls_cert;
            effective.tls_key = new.tls_key;
        }
        Err(e) => tracing::error!(
            error = %e,
            "reload: client TLS not changed, the running certificate stays"
        ),
    }
    effective
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_difference_is_named() {
        let a = Config::default();
        let b = Config {
            listen: "127.0.0.1:1".parse().unwrap(),
            max_connections: 7,
            log_level: Some("debug".into()),
            ..Config::default()
        };
        assert_eq!(changed(&a, &b), ["listen", "max_connections", "log_level"]);
        assert!(changed(&a, &a).is_empty());
    }
}
