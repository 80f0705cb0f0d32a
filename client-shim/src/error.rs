//! [`FenceError`]: what a fenced statement can fail with, sorted by what the caller should
//! do about it, and [`classify`], which reads fencegate's rejections out of a `sqlx::Error`.
//!
//! | SQLSTATE | variant | what to do |
//! |---|---|---|
//! | `55Z01` | [`FenceError::LockLost`] | stop working on the resource; never retry |
//! | `55Z02`, `55Z03` | [`FenceError::Misuse`] | a bug or a missing `fencegate migrate`: fix it |
//! | anything else | [`FenceError::Database`] | whatever you do for database errors today |

use sqlx::postgres::PgDatabaseError;

/// SQLSTATE of a stale fencing token: a newer lock holder has been admitted.
pub const STALE_TOKEN: &str = "55Z01";
/// SQLSTATE of an invalid fencing annotation.
pub const INVALID_ANNOTATION: &str = "55Z02";
/// SQLSTATE of a fenced statement in a database without the `fencegate` schema.
pub const NOT_INSTALLED: &str = "55Z03";

/// A fenced statement failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// `55Z01`: a newer holder of the lock on `resource` has been admitted, so this
    /// holder's token is stale. The lock is lost: **never retry**, stop working on the
    /// resource. The server has aborted the transaction; roll it back.
    #[error(
        "lock on {resource:?} lost: token {presented} is stale, the current token is {current}"
    )]
    LockLost {
        /// The resource whose lock was lost.
        resource: String,
        /// The token this holder presented.
        presented: i64,
        /// The token of the newer holder (the resource's high-water mark).
        current: i64,
    },
    /// `55Z02` (invalid annotation) or `55Z03` (fencing not installed): the client or the
    /// deployment is wrong, not the lock. Retrying will not help; fix the code or run
    /// `fencegate migrate` as the hint says.
    #[error("fencing misuse ({code}): {message}{}", hint.as_deref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
    Misuse {
        /// `55Z02` or `55Z03`.
        code: String,
        /// The server's message.
        message: String,
        /// The server's hint (for `55Z03`, the `fencegate migrate` command to run).
        hint: Option<String>,
    },
    /// Any other error from sqlx, unchanged.
    #[error(transparent)]
    Database(sqlx::Error),
}

impl FenceError {
    /// True for [`FenceError::LockLost`]: the caller must stop, not retry.
    pub fn is_lock_lost(&self) -> bool {
        matches!(self, FenceError::LockLost { .. })
    }
}

impl From<sqlx::Error> for FenceError {
    /// Sorts the error with [`classify`]; anything that is not a fencegate rejection becomes
    /// [`FenceError::Database`].
    fn from(e: sqlx::Error) -> FenceError {
        classify(&e).unwrap_or(FenceError::Database(e))
    }
}

/// Reads a fencegate rejection out of a sqlx error: `Some(LockLost)` for `55Z01` (with
/// resource and tokens parsed from the error's DETAIL, `presented_token=T current_token=H
/// resource=R`, or failing that from its message), `Some(Misuse)` for `55Z02` and `55Z03`,
/// `None` for everything else (including a `55Z01` that does not come from fencegate and
/// so names no tokens).
///
/// Note that an older holder whose *open, idle* transaction fencegate ended to let a newer
/// holder through sees its connection closed (`57P01` or an I/O error), not `55Z01`: that
/// is indistinguishable from other disconnects and stays a [`FenceError::Database`]; the
/// next fenced statement on a new connection then fails with `55Z01`.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) {
/// use fencegate_client::{classify, FenceError};
///
/// match sqlx::query("UPDATE jobs SET state = 'done' WHERE id = 7").execute(&pool).await {
///     Ok(_) => {}
///     Err(e) => match classify(&e) {
///         Some(FenceError::LockLost { current, .. }) => {
///             eprintln!("lock lost to token {current}: stopping");
///             return;
///         }
///         Some(misuse) => panic!("{misuse}"),
///         None => eprintln!("database error: {e}"),
///     },
/// }
/// # }
/// ```
pub fn classify(error: &sqlx::Error) -> Option<FenceError> {
    let db = error
        .as_database_error()?
        .try_downcast_ref::<PgDatabaseError>()?;
    match db.code() {
        STALE_TOKEN => {
            let (resource, presented, current) = db
                .detail()
                .and_then(parse_stale_detail)
                .or_else(|| parse_stale_message(db.message()))?;
            Some(FenceError::LockLost {
                resource,
                presented,
                current,
            })
        }
        code @ (INVALID_ANNOTATION | NOT_INSTALLED) => Some(FenceError::Misuse {
            code: code.to_string(),
            message: db.message().to_string(),
            hint: db.hint().map(str::to_string),
        }),
        _ => None,
    }
}

