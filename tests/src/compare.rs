//! The pattern every integration test follows: run one scenario against Postgres directly and
//! through a fresh proxy (configured as `fencegate serve` runs by default), each on its own fresh database, and require equal
//! observations.

use std::fmt::Debug;
use std::future::Future;

use crate::cluster::Cluster;
use crate::endpoint::Endpoint;
use crate::proxy::TestProxy;

/// Runs async `scenario(endpoint, database)` on the shared cluster directly, then through a
/// new proxy; asserts both observations are equal and returns the direct one.
pub async fn direct_and_proxied<T, F, Fut>(name: &str, scenario: F) -> T
where
    T: PartialEq + Debug,
    F: Fn(Endpoint, String) -> Fut,
    Fut: Future<Output = T>,
{
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let db = cluster.create_database(&format!("{name}_direct"));
    let direct = scenario(cluster.endpoint(), db).await;
    let db = cluster.create_database(&format!("{name}_proxy"));
    let proxied = scenario(proxy.endpoint(), db).await;
    assert_eq!(
        direct, proxied,
        "{name}: through the proxy differs from direct"
    );
    direct
}

/// A superuser session on `db` through `ep`, in which the scenario's table has been made
/// with `create`.
pub async fn connect_with_table(ep: &Endpoint, db: &str, create: &str) -> tokio_postgres::Client {
    let client = ep.connect(crate::cluster::SUPERUSER, db).await;
    client
        .batch_execute(create)
        .await
        .unwrap_or_else(|e| panic!("{create}: {e}"));
    client
}

/// The SQLSTATE of a tokio-postgres error, or a description when the server sent none.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| format!("no SQLSTATE: {e}"), |c| c.code().to_string())
}

/// The first column of every row, in order (a portal's batch, a list of ids).
pub fn first_column<T: tokio_postgres::types::FromSqlOwned>(
    rows: &[tokio_postgres::Row],
) -> Vec<T> {
    rows.iter().map(|r| r.get(0)).collect()
}
