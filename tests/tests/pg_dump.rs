//! pg_dump and restore through the proxy must round-trip a database exactly.
//!
//! A source database (schema objects, non-ASCII text, every byte value in a bytea, and a
//! 100,000-row table that travels as COPY) is dumped through the proxy and restored through
//! the proxy into a fresh database, once as plain SQL fed to psql and once in custom
//! format via pg_restore. Dumps of source and copies taken directly must be identical, and
//! a dump taken through the proxy must be byte-for-byte the dump taken directly.
//!
//! Normalized: the random key of the `\restrict` line newer pg_dump versions emit, which
//! differs in every dump. A control restore done directly checks the premise that a dump
//! and restore reproduces the source exactly, so a failure is the proxy's, not the test's.
#![forbid(unsafe_code)]

use fencegate_tests::cluster::{Cluster, SUPERUSER};
use fencegate_tests::endpoint::{run_ok, Endpoint};
use fencegate_tests::TestProxy;

const SOURCE: &str = r#"
CREATE SCHEMA app;
COMMENT ON SCHEMA app IS 'Anwendung — アプリ';
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE app.people (
    id serial PRIMARY KEY,
    name text NOT NULL,
    mood app.mood,
    note text,
    tags text[]
);
INSERT INTO app.people (name, mood, note, tags) VALUES
    ('Zoë', 'happy', 'naïve café — 日本語 🐘', ARRAY['ä', 'b"c']),
    ('Ωmega', 'sad', E'tab\there\nnew line \\ backslash', '{}'),
    ('nobody', NULL, NULL, NULL);
CREATE TABLE app.blobs (id int PRIMARY KEY, data bytea);
INSERT INTO app.blobs
    SELECT 1, decode(string_agg(lpad(to_hex(b), 2, '0'), '' ORDER BY b), 'hex')
    FROM generate_series(0, 255) b;
INSERT INTO app.blobs VALUES (2, ''), (3, NULL);
-- Rows of one fixed size: a restore then stores them in dump order. (With varying sizes,
-- COPY's bulk insert may put a later short row into an earlier page's leftover space, and
-- the next dump, which reads in physical order, lists rows in another order.)
CREATE TABLE app.events AS
    SELECT i AS id, md5(i::text) AS hash, repeat('x', 40) AS pad, i::bigint * 3 AS amount
    FROM generate_series(1, 100000) i;
ALTER TABLE app.events ADD PRIMARY KEY (id);
CREATE INDEX events_hash ON app.events (hash);
CREATE VIEW app.happy AS SELECT name FROM app.people WHERE mood = 'happy';
CREATE FUNCTION app.greet(who text) RETURNS text LANGUAGE sql AS $$ SELECT 'Grüß dich, ' || who $$;
CREATE SEQUENCE app.counter START 42;
SELECT setval('app.counter', 1000);
"#;

fn pg_dump(ep: Endpoint, db: &str, args: &[&str]) -> Vec<u8> {
    let mut cmd = ep.command("pg_dump", SUPERUSER, db);
    cmd.args(args);
    run_ok(&mut cmd, b"").stdout
}

/// `pg_dump` through `ep`, its output fed to `psql` through `ep`; both must succeed,
/// psql silently.
fn dump_into(ep: Endpoint, src: &str, dst: &str) {
    let dump = pg_dump(ep, src, &[]);
    let mut restore = ep.command("psql", SUPERUSER, dst);
    restore.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
    let restored = run_ok(&mut restore, &dump);
    assert!(
        restored.stderr.is_empty(),
        "psql restore through {} complained: {}",
        ep.addr,
        String::from_utf8_lossy(&restored.stderr)
    );
}

