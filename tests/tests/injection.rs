//! Injection is invisible: with [`NoopInjection`] (a hidden `SELECT 1` before every Query, a
//! hidden Parse/Bind/Execute/Close round before every Execute), a client sees exactly the bytes
//! it would see talking to Postgres directly.
//!
//! Each scenario sends the same raw frontend bytes to Postgres directly and through the proxy,
//! each in a fresh database prepared with the same setup SQL, and compares every backend
//! message, startup included. Masked, because they are provably different per connection:
//! - BackendKeyData (pid and secret of a new backend);
//! - the sender pid of a NotificationResponse, after checking it is the session's own pid
//!   (from its BackendKeyData): a NOTIFY to self carries the receiving backend's pid.
//!
//! Nothing else is masked; scenarios avoid selecting bare table columns, whose
//! RowDescription would carry the table's OID (different in each database).
//! Every scenario also checks the exact number of injected messages, so a hook that was never
//! called, or a proxy that refused injections after losing track of replies, fails the test.
#![forbid(unsafe_code)]

use std::sync::Arc;

use fencegate::protocol::build;
use fencegate_tests::cluster::{Cluster, SUPERUSER};
use fencegate_tests::inject::NoopInjection;
use fencegate_tests::wire::msg::{batch, copy_data, copy_done, copy_fail, flush};
use fencegate_tests::wire::{self, msg, tags, Message, WireClient};
use fencegate_tests::TestProxy;

/// One exchange: bytes written in one `write_all`, then what to read back.
enum Step {
    /// Read until this many ReadyForQuery messages have arrived.
    Ready(Vec<u8>, usize),
    /// Read exactly this many messages (for Flush and for the start of COPY FROM STDIN,
    /// where no ReadyForQuery comes until the client sends more).
    Count(Vec<u8>, usize),
}

impl Step {
    fn bytes(&self) -> &[u8] {
        match self {
            Step::Ready(b, _) | Step::Count(b, _) => b,
        }
    }
}

/// Parse (unnamed) + Bind (unnamed) + Execute (all rows) + Sync of `sql` with text params.
fn extended(sql: &str, params: &[Option<&str>]) -> Vec<u8> {
    batch([
        msg::parse("", sql),
        msg::bind("", "", params),
        msg::execute("", 0),
        msg::sync(),
    ])
}

/// Tags of the frontend messages in `bytes` (all tagged: no startup packet).
fn frontend_tags(mut bytes: &[u8]) -> Vec<u8> {
    let mut tags = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        tags.push(bytes[0]);
        bytes = &bytes[1 + len..];
    }
    tags
}

/// Messages the hook must inject for `steps`: one per Query, five per Execute, minus five per
/// Execute sent in a failed transaction block (`skipped_executes`), where the hook abstains.
fn expected_injections(steps: &[Step], skipped_executes: usize) -> usize {
    let tags: Vec<u8> = steps
        .iter()
        .flat_map(|s| frontend_tags(s.bytes()))
        .collect();
    let queries = tags.iter().filter(|&&t| t == b'Q').count();
    let executes = tags.iter().filter(|&&t| t == b'E').count();
    queries + 5 * (executes - skipped_executes)
}

/// Everything one connection received: startup, then one list per step. (What follows
/// Terminate is checked on its own in `faults.rs`.)
fn transcript(addr: std::net::SocketAddr, db: &str, steps: &[Step]) -> Vec<Vec<Message>> {
    let (mut client, startup) = WireClient::connect(addr, SUPERUSER, db)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let pid = startup
        .iter()
        .find(|m| m.0 == b'K')
        .map(|m| m.1[..4].to_vec())
        .expect("BackendKeyData");
    let mut out = vec![startup];
    for (i, step) in steps.iter().enumerate() {
        client.send(step.bytes()).expect("send step");
        let got = match step {
            Step::Ready(_, n) => client.read_until_ready(*n),
            Step::Count(_, n) => (0..*n).map(|_| client.read_message()).collect(),
        };
        let got = got.unwrap_or_else(|e| {
            panic!(
                "step {i} via {addr}: {e}; so far {:#?}",
                out.iter().map(|m| wire::render(m)).collect::<Vec<_>>()
            )
        });
        out.push(got);
    }
    out.iter().map(|msgs| mask(msgs, &pid)).collect()
}

