//! The three ways to attach a fence from sqlx, through a real proxy: `SET LOCAL` in a
//! fenced transaction, a comment from `Fence::tag`, and startup options; and how each
//! rejection comes back as a typed `FenceError`.

use fencegate_client::{classify, Fence, FenceError};
use sqlx::{AssertSqlSafe, Row};

use crate::support::{pool, Env};

const JOBS: &str = "CREATE TABLE jobs (id int PRIMARY KEY, state text, written_by bigint);
                    INSERT INTO jobs VALUES (7, 'new', NULL);";

fn fence(resource: &str, token: i64) -> Fence {
    Fence::new(resource, token).unwrap()
}

/// Runs the fenced update of job 7 as `token`'s holder inside `fencegate_client::transaction`.
async fn update_job(pool: &sqlx::PgPool, f: &Fence, state: &str) -> Result<i64, FenceError> {
    let state = state.to_string();
    let token = f.token();
    fencegate_client::transaction(pool, f, async move |conn| {
        let before: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = 7")
            .fetch_one(&mut *conn)
            .await?;
        assert_ne!(before, "", "read inside the fenced transaction");
        let n = sqlx::query("UPDATE jobs SET state = $1, written_by = $2 WHERE id = 7")
            .bind(&state)
            .bind(token)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        Ok(n as i64)
    })
    .await
}

