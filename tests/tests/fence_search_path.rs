#![forbid(unsafe_code)]
//! The checks the proxy sends (`check`, `admit_current`, `admit_set`, `check_settings`,
//! `settings_unchanged`) pin no search_path: they name everything with its schema instead
//! (schema.sql, docs/security.md). So a session that puts a lookalike of every function,
//! operator and type they use first in its search_path, and lookalike types in its
//! pg_temp (searched for types before anything else), must get exactly the decisions a
//! plain session gets. Each lookalike fails loudly when it runs: a function or operator
//! raises FGX01, a type is a domain that admits no value (23514). The schema of lookalikes
//! is usable by PUBLIC: the SECURITY DEFINER checks look names up as the schema's owner,
//! who skips a schema it may not use (as `public` is usable by all).

use fencegate_tests::cluster::TRUST_USER;
use fencegate_tests::fence::{comment, FenceEnv, INVALID, STALE};
use fencegate_tests::wire::{msg, WireClient};

const SETUP: &str = "
CREATE TABLE t (v int);
GRANT ALL ON t TO trust_user;
";

/// The failing functions: (name, arguments, result). The first seven are the operators'.
const FUNCTIONS: &[(&str, &str, &str)] = &[
    ("tt_b", "text, text", "boolean"),
    ("tt_t", "text, text", "text"),
    ("bb_b", "bigint, bigint", "boolean"),
    ("bb_i8", "bigint, bigint", "bigint"),
    ("bi_i8", "bigint, int4", "bigint"),
    ("ii_b", "int4, int4", "boolean"),
    ("xx_b", "xid, xid", "boolean"),
    ("hashtext", "text", "int4"),
    ("hashtextextended", "text, bigint", "bigint"),
    ("pg_try_advisory_xact_lock_shared", "int4, int4", "boolean"),
    ("pg_try_advisory_xact_lock_shared", "bigint", "boolean"),
    ("current_setting", "text, boolean", "text"),
    ("length", "text", "int4"),
    ("octet_length", "text", "int4"),
];

/// The schema of lookalikes: each function of [`FUNCTIONS`], then [`LOOKALIKES`].
fn decoys() -> String {
    let mut sql =
        "CREATE SCHEMA decoy AUTHORIZATION trust_user; GRANT USAGE ON SCHEMA decoy TO PUBLIC;\n"
            .to_string();
    for (name, args, result) in FUNCTIONS {
        sql.push_str(&format!(
            "CREATE FUNCTION decoy.{name}({args}) RETURNS {result} LANGUAGE plpgsql AS \
             $$BEGIN RAISE EXCEPTION USING ERRCODE = 'FGX01', MESSAGE = 'a lookalike ran'; END$$;\n"
        ));
    }
    sql + LOOKALIKES
}

/// The operators and types that look like pg_catalog's.
const LOOKALIKES: &str = r#"
CREATE OPERATOR decoy.=  (LEFTARG = text, RIGHTARG = text, FUNCTION = decoy.tt_b);
CREATE OPERATOR decoy.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = decoy.tt_b);
CREATE OPERATOR decoy.~  (LEFTARG = text, RIGHTARG = text, FUNCTION = decoy.tt_b);
CREATE OPERATOR decoy.<= (LEFTARG = text, RIGHTARG = text, FUNCTION = decoy.tt_b);
CREATE OPERATOR decoy.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = decoy.tt_t);
CREATE OPERATOR decoy.=  (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = decoy.bb_b);
CREATE OPERATOR decoy.<  (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = decoy.bb_b);
CREATE OPERATOR decoy.>= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = decoy.bb_b);
CREATE OPERATOR decoy.&  (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = decoy.bb_i8);
CREATE OPERATOR decoy.-  (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = decoy.bb_i8);
CREATE OPERATOR decoy.>> (LEFTARG = bigint, RIGHTARG = int4, FUNCTION = decoy.bi_i8);
CREATE OPERATOR decoy.<  (LEFTARG = int4, RIGHTARG = int4, FUNCTION = decoy.ii_b);
CREATE OPERATOR decoy.=  (LEFTARG = xid, RIGHTARG = xid, FUNCTION = decoy.xx_b);
CREATE DOMAIN decoy.text AS pg_catalog.text CHECK (false);
CREATE DOMAIN decoy.int8 AS pg_catalog.int8 CHECK (false);
CREATE DOMAIN decoy.int4 AS pg_catalog.int4 CHECK (false);
CREATE DOMAIN decoy.xid AS pg_catalog.xid CHECK (false);
CREATE DOMAIN decoy.bool AS pg_catalog.bool CHECK (false);
"#;