/// Masks BackendKeyData and the own-pid field of NotificationResponse (see the module doc).
fn mask(messages: &[Message], pid: &[u8]) -> Vec<Message> {
    wire::normalize(messages)
        .into_iter()
        .map(|(tag, mut body)| {
            if tag == b'A' {
                assert_eq!(&body[..4], pid, "notification from another backend");
                body[..4].fill(0);
            }
            (tag, body)
        })
        .collect()
}

/// Runs `steps` directly and through a proxy with [`NoopInjection`], each in a fresh database
/// set up with `setup`; asserts identical transcripts and the exact injection count. Returns
/// the (masked) direct transcript, startup first, for scenario-specific checks.
fn same_both_ways(
    name: &str,
    setup: &str,
    steps: &[Step],
    skipped_executes: usize,
) -> Vec<Vec<Message>> {
    let cluster = Cluster::shared();
    let hooks = NoopInjection::new();
    let proxy = TestProxy::start(cluster.port(), |_| {}, Arc::new(hooks.clone()));
    let mut runs = Vec::new();
    for (side, addr) in [("d", cluster.endpoint().addr), ("p", proxy.addr())] {
        let db = cluster.create_database(&format!("inj_{name}_{side}"));
        if !setup.is_empty() {
            cluster.execute(&db, setup);
        }
        runs.push(transcript(addr, &db, steps));
    }
    let proxied = runs.pop().unwrap();
    let direct = runs.pop().unwrap();
    wire::assert_same_transcripts(name, &direct, &proxied);
    assert_eq!(
        hooks.injected(),
        expected_injections(steps, skipped_executes),
        "injected message count"
    );
    direct
}

#[test]
fn simple_multi_statement_queries() {
    let steps = [
        Step::Ready(
            msg::query("SELECT 1 AS a, 'x' AS b; SELECT generate_series(1, 3); VALUES (NULL::int)"),
            1,
        ),
        Step::Ready(
            msg::query("SET application_name = 'fg_inj'; SHOW application_name"),
            1,
        ),
        Step::Ready(msg::query(""), 1),
        Step::Ready(msg::query(";"), 1),
        Step::Ready(
            msg::query("DO $$BEGIN RAISE NOTICE 'hello'; END$$; SELECT 2"),
            1,
        ),
        // Two Queries in one write.
        Step::Ready(
            batch([msg::query("SELECT 3"), msg::query("SELECT 4; SELECT 5")]),
            2,
        ),
    ];
    let t = same_both_ways("simple", "", &steps, 0);
    assert_eq!(tags(&t[1]), "TDCTDDDCTDCZ");
    assert!(tags(&t[2]).contains('S'), "ParameterStatus expected");
    assert_eq!(tags(&t[3]), "IZ");
    assert!(tags(&t[5]).starts_with('N'));
}

#[test]
fn simple_query_with_error_in_middle_statement() {
    let steps = [
        Step::Ready(msg::query("SELECT 1; SELECT 1/0; SELECT 3"), 1),
        Step::Ready(
            msg::query("CREATE TABLE t (a int); INSERT INTO t VALUES (1); SELECT x FROM nowhere"),
            1,
        ),
        // The failed implicit transaction rolled back the CREATE TABLE.
        Step::Ready(msg::query("SELECT count(*) FROM t"), 1),
        Step::Ready(msg::query("SELEC 1; SELECT 2"), 1),
        Step::Ready(msg::query("SELECT 6"), 1),
    ];
    let t = same_both_ways("simple_err", "", &steps, 0);
    assert_eq!(tags(&t[1]), "TDCEZ");
    assert_eq!(tags(&t[3]), "EZ");
}