async fn job(env: &Env) -> (String, Option<i64>) {
    let row = sqlx::query("SELECT state, written_by FROM jobs WHERE id = 7")
        .fetch_one(&env.direct_pool().await)
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn assert_lock_lost(
    result: Result<impl std::fmt::Debug, FenceError>,
    r: &str,
    presented: i64,
    current: i64,
) {
    match result {
        Err(FenceError::LockLost {
            resource,
            presented: p,
            current: c,
        }) => {
            assert_eq!((resource.as_str(), p, c), (r, presented, current));
        }
        other => panic!("expected LockLost({r}, {presented}, {current}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_admits_fresh_and_rejects_stale_as_lock_lost() {
    let env = Env::new("client_set_local", JOBS).await;
    let pool = env.proxy_pool().await;
    // A resource that needs quoting in a SQL literal, and a raw DETAIL to parse back.
    let resource = r"jobs:7 o'brien\eu";

    assert_eq!(
        update_job(&pool, &fence(resource, 42), "by-42")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        env.high_water(resource).await,
        Some(42),
        "the exact resource was fenced"
    );

    let stale = update_job(&pool, &fence(resource, 41), "by-41").await;
    assert_lock_lost(stale, resource, 41, 42);
    assert!(update_job(&pool, &fence(resource, 41), "x")
        .await
        .unwrap_err()
        .is_lock_lost());
    assert_eq!(job(&env).await, ("by-42".to_string(), Some(42)));

    // Equal and newer tokens are admitted; the pool's connections are still usable.
    assert_eq!(
        update_job(&pool, &fence(resource, 42), "again-42")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        update_job(&pool, &fence(resource, 50), "by-50")
            .await
            .unwrap(),
        1
    );
    assert_eq!(job(&env).await, ("by-50".to_string(), Some(50)));

    // The same from a spawned task: the helper's future is Send.
    let p = pool.clone();
    let r = resource.to_string();
    let spawned = tokio::spawn(async move { update_job(&p, &fence(&r, 49), "by-49").await });
    assert_lock_lost(spawned.await.unwrap(), resource, 49, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_scopes_the_fence_to_the_transaction() {
    let env = Env::new("client_begin", JOBS).await;
    // One connection, so every transaction below runs on the same session.
    let pool = pool(&env.proxy_url(), 1).await;

    let mut tx = fencegate_client::begin(&pool, &fence("r", 10))
        .await
        .unwrap();
    let shown: String = sqlx::query_scalar("SELECT current_setting('fencing.token')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(shown, "10");
    tx.commit().await.unwrap();
    assert_eq!(env.high_water("r").await, Some(10));

    // SET LOCAL ended with the transaction: nothing carries the token any more.
    let after: Option<String> =
        sqlx::query_scalar("SELECT NULLIF(current_setting('fencing.token', true), '')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(after, None);

    // A stale holder: the first statement fails with 55Z01, `?` turns it into LockLost.
    let mut tx = fencegate_client::begin(&pool, &fence("r", 9))
        .await
        .unwrap();
    let err: FenceError = sqlx::query("SELECT 1")
        .execute(&mut *tx)
        .await
        .unwrap_err()
        .into();
    assert!(
        matches!(
            err,
            FenceError::LockLost {
                presented: 9,
                current: 10,
                ..
            }
        ),
        "{err:?}"
    );
    tx.rollback().await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(one, 1, "the connection is usable after the rejection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_local_keeps_one_prepared_statement_per_query() {
    let env = Env::new("client_stmt_cache", JOBS).await;
    let pool = pool(&env.proxy_url(), 1).await;
    for token in 1..=5 {
        assert_eq!(
            update_job(&pool, &fence("jobs:7", token), "x")
                .await
                .unwrap(),
            1
        );
    }
    let count = |pattern: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE $1",
            )
            .bind(pattern)
            .fetch_one(&pool)
            .await
            .unwrap();
            n
        }
    };
    assert_eq!(
        count("UPDATE jobs SET state%").await,
        1,
        "SET LOCAL: one statement for five tokens"
    );

    // With comments, each token is a new statement text, so a new prepared statement.
    for token in 6..=8 {
        let f = fence("jobs:7", token);
        sqlx::query(AssertSqlSafe(
            f.tag("UPDATE jobs SET written_by = $1 WHERE id = 7"),
        ))
        .bind(token)
        .execute(&pool)
        .await
        .unwrap();
    }
    assert_eq!(
        count("UPDATE jobs SET written_by%").await,
        3,
        "comments: one per token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_admits_fresh_and_rejects_stale() {
    let env = Env::new("client_tag", JOBS).await;
    let pool = env.proxy_pool().await;
    // Characters that must be URL-encoded to stay inside the comment and its quotes.
    let resource = "jobs/7 'it''s' */ é";
    let write = |token: i64, sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(AssertSqlSafe(fence(resource, token).tag(sql)))
                .bind(token)
                .execute(&pool)
                .await
        }
    };
    write(5, "UPDATE jobs SET written_by = $1 WHERE id = 7;")
        .await
        .unwrap();
    assert_eq!(env.high_water(resource).await, Some(5));
    // An existing sqlcommenter comment is kept and does not hide the fence.
    write(
        6,
        "UPDATE jobs SET written_by = $1 /*route='/jobs'*/ WHERE id = 7",
    )
    .await
    .unwrap();
    // A trailing line comment cannot swallow the fence.
    write(7, "UPDATE jobs SET written_by = $1 WHERE id = 7 -- done")
        .await
        .unwrap();
    assert_eq!(env.high_water(resource).await, Some(7));

    let err = write(4, "UPDATE jobs SET written_by = $1 WHERE id = 7")
        .await
        .unwrap_err();
    assert_lock_lost(
        Err::<(), _>(classify(&err).expect("a fencegate rejection")),
        resource,
        4,
        7,
    );
    assert_lock_lost(Err::<(), _>(err.into()), resource, 4, 7);
    assert_eq!(job(&env).await.1, Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_options_fence_the_whole_session() {
    let env = Env::new("client_options", JOBS).await;
    // Spaces and a backslash: escaped in `options`, then percent-encoded in the URL.
    let resource = r"jobs 7\eu";
    let session = |token: i64| {
        let url = format!(
            "{}?{}",
            env.proxy_url(),
            fence(resource, token).connect_options_query()
        );
        async move { pool(&url, 1).await }
    };
    let fresh = session(3).await;
    let shown: String = sqlx::query_scalar("SHOW fencing.resource")
        .fetch_one(&fresh)
        .await
        .unwrap();
    assert_eq!(
        shown, resource,
        "the server got the resource back unescaped"
    );
    sqlx::query("UPDATE jobs SET written_by = 3 WHERE id = 7")
        .execute(&fresh)
        .await
        .unwrap();
    assert_eq!(env.high_water(resource).await, Some(3));

    let stale = session(2).await;
    let err = sqlx::query("UPDATE jobs SET written_by = 2 WHERE id = 7")
        .execute(&stale)
        .await
        .unwrap_err();
    assert_lock_lost(Err::<(), _>(err.into()), resource, 2, 3);
    assert_eq!(job(&env).await.1, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misuse_is_not_lock_lost() {
    // 55Z03: a database without the schema; the hint names the command to run.
    let cluster = fencegate_tests::Cluster::shared();
    let bare = cluster.create_database("client_no_schema");
    let proxy = fencegate_tests::TestProxy::plain(cluster.port());
    let pool = pool(&crate::support::direct_url(proxy.addr().port(), &bare), 1).await;
    let err = fencegate_client::transaction(&pool, &fence("r", 1), async |conn| {
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
        Ok(())
    })
    .await
    .unwrap_err();
    match err {
        FenceError::Misuse { code, hint, .. } => {
            assert_eq!(code, "55Z03");
            assert!(hint.unwrap_or_default().contains("fencegate migrate"));
        }
        other => panic!("expected Misuse(55Z03), got {other:?}"),
    }

    // 55Z02: a token that is not an integer.
    let env = Env::new("client_misuse", "").await;
    let pool = env.proxy_pool().await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql("SET LOCAL fencing.resource = 'r'; SET LOCAL fencing.token = 'soon'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap_err();
    match classify(&err) {
        Some(FenceError::Misuse { code, message, .. }) => {
            assert_eq!(code, "55Z02");
            assert!(message.contains("soon"), "{message}");
        }
        other => panic!("expected Misuse(55Z02), got {other:?}"),
    }
    // Other errors are not fencing rejections.
    drop(tx);
    let err = sqlx::query("SELECT * FROM no_such_table")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(classify(&err).is_none());
    assert!(matches!(FenceError::from(err), FenceError::Database(_)));
}
