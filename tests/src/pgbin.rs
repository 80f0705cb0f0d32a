//! The installed PostgreSQL binaries for this test process, located once by
//! [`fencegate::demo::pgtemp::PgBin::find`] (`$FENCEGATE_PG_BINDIR`, `pg_config --bindir`, the
//! newest `/usr/lib/postgresql/*/bin`, or `PATH`; as root the server runs as `postgres`).

use std::sync::OnceLock;

pub use fencegate::demo::pgtemp::{is_root, BINDIR_ENV};

/// The located installation.
pub struct PgBin;

impl PgBin {
    /// The installation, located once. Panics with one message saying what to install when
    /// no PostgreSQL server binaries can be found.
    pub fn get() -> &'static fencegate::demo::pgtemp::PgBin {
        static BIN: OnceLock<fencegate::demo::pgtemp::PgBin> = OnceLock::new();
        BIN.get_or_init(|| fencegate::demo::pgtemp::PgBin::find().unwrap_or_else(|e| panic!("{e}")))
    }
}