#[test]
fn extended_named_and_unnamed_statements() {
    let steps = [
        // Named statement: parse, describe both, bind, execute.
        Step::Ready(
            batch([
                msg::parse("s1", "SELECT $1::int + 1 AS n, 'x'::text AS t"),
                msg::describe(b'S', "s1"),
                msg::bind("p1", "s1", &[Some("41")]),
                msg::describe(b'P', "p1"),
                msg::execute("p1", 0),
                msg::sync(),
            ]),
            1,
        ),
        // Unnamed statement and portal, NULL parameter, then reuse of s1 in the same segment.
        Step::Ready(
            batch([
                msg::parse("", "SELECT $1::text IS NULL"),
                msg::bind("", "", &[None]),
                msg::describe(b'P', ""),
                msg::execute("", 0),
                msg::bind("", "s1", &[Some("1")]),
                msg::execute("", 0),
                msg::sync(),
            ]),
            1,
        ),
        // Empty query through the extended protocol.
        Step::Ready(extended("", &[]), 1),
        // Bad parameter for s1: the Bind fails, the rest of the segment is skipped.
        Step::Ready(
            batch([
                msg::bind("", "s1", &[Some("not a number")]),
                msg::execute("", 0),
                msg::sync(),
            ]),
            1,
        ),
        // Close s1, then binding it fails.
        Step::Ready(
            batch([
                build::close_statement("s1").to_vec(),
                msg::sync(),
                msg::bind("", "s1", &[Some("1")]),
                msg::execute("", 0),
                msg::sync(),
            ]),
            2,
        ),
        // Several Executes in one segment, a DDL and DML among them.
        Step::Ready(
            batch([
                msg::parse("", "CREATE TABLE t (a int)"),
                msg::bind("", "", &[]),
                msg::execute("", 0),
                msg::parse("ins", "INSERT INTO t VALUES ($1)"),
                msg::bind("", "ins", &[Some("7")]),
                msg::execute("", 0),
                msg::bind("", "ins", &[Some("8")]),
                msg::execute("", 0),
                msg::parse("", "SELECT sum(a) FROM t"),
                msg::bind("", "", &[]),
                msg::execute("", 0),
                msg::sync(),
            ]),
            1,
        ),
    ];
    let t = same_both_ways("extended", "", &steps, 0);
    assert_eq!(tags(&t[1]), "1tT2TDCZ");
    assert_eq!(tags(&t[2]), "12TDC2DCZ");
    assert_eq!(tags(&t[3]), "12IZ");
    assert_eq!(tags(&t[4]), "EZ");
    assert_eq!(tags(&t[5]), "3ZEZ");
    assert_eq!(tags(&t[6]), "12C12C2C12DCZ");
}

#[test]
fn pipeline_of_five_syncs_with_error_in_third() {
    let pipeline = batch([
        extended("SELECT $1::int", &[Some("1")]),
        extended("SELECT $1::int * 2", &[Some("2")]),
        extended("SELECT $1::int / (random() * 0)::int", &[Some("3")]),
        batch([
            msg::parse("named", "SELECT $1::int + 40"),
            msg::bind("", "named", &[Some("2")]),
            msg::execute("", 0),
            msg::sync(),
        ]),
        extended("SELECT 'five'", &[]),
    ]);
    let steps = [
        Step::Ready(pipeline, 5),
        Step::Ready(msg::query("SELECT 6"), 1),
    ];
    let t = same_both_ways("pipeline5", "", &steps, 0);
    assert_eq!(tags(&t[1]), "12DCZ12DCZ12EZ12DCZ12DCZ");
    let errors: Vec<String> = t[1]
        .iter()
        .filter(|m| m.0 == b'E')
        .map(|m| m.1.escape_ascii().to_string())
        .collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("C22012"), "{errors:?}");
}

