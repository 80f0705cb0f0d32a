//! Injection is invisible: with [`NoopInjection`] (a hidden `SELECT 1` before every Query, a
//! hidden Parse/Bind/Execute/Close round before every Execute), a client sees exactly the bytes
//! it would see talking to Postgres directly.
//!
//! Each scenario sends the same raw frontend bytes to Postgres directly and through the proxy
//! and compares every backend message, masking only what differs per connection, and checks
//! the exact number of injected messages (see [`fencegate_tests::transcript`]).
#![forbid(unsafe_code)]

use fencegate::protocol::build;
use fencegate_tests::transcript::{same_both_ways, Scenario, Step};
use fencegate_tests::wire::msg::{
    batch, copy_data, copy_done, copy_fail, extended, flush, run_prepared, run_unnamed,
};
use fencegate_tests::wire::{msg, tags};

#[test]
fn simple_multi_statement_queries() {
    let t = same_both_ways(Scenario {
        name: "simple",
        steps: vec![
            Step::query(
                "SELECT 1 AS a, 'x' AS b; SELECT generate_series(1, 3); VALUES (NULL::int)",
            )
            .expect_tags("TDCTDDDCTDCZ"),
            Step::query("SET application_name = 'fg_inj'; SHOW application_name"),
            Step::query("").expect_tags("IZ"),
            Step::query(";"),
            Step::query("DO $$BEGIN RAISE NOTICE 'hello'; END$$; SELECT 2"),
            // Two Queries in one write.
            Step::ready(
                batch([msg::query("SELECT 3"), msg::query("SELECT 4; SELECT 5")]),
                2,
            ),
        ],
        ..Scenario::default()
    });
    assert!(tags(&t[2]).contains('S'), "ParameterStatus expected");
    assert!(tags(&t[5]).starts_with('N'));
}

#[test]
fn simple_query_with_error_in_middle_statement() {
    same_both_ways(Scenario {
        name: "simple_err",
        steps: vec![
            Step::query("SELECT 1; SELECT 1/0; SELECT 3").expect_tags("TDCEZ"),
            Step::query("CREATE TABLE t (a int); INSERT INTO t VALUES (1); SELECT x FROM nowhere"),
            // The failed implicit transaction rolled back the CREATE TABLE.
            Step::query("SELECT count(*) FROM t").expect_tags("EZ"),
            Step::query("SELEC 1; SELECT 2"),
            Step::query("SELECT 6"),
        ],
        ..Scenario::default()
    });
}

#[test]
fn extended_named_and_unnamed_statements() {
    same_both_ways(Scenario {
        name: "extended",
        steps: vec![
            // Named statement: parse, describe both, bind, execute.
            Step::ready(
                batch([
                    msg::parse_described("s1", "SELECT $1::int + 1 AS n, 'x'::text AS t"),
                    msg::bind_described("p1", "s1", &[Some("41")]),
                    msg::execute("p1", 0),
                    msg::sync(),
                ]),
                1,
            )
            .expect_tags("1tT2TDCZ"),
            // Unnamed statement and portal, NULL parameter, then reuse of s1 in the same segment.
            Step::ready(
                batch([
                    msg::parse("", "SELECT $1::text IS NULL"),
                    msg::bind("", "", &[None]),
                    msg::describe(b'P', ""),
                    msg::execute("", 0),
                    run_prepared("s1", &[Some("1")]),
                    msg::sync(),
                ]),
                1,
            )
            .expect_tags("12TDC2DCZ"),
            // Empty query through the extended protocol.
            Step::ready(extended("", &[]), 1).expect_tags("12IZ"),
            // Bad parameter for s1: the Bind fails, the rest of the segment is skipped.
            Step::ready(
                batch([run_prepared("s1", &[Some("not a number")]), msg::sync()]),
                1,
            )
            .expect_tags("EZ"),
            // Close s1, then binding it fails.
            Step::ready(
                batch([
                    build::close_statement("s1").to_vec(),
                    msg::sync(),
                    run_prepared("s1", &[Some("1")]),
                    msg::sync(),
                ]),
                2,
            )
            .expect_tags("3ZEZ"),
            // Several Executes in one segment, a DDL and DML among them.
            Step::ready(
                batch([
                    run_unnamed("CREATE TABLE t (a int)", &[]),
                    msg::parse("ins", "INSERT INTO t VALUES ($1)"),
                    run_prepared("ins", &[Some("7")]),
                    run_prepared("ins", &[Some("8")]),
                    run_unnamed("SELECT sum(a) FROM t", &[]),
                    msg::sync(),
                ]),
                1,
            )
            .expect_tags("12C12C2C12DCZ"),
        ],
        ..Scenario::default()
    });
}

