//! psql directly against Postgres and through the proxy: the same script, in a fresh
//! database each, must print the same stdout and stderr and exit the same way.
//!
//! Nothing is normalized except in `reconnect_with_backslash_c`, where psql prints the
//! database name and the two runs necessarily use different databases.
#![forbid(unsafe_code)]

use std::path::Path;

use fencegate_tests::cluster::{Cluster, SUPERUSER};
use fencegate_tests::endpoint::{run, Endpoint};
use fencegate_tests::TestProxy;

/// What one psql run printed.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs psql (`-X`, reading the script from stdin, no ON_ERROR_STOP) with extra `args`.
fn psql(ep: Endpoint, db: &str, args: &[&str], script: &str) -> Run {
    let mut cmd = ep.command("psql", SUPERUSER, db);
    cmd.arg("-X").args(args);
    let out = run(&mut cmd, script.as_bytes());
    Run {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// Runs `each(endpoint, fresh_db, scratch_dir)` directly and through a new proxy; asserts
/// both runs printed the same and returns the direct run.
fn same_both_ways(mut each: impl FnMut(Endpoint, &str, &Path) -> Run) -> Run {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let mut runs = Vec::new();
    for (side, ep) in [("direct", cluster.endpoint()), ("proxy", proxy.endpoint())] {
        let db = cluster.create_database(&format!("psql_{side}"));
        let scratch = tempfile::tempdir().expect("scratch dir");
        runs.push(each(ep, &db, scratch.path()));
    }
    let proxied = runs.pop().unwrap();
    let direct = runs.pop().unwrap();
    assert_eq!(
        direct, proxied,
        "psql through the proxy differs from direct"
    );
    direct
}

#[test]
fn multi_statement_command() {
    let sql = "CREATE TABLE t (a int PRIMARY KEY, b text); \
               INSERT INTO t VALUES (1, 'one'), (2, NULL), (3, 'drei ü'); \
               UPDATE t SET b = 'two' WHERE a = 2; \
               SELECT * FROM t ORDER BY a; \
               SELECT count(*) AS n FROM t";
    let out = same_both_ways(|ep, db, _| psql(ep, db, &["-c", sql], ""));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stderr, "");
    for expected in [
        "INSERT 0 3",
        "UPDATE 1",
        " 3 | drei ü",
        "(3 rows)",
        " n \n---\n 3\n",
    ] {
        assert!(
            out.stdout.contains(expected),
            "missing {expected:?} in:\n{}",
            out.stdout
        );
    }
}

const ERRORS_SCRIPT: &str = r#"
\set VERBOSITY verbose
CREATE TABLE t (id int PRIMARY KEY, v text);
SELEC 1;
SELECT 1 / 0;
INSERT INTO t VALUES (1, 'a');
INSERT INTO t VALUES (1, 'again');
BEGIN;
INSERT INTO t VALUES (2, 'b');
SELECT no_such_column FROM t;
SELECT 'ignored inside failed transaction';
ROLLBACK;
DO $$ BEGIN RAISE NOTICE 'notice with ünïcode'; RAISE WARNING 'a warning'; END $$;
SELECT id, v FROM t ORDER BY id;
\echo done
"#;

#[test]
fn script_errors_continue_without_on_error_stop() {
    let out = same_both_ways(|ep, db, _| psql(ep, db, &["-f", "-"], ERRORS_SCRIPT));
    assert_eq!(out.code, Some(0), "{out:?}");
    for code in ["42601", "22012", "23505", "42703", "25P02"] {
        assert!(
            out.stderr.contains(&format!("ERROR:  {code}:")),
            "no {code} in:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains("NOTICE:  00000: notice with ünïcode"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("WARNING:  01000: a warning"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("  1 | a\n(1 row)"), "{}", out.stdout);
    assert!(out.stdout.ends_with("done\n"), "{}", out.stdout);
}

#[test]
fn on_error_stop_exits_with_status_3() {
    let script = "SELECT 1;\nSELECT * FROM missing_table;\nSELECT 'not reached';\n";
    let out =
        same_both_ways(|ep, db, _| psql(ep, db, &["-v", "ON_ERROR_STOP=1", "-f", "-"], script));
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(
        out.stderr
            .contains("relation \"missing_table\" does not exist"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("not reached"));
}

/// `\copy` out to files and back in, in text, CSV and binary formats, plus `COPY FROM STDIN`
/// with inline data and a `\copy` that fails half-way.
fn copy_script(dir: &Path) -> String {
    let file = |name: &str| dir.join(name).display().to_string();
    let (text, csv, bin, bad) = (file("t.txt"), file("t.csv"), file("t.bin"), file("bad.txt"));
    std::fs::write(&bad, "1\tok\n2\tok\nthree\tbad\n").unwrap();
    format!(
        r#"
CREATE TABLE src (id int, note text, data bytea);
INSERT INTO src SELECT i, CASE WHEN i % 7 = 0 THEN NULL ELSE 'zeile ' || i || E' ünï\t\\ end' END,
    decode(md5(i::text), 'hex') FROM generate_series(1, 30000) i;
COPY src (id, note) FROM STDIN;
-1	inline row ✓
-2	\N
\.
\copy src TO '{text}'
\copy src TO '{csv}' WITH (FORMAT csv, HEADER)
\copy (SELECT * FROM src WHERE id < 100) TO '{bin}' WITH (FORMAT binary)
CREATE TABLE dst_text (LIKE src);
CREATE TABLE dst_csv (LIKE src);
CREATE TABLE dst_bin (LIKE src);
\copy dst_text FROM '{text}'
\copy dst_csv FROM '{csv}' WITH (FORMAT csv, HEADER)
\copy dst_bin FROM '{bin}' WITH (FORMAT binary)
SELECT count(*), count(note), sum(id) FROM dst_text;
SELECT count(*) FROM (SELECT * FROM src EXCEPT SELECT * FROM dst_text) d;
SELECT count(*) FROM (SELECT * FROM src EXCEPT SELECT * FROM dst_csv) d;
SELECT count(*) FROM dst_bin;
CREATE TABLE strict (id int, note text);
\copy strict FROM '{bad}'
SELECT count(*) AS after_failed_copy FROM strict;
"#
    )
}

#[test]
fn backslash_copy_to_and_from_files() {
    let mut files = Vec::new();
    let out = same_both_ways(|ep, db, dir| {
        let out = psql(ep, db, &["-f", "-"], &copy_script(dir));
        let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
        files.push([read("t.txt"), read("t.csv"), read("t.bin")]);
        out
    });
    assert_eq!(
        files[0], files[1],
        "\\copy TO files differ between direct and proxy"
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        files[0][0].len() > 1_000_000,
        "text copy is {} bytes",
        files[0][0].len()
    );
    let stdout = &out.stdout;
    for expected in [
        "COPY 2\n",
        "COPY 30002\n",
        "COPY 101\n",
        " 30002 | 25716 | 450014997\n",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert_eq!(
        stdout.matches(" count \n-------\n     0\n(1 row)").count(),
        2,
        "{stdout}"
    );
    assert!(
        out.stderr
            .contains("invalid input syntax for type integer: \"three\""),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("COPY strict, line 3, column id"),
        "{}",
        out.stderr
    );
    assert!(
        stdout.contains(" after_failed_copy \n-------------------\n                 0\n"),
        "{stdout}"
    );
}

#[test]
fn large_result_and_unaligned_output() {
    let sql = "SELECT i, repeat('é', i % 40), md5(i::text) FROM generate_series(1, 50000) i";
    let out = same_both_ways(|ep, db, _| psql(ep, db, &["-A", "-t", "-c", sql], ""));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 50000);
    assert!(out
        .stdout
        .ends_with("\n49999|ééééééééééééééééééééééééééééééééééééééé|c703af5c89b1d0bc2e99f540f553f182\n50000||1017bfd4673955ffee4641ad3d481b1c\n"));
}

#[test]
fn reconnect_with_backslash_c() {
    let script = "SELECT pg_backend_pid() AS old \\gset\n\\c\n\
                  SELECT pg_backend_pid() <> :old AS new_backend, current_user;\n";
    let mut dbs = Vec::new();
    let out = same_both_ways(|ep, db, _| {
        dbs.push(db.to_string());
        let mut out = psql(ep, db, &["-f", "-"], script);
        // psql names the database it reconnected to; the two runs use different databases.
        out.stdout = out.stdout.replace(db, "<db>");
        out
    });
    assert_ne!(dbs[0], dbs[1]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out
        .stdout
        .contains("You are now connected to database \"<db>\" as user \"postgres\"."));
    assert!(
        out.stdout.contains(" t           | postgres\n"),
        "{}",
        out.stdout
    );
}
