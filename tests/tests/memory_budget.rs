//! Unfinished client messages across all sessions are bounded by `max_buffered_bytes`
//! (default 256 MiB): eight clients each sending 200 MiB of a Query they never finish leave
//! the proxy far below what they sent, the sessions past the budget end with FATAL 53200,
//! and another client is answered meanwhile.
#![forbid(unsafe_code)]

use std::io::Write;
use std::thread;

use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::raw::{raw_session, read_message};
use fencegate_tests::TestProxy;

const HOGS: usize = 8;
const EACH: usize = 200 << 20;

/// `VmRSS` (now) or `VmHWM` (the peak so far) of this process, which runs the proxy.
fn memory(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .expect("memory line");
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Sends the header of a Query of `EACH + 1` bytes and `EACH` bytes of it; returns the
/// SQLSTATE of the FATAL the proxy answered with, if it ended the session.
fn hog(addr: std::net::SocketAddr, db: String) -> Option<String> {
    let (mut stream, _) = raw_session(addr, &db);
    let mut header = vec![b'Q'];
    header.extend_from_slice(&((EACH + 5) as i32).to_be_bytes());
    stream.write_all(&header).ok()?;
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..EACH >> 20 {
        if stream.write_all(&chunk).is_err() {
            break;
        }
    }
    let (tag, body) = read_message_or_none(&mut stream)?;
    (tag == b'E').then(|| {
        let text = String::from_utf8_lossy(&body).to_string();
        assert!(text.contains("max_buffered_bytes"), "{text}");
        text.split('\0')
            .find_map(|f| f.strip_prefix('C').map(str::to_string))
            .unwrap_or_default()
    })
}

fn read_message_or_none(stream: &mut std::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_message(stream))).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_messages_of_many_clients_stay_within_the_budget() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("budget");
    let limit = std::env::var("FG_TEST_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok());
    let proxy = TestProxy::plain_with(cluster.port(), |c| {
        if let Some(limit) = limit {
            c.max_buffered_bytes = limit
        }
    });
    let addr = proxy.addr();
    let before = memory("VmRSS:");
    let hogs: Vec<_> = (0..HOGS)
        .map(|_| {
            let db = db.clone();
            thread::spawn(move || hog(addr, db))
        })
        .collect();
    let ended: Vec<Option<String>> = hogs.into_iter().map(|h| h.join().unwrap()).collect();
    let grown = memory("VmHWM:").saturating_sub(before);
    eprintln!(
        "proxy grew by {} MiB; sessions ended: {ended:?}",
        grown >> 20
    );
    assert!(
        grown < 400 << 20,
        "{} MiB for {HOGS} unfinished messages of {} MiB",
        grown >> 20,
        EACH >> 20
    );
    let refused = ended
        .iter()
        .filter(|e| e.as_deref() == Some("53200"))
        .count();
    assert!(
        refused >= HOGS - 2,
        "only {refused} sessions ended with 53200"
    );
    // Others are answered while the hogs still hold what fits.
    let client = proxy.endpoint().connect(TRUST_USER, &db).await;
    let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}