#[test]
fn pipeline_of_five_syncs_with_error_in_third() {
    let pipeline = batch([
        extended("SELECT $1::int", &[Some("1")]),
        extended("SELECT $1::int * 2", &[Some("2")]),
        extended("SELECT $1::int / (random() * 0)::int", &[Some("3")]),
        batch([
            msg::parse("named", "SELECT $1::int + 40"),
            run_prepared("named", &[Some("2")]),
            msg::sync(),
        ]),
        extended("SELECT 'five'", &[]),
    ]);
    let t = same_both_ways(Scenario {
        name: "pipeline5",
        steps: vec![
            Step::ready(pipeline, 5).expect_tags("12DCZ12DCZ12EZ12DCZ12DCZ"),
            Step::query("SELECT 6"),
        ],
        ..Scenario::default()
    });
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
    let t = same_both_ways(Scenario {
        name: "pipeline200",
        steps: vec![Step::ready(pipeline, 200), Step::query("SELECT 1")],
        ..Scenario::default()
    });
    let rows = t[1].iter().filter(|m| m.0 == b'D').count();
    let errors = t[1].iter().filter(|m| m.0 == b'E').count();
    assert_eq!((rows, errors), (171, 29));
}

#[test]
fn execute_with_max_rows_and_portal_suspended() {
    same_both_ways(Scenario {
        name: "suspended",
        steps: vec![
            // Unnamed portal, one segment.
            Step::ready(
                batch([
                    msg::parse("", "SELECT generate_series(1, 5)"),
                    msg::bind("", "", &[]),
                    msg::execute("", 2),
                    msg::execute("", 2),
                    msg::execute("", 0),
                    msg::sync(),
                ]),
                1,
            )
            .expect_tags("12DDsDDsDCZ"),
            // A named portal in a transaction block, resumed across Syncs.
            Step::query("BEGIN"),
            Step::ready(
                batch([
                    msg::parse("", "SELECT generate_series(1, 5)"),
                    msg::bind("cur", "", &[]),
                    msg::execute("cur", 3),
                    msg::sync(),
                ]),
                1,
            )
            .expect_tags("12DDDsZ"),
            Step::ready(batch([msg::execute("cur", 3), msg::sync()]), 1).expect_tags("DDCZ"),
            Step::ready(batch([msg::execute("cur", 3), msg::sync()]), 1).expect_tags("CZ"),
            Step::query("COMMIT"),
        ],
        ..Scenario::default()
    });
}

#[test]
fn flush_without_sync_answers_before_sync() {
    same_both_ways(Scenario {
        name: "flush",
        steps: vec![
            // Everything up to Flush is answered before any Sync is sent (a read that waited for
            // ReadyForQuery here would time out and fail the test).
            Step::count(
                batch([
                    msg::parse("", "SELECT 42"),
                    msg::bind_described("", "", &[]),
                    msg::execute("", 0),
                    flush(),
                ]),
                5,
            )
            .expect_tags("12TDC"),
            Step::count(
                batch([msg::parse("f", "SELECT 1 / (random() * 0)::int"), flush()]),
                1,
            )
            .expect_tags("1"),
            Step::count(batch([run_prepared("f", &[]), flush()]), 2).expect_tags("2E"),
            Step::ready(msg::sync(), 1).expect_tags("Z"),
            Step::count(batch([run_prepared("f", &[]), flush()]), 2),
            Step::count(flush(), 0),
            Step::ready(msg::sync(), 1),
        ],
        ..Scenario::default()
    });
}

#[test]
fn failed_transaction_block_both_protocols() {
    let t = same_both_ways(Scenario {
        name: "failed_block",
        // Executes sent in a failed block: steps 3, 4 and 9 (the ROLLBACK).
        skipped_executes: 3,
        steps: vec![
            Step::query("BEGIN"),
            Step::query("SELECT 1/0").expect_tags("EZ"),
            // 25P02 through the simple protocol...
            Step::query("SELECT 1"),
            // ...and through the extended one (two Executes in the failed block).
            Step::ready(extended("SELECT 2", &[]), 1),
            Step::ready(
                batch([
                    msg::parse("s", "SELECT 3"),
                    run_prepared("s", &[]),
                    msg::sync(),
                ]),
                1,
            ),
            Step::query("ROLLBACK"),
            // A second failed block, ended by an extended-protocol ROLLBACK.
            Step::ready(extended("BEGIN", &[]), 1),
            Step::ready(extended("SELECT 1/0", &[]), 1),
            Step::query("SELECT 4"),
            Step::ready(extended("ROLLBACK", &[]), 1).expect_tags("12CZ"),
            Step::query("SELECT 5"),
        ],
        ..Scenario::default()
    });
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
}

