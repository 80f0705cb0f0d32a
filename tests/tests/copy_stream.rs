//! A CopyData needs no inspection, so a long one is relayed as it arrives instead of being
//! buffered whole: COPY rows far larger than `max_buffered_bytes` pass. (Its own test binary:
//! `memory_budget.rs` measures this process's peak memory.)
#![forbid(unsafe_code)]

use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::compare::first_column;
use fencegate_tests::TestProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_copy_row_is_streamed_not_buffered() {
    // One CopyData of 64 MiB through a proxy whose budget for unfinished messages is 1 MiB
    // for all sessions: it arrives whole, because CopyData needs no inspection and is
    // relayed as it comes (buffered whole, it would end the session with 53200).
    use futures_util::SinkExt;
    const ROW: usize = 64 << 20;
    let cluster = Cluster::shared();
    let db = cluster.create_database("copy_stream");
    cluster.execute(
        &db,
        "CREATE TABLE big (t text); GRANT ALL ON big TO trust_user;",
    );
    let proxy = TestProxy::plain_with(cluster.port(), |c| c.max_buffered_bytes = 1 << 20);
    let client = proxy.endpoint().connect(TRUST_USER, &db).await;
    let sink = client.copy_in("COPY big FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut row = vec![b'x'; ROW];
    row.push(b'\n');
    for data in [&b"small\n"[..], &row, &row, &b"last\n"[..]] {
        sink.send(bytes::Bytes::copy_from_slice(data))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.expect("COPY of 64 MiB rows"), 4);
    let lengths: Vec<i32> = first_column(
        &client
            .query("SELECT length(t) FROM big", &[])
            .await
            .unwrap(),
    );
    assert_eq!(lengths, [5, ROW as i32, ROW as i32, 4]);
    // Framing resumed after the streamed rows.
    let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}