#[test]
fn long_pipeline_of_200_syncs() {
    // Every 7th segment fails; the others must all answer, in order.
    let mut pipeline = Vec::new();
    for i in 0..200 {
        let sql = if i % 7 == 3 {
            "SELECT $1::int / (random() * 0)::int"
        } else {
            "SELECT $1::int * 2"
        };
        pipeline.extend(extended(sql, &[Some(&i.to_string())]));
    }
    let steps = [
        Step::Ready(pipeline, 200),
        Step::Ready(msg::query("SELECT 1"), 1),
    ];
    let t = same_both_ways("pipeline200", "", &steps, 0);
    let rows = t[1].iter().filter(|m| m.0 == b'D').count();
    let errors = t[1].iter().filter(|m| m.0 == b'E').count();
    assert_eq!((rows, errors), (171, 29));
}

#[test]
fn execute_with_max_rows_and_portal_suspended() {
    let steps = [
        // Unnamed portal, one segment.
        Step::Ready(
            batch([
                msg::parse("", "SELECT generate_series(1, 5)"),
                msg::bind("", "", &[]),
                msg::execute("", 2),
                msg::execute("", 2),
                msg::execute("", 0),
                msg::sync(),
            ]),
            1,
        ),
        // A named portal in a transaction block, resumed across Syncs.
        Step::Ready(msg::query("BEGIN"), 1),
        Step::Ready(
            batch([
                msg::parse("", "SELECT generate_series(1, 5)"),
                msg::bind("cur", "", &[]),
                msg::execute("cur", 3),
                msg::sync(),
            ]),
            1,
        ),
        Step::Ready(batch([msg::execute("cur", 3), msg::sync()]), 1),
        Step::Ready(batch([msg::execute("cur", 3), msg::sync()]), 1),
        Step::Ready(msg::query("COMMIT"), 1),
    ];
    let t = same_both_ways("suspended", "", &steps, 0);
    assert_eq!(tags(&t[1]), "12DDsDDsDCZ");
    assert_eq!(tags(&t[3]), "12DDDsZ");
    assert_eq!(tags(&t[4]), "DDCZ");
    assert_eq!(tags(&t[5]), "CZ");
}

#[test]
fn flush_without_sync_answers_before_sync() {
    let steps = [
        // Everything up to Flush is answered before any Sync is sent (a read that waited for
        // ReadyForQuery here would time out and fail the test).
        Step::Count(
            batch([
                msg::parse("", "SELECT 42"),
                msg::bind("", "", &[]),
                msg::describe(b'P', ""),
                msg::execute("", 0),
                flush(),
            ]),
            5,
        ),
        Step::Count(
            batch([msg::parse("f", "SELECT 1 / (random() * 0)::int"), flush()]),
            1,
        ),
        Step::Count(
            batch([msg::bind("", "f", &[]), msg::execute("", 0), flush()]),
            2,
        ),
        Step::Ready(msg::sync(), 1),
        Step::Count(
            batch([msg::bind("", "f", &[]), msg::execute("", 0), flush()]),
            2,
        ),
        Step::Count(flush(), 0),
        Step::Ready(msg::sync(), 1),
    ];
    let t = same_both_ways("flush", "", &steps, 0);
    assert_eq!(tags(&t[1]), "12TDC");
    assert_eq!(tags(&t[2]), "1");
    assert_eq!(tags(&t[3]), "2E");
    assert_eq!(tags(&t[4]), "Z");
}

