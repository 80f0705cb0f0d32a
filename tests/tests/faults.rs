//! Faults: malformed and hostile input, unreachable and dying servers, vanishing clients and
//! shutdown (TLS negotiation is in `faults_tls.rs`). Each test names the behaviour it checks and fails when it breaks: a bad
//! peer gets a FATAL ErrorResponse (where the protocol allows one) and a closed connection,
//! and nothing else is disturbed: other sessions keep working, new ones still connect, and no
//! server backend is left behind.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fencegate::session::hook::NoHooks;
use fencegate_tests::activity::wait_until_active;
use fencegate_tests::cluster::{self, Cluster, SUPERUSER, TRUST_USER};
use fencegate_tests::endpoint::run;
use fencegate_tests::fake_upstream::FakeUpstream;
use fencegate_tests::fence::backend_pid;
use fencegate_tests::raw::{
    assert_one_fatal, exchange, messages, raw_session, read_message, read_to_close, reset_on_drop,
    ssl_request, startup_v2, startup_version, CLOSE_DEADLINE,
};
use fencegate_tests::wire::{self, msg, Message, WireClient};
use fencegate_tests::TestProxy;
use tokio_postgres::error::SqlState;

/// Asserts that `client` (through the proxy) still answers queries.
async fn assert_alive(client: &tokio_postgres::Client, after: &str) {
    let row = tokio::time::timeout(CLOSE_DEADLINE, client.query_one("SELECT 41 + 1", &[]))
        .await
        .unwrap_or_else(|_| panic!("healthy session hangs after {after}"))
        .unwrap_or_else(|e| panic!("healthy session broken after {after}: {e}"));
    assert_eq!(row.get::<_, i32>(0), 42, "after {after}");
}

