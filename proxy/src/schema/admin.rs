//! Direct connections of the administrative commands (`fencegate migrate`, `fencegate
//! require`): they talk to PostgreSQL itself, never through the proxy, and report the
//! server's own words when it refuses.

/// Why an administrative command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The URL is not a valid connection string.
    #[error("invalid database URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// Connecting or running a statement failed.
    #[error("{}", describe(.0))]
    Postgres(#[source] tokio_postgres::Error),
    /// The `fencegate` schema is missing or older than this build needs.
    #[error("the fencegate schema is not installed in this database, or is older than version {0}: run `fencegate migrate` first")]
    NotInstalled(i32),
    /// A name given on the command line is not something the command can act on.
    #[error("{0}")]
    Refused(String),
}

impl From<tokio_postgres::Error> for AdminError {
    fn from(e: tokio_postgres::Error) -> Self {
        AdminError::Postgres(e)
    }
}

/// A connection to the database `url` names, its driver running on the current runtime.
pub(crate) async fn connect(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), AdminError> {
    let config: tokio_postgres::Config = url.parse().map_err(AdminError::Url)?;
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

/// The server's own words when it sent an error (tokio-postgres' Display says "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} ({}){}",
            db.message(),
            db.code().code(),
            db.detail().map(|d| format!(": {d}")).unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

/// `name` as a double-quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
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
