//! Fenced transactions on sqlx: `BEGIN`, then the fence as `SET LOCAL`, then your
//! statements, whose text stays constant so sqlx's statement cache keeps working.
//!
//! Connect the pool to fencegate, not to PostgreSQL directly: the proxy is what checks the
//! token. The `SET LOCAL` statements themselves are not checked; the first statement after
//! them is (a read included), and from then on the whole transaction holds the resource's
//! fence row, so a newer holder waits for it or ends it (see `docs/fencing.md`).

use sqlx::{Acquire, AssertSqlSafe, PgConnection, PgTransaction, Postgres};

use crate::error::FenceError;
use crate::fence::Fence;

/// Begins a transaction on `conn` (a `&PgPool`, a `&mut PgConnection`, or a transaction
/// for a savepoint) and sets `fence` for it with `SET LOCAL`, in one round trip after
/// `BEGIN`. Commit or roll back the returned transaction as usual; errors from your
/// statements convert into [`FenceError`] with `?`.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> Result<(), fencegate_client::FenceError> {
/// use fencegate_client::Fence;
///
/// let fence = Fence::new("jobs:7", 42).expect("a valid resource and token");
/// let mut tx = fencegate_client::begin(&pool, &fence).await?;
/// sqlx::query("UPDATE jobs SET state = 'done' WHERE id = $1")
///     .bind(7_i32)
///     .execute(&mut *tx)
///     .await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
pub async fn begin<'c, A>(conn: A, fence: &Fence) -> Result<PgTransaction<'c>, FenceError>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut tx = conn.begin().await?;
    // SAFETY (injection): set_local_sql quotes the resource as quote_literal does and the
    // token is an integer.
    sqlx::raw_sql(AssertSqlSafe(fence.set_local_sql()))
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Runs `work` in a fenced transaction ([`begin`]) and commits it when `work` returns `Ok`;
/// rolls it back when `work` returns `Err` (the rollback's own error is dropped in favour
/// of `work`'s). A [`FenceError::LockLost`] means stop, not retry.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> Result<(), fencegate_client::FenceError> {
/// use fencegate_client::{Fence, FenceError};
///
/// let fence = Fence::new("jobs:7", 42).expect("a valid resource and token");
/// let result = fencegate_client::transaction(&pool, &fence, async |conn| {
///     let total: i64 = sqlx::query_scalar("SELECT total FROM jobs WHERE id = 7")
///         .fetch_one(&mut *conn)
///         .await?;
///     sqlx::query("UPDATE jobs SET total = $1 WHERE id = 7")
///         .bind(total + 1)
///         .execute(&mut *conn)
///         .await?;
///     Ok(total + 1)
/// })
/// .await;
/// match result {
///     Ok(total) => println!("total is now {total}"),
///     Err(FenceError::LockLost { current, .. }) => println!("lost to {current}; stopping"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
pub async fn transaction<'c, A, T, F>(conn: A, fence: &Fence, work: F) -> Result<T, FenceError>
where
    A: Acquire<'c, Database = Postgres>,
    F: AsyncFnOnce(&mut PgConnection) -> Result<T, FenceError>,
{
    let mut tx = begin(conn, fence).await?;
    match work(&mut *tx).await {
        Ok(value) => {
            tx.commit().await?;
            Ok(value)
        }
        Err(e) => {
            if let Err(rollback) = tx.rollback().await {
                tracing::debug!(error = %rollback, "rollback after a failed fenced transaction");
            }
            Err(e)
        }
    }
}
