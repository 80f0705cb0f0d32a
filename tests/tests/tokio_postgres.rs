//! tokio-postgres directly against Postgres and through the proxy: each scenario records what
//! the client observed, and the two records must be equal (and match expectations).
//!
//! Covered here: the extended protocol with typed parameters, NULLs, errors and portals with
//! row limits; many queries pipelined on one connection; transactions and savepoints; COPY
//! in and out (text and binary, failing and aborted). Cancel and LISTEN/NOTIFY are in
//! `async_messages.rs`.
#![forbid(unsafe_code)]

use bytes::Bytes;
use futures_util::{pin_mut, SinkExt, TryStreamExt};
use tokio_postgres::types::ToSql;

use fencegate_tests::cluster::SUPERUSER;
use fencegate_tests::compare::{connect_with_table, direct_and_proxied, first_column, sqlstate};
use fencegate_tests::Endpoint;

type Item = (
    i32,
    Option<String>,
    Option<Vec<u8>>,
    Option<f64>,
    Option<bool>,
    Option<Vec<i32>>,
);

/// Row `i` of `items`, every column set.
fn item(i: i32) -> Item {
    (
        i,
        Some(format!("näme {i} 🐘")),
        Some(vec![i as u8; i as usize]),
        Some(f64::from(i) / 3.0),
        Some(i % 2 == 0),
        Some(vec![i, -i]),
    )
}

/// The columns of `item`, as parameters of an INSERT into `items`.
fn columns(item: &Item) -> [&(dyn ToSql + Sync); 6] {
    [&item.0, &item.1, &item.2, &item.3, &item.4, &item.5]
}

/// Everything `COPY ... TO STDOUT` sends, in one piece.
async fn copy_out(client: &tokio_postgres::Client, sql: &str) -> Vec<u8> {
    let chunks: Vec<Bytes> = client
        .copy_out(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    chunks.concat()
}

async fn extended(ep: Endpoint, db: String) -> Vec<String> {
    let items = "CREATE TABLE items (id int PRIMARY KEY, name text, data bytea, score float8, \
                 ok bool, tags int[])";
    let mut client = connect_with_table(&ep, &db, items).await;
    let mut seen = Vec::new();
    let insert = client
        .prepare("INSERT INTO items VALUES ($1, $2, $3, $4, $5, $6)")
        .await
        .unwrap();
    for item in (0..20).map(item) {
        assert_eq!(client.execute(&insert, &columns(&item)).await.unwrap(), 1);
    }
    let none: Item = (100, None, None, None, None, None);
    client.execute(&insert, &columns(&none)).await.unwrap();
    let dup = client.execute(&insert, &columns(&none)).await.unwrap_err();
    seen.push(format!("duplicate: {}", sqlstate(&dup)));

    for row in client
        .query(
            "SELECT id, name, data, score, ok, tags FROM items ORDER BY id",
            &[],
        )
        .await
        .unwrap()
    {
        let item: Item = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        );
        seen.push(format!("{item:?}"));
    }
    let div = client
        .query_one("SELECT 1 / $1::int", &[&0i32])
        .await
        .unwrap_err();
    seen.push(format!(
        "division: {} {}",
        sqlstate(&div),
        div.as_db_error().unwrap().message()
    ));
    let back: String = client
        .query_one("SELECT $1::text || '!'", &[&"still usable"])
        .await
        .unwrap()
        .get(0);
    seen.push(back);

    let tx = client.transaction().await.unwrap();
    let portal = tx
        .bind("SELECT id FROM items ORDER BY id", &[])
        .await
        .unwrap();
    for _ in 0..4 {
        let ids: Vec<i32> = first_column(&tx.query_portal(&portal, 6).await.unwrap());
        seen.push(format!("portal batch {ids:?}"));
    }
    tx.commit().await.unwrap();
    seen
}

#[tokio::test]
async fn extended_protocol_parameters_errors_and_portals() {
    let seen = direct_and_proxied("tp_extended", extended).await;
    assert_eq!(seen[0], "duplicate: 23505");
    assert_eq!(
        seen[1],
        r#"(0, Some("näme 0 🐘"), Some([]), Some(0.0), Some(true), Some([0, 0]))"#
    );
    assert_eq!(seen[21], "(100, None, None, None, None, None)");
    assert_eq!(seen[22], "division: 22012 division by zero");
    assert_eq!(seen[23], "still usable!");
    assert_eq!(seen[24], "portal batch [0, 1, 2, 3, 4, 5]");
    assert_eq!(seen[27], "portal batch [18, 19, 100]");
    assert_eq!(seen.len(), 28);
}

async fn pipelined(ep: Endpoint, db: String) -> Vec<String> {
    let client = ep.connect(SUPERUSER, &db).await;
    let client = &client;
    let queries = (0..300i32).map(|i| async move {
        let sql = match i % 25 {
            13 => "SELECT 1 / ($1::int - $1::int), ''",
            _ => "SELECT $1::int * 2, repeat('ü', $1::int)",
        };
        match client.query_one(sql, &[&i]).await {
            Ok(row) => format!(
                "{} {}",
                row.get::<_, i32>(0),
                row.get::<_, String>(1).chars().count()
            ),
            Err(e) => sqlstate(&e),
        }
    });
    let mut seen = futures_util::future::join_all(queries).await;
    let simple = (0..50).map(|i| {
        client.simple_query(if i == 7 {
            "SELEC"
        } else {
            "SELECT 1; SELECT 2"
        })
    });
    for result in futures_util::future::join_all(simple).await {
        seen.push(match result {
            Ok(messages) => format!("{} messages", messages.len()),
            Err(e) => sqlstate(&e),
        });
    }
    seen
}