/// Polls `pg_stat_activity` directly until backend `pid` is gone.
async fn assert_backend_exits(pid: i32, what: &str) {
    let monitor = Cluster::shared()
        .endpoint()
        .connect(SUPERUSER, "postgres")
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = monitor
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: backend {pid} still alive after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The backend pid of a raw session, asked with `SELECT pg_backend_pid()`.
fn raw_backend_pid(client: &mut WireClient) -> i32 {
    client.send(&msg::query("SELECT pg_backend_pid()")).unwrap();
    let replies = client.read_until_ready(1).unwrap();
    let row = replies.iter().find(|m| m.0 == b'D').expect("a DataRow");
    // Field count (2 bytes), field length (4 bytes), then the pid as text.
    String::from_utf8(row.1[6..].to_vec())
        .unwrap()
        .parse()
        .unwrap()
}

/// The shared cluster, a fresh database in it (named after `prefix`) and a plain proxy in
/// front of it.
fn plain_proxy(prefix: &str) -> (&'static Cluster, String, TestProxy) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix);
    let proxy = TestProxy::plain(cluster.port());
    (cluster, db, proxy)
}

/// A fresh database (named after `prefix`) and a proxy in front of the shared cluster whose
/// client messages may be at most 1 MiB (`max_message_size`).
fn proxy_with_1mib_limit(prefix: &str) -> (String, TestProxy) {
    let cluster = Cluster::shared();
    let db = cluster.create_database(prefix);
    let proxy = TestProxy::start(
        cluster.port(),
        |c| c.max_message_size = 1 << 20,
        Arc::new(NoHooks),
    );
    (db, proxy)
}

/// A loopback port with nothing listening on it (bound, then released).
fn dead_port() -> u16 {
    cluster::free_port()
}

/// Startup packets the proxy must refuse with one FATAL ErrorResponse (a login to `db`
/// where one is named): what each is, its bytes, and the SQLSTATEs it may carry.
fn malformed_startups(db: &str) -> [(&'static str, Vec<u8>, &'static [&'static str]); 8] {
    let mut too_long = 100_000u32.to_be_bytes().to_vec();
    too_long.extend_from_slice(&196_608u32.to_be_bytes());
    too_long.extend_from_slice(b"user\0trust_user\0");
    let mut no_terminator = msg::startup(&[("user", TRUST_USER)]);
    no_terminator.pop();
    let len = no_terminator.len() as u32;
    no_terminator[..4].copy_from_slice(&len.to_be_bytes());
    [
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: fencegate\r\n\r\n".to_vec(),
            &["08P01"],
        ),
        (
            "negative length",
            [0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0].to_vec(),
            &["08P01"],
        ),
        (
            "length below 8",
            [0, 0, 0, 4, 0, 3, 0, 0].to_vec(),
            &["08P01"],
        ),
        ("length 100000", too_long, &["08P01"]),
        (
            "protocol 2.0",
            startup_v2(TRUST_USER, db),
            &["0A000", "08P01"],
        ),
        (
            "protocol 4.0",
            startup_version(4, 0, &[("user", TRUST_USER)]),
            &["0A000", "08P01"],
        ),
        ("parameters without terminator", no_terminator, &["08P01"]),
        (
            "SSLRequest with a body",
            [0, 0, 0, 9, 4, 0xd2, 0x16, 0x2f, 0].to_vec(),
            &["08P01"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startup_packets_are_refused_and_others_unaffected() {
    let (_, db, proxy) = plain_proxy("faults_startup");
    let healthy = proxy.endpoint().connect(TRUST_USER, &db).await;
    let addr = proxy.addr();

    for (what, bytes, codes) in malformed_startups(&db) {
        let reply = exchange(addr, &bytes, false);
        assert!(
            !reply.reset,
            "{what}: connection reset, not closed: {reply:?}"
        );
        assert_one_fatal(&messages(&reply.bytes), codes, what);
        assert_alive(&healthy, what).await;
    }

    // A repeated SSLRequest: `N`, then a FATAL error.
    let reply = exchange(addr, &[ssl_request(), ssl_request()].concat(), false);
    assert_eq!(reply.bytes.first(), Some(&b'N'), "{reply:?}");
    assert_one_fatal(
        &messages(&reply.bytes[1..]),
        &["08P01", "0A000"],
        "repeated SSLRequest",
    );

    // Truncated packets, then the client half-closes: nothing to answer, the proxy just closes.
    for (what, bytes) in [
        ("truncated length", vec![0u8, 0]),
        (
            "truncated startup",
            msg::startup(&[("user", TRUST_USER)])[..20].to_vec(),
        ),
        ("nothing at all", Vec::new()),
    ] {
        let reply = exchange(addr, &bytes, true);
        assert!(reply.bytes.is_empty() && !reply.reset, "{what}: {reply:?}");
        assert_alive(&healthy, what).await;
    }

    // A cancel request with keys nobody issued: forwarded, ignored, closed.
    let cancel = [16u32, 80_877_102, 12345, 67890]
        .map(u32::to_be_bytes)
        .concat();
    let reply = exchange(addr, &cancel, false);
    assert!(reply.bytes.is_empty(), "bogus cancel: {reply:?}");

    assert_alive(&healthy, "all startup faults").await;
    let fresh = proxy.endpoint().connect(TRUST_USER, &db).await;
    assert_alive(&fresh, "all startup faults (new session)").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_message_lengths_after_auth_are_fatal() {
    let (db, proxy) = proxy_with_1mib_limit("faults_length");
    let healthy = proxy.endpoint().connect(TRUST_USER, &db).await;

    let oversized = [&b"Q"[..], &(2u32 << 20).to_be_bytes(), b"SELECT '"].concat();
    let cases: [(&str, Vec<u8>); 3] = [
        ("length 3", b"Q\0\0\0\x03".to_vec()),
        ("negative length", b"Q\xff\xff\xff\xfe".to_vec()),
        ("length above max_message_size", oversized),
    ];
    for (what, bytes) in cases {
        let (mut client, _) = WireClient::connect(proxy.addr(), TRUST_USER, &db).unwrap();
        let pid = raw_backend_pid(&mut client);
        client.send(&bytes).unwrap();
        let got = client.read_to_close();
        let text = assert_one_fatal(&got, &["08P01"], what);
        assert!(
            text.contains("length") || text.contains("limit"),
            "{what}: {text}"
        );
        assert_alive(&healthy, what).await;
        assert_backend_exits(pid, what).await;
    }

    // A message just under the limit still passes.
    let literal = "x".repeat((1 << 20) - 100);
    let row = healthy
        .query_one(&format!("SELECT length('{literal}')"), &[])
        .await
        .expect("a message below max_message_size");
    assert_eq!(row.get::<_, i32>(0), (1 << 20) - 100);
}

/// `max_message_size` protects the proxy from clients; a server's reply is bounded by the
/// server. A row larger than the client limit must reach the client as it would directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_rows_larger_than_max_message_size_reach_the_client() {
    let (db, proxy) = proxy_with_1mib_limit("faults_bigrow");
    let client = proxy.endpoint().connect(TRUST_USER, &db).await;
    let row = client
        .query_one("SELECT repeat('x', 2 << 20)", &[])
        .await
        .expect("a 2 MiB row through a proxy whose client message limit is 1 MiB");
    assert_eq!(row.get::<_, String>(0).len(), 2 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_gives_fatal_error_naming_it() {
    let port = dead_port();
    let upstream = format!("127.0.0.1:{port}");
    let proxy = TestProxy::plain(port);

    // tokio-postgres sees a server error, not a dropped socket.
    let err = proxy
        .endpoint()
        .pg_config(TRUST_USER, "postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("connected through a proxy whose upstream is down");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err:?}"));
    assert_eq!(db.severity(), "FATAL");
    assert!(
        db.message().contains(&upstream),
        "message does not name {upstream}: {}",
        db.message()
    );
    assert_eq!(db.code().code().get(..2), Some("08"), "{db:?}");

    // Raw: one FATAL ErrorResponse, then close.
    let reply = exchange(proxy.addr(), &msg::startup(&[("user", TRUST_USER)]), false);
    let text = assert_one_fatal(&messages(&reply.bytes), &["08006", "08001"], "raw startup");
    assert!(text.contains(&upstream), "{text}");

    // psql prints the server's message.
    let mut psql = proxy.endpoint().command("psql", TRUST_USER, "postgres");
    psql.args(["-X", "-c", "SELECT 1"]);
    let out = run(&mut psql, b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("FATAL") && stderr.contains(&upstream),
        "psql stderr: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_gone_mid_query_errors_promptly() {
    let fake = FakeUpstream::start();
    let proxy = TestProxy::plain(fake.port());

    let client = proxy.endpoint().connect(TRUST_USER, "fake").await;
    let result = tokio::time::timeout(Duration::from_secs(5), client.simple_query("SELECT 1"))
        .await
        .expect("no error within 5 s after the server closed mid-query");
    let err = result.expect_err("a query answered by a closed socket succeeded");
    if let Some(db) = err.as_db_error() {
        assert_eq!(db.severity(), "FATAL", "{db:?}");
    }

    // Raw: the client is told why before the connection closes.
    let (mut raw, _) = WireClient::connect(proxy.addr(), TRUST_USER, "fake").unwrap();
    raw.send(&msg::query("SELECT 1")).unwrap();
    let started = Instant::now();
    let got = raw.read_to_close();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_one_fatal(
        &got,
        &["08006", "08000", "08003"],
        "server closed mid-query",
    );
    assert_eq!(fake.queries(), 2, "both queries reached the fake server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_reports_57p01() {
    let (cluster, db, proxy) = plain_proxy("faults_terminate");
    let admin = cluster.endpoint().connect(SUPERUSER, &db).await;

    // A running query sees the termination as its error.
    let client = proxy.endpoint().connect(TRUST_USER, &db).await;
    let pid = backend_pid(&client).await;
    let sleeper =
        tokio::spawn(async move { client.simple_query("SELECT pg_sleep(60)").await.map(|_| ()) });
    wait_until_active(&admin, "SELECT pg_sleep(60)").await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let result = tokio::time::timeout(CLOSE_DEADLINE, sleeper)
        .await
        .expect("terminated query did not end")
        .unwrap();
    let err = result.expect_err("pg_sleep survived pg_terminate_backend");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err:?}");

    // An idle raw session gets exactly what a direct one gets: one FATAL 57P01, then close.
    for addr in [cluster.endpoint().addr, proxy.addr()] {
        let (mut raw, _) = WireClient::connect(addr, TRUST_USER, &db).unwrap();
        let pid = raw_backend_pid(&mut raw);
        admin
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        let got = raw.read_to_close();
        assert_one_fatal(&got, &["57P01"], &format!("idle session via {addr}"));
    }
}

/// Ways a client can vanish without Terminate.
#[derive(Debug, Clone, Copy)]
enum Vanish {
    /// close(2) on an idle session: FIN.
    Close,
    /// close(2) with SO_LINGER 0: RST.
    Reset,
    /// close(2) while a huge result is streaming and the client has stopped reading.
    CloseMidResult,
}

/// Opens a session through `addr`, then vanishes as `how` says; returns the backend pid.
fn vanish(addr: SocketAddr, db: &str, how: Vanish) -> i32 {
    let (mut stream, pid) = raw_session(addr, db);
    match how {
        Vanish::Close => {}
        Vanish::Reset => {
            reset_on_drop(&stream);
        }
        Vanish::CloseMidResult => {
            // About 10 GB of rows: the server is still sending when the client leaves.
            let sql = "SELECT repeat('x', 1000) FROM generate_series(1, 10000000)";
            stream.write_all(&msg::query(sql)).unwrap();
            assert_eq!(read_message(&mut stream).0, b'T', "the result started");
            assert_eq!(read_message(&mut stream).0, b'D', "rows are streaming");
        }
    }
    drop(stream);
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_leave_no_backend() {
    let (_, db, proxy) = plain_proxy("faults_vanish");
    let healthy = proxy.endpoint().connect(TRUST_USER, &db).await;
    for how in [Vanish::Close, Vanish::Reset, Vanish::CloseMidResult] {
        let pid = vanish(proxy.addr(), &db, how);
        assert_backend_exits(pid, &format!("{how:?}")).await;
        assert_alive(&healthy, &format!("{how:?}")).await;
    }
}

/// After Terminate Postgres closes the connection without a word; so must the proxy, also
/// when the client waits to see the close (the proxy sees the server's close first).
#[test]
fn terminate_closes_quietly_like_postgres() {
    let (cluster, db, proxy) = plain_proxy("faults_quiet");
    let cases = [
        msg::terminate(),
        [msg::query("SELECT 1"), msg::terminate()].concat(),
    ];
    let mut seen = Vec::new();
    for addr in [cluster.endpoint().addr, proxy.addr()] {
        let mut after = Vec::new();
        for bytes in &cases {
            let (mut client, _) = WireClient::connect(addr, TRUST_USER, &db).unwrap();
            client.send(bytes).unwrap();
            after.push(summary(&client.read_to_close()));
        }
        seen.push(after);
    }
    assert_eq!(seen[0][0], (0, 0, Vec::new()), "Postgres itself");
    assert_eq!(seen[0], seen[1], "direct (left) vs proxy (right)");
}

/// Terminate pipelined behind a query with a large result: Postgres sends the whole result,
/// then closes. Through the proxy the client must still get every byte, also when it starts
/// reading only after the server has finished and closed (so the proxy sees the server's
/// close while it still holds part of the result). Sizes are chosen to fit in the socket
/// buffers between server and client, so the server can finish without the client reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_behind_large_result_delivers_all_of_it() {
    let (cluster, db, proxy) = plain_proxy("faults_tail");
    for rows in [4000, 6000] {
        let sql = format!("SELECT repeat('x', 1000) FROM generate_series(1, {rows})");
        let request = [msg::query(&sql), msg::terminate()].concat();
        let (mut stream, _) = raw_session(cluster.endpoint().addr, &db);
        stream.write_all(&request).unwrap();
        let direct = read_to_close(&mut stream).bytes;
        assert!(direct.ends_with(b"Z\0\0\0\x05I"), "Postgres itself");

        let (mut stream, pid) = raw_session(proxy.addr(), &db);
        stream.write_all(&request).unwrap();
        assert_backend_exits(pid, "server finished sending and closed").await;
        let proxied = read_to_close(&mut stream).bytes;
        assert!(
            proxied == direct,
            "{rows} rows: {} bytes through the proxy, {} directly",
            proxied.len(),
            direct.len()
        );
    }
}

/// Message count, body bytes, and the first and last three messages rendered.
fn summary(messages: &[Message]) -> (usize, usize, Vec<String>) {
    let bytes = messages.iter().map(|m| m.1.len()).sum();
    let ends = if messages.len() <= 6 {
        messages.to_vec()
    } else {
        [&messages[..3], &messages[messages.len() - 3..]].concat()
    };
    (messages.len(), bytes, wire::render(&ends))
}

/// Where a client stops during startup.
#[derive(Debug, Clone, Copy)]
enum Stuck {
    /// Connected, sent nothing.
    Silent,
    /// Sent part of its StartupMessage.
    Halfway,
    /// Sent a StartupMessage for an MD5 user and never answered the password request.
    NoPassword,
}

/// Opens a connection to `addr` that stops as `how` says.
fn stuck_client(addr: SocketAddr, how: Stuck) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    match how {
        Stuck::Silent => {}
        Stuck::Halfway => stream
            .write_all(&msg::startup(&[("user", TRUST_USER)])[..10])
            .unwrap(),
        Stuck::NoPassword => {
            stream
                .write_all(&msg::startup(&[
                    ("user", cluster::MD5_USER),
                    ("database", "postgres"),
                ]))
                .unwrap();
            let (tag, body) = read_message(&mut stream);
            assert_eq!((tag, &body[..4]), (b'R', &[0, 0, 0, 5][..]), "MD5 request");
        }
    }
    stream
}

/// Shutdown must not wait for clients that never finish their startup (PostgreSQL bounds
/// that phase with `authentication_timeout`; a proxy draining for a restart must not hang on
/// them). The harness fails `stop` when `run` has not returned within the grace period plus
/// slack (12 s in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_stuck_in_startup_do_not_block_shutdown() {
    let cluster = Cluster::shared();
    let mut results = Vec::new();
    for how in [Stuck::Silent, Stuck::Halfway, Stuck::NoPassword] {
        let proxy = TestProxy::plain(cluster.port());
        let stuck = stuck_client(proxy.addr(), how);
        // The proxy accepts in order: a later session that works shows `stuck` was accepted.
        let healthy = proxy.endpoint().connect(TRUST_USER, "postgres").await;
        assert_alive(&healthy, &format!("{how:?}")).await;
        drop(healthy);
        let stopped = tokio::task::spawn_blocking(move || proxy.stop())
            .await
            .unwrap();
        results.push(format!("{how:?}: {stopped:?}"));
        drop(stuck);
    }
    assert_eq!(
        results,
        ["Silent: Ok(())", "Halfway: Ok(())", "NoPassword: Ok(())"],
        "proxy shutdown with a client stuck in startup"
    );
}

/// Graceful shutdown (`shutdown_grace`): an idle session is closed at once with one FATAL
/// 57P01; a session inside a transaction keeps working until it ends the transaction and is
/// closed then, with the same FATAL; one still inside a transaction when the grace runs out
/// is closed at that point; and `run` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_sessions_at_once_and_busy_ones_after_their_transaction() {
    const GRACE: Duration = Duration::from_secs(8);
    let cluster = Cluster::shared();
    let proxy = TestProxy::start(
        cluster.port(),
        |c| c.shutdown_grace = GRACE,
        Arc::new(NoHooks),
    );
    let (mut idle, _) = WireClient::connect(proxy.addr(), TRUST_USER, "postgres").unwrap();
    let (mut busy, _) = WireClient::connect(proxy.addr(), TRUST_USER, "postgres").unwrap();
    let (mut stuck, _) = WireClient::connect(proxy.addr(), TRUST_USER, "postgres").unwrap();
    for (client, what) in [(&mut busy, "busy"), (&mut stuck, "stuck")] {
        client.send(&msg::query("BEGIN")).unwrap();
        let replies = client.read_until_ready(1).unwrap();
        assert!(
            replies.iter().any(|(tag, _)| *tag == b'Z'),
            "{what}: {replies:?}"
        );
    }

    let started = Instant::now();
    proxy.shutdown_token().cancel();
    let got = tokio::task::spawn_blocking(move || idle.read_to_close())
        .await
        .unwrap();
    assert_one_fatal(&got, &["57P01"], "idle session at shutdown");
    assert!(
        started.elapsed() < GRACE,
        "the idle session was only closed when the grace ran out"
    );

    let (busy_replies, busy_closed) = tokio::task::spawn_blocking(move || {
        busy.send(&msg::query("SELECT 41 + 1; COMMIT")).unwrap();
        let replies = busy.read_until_ready(1).unwrap();
        (replies, busy.read_to_close())
    })
    .await
    .unwrap();
    let rendered = format!("{busy_replies:?}");
    assert!(
        busy_replies.iter().any(|(tag, _)| *tag == b'D')
            && busy_replies
                .iter()
                .any(|(tag, body)| *tag == b'C' && body.starts_with(b"COMMIT")),
        "the transaction open at shutdown must be able to finish: {rendered}"
    );
    assert_one_fatal(&busy_closed, &["57P01"], "busy session after its COMMIT");
    assert!(
        started.elapsed() < GRACE,
        "the busy session waited for the grace"
    );

    let stuck_closed = tokio::task::spawn_blocking(move || stuck.read_to_close())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= GRACE,
        "a session inside a transaction was closed before the grace ran out"
    );
    assert_one_fatal(
        &stuck_closed,
        &["57P01"],
        "session still in a transaction at the end of the grace",
    );
    let stopped = tokio::task::spawn_blocking(move || proxy.stop())
        .await
        .unwrap();
    assert_eq!(stopped, Ok(()));
}
