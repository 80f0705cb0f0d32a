//! Waiting on what a backend is doing, as `pg_stat_activity` shows it, instead of sleeping:
//! a test that cancels or terminates a query first waits until the query is running.

use std::time::Instant;

use tokio_postgres::{CancelToken, Client, NoTls};

use crate::fence::eventually;

/// Waits until a backend in `monitor`'s database is running exactly `sql` (its `query` is
/// `sql` and its `state` is `active`). `monitor` should be a superuser connection straight
/// to Postgres, which sees every role's query text.
pub async fn wait_until_active(monitor: &Client, sql: &str) {
    let running = "SELECT count(*) FROM pg_stat_activity \
                   WHERE datname = current_database() AND query = $1 AND state = 'active'";
    eventually(&format!("{sql:?} to be running"), || async {
        let count: i64 = monitor
            .query_one(running, &[&sql])
            .await
            .expect("read pg_stat_activity")
            .get(0);
        (count > 0).then_some(())
    })
    .await
}

/// Waits until `sql` is running (see [`wait_until_active`]), then sends a CancelRequest with
/// `token` to wherever the token's connection went (Postgres or the proxy). Returns when the
/// request was sent.
pub async fn cancel_when_active(monitor: &Client, sql: &str, token: &CancelToken) -> Instant {
    wait_until_active(monitor, sql).await;
    let sent = Instant::now();
    token
        .cancel_query(NoTls)
        .await
        .expect("send cancel request");
    sent
}
