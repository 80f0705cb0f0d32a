//! `Lease` on fencegate's lease service against a real database: renewal past the TTL,
//! release (explicit and on drop), waiting for a holder, and the lost signal, both when the
//! service refuses a renewal (someone else took over) and when renewals cannot get through.

use std::time::{Duration, Instant};

use fencegate_client::{Lease, LeaseError, LeaseRequest, LeaseStatus, LostReason};
use sqlx::PgPool;

use crate::relay::Relay;
use crate::support::{eventually, job_result, pool, within, Env, DEADLINE, JOB_SETUP};

/// Long enough that a busy 2-core machine renews in time (renewal every TTL / 3).
const TTL: Duration = Duration::from_secs(3);

/// The live holder and token of `resource`, read directly from the service.
async fn holder(pool: &PgPool, resource: &str) -> Option<(String, i64)> {
    sqlx::query_as("SELECT holder, token FROM fencegate.lease_holder($1)")
        .bind(resource)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_past_its_ttl_and_releases() {
    let env = Env::new("lease_renew", "").await;
    let pool = env.direct_pool().await;
    let a = Lease::acquire(&pool, "job:1", "worker-a", TTL)
        .await
        .unwrap();
    assert!(a.token() >= 1);
    assert_eq!(a.fence().resource(), "job:1");

    // Two TTLs later it is still ours, with the same token: the renewals got through. Not a
    // wait for anything: the holder is sampled every 100 ms through a deliberate interval.
    let until = Instant::now() + 2 * TTL;
    while Instant::now() < until {
        assert_eq!(
            holder(&pool, "job:1").await,
            Some(("worker-a".into(), a.token()))
        );
        assert_eq!(a.status(), LeaseStatus::Held);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(Lease::try_acquire(&pool, "job:1", "worker-b", TTL)
        .await
        .unwrap()
        .is_none());

    // B waits for it; A releases; B gets it at once with a newer token.
    let b = tokio::spawn({
        let pool = pool.clone();
        async move { Lease::acquire(&pool, "job:1", "worker-b", TTL).await }
    });
    let lost = a.lost_signal();
    let token_a = a.token();
    assert!(a.release().await.unwrap(), "it was still held");
    assert_eq!(lost.status(), LeaseStatus::Released);
    let b = within("B's acquire", b).await.unwrap().unwrap();
    assert!(b.token() > token_a, "{} > {token_a}", b.token());
    assert_eq!(
        holder(&pool, "job:1").await,
        Some(("worker-b".into(), b.token()))
    );
    b.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_lease_releases_it() {
    let env = Env::new("lease_drop", "").await;
    let pool = env.direct_pool().await;
    // A TTL far longer than the test: only a release can free it in time.
    let long = Duration::from_secs(600);
    let a = Lease::acquire(&pool, "job:2", "worker-a", long)
        .await
        .unwrap();
    let token_a = a.token();
    drop(a);
    eventually("the dropped lease to be released", || async {
        holder(&pool, "job:2").await.is_none().then_some(())
    })
    .await;
    let b = Lease::try_acquire(&pool, "job:2", "worker-b", long)
        .await
        .unwrap()
        .unwrap();
    assert!(b.token() > token_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_when_taken_over_and_its_fence_is_stale() {
    let env = Env::new("lease_takeover", JOB_SETUP).await;
    let direct = env.direct_pool().await;
    let proxied = env.proxy_pool().await;
    let a = Lease::acquire(&direct, "job:7", "worker-a", TTL)
        .await
        .unwrap();
    let lost = a.lost_signal();

    // A's lease runs out on the database (as after a pause longer than the TTL) and B
    // takes it over before A's next renewal.
    sqlx::query(
        "UPDATE fencegate.lease SET expires_at = clock_timestamp() WHERE resource = 'job:7'",
    )
    .execute(&direct)
    .await
    .unwrap();
    let b = Lease::try_acquire(&direct, "job:7", "worker-b", TTL)
        .await
        .unwrap()
        .expect("free");
    assert!(b.token() > a.token());

    assert_eq!(
        within("A's lost signal", lost.wait()).await,
        LeaseStatus::Lost(LostReason::Refused)
    );
    assert!(lost.is_lost());

    // B writes; A's late write through the proxy is rejected with its fence.
    crate::support::b_writes_then_a_is_rejected(&proxied, a.fence(), b.fence()).await;
    assert_eq!(job_result(&direct).await.as_deref(), Some("b"));
    assert!(!a.release().await.unwrap(), "A's lease was no longer held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_when_renewals_cannot_get_through() {
    let env = Env::new("lease_partition", "").await;
    // The lease's pool reaches Postgres through a relay that can go silent.
    let port = fencegate_tests::Cluster::shared().port();
    let relay = Relay::start(([127, 0, 0, 1], port).into()).await;
    let url = crate::support::direct_url(relay.addr().port(), &env.db);
    let pool = pool(&url, 2).await;
    let a = Lease::acquire(&pool, "job:3", "worker-a", TTL)
        .await
        .unwrap();
    let lost = a.lost_signal();
    // Not a wait for anything: a deliberate interval of two TTLs, which the lease outlives
    // only if its renewals get through.
    tokio::time::sleep(2 * TTL).await;
    assert_eq!(
        a.status(),
        LeaseStatus::Held,
        "renewed while the network worked"
    );

    relay.freeze();
    let frozen = Instant::now();
    let status = within("A's lost signal", lost.wait()).await;
    let after = frozen.elapsed();
    assert_eq!(status, LeaseStatus::Lost(LostReason::Expired));
    // The last renewal that got through was sent at most two intervals (2 × TTL / 3)
    // before the freeze (the one after it may have been caught in flight); the signal
    // cannot fire before that renewal's TTL is up.
    assert!(
        after >= TTL - 2 * (TTL / 3) - Duration::from_millis(100),
        "fired after {after:?}"
    );
    assert!(
        after <= TTL + Duration::from_secs(5),
        "fired after {after:?}"
    );

    // The service agrees the lease can be taken once its own clock says so.
    let direct = env.direct_pool().await;
    let b = eventually("B to get the expired lease", || async {
        Lease::try_acquire(&direct, "job:3", "worker-b", DEADLINE)
            .await
            .unwrap()
    })
    .await;
    assert!(b.token() > a.token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_a_missing_schema() {
    let env = Env::new("lease_misuse", "").await;
    let db = env.direct_pool().await;
    let err = LeaseRequest::new("job:4", "a", Duration::from_secs(1))
        .renew_every(Duration::from_secs(1))
        .try_acquire(&db)
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::InvalidRequest(_)), "{err:?}");
    let err = Lease::try_acquire(&db, "", "a", TTL).await.unwrap_err();
    assert!(matches!(err, LeaseError::InvalidResource(_)), "{err:?}");

    let cluster = fencegate_tests::Cluster::shared();
    let bare = cluster.create_database("lease_no_schema");
    let bare = pool(&crate::support::direct_url(cluster.port(), &bare), 1).await;
    let err = Lease::try_acquire(&bare, "job:4", "a", TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::NotInstalled(_)), "{err:?}");
    assert!(err.to_string().contains("fencegate migrate"));
}
