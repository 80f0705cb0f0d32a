//! Injection is invisible to a real client too: a tokio-postgres workload (prepared
//! statements, pipelining, transactions and savepoints, COPY, simple batches, errors) sees
//! the same rows, counts and errors directly and through a proxy with [`NoopInjection`]
//! (the byte-level scenarios are in `injection.rs`).
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{future, SinkExt};

use fencegate_tests::cluster::Cluster;
use fencegate_tests::compare::connect_with_table;
use fencegate_tests::inject::NoopInjection;
use fencegate_tests::{Endpoint, TestProxy};

/// A failed statement as the workload records it.
fn err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("error {} {}", db.code().code(), db.message()),
        None => format!("error {e}"),
    }
}

/// What a tokio-postgres workload observed, as text: rows, counts and errors.
async fn workload(ep: &Endpoint, db: &str) -> Vec<String> {
    let create = "CREATE TABLE w (id int PRIMARY KEY, v text)";
    let mut client = connect_with_table(ep, db, create).await;
    let mut out = prepared_and_pipelined(&client).await;
    out.extend(transactions_copy_and_batches(&mut client).await);
    out
}

/// Prepared statements executed repeatedly, then pipelined queries of which one fails.
async fn prepared_and_pipelined(client: &tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    // Prepared statements, executed repeatedly.
    let insert = client
        .prepare("INSERT INTO w VALUES ($1, $2)")
        .await
        .unwrap();
    for i in 0..10i32 {
        let n = client
            .execute(&insert, &[&i, &format!("v{i}")])
            .await
            .unwrap();
        out.push(format!("insert {i}: {n}"));
    }
    out.push(
        client
            .execute(&insert, &[&1i32, &"dup"])
            .await
            .map_or_else(err, |n| n.to_string()),
    );
    // Pipelined: all queries are sent before the first reply is read; one fails.
    let select = client
        .prepare("SELECT v, 10 / (id - 5) FROM w WHERE id = $1")
        .await
        .unwrap();
    let queries = (0..10i32).map(|i| {
        let select = &select;
        async move {
            match client.query_one(select, &[&i]).await {
                Ok(row) => format!(
                    "row {i}: {} {}",
                    row.get::<_, String>(0),
                    row.get::<_, i32>(1)
                ),
                Err(e) => err(e),
            }
        }
    });
    out.extend(future::join_all(queries).await);
    out
}

/// Transactions and savepoints, COPY FROM STDIN, simple batches, an error, the table.
async fn transactions_copy_and_batches(client: &mut tokio_postgres::Client) -> Vec<String> {
    let mut out = Vec::new();
    // Transactions: a committed one with a rolled-back savepoint, and a rolled-back one.
    let mut tx = client.transaction().await.unwrap();
    tx.execute("UPDATE w SET v = 'updated' WHERE id = 0", &[])
        .await
        .unwrap();
    {
        let sp = tx.savepoint("sp").await.unwrap();
        out.push(
            sp.execute("INSERT INTO w VALUES (0, 'x')", &[])
                .await
                .map_or_else(err, |n| n.to_string()),
        );
        sp.rollback().await.unwrap();
    }
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("DELETE FROM w", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    // COPY FROM STDIN.
    let sink = client.copy_in("COPY w FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for i in 100..110 {
        sink.send(bytes::Bytes::from(format!("{i}\tcopied {i}\n")))
            .await
            .unwrap();
    }
    out.push(format!("copied {}", sink.finish().await.unwrap()));
    // Simple-protocol batch with several results.
    for m in client
        .simple_query("SELECT count(*) FROM w; SELECT string_agg(v, ',' ORDER BY id) FROM w")
        .await
        .unwrap()
    {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            out.push(format!("simple {:?}", row.get(0)));
        }
    }
    out.push(
        client
            .simple_query("SELECT 1/0")
            .await
            .map_or_else(err, |_| "ok".into()),
    );
    let rows = client
        .query("SELECT id, v FROM w ORDER BY id", &[])
        .await
        .unwrap();
    out.extend(
        rows.iter()
            .map(|r| format!("{} {}", r.get::<_, i32>(0), r.get::<_, String>(1))),
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_workload_matches_direct() {
    let cluster = Cluster::shared();
    let hooks = NoopInjection::new();
    let proxy = TestProxy::start(cluster.port(), |_| {}, Arc::new(hooks.clone()));
    let mut results = Vec::new();
    for (side, ep) in [("d", cluster.endpoint()), ("p", proxy.endpoint())] {
        let db = cluster.create_database(&format!("inj_tp_{side}"));
        let seen = tokio::time::timeout(Duration::from_secs(60), workload(&ep, &db))
            .await
            .unwrap_or_else(|_| panic!("workload via {} timed out", ep.addr));
        results.push(seen);
    }
    let proxied = results.pop().unwrap();
    let direct = results.pop().unwrap();
    assert_eq!(
        direct, proxied,
        "direct (left) vs proxy with injection (right)"
    );
    assert!(
        direct.iter().any(|l| l == "error 22012 division by zero"),
        "{direct:#?}"
    );
    assert!(direct.iter().any(|l| l == "copied 10"), "{direct:#?}");
    // At least the hidden round before each of the workload's Executes.
    assert!(
        hooks.injected() >= 5 * 20,
        "only {} injected",
        hooks.injected()
    );
}
