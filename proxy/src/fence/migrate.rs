//! `fencegate migrate`: connect to one database directly and install the schema.

use super::schema::{INSTALL, SCHEMA_VERSION};

/// Why the schema could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The URL is not a valid connection string.
    #[error("invalid database URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// Connecting or running the script failed.
    #[error("migration failed: {0}")]
    Postgres(#[source] tokio_postgres::Error),
}

/// Installs or upgrades the `fencegate` schema in the database `url` names, in one
/// transaction (serialized against concurrent runs). Returns the installed version.
pub async fn run(url: &str) -> Result<i32, MigrateError> {
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
    tx.commit().await.map_err(MigrateError::Postgres)?;
    drop(client);
    let _ = driver.await;
    Ok(SCHEMA_VERSION)
}