#[test]
fn copy_from_stdin_simple() {
    let t = same_both_ways(Scenario {
        name: "copy_in_simple",
        setup: "CREATE TABLE t (a int, b text)",
        steps: vec![
            Step::count(msg::query("COPY t FROM STDIN"), 1).expect_tags("G"),
            Step::ready(
                batch([
                    copy_data("1\tone\n"),
                    copy_data("2\ttwo\n3\t"),
                    copy_data("three\n"),
                    copy_done(),
                ]),
                1,
            )
            .expect_tags("CZ"),
            // Bad data: the error ends the copy; the CopyDone that follows is ignored.
            Step::count(msg::query("COPY t FROM STDIN"), 1),
            Step::ready(
                batch([copy_data("4\tfour\nnot a number\tx\n"), copy_done()]),
                1,
            )
            .expect_tags("EZ"),
            // CopyFail.
            Step::count(msg::query("COPY t FROM STDIN"), 1),
            Step::ready(
                batch([copy_data("5\tfive\n"), copy_fail("client gave up")]),
                1,
            )
            .expect_tags("EZ"),
            // Everything in one write.
            Step::ready(
                batch([
                    msg::query("COPY t FROM STDIN"),
                    copy_data("6\tsix\n"),
                    copy_done(),
                ]),
                1,
            )
            .expect_tags("GCZ"),
            Step::query("SELECT count(*), sum(a), string_agg(b, ',' ORDER BY a) FROM t"),
        ],
        ..Scenario::default()
    });
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
    let copy = || batch([run_unnamed("COPY t FROM STDIN", &[]), msg::sync()]);
    let t = same_both_ways(Scenario {
        name: "copy_in_ext",
        setup: "CREATE TABLE t (a int, b text)",
        steps: vec![
            // The client's Sync after Execute is swallowed by the server during copy-in...
            Step::count(copy(), 3).expect_tags("12G"),
            // ...and the one after CopyDone is answered.
            Step::ready(
                batch([copy_data("1\tone\n2\ttwo\n"), copy_done(), msg::sync()]),
                1,
            )
            .expect_tags("CZ"),
            // All in one write.
            Step::ready(
                batch([copy(), copy_data("3\tthree\n"), copy_done(), msg::sync()]),
                1,
            )
            .expect_tags("12GCZ"),
            // Bad data: the server discards until the next Sync.
            Step::count(copy(), 3),
            Step::ready(batch([copy_data("oops\n"), copy_done(), msg::sync()]), 1)
                .expect_tags("EZ"),
            // CopyFail.
            Step::count(copy(), 3),
            Step::ready(batch([copy_fail("nope"), msg::sync()]), 1).expect_tags("EZ"),
            // A named statement, and the table read back in the same pipeline.
            Step::ready(
                batch([
                    msg::parse("cp", "COPY t (a) FROM STDIN"),
                    run_prepared("cp", &[]),
                    msg::sync(),
                    copy_data("4\n"),
                    copy_done(),
                    msg::sync(),
                    extended("SELECT count(*), sum(a) FROM t", &[]),
                ]),
                2,
            )
            .expect_tags("12GCZ12DCZ"),
        ],
        ..Scenario::default()
    });
    assert_eq!(t[8][7], (b'D', b"\0\x02\0\0\0\x014\0\0\0\x0210".to_vec()));
}

#[test]
fn copy_to_stdout_both_protocols() {
    same_both_ways(Scenario {
        name: "copy_out",
        steps: vec![
            Step::query("COPY (SELECT g, g * 2 FROM generate_series(1, 3) g) TO STDOUT")
                .expect_tags("HdddcCZ"),
            Step::ready(
                extended("COPY (SELECT 'a', NULL) TO STDOUT (FORMAT csv)", &[]),
                1,
            )
            .expect_tags("12HdcCZ"),
            Step::query("COPY (SELECT 1 / (g - 2) FROM generate_series(1, 3) g) TO STDOUT")
                .expect_tags("HdEZ"),
        ],
        ..Scenario::default()
    });
}

#[test]
fn notify_to_self_after_listen() {
    let t = same_both_ways(Scenario {
        name: "notify",
        steps: vec![
            Step::query("LISTEN fg_chan"),
            Step::query("NOTIFY fg_chan, 'simple'").expect_tags("CAZ"),
            Step::ready(
                extended("SELECT pg_notify('fg_chan', $1)", &[Some("extended")]),
                1,
            )
            .expect_tags("12DCAZ"),
            Step::query("BEGIN; NOTIFY fg_chan, 'in block'; NOTIFY fg_chan, 'twice'; COMMIT")
                .expect_tags("CCCCAAZ"),
            Step::query("UNLISTEN *; NOTIFY fg_chan, 'unheard'"),
        ],
        ..Scenario::default()
    });
    assert!(!tags(&t[5]).contains('A'));
}
