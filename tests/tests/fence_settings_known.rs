//! Settings the client has just set (schema 13, docs/fencing.md, "Settings the client just
//! set"): when a transaction block's first statements are the client's own `SET [LOCAL]
//! fencing.resource` and `fencing.token`, each a Query the proxy reads, the next statement's
//! check is `CALL fencegate.admit_set(r, t, grace)`, and under the default grace the later
//! statements carry the two-argument `settings_unchanged`. Each case: a current token
//! admitted, a newer one raising, an older one refused; settings changed by server-side code
//! afterwards checked again; a SET whose value PostgreSQL keeps in another text than the
//! proxy would read, and SETs outside a transaction block, checked as before; `admit_set`
//! itself refusing settings other than those it is given. Which procedure ran is read from
//! pg_stat_user_functions, so the tests fail when the proxy never sends it.
#![forbid(unsafe_code)]

use std::time::Duration;

use fencegate_tests::cluster::TRUST_USER;
use fencegate_tests::fence::jobs::{self, JOB, SETUP, SWITCH_TO};
use fencegate_tests::fence::{assert_stale, comment, expect_code, FenceEnv, STALE};
use fencegate_tests::wire::{msg, WireClient};
use tokio_postgres::Client;

fn setup() -> String {
    format!("{SETUP}{SWITCH_TO}")
}

/// Appends `x` to job 7, with no annotation: checked under the settings in effect.
const PROBE: &str = "UPDATE jobs SET steps = steps || 'x' WHERE id = 7";

/// A proxy with the default grace (so the two-argument comparison is used), H(job:7) = 5,
/// and a client whose session knows the database has schema 13's procedures.
async fn env(prefix: &str) -> (FenceEnv, Client) {
    let env = FenceEnv::counting_with_grace(prefix, &setup(), Duration::from_secs(5)).await;
    raise(&env, 5).await;
    let c = env.client().await;
    // A session learns from its first check whether the database has the procedures.
    let first = format!("SELECT 1 FROM jobs WHERE id = 7 {}", comment(JOB, 5));
    c.batch_execute(&first).await.unwrap();
    (env, c)
}

async fn raise(env: &FenceEnv, token: i64) {
    let sql = format!("SELECT 1 FROM jobs WHERE id = 7 {}", comment(JOB, token));
    env.client().await.batch_execute(&sql).await.unwrap();
    assert_eq!(env.monitor.high_water(JOB).await, Some(token));
}

/// BEGIN, then each of `sets` as a Query of its own.
async fn begin_setting(c: &Client, sets: &[&str]) {
    c.batch_execute("BEGIN").await.unwrap();
    for set in sets {
        c.batch_execute(set).await.unwrap();
    }
}

fn token_set(token: &str) -> String {
    format!("SET LOCAL fencing.token = {token}")
}

const RESOURCE_SET: &str = "SET LOCAL fencing.resource = 'job:7'";

/// Calls of the procedure `signature` counted, once `c`'s session has flushed its counts
/// and at least `at_least` are there.
async fn calls(env: &FenceEnv, c: &Client, signature: &str, at_least: i64) -> i64 {
    c.batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    env.wait_for_routine_calls(signature, at_least).await
}

const ADMIT_SET: &str = "admit_set(text,bigint,int4)";
const UNCHANGED_2: &str = "settings_unchanged(text,text)";
const ADMIT_SETTINGS: &str = "admit_settings(bigint,text,int4,boolean,boolean)";

async fn steps(env: &FenceEnv) -> String {
    jobs::steps(&env.monitor).await
}