#[test]
fn failed_transaction_block_both_protocols() {
    let steps = [
        Step::Ready(msg::query("BEGIN"), 1),
        Step::Ready(msg::query("SELECT 1/0"), 1),
        // 25P02 through the simple protocol...
        Step::Ready(msg::query("SELECT 1"), 1),
        // ...and through the extended one (two Executes in the failed block).
        Step::Ready(extended("SELECT 2", &[]), 1),
        Step::Ready(
            batch([
                msg::parse("s", "SELECT 3"),
                msg::bind("", "s", &[]),
                msg::execute("", 0),
                msg::sync(),
            ]),
            1,
        ),
        Step::Ready(msg::query("ROLLBACK"), 1),
        // A second failed block, ended by an extended-protocol ROLLBACK.
        Step::Ready(extended("BEGIN", &[]), 1),
        Step::Ready(extended("SELECT 1/0", &[]), 1),
        Step::Ready(msg::query("SELECT 4"), 1),
        Step::Ready(extended("ROLLBACK", &[]), 1),
        Step::Ready(msg::query("SELECT 5"), 1),
    ];
    // Executes sent in a failed block: steps 3, 4 and 9 (the ROLLBACK).
    let t = same_both_ways("failed_block", "", &steps, 3);
    assert_eq!(tags(&t[2]), "EZ");
    for (step, want) in [(3, "EZ"), (4, "EZ"), (5, "EZ"), (9, "EZ")] {
        assert_eq!(tags(&t[step]), want, "step {}", step - 1);
        let error = String::from_utf8_lossy(&t[step][0].1).into_owned();
        assert!(error.contains("C25P02"), "step {}: {error}", step - 1);
    }
    for step in [3, 4, 5, 9] {
        assert_eq!(t[step].last().unwrap().1, b"E");
    }
    assert_eq!(
        t[10].last().unwrap().1,
        b"I",
        "extended ROLLBACK ended the block"
    );
    assert_eq!(tags(&t[10]), "12CZ");
}

#[test]
fn copy_from_stdin_simple() {
    let steps = [
        Step::Count(msg::query("COPY t FROM STDIN"), 1),
        Step::Ready(
            batch([
                copy_data("1\tone\n"),
                copy_data("2\ttwo\n3\t"),
                copy_data("three\n"),
                copy_done(),
            ]),
            1,
        ),
        // Bad data: the error ends the copy; the CopyDone that follows is ignored.
        Step::Count(msg::query("COPY t FROM STDIN"), 1),
        Step::Ready(
            batch([copy_data("4\tfour\nnot a number\tx\n"), copy_done()]),
            1,
        ),
        // CopyFail.
        Step::Count(msg::query("COPY t FROM STDIN"), 1),
        Step::Ready(
            batch([copy_data("5\tfive\n"), copy_fail("client gave up")]),
            1,
        ),
        // Everything in one write.
        Step::Ready(
            batch([
                msg::query("COPY t FROM STDIN"),
                copy_data("6\tsix\n"),
                copy_done(),
            ]),
            1,
        ),
        Step::Ready(
            msg::query("SELECT count(*), sum(a), string_agg(b, ',' ORDER BY a) FROM t"),
            1,
        ),
    ];
    let t = same_both_ways(
        "copy_in_simple",
        "CREATE TABLE t (a int, b text)",
        &steps,
        0,
    );
    assert_eq!(tags(&t[1]), "G");
    assert_eq!(tags(&t[2]), "CZ");
    assert_eq!(tags(&t[4]), "EZ");
    assert_eq!(tags(&t[6]), "EZ");
    assert_eq!(tags(&t[7]), "GCZ");
    assert_eq!(
        t[8][1],
        (
            b'D',
            b"\0\x03\0\0\0\x014\0\0\0\x0212\0\0\0\x11one,two,three,six".to_vec()
        )
    );
}

