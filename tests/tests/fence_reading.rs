#![forbid(unsafe_code)]
//! The proxy reads SQL by the session's real rules (docs/security.md, "Reading SQL"): the
//! client encoding and `standard_conforming_strings` as the server reports them, after
//! every change. Under rules its lexer cannot read, a fenced statement is refused with
//! 55Z02; it never runs unchecked. Each case is a stale holder (H = 5, token 3) whose
//! annotation the old lexer took for part of a string literal; each reads the table
//! afterwards.

use fencegate_tests::cluster::TRUST_USER;
use fencegate_tests::fence::{comment, execute_all, expect_code, FenceEnv, INVALID, STALE};
use fencegate_tests::wire::{msg, WireClient};

const SETUP: &str = "
CREATE TABLE t (v int);
GRANT ALL ON t TO trust_user;
";

async fn env(prefix: &str) -> FenceEnv {
    let env = FenceEnv::new(prefix, SETUP).await;
    let c = env.client().await;
    c.batch_execute(&format!("SELECT 1 {}", comment("jobs", 5)))
        .await
        .unwrap();
    env
}

async fn rows(env: &FenceEnv) -> i64 {
    env.monitor
        .client()
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0)
}

/// The stale statement whose `\'` hides the annotation from a lexer that assumes
/// standard-conforming strings.
fn escaped_stale() -> String {
    format!(
        "INSERT INTO t VALUES (length('it\\'s')) {}",
        comment("jobs", 3)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backslash_escapes_in_plain_literals_are_refused() {
    let env = env("read_scs").await;
    let c = env.client().await;
    c.batch_execute("SET standard_conforming_strings = off")
        .await
        .unwrap();
    let err = expect_code(c.batch_execute(&escaped_stale()).await, INVALID);
    assert!(
        err.message().contains("standard_conforming_strings"),
        "{err:?}"
    );
    // SET LOCAL inside a transaction, and back after the rollback (the server reports both).
    execute_all(
        &c,
        &[
            "SET standard_conforming_strings = on",
            "BEGIN; SET LOCAL standard_conforming_strings = off",
        ],
    )
    .await;
    expect_code(c.batch_execute(&escaped_stale()).await, INVALID);
    c.batch_execute("ROLLBACK").await.unwrap();
    let plain = format!("INSERT INTO t VALUES (1) {}", comment("jobs", 3));
    expect_code(c.batch_execute(&plain).await, STALE);
    assert_eq!(rows(&env).await, 0, "a stale write landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strings_off_from_the_startup_packet_are_refused() {
    let env = env("read_scs_startup").await;
    let mut config = env.fp.endpoint().pg_config(TRUST_USER, &env.db);
    config.options("-c standard_conforming_strings=off");
    let (c, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    expect_code(c.batch_execute(&escaped_stale()).await, INVALID);
    assert_eq!(rows(&env).await, 0, "a stale write landed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multibyte_encodings_set_after_startup_are_refused() {
    let env = env("read_sjis").await;
    for (encoding, lead) in [("SJIS", 0x95u8), ("BIG5", 0xA4), ("GBK", 0x95)] {
        let (mut raw, _) =
            WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db).expect("login");
        // E'<lead 0x5C>' is one character in these encodings (SJIS 0x95 0x5C is 表): the
        // 0x5C is no backslash, yet a UTF-8 reader takes it for one that escapes the quote.
        let mut stale = b"INSERT INTO t VALUES (length(E'".to_vec();
        stale.extend_from_slice(&[lead, 0x5C]);
        stale.extend_from_slice(b"')) ");
        stale.extend_from_slice(comment("jobs", 3).as_bytes());
        let query = msg::query_bytes(&stale);
        // Pipelined right behind the change, before its reply: the rules are unknown.
        let both = msg::batch([
            msg::query(&format!("SET client_encoding = '{encoding}'")),
            query.clone(),
        ]);
        raw.round_expecting(&both, 2, &[INVALID], &format!("{encoding} pipelined"));
        // Once the server has reported the encoding.
        raw.round_expecting(&query, 1, &[INVALID], encoding);
    }
    assert_eq!(rows(&env).await, 0, "a stale write landed");
}
