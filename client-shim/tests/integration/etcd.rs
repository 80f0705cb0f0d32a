//! The etcd adapter against a real etcd (Debian's `etcd-server`) and a real proxy: tokens
//! are the lock key's create revision and grow across grants, the lease is kept alive past
//! its TTL, the lost signal fires when etcd refuses the lease, dropping a lock releases it,
//! and a stale etcd token is rejected by fencegate.

use std::time::Duration;

use fencegate_client::etcd::EtcdClient;
use fencegate_client::{LeaseStatus, LostReason};

use crate::etcd_server::EtcdServer;
use crate::support::{within, Env, JOB_SETUP};

/// etcd's shortest lease with the test server's raft timers is one second; ask for three
/// so that a busy machine keeps it alive in time (keepalive every TTL / 3).
const TTL: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lock_tokens_fence_writes() {
    let etcd = EtcdServer::start().await;
    let env = Env::new("etcd_fence", JOB_SETUP).await;
    let proxied = env.proxy_pool().await;
    let client = EtcdClient::new(etcd.url()).unwrap();

    let a = client.lock("job:7", TTL).await.unwrap();
    assert!(
        a.key().starts_with(b"job:7/"),
        "{:?}",
        String::from_utf8_lossy(a.key())
    );
    assert_eq!(a.fence().resource(), "job:7");
    let lost_a = a.lost_signal();

    // B queues behind A; A's lease is kept alive well past its TTL, so B keeps waiting.
    let b = tokio::spawn({
        let client = client.clone();
        async move { client.lock("job:7", TTL).await }
    });
    // Not a wait for anything: a deliberate interval of two TTLs, during which B must not
    // get the lock.
    tokio::time::sleep(2 * TTL).await;
    assert!(!b.is_finished(), "B got the lock while A held it");
    assert_eq!(a.status(), LeaseStatus::Held);

    // A's lease ends on etcd's side (as after a pause past its TTL): A is told, B gets in.
    revoke(etcd.url(), a.lease_id()).await;
    assert_eq!(
        within("A's lost signal", lost_a.wait()).await,
        LeaseStatus::Lost(LostReason::Refused)
    );
    let b = within("B's lock", b).await.unwrap().unwrap();
    assert!(b.token() > a.token(), "{} > {}", b.token(), a.token());
    // The token is the key's create revision (B's key was created while A held the lock,
    // before the revision at which B was granted it).
    assert_eq!(create_revision(etcd.url(), b.key()).await, b.token());

    // Through fencegate: B's write lands, A's late write is rejected with A's token.
    crate::support::b_writes_then_a_is_rejected(&proxied, a.fence(), b.fence()).await;

    // Unlock, lock again: a newer token. Drop, lock again: released without waiting for the
    // TTL (a long one, so only the drop can free it in time).
    let token_b = b.token();
    b.unlock().await.unwrap();
    let c = within("C's lock", client.lock("job:7", Duration::from_secs(600)))
        .await
        .unwrap();
    assert!(c.token() > token_b);
    let token_c = c.token();
    drop(c);
    let d = within("D's lock", client.lock("job:7", TTL)).await.unwrap();
    assert!(d.token() > token_c);
    crate::support::write_job(&proxied, d.fence(), "d")
        .await
        .unwrap();
    d.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_errors_are_reported() {
    let etcd = EtcdServer::start().await;
    assert!(EtcdClient::new("127.0.0.1:2379").is_err(), "not a URL");
    let client = EtcdClient::new(etcd.url()).unwrap();
    assert!(client.lock("", TTL).await.is_err(), "empty resource");
    // A lock wait that is cancelled withdraws from the queue: the next locker is not stuck
    // behind it until its (long) lease runs out.
    let a = client.lock("job:8", TTL).await.unwrap();
    let long = Duration::from_secs(600);
    // Not a wait for anything: the second lock is given a deliberate 300 ms in which it must
    // still be waiting, and is then cancelled.
    let waiting =
        tokio::time::timeout(Duration::from_millis(300), client.lock("job:8", long)).await;
    assert!(waiting.is_err(), "the second lock waited");
    a.unlock().await.unwrap();
    let c = within(
        "the lock after a cancelled waiter",
        client.lock("job:8", TTL),
    )
    .await
    .unwrap();
    c.unlock().await.unwrap();
}

/// The create revision of `key`, read from etcd directly.
async fn create_revision(url: &str, key: &[u8]) -> i64 {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    let reply: serde_json::Value = http()
        .post(format!("{url}/v3/kv/range"))
        .json(&serde_json::json!({ "key": key }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["kvs"][0]["create_revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no create_revision in {reply}"))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Revokes an etcd lease behind the adapter's back.
async fn revoke(url: &str, lease: i64) {
    let reply = http()
        .post(format!("{url}/v3/lease/revoke"))
        .json(&serde_json::json!({ "ID": lease.to_string() }))
        .send()
        .await
        .unwrap();
    assert!(
        reply.status().is_success(),
        "revoke: {}",
        reply.text().await.unwrap()
    );
}