#[test]
fn copy_from_stdin_extended() {
    let copy = || {
        batch([
            msg::parse("", "COPY t FROM STDIN"),
            msg::bind("", "", &[]),
            msg::execute("", 0),
            msg::sync(),
        ])
    };
    let steps = [
        // The client's Sync after Execute is swallowed by the server during copy-in...
        Step::Count(copy(), 3),
        // ...and the one after CopyDone is answered.
        Step::Ready(
            batch([copy_data("1\tone\n2\ttwo\n"), copy_done(), msg::sync()]),
            1,
        ),
        // All in one write.
        Step::Ready(
            batch([copy(), copy_data("3\tthree\n"), copy_done(), msg::sync()]),
            1,
        ),
        // Bad data: the server discards until the next Sync.
        Step::Count(copy(), 3),
        Step::Ready(batch([copy_data("oops\n"), copy_done(), msg::sync()]), 1),
        // CopyFail.
        Step::Count(copy(), 3),
        Step::Ready(batch([copy_fail("nope"), msg::sync()]), 1),
        // A named statement, and the table read back in the same pipeline.
        Step::Ready(
            batch([
                msg::parse("cp", "COPY t (a) FROM STDIN"),
                msg::bind("", "cp", &[]),
                msg::execute("", 0),
                msg::sync(),
                copy_data("4\n"),
                copy_done(),
                msg::sync(),
                extended("SELECT count(*), sum(a) FROM t", &[]),
            ]),
            2,
        ),
    ];
    let t = same_both_ways("copy_in_ext", "CREATE TABLE t (a int, b text)", &steps, 0);
    assert_eq!(tags(&t[1]), "12G");
    assert_eq!(tags(&t[2]), "CZ");
    assert_eq!(tags(&t[3]), "12GCZ");
    assert_eq!(tags(&t[5]), "EZ");
    assert_eq!(tags(&t[7]), "EZ");
    assert_eq!(tags(&t[8]), "12GCZ12DCZ");
    assert_eq!(t[8][7], (b'D', b"\0\x02\0\0\0\x014\0\0\0\x0210".to_vec()));
}

#[test]
fn copy_to_stdout_both_protocols() {
    let steps = [
        Step::Ready(
            msg::query("COPY (SELECT g, g * 2 FROM generate_series(1, 3) g) TO STDOUT"),
            1,
        ),
        Step::Ready(
            extended("COPY (SELECT 'a', NULL) TO STDOUT (FORMAT csv)", &[]),
            1,
        ),
        Step::Ready(
            msg::query("COPY (SELECT 1 / (g - 2) FROM generate_series(1, 3) g) TO STDOUT"),
            1,
        ),
    ];
    let t = same_both_ways("copy_out", "", &steps, 0);
    assert_eq!(tags(&t[1]), "HdddcCZ");
    assert_eq!(tags(&t[2]), "12HdcCZ");
    assert_eq!(tags(&t[3]), "HdEZ");
}

#[test]
fn notify_to_self_after_listen() {
    let steps = [
        Step::Ready(msg::query("LISTEN fg_chan"), 1),
        Step::Ready(msg::query("NOTIFY fg_chan, 'simple'"), 1),
        Step::Ready(
            extended("SELECT pg_notify('fg_chan', $1)", &[Some("extended")]),
            1,
        ),
        Step::Ready(
            msg::query("BEGIN; NOTIFY fg_chan, 'in block'; NOTIFY fg_chan, 'twice'; COMMIT"),
            1,
        ),
        Step::Ready(msg::query("UNLISTEN *; NOTIFY fg_chan, 'unheard'"), 1),
    ];
    let t = same_both_ways("notify", "", &steps, 0);
    assert_eq!(tags(&t[2]), "CAZ");
    assert_eq!(tags(&t[3]), "12DCAZ");
    assert_eq!(tags(&t[4]), "CCCCAAZ");
    assert!(!tags(&t[5]).contains('A'));
}

/// What a tokio-postgres workload observed, as text: rows, counts and errors.
async fn workload(client: &mut tokio_postgres::Client) -> Vec<String> {
    use futures_util::{future, SinkExt};

    let mut out = Vec::new();
    let err = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(db) => format!("error {} {}", db.code().code(), db.message()),
        None => format!("error {e}"),
    };
    client
        .batch_execute("CREATE TABLE w (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
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
    let shared: &tokio_postgres::Client = client;
    let queries = (0..10i32).map(|i| {
        let select = &select;
        async move {
            match shared.query_one(select, &[&i]).await {
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
        let mut client = ep.connect(SUPERUSER, &db).await;
        let seen = tokio::time::timeout(std::time::Duration::from_secs(60), workload(&mut client))
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
