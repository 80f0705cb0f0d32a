//! Questions the proxy asks a server on a fresh session, before the client has seen its
//! first ReadyForQuery; the replies are read here and never reach the client:
//! - what a server that does not report `in_hot_standby` (PostgreSQL 13 and older, or a
//!   pooler that does not pass it on) is, the way libpq asks for `target_session_attrs`;
//! - whether a primary's commits wait for a synchronous standby
//!   (`synchronous_replication`).

use super::conn::{Conn, Read, ReadError};
use crate::config::ServerRole;
use crate::config::MAX_SERVER_MESSAGE;
use crate::error::{SessionError, UpstreamViolation};
use crate::protocol::backend as be;
use crate::protocol::build;

/// The question: whether the server is in recovery (a standby), and whether its sessions
/// are read-only by default (`transaction_read_only` of a session that has run nothing
/// is its `default_transaction_read_only`, or `on` in recovery).
pub const ROLE_QUERY: &str = "SELECT pg_catalog.pg_is_in_recovery(), \
     pg_catalog.current_setting('transaction_read_only')::bool";

/// Whether the session's commits wait for a synchronous standby: one is named, and the
/// session's `synchronous_commit` (with its role's and database's defaults) waits for it.
pub const SYNCHRONOUS_QUERY: &str = "SELECT \
     pg_catalog.current_setting('synchronous_standby_names') <> '' AND \
     pg_catalog.current_setting('synchronous_commit') NOT IN ('off', 'local')";

/// Sends [`ROLE_QUERY`] and reads its reply. `Ok(None)` when the server answered with an
/// error or an unexpected row (its role stays unknown, and the caller refuses the session
/// unless any server will do).
pub async fn ask_role(server: &mut Conn) -> Result<Option<ServerRole>, SessionError> {
    let row = ask(server, ROLE_QUERY).await?;
    Ok(row.and_then(|row| role_of_row(&row)))
}

/// Sends [`SYNCHRONOUS_QUERY`] and reads its reply; `Ok(None)` when the server did not say.
pub async fn ask_synchronous(server: &mut Conn) -> Result<Option<bool>, SessionError> {
    let row = ask(server, SYNCHRONOUS_QUERY).await?;
    Ok(
        row.and_then(|row| match be::data_row_values(&row)?.as_slice() {
            [value] => flag(value.as_ref()),
            _ => None,
        }),
    )
}

/// Sends `sql` and reads its reply up to ReadyForQuery: the body of its first DataRow,
/// or `None` when it failed or returned none.
async fn ask(server: &mut Conn, sql: &str) -> Result<Option<Vec<u8>>, SessionError> {
    server
        .write_flush(&build::query(sql))
        .await
        .map_err(SessionError::UpstreamIo)?;
    let mut row = None;
    let mut failed = false;
    loop {
        let frame = match server.read_tagged(MAX_SERVER_MESSAGE).await {
            Ok(Read::Frame(frame)) => frame,
            Ok(Read::Closed | Read::Truncated) => {
                return Err(UpstreamViolation::ClosedUnexpectedly.into())
            }
            Err(ReadError::Io(e)) => return Err(SessionError::UpstreamIo(e)),
            Err(ReadError::Frame(e)) => return Err(UpstreamViolation::from(e).into()),
        };
        let body = &frame[5..];
        match frame[0] {
            be::DATA_ROW if row.is_none() => row = Some(body.to_vec()),
            be::ERROR_RESPONSE if be::is_fatal(body) => {
                let text = be::error_field(body, b'M').unwrap_or_default();
                let reason = String::from_utf8_lossy(text).into_owned();
                return Err(UpstreamViolation::Refused(reason).into());
            }
            be::ERROR_RESPONSE => failed = true,
            be::READY_FOR_QUERY => return Ok(row.filter(|_| !failed)),
            _ => {}
        }
    }
}

/// `(in recovery, read-only)` from the row of [`ROLE_QUERY`], in text format.
fn role_of_row(body: &[u8]) -> Option<ServerRole> {
    match be::data_row_values(body)?.as_slice() {
        [in_recovery, read_only] => Some(ServerRole {
            in_hot_standby: flag(in_recovery.as_ref())?,
            read_only: flag(read_only.as_ref())?,
        }),
        _ => None,
    }
}

/// A boolean column in text format.
fn flag(value: Option<&&[u8]>) -> Option<bool> {
    match value.copied() {
        Some(b"t") => Some(true),
        Some(b"f") => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut body = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                Some(v) => {
                    body.extend((v.len() as i32).to_be_bytes());
                    body.extend(*v);
                }
                None => body.extend((-1i32).to_be_bytes()),
            }
        }
        body
    }

    #[test]
    fn a_row_of_two_booleans_is_a_role_and_anything_else_is_not() {
        let standby = role_of_row(&row(&[Some(b"t"), Some(b"t")]));
        assert_eq!(
            standby,
            Some(ServerRole {
                in_hot_standby: true,
                read_only: true
            })
        );
        let primary = role_of_row(&row(&[Some(b"f"), Some(b"f")]));
        assert_eq!(
            primary,
            Some(ServerRole {
                in_hot_standby: false,
                read_only: false
            })
        );
        assert_eq!(role_of_row(&row(&[Some(b"f")])), None);
        assert_eq!(role_of_row(&row(&[Some(b"f"), None])), None);
        assert_eq!(role_of_row(&row(&[Some(b"off"), Some(b"f")])), None);
        assert_eq!(role_of_row(&[0, 2, 0]), None, "truncated");
    }
}