/// BEGIN, `sets` each as a Query of its own, one probe that must be admitted (`what`),
/// COMMIT.
async fn admitted_once(c: &Client, sets: &[&str], what: &str) {
    begin_setting(c, sets).await;
    c.batch_execute(PROBE).await.expect(what);
    c.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_the_client_just_set_are_admitted_raised_and_refused() {
    let (env, c) = env("known_tokens").await;
    // The current token: admitted by admit_set, then compared with two arguments.
    begin_setting(&c, &[RESOURCE_SET, &token_set("5")]).await;
    c.batch_execute(PROBE).await.expect("5 is current");
    c.batch_execute(PROBE).await.expect("5, compared");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(calls(&env, &c, ADMIT_SET, 1).await, 1);
    assert_eq!(calls(&env, &c, UNCHANGED_2, 1).await, 1);
    // A newer token raises H (admit_set's slow path).
    admitted_once(&c, &[&token_set("7"), RESOURCE_SET], "7 raises").await;
    assert_eq!(env.monitor.high_water(JOB).await, Some(7));
    // An older one is refused, and so are the SETs' and the probe's effects.
    begin_setting(&c, &[RESOURCE_SET, &token_set("6")]).await;
    let err = expect_code(c.batch_execute(PROBE).await, STALE);
    assert_stale(&err, JOB, 6, 7);
    assert!(err.message().contains("job:7"), "{err:?}");
    c.batch_execute("ROLLBACK").await.unwrap();
    // Both statements in one Query inside the block count as well.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("{RESOURCE_SET}; {}; {PROBE}", token_set("7")))
        .await
        .expect("7, current");
    c.batch_execute("COMMIT").await.unwrap();
    // The newer token's and the last (a call that raised is not counted).
    assert_eq!(calls(&env, &c, ADMIT_SET, 3).await, 3);
    assert_eq!(steps(&env).await, "xxxx");
}

/// SETs sent in one Query with the statement they are for (psql, psycopg2 and pgbench's
/// `\;` do that) change the settings, not the transaction: the memo their admit_set left
/// stands at the next Query, whose statement carries only the two-argument comparison
/// (before this, the SETs counted as transaction control, and the next statement carried
/// the belief's whole first check, `admit_settings`). A stale token set that way, and
/// settings changed by server-side code afterwards, are refused as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_in_one_query_with_their_statement_leave_the_memo_standing() {
    let (env, c) = env("known_one_query").await;
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("{RESOURCE_SET}; {}; {PROBE}", token_set("5")))
        .await
        .expect("5 is current");
    c.batch_execute(PROBE).await.expect("5, compared");
    c.batch_execute(PROBE).await.expect("5, compared again");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(calls(&env, &c, ADMIT_SET, 1).await, 1);
    assert_eq!(calls(&env, &c, UNCHANGED_2, 2).await, 2);
    assert_eq!(calls(&env, &c, ADMIT_SETTINGS, 0).await, 0);
    // Stale in the same form: refused.
    c.batch_execute("BEGIN").await.unwrap();
    let err = expect_code(
        c.batch_execute(&format!("{RESOURCE_SET}; {}; {PROBE}", token_set("4")))
            .await,
        STALE,
    );
    assert_stale(&err, JOB, 4, 5);
    c.batch_execute("ROLLBACK").await.unwrap();
    // Changed by a function after the memo was left: checked at the next statement.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute(&format!("{RESOURCE_SET}; {}; {PROBE}", token_set("5")))
        .await
        .expect("5 is current");
    jobs::stale_after_switch_to_4(&c, PROBE).await;
    assert_eq!(steps(&env).await, "xxx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_by_server_side_code_afterwards_are_checked() {
    let (env, c) = env("known_server_side").await;
    begin_setting(&c, &[RESOURCE_SET, &token_set("5")]).await;
    c.batch_execute(PROBE).await.expect("5 is current");
    jobs::stale_after_switch_to_4(&c, PROBE).await;
    // Another resource set by a function is checked, and raised, at the next statement.
    begin_setting(&c, &[RESOURCE_SET, &token_set("5")]).await;
    c.batch_execute(PROBE).await.expect("5 is current");
    c.batch_execute("SELECT switch_to('other', '1')")
        .await
        .unwrap();
    c.batch_execute(PROBE).await.expect("other:1 raises");
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(env.monitor.high_water("other").await, Some(1));
    assert_eq!(calls(&env, &c, ADMIT_SET, 2).await, 2);
    assert_eq!(steps(&env).await, "xx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_read_otherwise_or_outside_a_block_are_checked_as_before() {
    let (env, c) = env("known_fallbacks").await;
    // PostgreSQL keeps '05' as written, where the proxy would read 5: the first check reads
    // the settings back (check_settings), which admits 05 as 5.
    admitted_once(&c, &[RESOURCE_SET, &token_set("'05'")], "05 is 5, current").await;
    // SET LOCAL outside a transaction block only warns: nothing is set, and the probe in
    // its own transaction runs unchecked, as it would directly.
    c.batch_execute(RESOURCE_SET).await.unwrap();
    c.batch_execute(&token_set("4")).await.unwrap();
    c.batch_execute(PROBE).await.expect("no token in effect");
    // The same SETs with something else between them and the statement.
    begin_setting(&c, &[RESOURCE_SET, &token_set("4"), "SAVEPOINT s"]).await;
    let err = expect_code(c.batch_execute(PROBE).await, STALE);
    assert_stale(&err, JOB, 4, 5);
    c.batch_execute("ROLLBACK").await.unwrap();
    // Then SETs it reads: the one call counted is theirs.
    admitted_once(&c, &[RESOURCE_SET, &token_set("5")], "5 is current").await;
    assert_eq!(calls(&env, &c, ADMIT_SET, 1).await, 1);
    assert_eq!(steps(&env).await, "xxx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admit_set_refuses_settings_other_than_it_is_given() {
    let (env, c) = env("known_guard").await;
    for (settings, what) in [
        ("", "no settings"),
        (
            "SET LOCAL fencing.resource = 'guard'; SET LOCAL fencing.token = '01';",
            "01",
        ),
        (
            "SET LOCAL fencing.resource = 'guard2'; SET LOCAL fencing.token = 1;",
            "another resource",
        ),
    ] {
        let sql = format!("BEGIN; {settings} CALL fencegate.admit_set('guard', '1', 0)");
        let err = expect_code(c.batch_execute(&sql).await, "XX000");
        assert!(
            err.message()
                .contains("could not confirm the fencing settings"),
            "{what}: {err:?}"
        );
        c.batch_execute("ROLLBACK").await.unwrap();
    }
    assert_eq!(env.monitor.high_water("guard").await, None);
}

/// An Execute of COMMIT without a Sync ends the block with no ReadyForQuery to say so: the
/// SETs of the next Query run in an implicit transaction, and a memo taken from them would
/// outlive it. Here session-level SETs and an UPDATE follow such a COMMIT, H rises, and a
/// stale extended-protocol UPDATE must still be refused (without the rule that nothing is
/// learned before a Sync, its check is only a comparison with the memo, which matches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_after_a_commit_executed_without_sync_are_not_read() {
    let (env, _c) = env("known_unsynced").await;
    let mut raw = WireClient::connect(env.fp.endpoint().addr, TRUST_USER, &env.db)
        .expect("login")
        .0;
    let first = format!("SELECT 1 FROM jobs WHERE id = 7 {}", comment(JOB, 5));
    raw.round(&msg::query(&first), 1, "learn the procedures");
    raw.round(&msg::query("BEGIN"), 1, "begin");
    let mut commit = msg::parse("", "COMMIT");
    commit.extend(msg::bind("", "", &[]));
    commit.extend(msg::execute("", 0));
    commit.extend(msg::flush());
    raw.send(&commit).unwrap();
    raw.read_until_tag(b'C').expect("COMMIT completes");
    let sets = format!(
        "SET fencing.resource = '{JOB}'; SET fencing.token = 5; {}",
        "UPDATE jobs SET steps = steps || 'a' WHERE id = 7"
    );
    raw.round(&msg::query(&sets), 1, "session SETs and an UPDATE");
    env.monitor
        .client()
        .batch_execute("SELECT fencegate.check('job:7', 6, 0)")
        .await
        .unwrap();
    let mut stale = msg::parse("", "UPDATE jobs SET steps = steps || 'STALE' WHERE id = 7");
    stale.extend(msg::bind("", "", &[]));
    stale.extend(msg::execute("", 0));
    stale.extend(msg::sync());
    raw.round_expecting(&stale, 1, &[STALE], "the stale UPDATE");
    assert_eq!(steps(&env).await, "a");
}
