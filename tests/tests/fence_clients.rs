//! Tokens through tokio-postgres beyond the simple protocol: prepared statements and named
//! portals with the comment in their SQL, `SET LOCAL` sent through the extended protocol,
//! pipelines (many Bind/Execute/Sync rounds, or many Queries, written before any reply is
//! read) where only the stale statement fails, and `copy_in` with a comment.
#![forbid(unsafe_code)]

use bytes::Bytes;
use fencegate_tests::compare::first_column;
use fencegate_tests::fence::jobs::{env_raised_to, log_ids, steps, JOB, SETUP};
use futures_util::{pin_mut, SinkExt};

use fencegate_tests::fence::{
    assert_stale, assert_usable, comment, expect_code, render, FenceEnv, STALE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_copy_in_with_comment() {
    let env = FenceEnv::new("tp_copy", SETUP).await;
    let c = env.client().await;
    let sink = c
        .copy_in::<_, Bytes>(&format!("COPY log FROM STDIN {}", comment(JOB, 6)))
        .await
        .expect("fresh COPY starts");
    pin_mut!(sink);
    sink.send(Bytes::from_static(b"1\tfirst\n2\tsecond\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    assert_eq!(env.monitor.high_water(JOB).await, Some(6));

    let stale = c
        .copy_in::<_, Bytes>(&format!("COPY log FROM STDIN {}", comment(JOB, 5)))
        .await;
    match stale {
        Err(e) => assert_stale(&expect_code::<()>(Err(e), STALE), JOB, 5, 6),
        Ok(sink) => {
            pin_mut!(sink);
            // The COPY must not have started; if the client could send, finishing must fail.
            let _ = sink.send(Bytes::from_static(b"3\tstale\n")).await;
            let finished = sink.finish().await;
            assert_stale(&expect_code(finished, STALE), JOB, 5, 6);
        }
    }
    // No usability check on `c`: tokio-postgres itself sends CopyFail + Sync after a COPY
    // that failed before CopyInResponse, and the second ReadyForQuery desynchronises it, as
    // it does directly against Postgres (e.g. `COPY` without INSERT privilege).
    assert_eq!(
        log_ids(&env.monitor).await,
        [1, 2],
        "no row of the stale copy landed"
    );
    assert_eq!(env.monitor.high_water(JOB).await, Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_prepared_statements_and_portals_with_comment() {
    let env = FenceEnv::new("tp_prepared", SETUP).await;
    let c = env.client().await;
    let append_with = |token: i64| {
        format!(
            "UPDATE jobs SET steps = steps || $1 WHERE id = 7 {}",
            comment(JOB, token)
        )
    };
    let fresh = c.prepare(&append_with(2)).await.unwrap();
    let stale = c.prepare(&append_with(1)).await.unwrap();
    assert_eq!(c.execute(&fresh, &[&"a"]).await.unwrap(), 1);
    assert_eq!(env.monitor.high_water(JOB).await, Some(2));
    for _ in 0..2 {
        // A failed check leaves the prepared statements intact: both can run again.
        assert_stale(
            &expect_code(c.execute(&stale, &[&"x"]).await, STALE),
            JOB,
            1,
            2,
        );
        assert_usable(&c).await;
        assert_eq!(c.execute(&fresh, &[&"b"]).await.unwrap(), 1);
    }
    // A named portal read in pieces, in a transaction, with the comment in its SQL.
    let mut c = c;
    let tx = c.transaction().await.unwrap();
    let portal = tx
        .bind(
            &format!("SELECT g FROM generate_series(1, 5) g {}", comment(JOB, 2)),
            &[],
        )
        .await
        .unwrap();
    let first: Vec<i32> = first_column(&tx.query_portal(&portal, 2).await.unwrap());
    let rest: Vec<i32> = first_column(&tx.query_portal(&portal, 0).await.unwrap());
    assert_eq!((first, rest), (vec![1, 2], vec![3, 4, 5]));
    tx.commit().await.unwrap();
    // A stale portal fails at its Bind or at its first Execute (where the check goes is
    // the proxy's choice), and never returns a row.
    let tx = c.transaction().await.unwrap();
    let stale_portal = async {
        let portal = tx
            .bind(&format!("SELECT 1 {}", comment(JOB, 1)), &[])
            .await?;
        tx.query_portal(&portal, 1).await
    };
    assert_stale(&expect_code(stale_portal.await, STALE), JOB, 1, 2);
    drop(tx);
    assert_usable(&c).await;
    assert_eq!(steps(&env.monitor).await, "abb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_set_local_in_a_transaction() {
    let env = FenceEnv::new("tp_set_local", SETUP).await;
    let mut c = env.client().await;
    let update = "UPDATE jobs SET steps = steps || $1 WHERE id = 7";
    for (token, step) in [(3, "a"), (2, "b")] {
        let tx = c.transaction().await.unwrap();
        tx.execute("SET LOCAL fencing.resource = 'job:7'", &[])
            .await
            .unwrap();
        tx.execute(&format!("SET LOCAL fencing.token = {token}"), &[])
            .await
            .unwrap();
        let result = tx.execute(update, &[&step]).await;
        if token == 3 {
            assert_eq!(result.unwrap(), 1);
            tx.commit().await.unwrap();
        } else {
            assert_stale(&expect_code(result, STALE), JOB, 2, 3);
        }
    }
    assert_usable(&c).await;
    // Outside those transactions no token is in effect: the statement is not checked.
    assert_eq!(c.execute(update, &[&"c"]).await.unwrap(), 1);
    assert_eq!(env.monitor.high_water(JOB).await, Some(3));
    assert_eq!(steps(&env.monitor).await, "ac");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_fails_only_the_stale_statement() {
    let (env, c) = env_raised_to("pipeline", 2).await;
    let insert = |note: &str, token: Option<i64>| {
        let a = token.map(|t| comment(JOB, t)).unwrap_or_default();
        format!("INSERT INTO log VALUES ($1, '{note}') {a}")
    };
    let fresh = c.prepare(&insert("fresh", Some(2))).await.unwrap();
    let stale = c.prepare(&insert("stale", Some(1))).await.unwrap();
    let plain = c.prepare(&insert("plain", None)).await.unwrap();
    let count = c
        .prepare(&format!("SELECT count(*) FROM log {}", comment(JOB, 3)))
        .await
        .unwrap();
    // All Bind/Execute/Sync rounds are written before any reply is read.
    let (r1, r2, r3, r4, r5, r6) = futures_util::join!(
        c.execute(&fresh, &[&1i32]),
        c.execute(&plain, &[&2i32]),
        c.execute(&stale, &[&3i32]),
        c.execute(&fresh, &[&4i32]),
        c.query_one(&count, &[]),
        c.execute(&plain, &[&6i32]),
    );
    assert_eq!((r1.unwrap(), r2.unwrap(), r4.unwrap()), (1, 1, 1));
    assert_stale(&expect_code(r3, STALE), JOB, 1, 2);
    assert_eq!(r5.unwrap().get::<_, i64>(0), 3);
    assert_eq!(r6.unwrap(), 1);
    assert_eq!(log_ids(&env.monitor).await, [1, 2, 4, 6]);
    assert_eq!(env.monitor.high_water(JOB).await, Some(3));

    // The same with simple Queries, each its own transaction.
    let sql = |id: i32, token: Option<i64>| {
        let a = token.map(|t| comment(JOB, t)).unwrap_or_default();
        format!("INSERT INTO log VALUES ({id}, 'simple') {a}; SELECT count(*) FROM log")
    };
    let queries = [
        sql(10, Some(3)),
        sql(11, Some(2)),
        sql(12, None),
        sql(13, Some(4)),
    ];
    let (s1, s2, s3, s4) = futures_util::join!(
        c.simple_query(&queries[0]),
        c.simple_query(&queries[1]),
        c.simple_query(&queries[2]),
        c.simple_query(&queries[3]),
    );
    assert_eq!(
        render(&s1.unwrap()),
        [
            "complete 1",
            "columns [\"count\"]",
            "row [Some(\"5\")]",
            "complete 1"
        ]
    );
    assert_stale(&expect_code(s2, STALE), JOB, 2, 3);
    assert_eq!(render(&s3.unwrap())[2], "row [Some(\"6\")]");
    assert_eq!(render(&s4.unwrap())[2], "row [Some(\"7\")]");
    assert_eq!(log_ids(&env.monitor).await, [1, 2, 4, 6, 10, 12, 13]);
    assert_eq!(env.monitor.high_water(JOB).await, Some(4));
}
