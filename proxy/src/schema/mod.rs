//! The database side of fencing: the `fencegate` schema, the authority for every fencing
//! decision, and the administrative commands that install and shape it. The SQL lives in
//! `schema.sql` (the fence), `lease.sql` (the lease service), `require.sql`, `views.sql`
//! and `owners.sql` beside this file (read it there: it is the code PostgreSQL runs); the
//! design and the argument for why G1-G7 hold, case by case, are in docs/fencing.md.
//!
//! - [`admin`]: direct connections of the administrative commands and their errors.
//! - [`migrate`]: installing the schema (`fencegate migrate`).
//! - [`require`]: tables that refuse writes without a token (`fencegate require`).
//! - [`fences`]: the operator's view of every resource (`fencegate fences`).
//!
//! The proxy side (which statements carry a token, what it sends) is [`crate::fence`]; the
//! two meet only in the SQL the proxy sends and the SQLSTATEs listed here.
//!
//! In short: H(r) is a row of `fencegate.fence`. Transactions presenting the token that
//! equals H hold the resource's advisory lock in shared mode and write nothing; raising H
//! takes it exclusively (waiting for, and after the grace ending, the holders of older
//! tokens) and updates the row in the client's own transaction. A token below H is refused
//! at once. Whether the row version a snapshot shows is still the newest is read from its
//! xmax, so REPEATABLE READ and SERIALIZABLE transactions need no row lock.

pub mod admin;
pub mod fences;
pub mod migrate;
pub mod require;

/// Version recorded in `fencegate.meta` by this build's migration.
pub const SCHEMA_VERSION: i32 = 13;

/// Idempotent installation script for [`SCHEMA_VERSION`]; run in one transaction: the fence
/// (`schema.sql`), the checks of settings (`settings.sql`), the lease service (`lease.sql`),
/// the tables that require a token (`require.sql`), the operator's views (`views.sql`), then
/// the ownership of everything (`owners.sql`).
pub const INSTALL: &str = concat!(
    include_str!("schema.sql"),
    include_str!("settings.sql"),
    include_str!("lease.sql"),
    include_str!("require.sql"),
    include_str!("views.sql"),
    include_str!("owners.sql")
);

/// SQLSTATEs a check raises when the schema is missing (no schema / no function).
pub const MISSING_SCHEMA_STATES: &[&[u8]] = &[b"3F000", b"42883"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_records_the_version_this_build_reports() {
        let recorded = format!("VALUES ('schema_version', '{SCHEMA_VERSION}')");
        assert!(
            INSTALL.contains(&recorded),
            "schema.sql does not record {recorded}"
        );
        let header = format!("-- The `fencegate` schema, version {SCHEMA_VERSION}:");
        assert!(
            INSTALL.starts_with(&header),
            "schema.sql's first line is not {header:?}"
        );
    }
}
