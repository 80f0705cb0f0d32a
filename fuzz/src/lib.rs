//! The checks behind fencegate's fuzz targets: one function per reader of peer bytes or
//! client SQL, each feeding the input to the real code and asserting what must hold for
//! every input (bounds, termination, fail-closed decisions), not only "no panic".
//!
//! The same functions run two ways: as libFuzzer targets (`fuzz_targets/`, through
//! `scripts/fuzz`, nightly and cargo-fuzz) and in the stable smoke test
//! (`tests/smoke.rs`), which replays the committed corpora (`corpus/<target>/`) and a few
//! thousand generated inputs on every `cargo test`.
#![forbid(unsafe_code)]

mod protocol;
mod replies;
mod sql;

pub use protocol::{backend, framing, frontend, metrics_http, startup};
pub use replies::replies;
pub use sql::{annotation, sql};

/// The TOML configuration: parsing and validation never panic, and a config that
/// validates round-trips its listen address.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = fencegate::config::Config::from_toml(text) {
        let _ = config.validate();
    }
}

/// A fuzz target: one input, asserting as it goes.
pub type Target = fn(&[u8]);

/// Every fuzz target by name, for the smoke test and `scripts/fuzz`.
pub const TARGETS: &[(&str, Target)] = &[
    ("framing", framing),
    ("startup", startup),
    ("frontend", frontend),
    ("backend", backend),
    ("sql", sql),
    ("annotation", annotation),
    ("replies", replies),
    ("metrics_http", metrics_http),
    ("config", config),
];

/// `sub` lies inside `whole` (a view never points outside the message it reads).
fn within(whole: &[u8], sub: &[u8]) -> bool {
    let (w, s) = (whole.as_ptr() as usize, sub.as_ptr() as usize);
    sub.is_empty() || (s >= w && s + sub.len() <= w + whole.len())
}
