//! `fencegate migrate`: connect to one database directly and install the schema.

use super::schema::{INSTALL, SCHEMA_VERSION};

/// Why the schema could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The URL is not a valid connection string.
    #[error("invalid database URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// Connecting or running the script failed.
    #[error("migration failed: {}", describe(.0))]
    Postgres(#[source] tokio_postgres::Error),
}

/// Installs or upgrades the `fencegate` schema in the database `url` names, in one
/// transaction (serialized against concurrent runs). Returns the installed version.
pub async fn run(url: &str) -> Result<i32, MigrateError> {
    run_granting(url, &[]).await
}

/// The public interface of the schema: what an application role needs.
const PUBLIC_FUNCTIONS: &str = "fencegate.check(text, bigint, int4), \
     fencegate.check_settings(int4, boolean), fencegate.high_water(text), \
     fencegate.acquire(text, text, interval), fencegate.renew(text, text, bigint, interval), \
     fencegate.release(text, text, bigint), fencegate.lease_holder(text), \
     fencegate._settings_invalid(text, text, boolean)";

/// [`run`], then grants each of `roles` the schema's public interface, in the same
/// transaction (a role that does not exist fails the whole migration).
pub async fn run_granting(url: &str, roles: &[String]) -> Result<i32, MigrateError> {
    let config: tokio_postgres::Config = url.parse().map_err(MigrateError::Url)?;
    let (mut client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(MigrateError::Postgres)?;
    let driver = tokio::spawn(connection);
    let tx = client.transaction().await.map_err(MigrateError::Postgres)?;
    tx.batch_execute(INSTALL)
        .await
        .map_err(MigrateError::Postgres)?;
    for role in roles {
        let role = quote_ident(role);
        tx.batch_execute(&format!(
            "GRANT USAGE ON SCHEMA fencegate TO {role}; \
             GRANT EXECUTE ON FUNCTION {PUBLIC_FUNCTIONS} TO {role};"
        ))
        .await
        .map_err(MigrateError::Postgres)?;
    }
    tx.commit().await.map_err(MigrateError::Postgres)?;
    drop(client);
    let _ = driver.await;
    Ok(SCHEMA_VERSION)
}

/// The server's own words when it sent an error (tokio-postgres' Display says "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} ({}): {}",
            db.message(),
            db.code().code(),
            db.detail().unwrap_or("")
        ),
        None => e.to_string(),
    }
}

/// `name` as a double-quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(super::quote_ident("app"), "\"app\"");
        assert_eq!(super::quote_ident("a\"; DROP"), "\"a\"\"; DROP\"");
    }
}
