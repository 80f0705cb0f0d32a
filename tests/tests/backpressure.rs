//! Backpressure: the proxy holds a bounded amount for a peer that does not keep up, in
//! both directions, and loses nothing once that peer catches up.
//!
//! Each test shows the bound from the other end: a server that sends more than every
//! buffer on the way can hold is seen waiting to write (`ClientWrite`) while the client
//! does not read, and a client that sends more than that while the server is busy is still
//! blocked in its write. A proxy that buffered without bound would let both finish.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fencegate_tests::cluster::{Cluster, SUPERUSER};
use fencegate_tests::fence::{eventually, within};
use fencegate_tests::raw::{raw_session, read_message};
use fencegate_tests::wire::msg;
use fencegate_tests::TestProxy;

/// More than the proxy's queue plus the kernel buffers on a loopback path can hold (the
/// send and receive buffers autotune to a few MiB each).
const FLOOD_BYTES: usize = 48 << 20;

/// The backend's `wait_event`, read directly from the server.
async fn wait_event(monitor: &tokio_postgres::Client, pid: i32) -> Option<String> {
    monitor
        .query_one(
            "SELECT wait_event FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Reads messages until ReadyForQuery; returns the DataRows' total size and the
/// CommandComplete tags.
fn read_results(stream: &mut TcpStream) -> (usize, usize, Vec<String>) {
    let (mut rows, mut bytes, mut tags) = (0, 0, Vec::new());
    loop {
        let (tag, body) = read_message(stream);
        match tag {
            b'D' => {
                rows += 1;
                bytes += body.len();
            }
            b'C' => tags.push(String::from_utf8_lossy(&body[..body.len() - 1]).into_owned()),
            b'E' => panic!("error: {}", String::from_utf8_lossy(&body)),
            b'Z' => return (rows, bytes, tags),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_the_server_back_and_then_gets_everything() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("backpressure_down");
    let proxy = TestProxy::plain(cluster.port());
    let monitor = cluster.endpoint().connect(SUPERUSER, &db).await;
    let (mut stream, pid) = raw_session(proxy.addr(), &db);

    let rows = FLOOD_BYTES / 1000;
    stream
        .write_all(&msg::query(&format!(
            "SELECT repeat('x', 1000) FROM generate_series(1, {rows})"
        )))
        .unwrap();
    // The client reads nothing: the server must end up waiting to write.
    eventually("the server to wait on its socket", || async {
        (wait_event(&monitor, pid).await.as_deref() == Some("ClientWrite")).then_some(())
    })
    .await;
    // And stay there (the proxy does not drain it into memory meanwhile). Not a wait for
    // anything: a deliberate interval in which nothing may change.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        wait_event(&monitor, pid).await.as_deref(),
        Some("ClientWrite")
    );

    let (mut stream, got) = tokio::task::spawn_blocking(move || {
        let got = read_results(&mut stream);
        (stream, got)
    })
    .await
    .unwrap();
    assert_eq!(got.0, rows, "every row arrives");
    assert_eq!(
        got.1,
        rows * (2 + 4 + 1000),
        "every byte of every row arrives"
    );
    assert_eq!(got.2, vec![format!("SELECT {rows}")]);

    // The session carries on.
    stream.write_all(&msg::query("SELECT 1")).unwrap();
    let (rows, _, tags) = tokio::task::spawn_blocking(move || read_results(&mut stream))
        .await
        .unwrap();
    assert_eq!((rows, tags), (1, vec!["SELECT 1".to_string()]));
    proxy.stop().expect("proxy stops");
}

#[tokio::test]
async fn a_busy_server_holds_the_client_back_and_then_runs_everything() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("backpressure_up");
    cluster.execute(&db, "CREATE TABLE held (id int)");
    let proxy = TestProxy::plain(cluster.port());
    let holder = cluster.endpoint().connect(SUPERUSER, &db).await;
    holder
        .batch_execute("BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let monitor = cluster.endpoint().connect(SUPERUSER, &db).await;
    let (stream, pid) = raw_session(proxy.addr(), &db);

    // One Query that waits for the lock, then 1 MiB Queries, more than every buffer on the
    // way holds, written by a thread that blocks once they are full.
    let text = "y".repeat(1 << 20);
    let big = msg::query(&format!("SELECT length('{text}')"));
    let count = FLOOD_BYTES / big.len() + 1;
    let written = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut stream, written) = (stream.try_clone().unwrap(), written.clone());
        std::thread::spawn(move || {
            stream
                .write_all(&msg::query("SELECT count(*) FROM held"))
                .unwrap();
            for _ in 0..count {
                stream.write_all(&big).unwrap();
            }
            written.store(true, Ordering::SeqCst);
        })
    };
    eventually("the first Query to wait for the lock", || async {
        (wait_event(&monitor, pid).await.as_deref() == Some("relation")).then_some(())
    })
    .await;
    // Not a wait for anything: a deliberate interval in which the writer must stay blocked
    // (a proxy that buffered without bound would take all of it meanwhile).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !written.load(Ordering::SeqCst),
        "{} MiB went into the proxy while the server read nothing",
        count
    );

    holder.batch_execute("COMMIT").await.unwrap();
    let mut stream = stream;
    let tags = within(
        "every Query to be answered",
        tokio::task::spawn_blocking(move || {
            let mut tags = Vec::new();
            let mut lengths = 0;
            for _ in 0..=count {
                let (rows, _, t) = read_results(&mut stream);
                lengths += rows;
                tags.extend(t);
            }
            (tags, lengths)
        }),
    )
    .await
    .unwrap();
    writer.join().expect("writer thread");
    assert!(written.load(Ordering::SeqCst));
    assert_eq!(tags.0.len(), count + 1, "one CommandComplete per Query");
    assert_eq!(tags.1, count + 1, "one row per Query");
    proxy.stop().expect("proxy stops");
}