/// Parses `presented_token=T current_token=H resource=R` (R is raw and last, so it may
/// contain spaces and `=`).
pub(crate) fn parse_stale_detail(detail: &str) -> Option<(String, i64, i64)> {
    let rest = detail.strip_prefix("presented_token=")?;
    let (presented, rest) = rest.split_once(' ')?;
    let rest = rest.strip_prefix("current_token=")?;
    let (current, rest) = rest.split_once(' ')?;
    let resource = rest.strip_prefix("resource=")?;
    Some((
        resource.to_string(),
        presented.parse().ok()?,
        current.parse().ok()?,
    ))
}

/// Parses `stale fencing token T for resource 'R': the current token is H`, where the
/// resource is quoted as `quote_literal` does (`'…'` with `''`, or `E'…'` with `\\` too).
pub(crate) fn parse_stale_message(message: &str) -> Option<(String, i64, i64)> {
    let rest = message.strip_prefix("stale fencing token ")?;
    let (presented, rest) = rest.split_once(" for resource ")?;
    let (quoted, current) = rest.rsplit_once(": the current token is ")?;
    let (escaped, body) = match quoted.strip_prefix("E'") {
        Some(body) => (true, body),
        None => (false, quoted.strip_prefix('\'')?),
    };
    let body = body.strip_suffix('\'')?;
    let mut resource = body.replace("''", "'");
    if escaped {
        resource = resource.replace("\\\\", "\\");
    }
    Some((resource, presented.parse().ok()?, current.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_with_a_raw_resource_last() {
        assert_eq!(
            parse_stale_detail("presented_token=41 current_token=42 resource=jobs:7"),
            Some(("jobs:7".into(), 41, 42))
        );
        assert_eq!(
            parse_stale_detail(
                "presented_token=0 current_token=9223372036854775807 resource=a b=c resource=d"
            ),
            Some(("a b=c resource=d".into(), 0, i64::MAX))
        );
        assert_eq!(
            parse_stale_detail("presented_token=x current_token=1 resource=a"),
            None
        );
        assert_eq!(
            parse_stale_detail("current_token=1 presented_token=0 resource=a"),
            None
        );
        assert_eq!(
            parse_stale_detail("presented_token=1 current_token=2"),
            None
        );
    }

    #[test]
    fn message_with_a_quoted_resource() {
        assert_eq!(
            parse_stale_message(
                "stale fencing token 41 for resource 'jobs:7': the current token is 42"
            ),
            Some(("jobs:7".into(), 41, 42))
        );
        assert_eq!(
            parse_stale_message(
                r"stale fencing token 1 for resource E'a\\b''c: the current token is 5': the current token is 2"
            ),
            Some((r"a\b'c: the current token is 5".into(), 1, 2))
        );
        assert_eq!(
            parse_stale_message("stale fencing token 1 for resource a: the current token is 2"),
            None
        );
        assert_eq!(parse_stale_message("something else"), None);
    }

    #[test]
    fn misuse_display_includes_the_hint() {
        let e = FenceError::Misuse {
            code: NOT_INSTALLED.into(),
            message: "fencing is not installed".into(),
            hint: Some("Run `fencegate migrate`".into()),
        };
        assert_eq!(
            e.to_string(),
            "fencing misuse (55Z03): fencing is not installed (hint: Run `fencegate migrate`)"
        );
        assert!(!e.is_lock_lost());
    }
}
