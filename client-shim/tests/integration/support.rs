//! Shared setup for the client integration tests: a fresh database with the `fencegate`
//! schema in the harness's throwaway cluster, the proxy in front of it (as `fencegate
//! serve` runs it), sqlx pools either way, and polling with a deadline instead of sleeps.

use std::time::Duration;

use fencegate_tests::cluster::SUPERUSER;
use fencegate_tests::{Cluster, TestProxy};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// How long any awaited condition may take (generous: the machine may be compiling).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A database with the fencegate schema and a proxy in front of the shared cluster.
pub struct Env {
    /// The database's name.
    pub db: String,
    /// The proxy (stopped on drop).
    pub proxy: TestProxy,
}

impl Env {
    /// A fresh database named after `prefix`, with the schema installed the way
    /// `fencegate migrate` does, then `setup` run in it directly.
    pub async fn new(prefix: &str, setup: &str) -> Env {
        let cluster = Cluster::shared();
        let db = cluster.create_database(prefix);
        let url = direct_url(cluster.port(), &db);
        fencegate::schema::migrate::run(&url)
            .await
            .unwrap_or_else(|e| panic!("fencegate migrate {url}: {e}"));
        if !setup.is_empty() {
            cluster.execute(&db, setup);
        }
        let proxy = TestProxy::plain(cluster.port());
        Env { db, proxy }
    }

    /// `postgres://` URL of this database through the proxy.
    pub fn proxy_url(&self) -> String {
        direct_url(self.proxy.addr().port(), &self.db)
    }

    /// A pool through the proxy.
    pub async fn proxy_pool(&self) -> PgPool {
        pool(&self.proxy_url(), 4).await
    }

    /// A pool straight to PostgreSQL (what the tests use to look behind the proxy).
    pub async fn direct_pool(&self) -> PgPool {
        pool(&direct_url(Cluster::shared().port(), &self.db), 4).await
    }

    /// The committed high-water mark of `resource`, read directly.
    pub async fn high_water(&self, resource: &str) -> Option<i64> {
        sqlx::query_scalar("SELECT token FROM fencegate.fence WHERE resource = $1")
            .bind(resource)
            .fetch_optional(&self.direct_pool().await)
            .await
            .expect("read fencegate.fence")
    }
}

/// `postgres://postgres@127.0.0.1:port/db`.
pub fn direct_url(port: u16, db: &str) -> String {
    format!("postgres://{SUPERUSER}@127.0.0.1:{port}/{db}")
}

/// A sqlx pool of at most `max` connections to `url`.
pub async fn pool(url: &str, max: u32) -> PgPool {
    let options: PgConnectOptions = url.parse().expect("valid URL");
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

pub use fencegate_tests::fence::{eventually, within};

/// The table [`write_job`] writes to: job 7, no result yet.
pub const JOB_SETUP: &str = "CREATE TABLE job (id int PRIMARY KEY, result text);
                             INSERT INTO job VALUES (7, NULL);";

/// Job 7's result, read from `pool`.
pub async fn job_result(pool: &PgPool) -> Option<String> {
    sqlx::query_scalar("SELECT result FROM job WHERE id = 7")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Writes `who` as job 7's result through the proxy, in a transaction fenced by `fence`.
pub async fn write_job(
    proxied: &PgPool,
    fence: &fencegate_client::Fence,
    who: &'static str,
) -> Result<(), fencegate_client::FenceError> {
    fencegate_client::transaction(proxied, fence, async |conn| {
        sqlx::query("UPDATE job SET result = $1 WHERE id = 7")
            .bind(who)
            .execute(&mut *conn)
            .await?;
        Ok(())
    })
    .await
}

/// Through the proxy: B writes job 7 with its fence, then A's late write with its older
/// fence must fail with `LockLost` naming A's token and B's as the current one.
pub async fn b_writes_then_a_is_rejected(
    proxied: &PgPool,
    a: &fencegate_client::Fence,
    b: &fencegate_client::Fence,
) {
    write_job(proxied, b, "b").await.unwrap();
    match write_job(proxied, a, "a").await {
        Err(fencegate_client::FenceError::LockLost {
            resource,
            presented,
            current,
        }) => {
            assert_eq!(
                (resource.as_str(), presented, current),
                (b.resource(), a.token(), b.token())
            );
        }
        other => panic!("A's stale write: {other:?}"),
    }
}