/// What the session itself sets up: the path, and lookalike types in its pg_temp.
const SESSION: &str = "SET search_path = decoy, pg_catalog, public;
     CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (false);
     CREATE DOMAIN pg_temp.int8 AS pg_catalog.int8 CHECK (false);
     CREATE DOMAIN pg_temp.int4 AS pg_catalog.int4 CHECK (false)";

fn write(resource: &str, token: i64) -> String {
    format!("INSERT INTO t VALUES (1) {}", comment(resource, token))
}

/// Each step's SQL, what it is, and the SQLSTATEs it must give (none: admitted).
const SETTINGS_STEPS: &[(&str, &str, &[&str])] = &[
    (
        "SET fencing.resource = 'sp'; SET fencing.token = 6",
        "set",
        &[],
    ),
    ("BEGIN", "begin", &[]),
    ("INSERT INTO t VALUES (2)", "settings: the first check", &[]),
    ("INSERT INTO t VALUES (3)", "settings: the comparison", &[]),
    ("COMMIT", "commit", &[]),
    ("BEGIN", "begin", &[]),
    ("SET LOCAL fencing.resource = 'sp'", "set local", &[]),
    ("SET LOCAL fencing.token = 6", "set local", &[]),
    (
        "INSERT INTO t VALUES (6)",
        "settings just set: admit_set",
        &[],
    ),
    ("COMMIT", "commit", &[]),
    (
        "SET fencing.token = 5; INSERT INTO t VALUES (4)",
        "settings: stale",
        &[STALE],
    ),
    (
        "SET fencing.token = 'x'; INSERT INTO t VALUES (5)",
        "settings: not a number",
        &[INVALID],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookalikes_in_the_search_path_and_pg_temp_never_run_in_a_check() {
    let env = FenceEnv::counting("search_path_decoys", SETUP).await;
    env.monitor.client().batch_execute(&decoys()).await.unwrap();
    let mut raw = WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db)
        .expect("login")
        .0;
    raw.round(&msg::query(SESSION), 1, "the session's lookalikes");
    // Each lookalike is really there and in reach: the bare names find them.
    raw.round_expecting(
        &msg::query("SELECT 'a'::pg_catalog.text = 'b'::pg_catalog.text"),
        1,
        &["FGX01"],
        "a bare = finds the lookalike first in the path",
    );
    let comments: &[(i64, &str, &[&str])] = &[
        (5, "the first token: check, then a raise", &[]),
        (5, "the same token again: admit_current", &[]),
        (6, "a newer token: a raise", &[]),
        (6, "the newer token again", &[]),
        (5, "the older token: stale", &[STALE]),
    ];
    for (token, what, expected) in comments {
        raw.round_expecting(&msg::query(&write("sp", *token)), 1, expected, what);
    }
    for (sql, what, expected) in SETTINGS_STEPS {
        raw.round_expecting(&msg::query(sql), 1, expected, what);
    }
    // The session took every path named above: its lookalikes did not make the proxy think
    // the database lacks a function (a probe that names a bare `text` did).
    raw.round(
        &msg::query("SELECT pg_catalog.pg_stat_force_next_flush()"),
        1,
        "flush",
    );
    let ran = env
        .monitor
        .client()
        .query(
            "SELECT funcname, calls FROM pg_stat_user_functions WHERE schemaname = 'fencegate' \
             AND funcname IN ('check', 'admit_current', 'admit_set', 'check_settings', \
             'settings_unchanged') \
             ORDER BY funcname",
            &[],
        )
        .await
        .unwrap();
    let ran: Vec<String> = ran.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        ran,
        [
            "admit_current",
            "admit_set",
            "check",
            "check_settings",
            "settings_unchanged"
        ]
    );
    let rows = env.fence_rows().await;
    assert_eq!(rows, [("sp".to_string(), 6)]);
}
