//! The built-in lease service's token rules (strictly increasing per resource across all
//! grants, never reused after release or expiry, always above the fence high-water mark),
//! and `fencegate demo` run in-process (it must show the corruption directly and its
//! prevention through the proxy).
#![forbid(unsafe_code)]

use fencegate_tests::fence::{comment, FenceEnv};

async fn acquire(client: &tokio_postgres::Client, holder: &str, ttl: &str) -> Option<i64> {
    client
        .query_one(
            "SELECT fencegate.acquire('job:7', $1, $2::text::interval)",
            &[&holder, &ttl],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_tokens_only_grow_and_start_above_the_high_water_mark() {
    let env = FenceEnv::new(
        "lease_tokens",
        "CREATE TABLE t (a int); GRANT ALL ON t TO trust_user;",
    )
    .await;
    let client = env.client().await;
    let first = acquire(&client, "a", "10 seconds").await.unwrap();
    assert_eq!(
        acquire(&client, "b", "10 seconds").await,
        None,
        "a live lease is exclusive"
    );
    let released: bool = client
        .query_one("SELECT fencegate.release('job:7', 'a', $1)", &[&first])
        .await
        .unwrap()
        .get(0);
    assert!(released);
    let second = acquire(&client, "b", "50 milliseconds").await.unwrap();
    assert!(second > first, "{second} > {first} after release");
    // Wait (polling, bounded) until the database's clock says the lease expired.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !client
        .query("SELECT 1 FROM fencegate.lease_holder('job:7')", &[])
        .await
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let renewed: bool = client
        .query_one(
            "SELECT fencegate.renew('job:7', 'b', $1, '10 seconds')",
            &[&second],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!renewed, "an expired lease cannot be renewed");
    let third = acquire(&client, "c", "10 seconds").await.unwrap();
    assert!(third > second, "{third} > {second} after expiry");
    // A token from another lock service raised H far above: the next grant is above it.
    client
        .batch_execute(&format!("SELECT 1 FROM t {}", comment("job:7", 1000)))
        .await
        .unwrap();
    client
        .query_one("SELECT fencegate.release('job:7', 'c', $1)", &[&third])
        .await
        .unwrap();
    let fourth = acquire(&client, "d", "10 seconds").await.unwrap();
    assert_eq!(fourth, 1001);
    let holder: String = client
        .query_one("SELECT holder FROM fencegate.lease_holder('job:7')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(holder, "d");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_the_corruption_directly_and_prevents_it_through_the_proxy() {
    let prevented = fencegate::demo::run().await.expect("the demo runs");
    assert!(prevented);
}