/// Replaces the key of psql's `\restrict`/`\unrestrict` lines, which pg_dump picks at
/// random for every dump (PostgreSQL 15.14 and later; older versions have no such lines).
fn mask_restrict_key(dump: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(dump.len());
    for line in dump.split_inclusive(|&b| b == b'\n') {
        match [&b"\\restrict "[..], b"\\unrestrict "]
            .iter()
            .find(|p| line.starts_with(p))
        {
            Some(prefix) => out.extend_from_slice(&[prefix, &b"<key>\n"[..]].concat()),
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// Asserts two dumps are identical but for the restrict key; on failure shows the first
/// lines of `diff -u`.
fn assert_same(left: &[u8], right: &[u8], what: &str) {
    let (left, right) = (mask_restrict_key(left), mask_restrict_key(right));
    if left == right {
        return;
    }
    let dir = tempfile::tempdir().expect("scratch dir");
    let (a, b) = (dir.path().join("left.sql"), dir.path().join("right.sql"));
    std::fs::write(&a, &left).unwrap();
    std::fs::write(&b, &right).unwrap();
    let diff = std::process::Command::new("diff")
        .arg("-u")
        .arg(&a)
        .arg(&b)
        .output();
    let diff = diff
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let head: Vec<&str> = diff.lines().take(80).collect();
    panic!("{what}:\n{}", head.join("\n"));
}

/// The shared cluster, a plain proxy in front of it, a source database filled with
/// [`SOURCE`] and an empty target database (named `{prefix}src` and `{prefix}dst`).
fn source_and_target(prefix: &str) -> (&'static Cluster, TestProxy, String, String) {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let src = cluster.create_database(&format!("{prefix}src"));
    let dst = cluster.create_database(&format!("{prefix}dst"));
    cluster.execute(&src, SOURCE);
    (cluster, proxy, src, dst)
}

fn text(dump: &[u8]) -> &str {
    std::str::from_utf8(dump).expect("plain dump is UTF-8")
}

#[test]
fn plain_dump_through_proxy_restores_identically() {
    let (cluster, proxy, src, dst) = source_and_target("dump_");
    let control = cluster.create_database("dump_control");

    dump_into(cluster.endpoint(), &src, &control);
    dump_into(proxy.endpoint(), &src, &dst);

    let original = pg_dump(cluster.endpoint(), &src, &[]);
    let direct_copy = pg_dump(cluster.endpoint(), &control, &[]);
    let why = "control: a direct dump and restore is not exact";
    assert_same(&original, &direct_copy, why);
    let copy = pg_dump(cluster.endpoint(), &dst, &[]);
    assert!(text(&original).contains("naïve café — 日本語 🐘"));
    assert!(text(&original).contains("COPY app.events (id, hash, pad, amount) FROM stdin;"));
    assert!(
        original.len() > 5_000_000,
        "dump is only {} bytes",
        original.len()
    );
    let why = "restored database differs from the source";
    assert_same(&original, &copy, why);

    let proxied = pg_dump(proxy.endpoint(), &src, &[]);
    let why = "pg_dump through the proxy differs from pg_dump direct";
    assert_same(&original, &proxied, why);
}

#[test]
fn custom_format_dump_and_pg_restore_through_proxy() {
    let (cluster, proxy, src, dst) = source_and_target("dumpfc_");
    let scratch = tempfile::tempdir().expect("scratch dir");
    let archive = scratch.path().join("src.dump");

    let archive_arg = archive.to_str().unwrap();
    pg_dump(proxy.endpoint(), &src, &["-Fc", "-f", archive_arg]);
    let mut restore = proxy.endpoint().command("pg_restore", SUPERUSER, &dst);
    restore.args(["--exit-on-error", "-d", &dst, archive_arg]);
    run_ok(&mut restore, b"");

    let original = pg_dump(cluster.endpoint(), &src, &[]);
    let copy = pg_dump(cluster.endpoint(), &dst, &[]);
    let why = "database restored with pg_restore differs from the source";
    assert_same(&original, &copy, why);
    let greeting = cluster.execute(&dst, "SELECT app.greet('Welt'), nextval('app.counter')");
    assert_eq!(greeting, "Grüß dich, Welt|1001\n");
}