#[tokio::test]
async fn pipelined_queries_on_one_connection() {
    let seen = direct_and_proxied("tp_pipeline", pipelined).await;
    assert_eq!(seen.len(), 350);
    for (i, outcome) in seen[..300].iter().enumerate() {
        let expected = if i % 25 == 13 {
            "22012".to_string()
        } else {
            format!("{} {i}", i * 2)
        };
        assert_eq!(outcome, &expected, "query {i}");
    }
    assert_eq!(seen[300 + 7], "42601");
    assert_eq!(
        seen.iter().filter(|s| *s == "6 messages").count(),
        49,
        "{seen:?}"
    );
}

async fn transactions(ep: Endpoint, db: String) -> Vec<String> {
    let mut client = connect_with_table(&ep, &db, "CREATE TABLE acct (id int PRIMARY KEY)").await;
    let mut seen = Vec::new();
    let insert = "INSERT INTO acct VALUES ($1)";

    let tx = client.transaction().await.unwrap();
    tx.execute(insert, &[&1i32]).await.unwrap();
    tx.commit().await.unwrap();

    let tx = client.transaction().await.unwrap();
    tx.execute(insert, &[&2i32]).await.unwrap();
    tx.rollback().await.unwrap();

    let mut tx = client.transaction().await.unwrap();
    tx.execute(insert, &[&3i32]).await.unwrap();
    let sp = tx.savepoint("sp").await.unwrap();
    sp.execute(insert, &[&4i32]).await.unwrap();
    sp.rollback().await.unwrap();
    tx.execute(insert, &[&5i32]).await.unwrap();
    tx.commit().await.unwrap();

    let tx = client.transaction().await.unwrap();
    tx.execute(insert, &[&6i32]).await.unwrap();
    seen.push(sqlstate(&tx.execute(insert, &[&1i32]).await.unwrap_err()));
    seen.push(sqlstate(&tx.query("SELECT 1", &[]).await.unwrap_err()));
    drop(tx); // rolls back

    let out = client
        .simple_query("BEGIN; INSERT INTO acct VALUES (7); COMMIT")
        .await
        .unwrap();
    seen.push(format!("simple transaction: {} messages", out.len()));
    let ids: Vec<i32> = client
        .query("SELECT id FROM acct ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    seen.push(format!("{ids:?}"));
    seen
}

#[tokio::test]
async fn transactions_commit_rollback_and_savepoints() {
    let seen = direct_and_proxied("tp_tx", transactions).await;
    assert_eq!(
        seen,
        [
            "23505",
            "25P02",
            "simple transaction: 3 messages",
            "[1, 3, 5, 7]"
        ]
    );
}

async fn copy(ep: Endpoint, db: String) -> Vec<String> {
    let client = connect_with_table(&ep, &db, "CREATE TABLE c (id int, note text)").await;
    let mut seen = Vec::new();
    let data: String = (0..50_000).map(|i| format!("{i}\tzeile ü {i}\n")).collect();
    let sink = client
        .copy_in::<_, Bytes>("COPY c FROM STDIN")
        .await
        .unwrap();
    pin_mut!(sink);
    for chunk in data.as_bytes().chunks(65_536) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    seen.push(format!("copied in {}", sink.finish().await.unwrap()));

    let out = copy_out(&client, "COPY c TO STDOUT").await;
    seen.push(format!("copy out equals input: {}", out == data.as_bytes()));
    let binary = copy_out(
        &client,
        "COPY (SELECT * FROM c WHERE id < 1000) TO STDOUT (FORMAT binary)",
    )
    .await;
    seen.push(format!("binary {binary:?}"));

    let bad = client
        .copy_in::<_, Bytes>("COPY c FROM STDIN")
        .await
        .unwrap();
    pin_mut!(bad);
    bad.send(Bytes::from_static(b"1\tok\nnot a number\tx\n"))
        .await
        .unwrap();
    seen.push(sqlstate(&bad.finish().await.unwrap_err()));

    let aborted = client
        .copy_in::<_, Bytes>("COPY c FROM STDIN")
        .await
        .unwrap();
    {
        pin_mut!(aborted);
        aborted
            .send(Bytes::from_static(b"1\tnever committed\n"))
            .await
            .unwrap();
    } // dropped without finish: tokio-postgres sends CopyFail
    let count: i64 = client
        .query_one("SELECT count(*) FROM c", &[])
        .await
        .unwrap()
        .get(0);
    seen.push(format!("rows {count}"));
    seen
}

#[tokio::test]
async fn copy_in_and_copy_out() {
    let seen = direct_and_proxied("tp_copy", copy).await;
    assert_eq!(seen[0], "copied in 50000");
    assert_eq!(seen[1], "copy out equals input: true");
    assert!(
        seen[2].starts_with("binary [80, 71, 67, 79, 80, 89"),
        "{}",
        &seen[2][..40]
    ); // PGCOPY
    assert_eq!(seen[3], "22P02");
    assert_eq!(seen[4], "rows 50000");
}
