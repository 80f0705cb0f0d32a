#![forbid(unsafe_code)]
//! What a client can put in a resource name or around the check cannot change what the
//! check does (docs/security.md): a name with quotes, a backslash, a semicolon and a
//! dollar, under every client encoding PostgreSQL converts to, is checked as exactly that
//! name or refused (55Z02 where the proxy cannot read the encoding), never as another;
//! NUL and names over 256 bytes are refused; and a search_path that puts a client's own
//! `int8`, `=` and `check` before pg_catalog leaves a stale token refused.

use fencegate_tests::cluster::TRUST_USER;
use fencegate_tests::fence::{comment, FenceEnv, INVALID, STALE};
use fencegate_tests::wire::{error_codes, msg, WireClient};

const SETUP: &str = "
CREATE TABLE t (v int);
GRANT ALL ON t TO trust_user;
";

/// Every character of it has meant something to some SQL reader.
const TRICKY: &str = "q'u\\o\"t;e$s$";

fn insert(resource: &str, token: i64) -> Vec<u8> {
    msg::query(&format!(
        "INSERT INTO t VALUES (1) {}",
        comment(resource, token)
    ))
}

fn session(env: &FenceEnv) -> WireClient {
    WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db)
        .expect("login")
        .0
}

/// The client encodings the server can convert its own (UTF8) to.
async fn client_encodings(env: &FenceEnv) -> Vec<String> {
    let rows = env
        .monitor
        .client()
        .query(
            "SELECT DISTINCT pg_encoding_to_char(c.conforencoding) FROM pg_conversion c \
             WHERE c.contoencoding = pg_char_to_encoding('UTF8') AND c.condefault \
             UNION SELECT 'UTF8' UNION SELECT 'SQL_ASCII' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Sends `bytes`, reads to the next ReadyForQuery; the SQLSTATEs of the errors.
fn codes_of(raw: &mut WireClient, bytes: &[u8], what: &str) -> Vec<String> {
    raw.send(bytes)
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    let replies = raw
        .read_until_ready(1)
        .unwrap_or_else(|e| panic!("{what}: read: {e}"));
    error_codes(&replies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_checked_as_itself_in_every_client_encoding() {
    let env = FenceEnv::new("names_encodings", SETUP).await;
    let encodings = client_encodings(&env).await;
    assert!(encodings.len() > 20, "{encodings:?}");
    let (mut admitted, mut refused, mut expected_rows) = (Vec::new(), Vec::new(), Vec::new());
    for (i, encoding) in encodings.iter().enumerate() {
        let mut raw = session(&env);
        raw.round(
            &msg::query(&format!("SET client_encoding = '{encoding}'")),
            1,
            encoding,
        );
        // One resource per encoding, so each first touch raises a row of its own.
        let resource = format!("{TRICKY}{i}");
        match codes_of(&mut raw, &insert(&resource, 5), encoding).as_slice() {
            [] => {
                let stale = codes_of(&mut raw, &insert(&resource, 4), encoding);
                assert_eq!(stale, [STALE], "{encoding}: the stale token");
                expected_rows.push((resource, 5));
                admitted.push(encoding.as_str());
            }
            [code] if code == INVALID => refused.push(encoding.as_str()),
            other => panic!("{encoding}: {other:?}"),
        }
    }
    // Readable encodings are checked (the test cannot pass by refusing everything), and
    // the multibyte ones whose second bytes may look like ASCII are refused.
    for must in ["UTF8", "LATIN1", "WIN1252", "SQL_ASCII"] {
        assert!(admitted.contains(&must), "{must}: admitted {admitted:?}");
    }
    for must in ["SJIS", "BIG5", "GBK"] {
        assert!(refused.contains(&must), "{must}: refused {refused:?}");
    }
    // Every check raised exactly the name it was given, and nothing else.
    expected_rows.sort();
    assert_eq!(env.fence_rows().await, expected_rows);
    assert_eq!(
        env.monitor
            .client()
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        admitted.len() as i64,
        "one row per admitted write, none for a stale or refused one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_and_overlong_names_are_refused_and_the_longest_is_itself() {
    let env = FenceEnv::new("names_limits", SETUP).await;
    let mut raw = session(&env);
    for (what, resource) in [("NUL", "a\0b".to_string()), ("257 bytes", "x".repeat(257))] {
        assert_eq!(
            codes_of(&mut raw, &insert(&resource, 5), what),
            [INVALID],
            "{what}"
        );
    }
    let longest = "y".repeat(256);
    assert!(codes_of(&mut raw, &insert(&longest, 5), "256 bytes").is_empty());
    assert_eq!(
        env.fence_rows().await,
        [(longest, 5)],
        "no row for a refused name"
    );
}

/// A schema of the client's own, put before pg_catalog: an int8 that accepts nothing, an =
/// that is always true, a <> that is always false, and a check that admits anything.
const EVIL: &str = "CREATE SCHEMA evil AUTHORIZATION trust_user;
     CREATE DOMAIN evil.int8 AS bigint CHECK (VALUE < 0);
     CREATE FUNCTION evil.yes(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
     CREATE FUNCTION evil.no(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT false';
     CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.yes);
     CREATE OPERATOR evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.no);
     CREATE FUNCTION evil.check(text, bigint, int4) RETURNS bigint LANGUAGE sql AS 'SELECT $2'";

const EVIL_PATH: &str = "SET search_path = evil, pg_catalog, public";

/// A session whose search_path puts [`EVIL`] (installed first) before pg_catalog.
async fn evil_session(env: &FenceEnv) -> WireClient {
    env.monitor.client().batch_execute(EVIL).await.unwrap();
    let mut raw = session(env);
    raw.round(&msg::query(EVIL_PATH), 1, "search_path");
    raw
}

/// Sets the stale token 4 for `sp` as settings and writes: the SQLSTATEs of the write.
fn stale_setting(raw: &mut WireClient) -> Vec<String> {
    raw.round(
        &msg::query("SET fencing.resource = 'sp'; SET fencing.token = 4"),
        1,
        "settings",
    );
    codes_of(
        raw,
        &msg::query("INSERT INTO t VALUES (2)"),
        "stale setting",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_path_of_the_clients_own_leaves_the_settings_check_as_it_is() {
    // The first statement of a proxy that does not know yet whether the database has the
    // schema: the settings check goes in its DO form, whose comparison must not be the
    // client's `<>`.
    let env = FenceEnv::new("names_search_path_do", SETUP).await;
    let mut raw = evil_session(&env).await;
    env.monitor
        .client()
        .batch_execute("INSERT INTO fencegate.fence (resource, token) VALUES ('sp', 5)")
        .await
        .unwrap();
    let stale = stale_setting(&mut raw);
    assert_eq!(stale, [STALE], "the stale token as a setting, DO form");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_path_of_the_clients_own_leaves_the_check_as_it_is() {
    let env = FenceEnv::new("names_search_path", SETUP).await;
    let mut raw = evil_session(&env).await;
    let current = codes_of(&mut raw, &insert("sp", 5), "current token");
    assert!(current.is_empty(), "the current token: {current:?}");
    let stale = codes_of(&mut raw, &insert("sp", 4), "stale token");
    assert_eq!(stale, [STALE], "the stale token");
    let stale = stale_setting(&mut raw);
    assert_eq!(stale, [STALE], "the stale token as a setting");
    assert_eq!(env.fence_rows().await, [("sp".to_string(), 5)]);
}
