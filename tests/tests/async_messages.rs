//! Traffic the client does not ask for in its query stream, directly and through the proxy:
//! a CancelRequest sent to the proxy's address (the proxy must forward it to the right
//! backend), and LISTEN/NOTIFY notifications and notices delivered to an idle client.
#![forbid(unsafe_code)]

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use fencegate_tests::activity::cancel_when_active;
use fencegate_tests::cluster::{Cluster, SUPERUSER};
use fencegate_tests::compare::{direct_and_proxied, sqlstate};
use fencegate_tests::Endpoint;

/// Cancels `SELECT pg_sleep(30)` through `ep` once pg_stat_activity shows it running.
async fn cancel(ep: Endpoint, db: String) -> Vec<String> {
    let monitor = Cluster::shared().endpoint().connect(SUPERUSER, &db).await;
    let client = ep.connect(SUPERUSER, &db).await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move {
        let result = client.simple_query("SELECT pg_sleep(30)").await.map(|_| ());
        (result, client)
    });
    let started = cancel_when_active(&monitor, "SELECT pg_sleep(30)", &token).await;
    let (result, client) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("query not cancelled within 10 s")
        .unwrap();
    let err = result.expect_err("pg_sleep(30) finished despite the cancel");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        started.elapsed()
    );
    let after = client.simple_query("SELECT 1").await.map(|m| m.len());
    vec![
        sqlstate(&err),
        err.as_db_error().unwrap().message().to_string(),
        format!("{after:?}"),
    ]
}

#[tokio::test]
async fn cancel_request_through_proxy_address() {
    let seen = direct_and_proxied("tp_cancel", cancel).await;
    assert_eq!(
        seen,
        [
            SqlState::QUERY_CANCELED.code(),
            "canceling statement due to user request",
            "Ok(3)"
        ]
    );
}

/// Connects and forwards the connection's asynchronous messages to a channel.
async fn connect_listening(
    ep: Endpoint,
    db: &str,
) -> (Client, mpsc::UnboundedReceiver<AsyncMessage>) {
    let (client, mut connection) = ep.pg_config(SUPERUSER, db).connect(NoTls).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            let _ = tx.send(message);
        }
    });
    (client, rx)
}

/// The next asynchronous message, described; `pid` is the expected notifying backend.
async fn next_message(rx: &mut mpsc::UnboundedReceiver<AsyncMessage>, pid: i32) -> String {
    let message = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no asynchronous message within 10 s")
        .expect("connection closed");
    match message {
        AsyncMessage::Notification(n) => {
            let from = if n.process_id() == pid {
                "notifier"
            } else {
                "unknown pid"
            };
            format!("notification {} {:?} from {from}", n.channel(), n.payload())
        }
        AsyncMessage::Notice(notice) => {
            format!("notice {} {}", notice.code().code(), notice.message())
        }
        other => format!("{other:?}"),
    }
}

async fn listen_notify(ep: Endpoint, db: String) -> Vec<String> {
    let (listener, mut rx) = connect_listening(ep, &db).await;
    let notifier = ep.connect(SUPERUSER, &db).await;
    listener.batch_execute("LISTEN events").await.unwrap();
    let notifier_pid: i32 = notifier
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    notifier
        .batch_execute("BEGIN; NOTIFY events, 'rolled back'; ROLLBACK")
        .await
        .unwrap();
    let mut seen = Vec::new();
    for i in 0..3 {
        notifier
            .execute(
                "SELECT pg_notify('events', $1)",
                &[&format!("payload ü {i}")],
            )
            .await
            .unwrap();
        // The listener is idle: the proxy must relay the notification unprompted.
        seen.push(next_message(&mut rx, notifier_pid).await);
    }
    listener
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from ünïcode'; END $$")
        .await
        .unwrap();
    seen.push(next_message(&mut rx, notifier_pid).await);
    listener.batch_execute("UNLISTEN events").await.unwrap();
    notifier
        .batch_execute("NOTIFY events, 'unheard'")
        .await
        .unwrap();
    listener.batch_execute("SELECT 1").await.unwrap();
    seen.push(format!("pending after UNLISTEN: {}", rx.try_recv().is_ok()));
    seen
}

#[tokio::test]
async fn listen_notify_and_notices_reach_idle_client() {
    let seen = direct_and_proxied("tp_notify", listen_notify).await;
    assert_eq!(
        seen,
        [
            "notification events \"payload ü 0\" from notifier",
            "notification events \"payload ü 1\" from notifier",
            "notification events \"payload ü 2\" from notifier",
            "notice 00000 hello from ünïcode",
            "pending after UNLISTEN: false",
        ]
    );
}
