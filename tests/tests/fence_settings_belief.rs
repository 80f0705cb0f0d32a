//! The first settings check of a transaction, in a session whose earlier transaction had a
//! settings check admit (r, t), is `CALL fencegate.admit_settings(t, r, ...)` (schema 11,
//! docs/fencing.md): PostgreSQL compares the belief with the settings in effect, admits it
//! with one read of the fence row when they are the same, and otherwise checks the settings
//! in effect as a first check without a belief does. Each case of that table: the same
//! settings (admitted, and refused once superseded), other settings (a newer token raises,
//! an older one is refused, none set runs unchecked), and a change by server-side code after
//! the belief was admitted. Which procedure ran is read from pg_stat_user_functions, so the
//! tests fail when the proxy never sends it.
#![forbid(unsafe_code)]

use fencegate_tests::fence::jobs::{self, JOB, SETUP, SWITCH_TO};
use fencegate_tests::fence::{assert_stale, comment, expect_code, FenceEnv, STALE};
use tokio_postgres::Client;

/// Appends `x` to job 7, with no annotation: checked under the settings in effect.
const PROBE: &str = "UPDATE jobs SET steps = steps || 'x' WHERE id = 7";

/// Opens a transaction whose settings are (job:7, `token`).
fn begin_with(token: i64) -> String {
    format!("BEGIN; SET LOCAL fencing.resource = '{JOB}'; SET LOCAL fencing.token = {token}")
}

struct Env {
    env: FenceEnv,
    /// Raises H(job:7) with annotated reads.
    other: Client,
}

impl Env {
    async fn new(prefix: &str) -> Env {
        let env = FenceEnv::counting(prefix, &format!("{SETUP}{SWITCH_TO}")).await;
        let other = env.client().await;
        Env { env, other }
    }

    /// H(job:7) = 5, and a session whose first transaction's settings check admitted
    /// (job:7, 5): its next first check carries that belief.
    async fn believing_5(prefix: &str) -> (Env, Client) {
        let env = Env::new(prefix).await;
        env.raise(5).await;
        let c = env.env.client().await;
        env.two_probes(&c, 5).await.expect("the first transaction");
        (env, c)
    }

    async fn raise(&self, token: i64) {
        let sql = format!("SELECT 1 FROM jobs WHERE id = 7 {}", comment(JOB, token));
        self.other.batch_execute(&sql).await.unwrap();
        assert_eq!(self.env.monitor.high_water(JOB).await, Some(token));
    }

    /// One transaction with settings (job:7, `token`) running the probe twice (a first
    /// check, then a comparison), committed.
    async fn two_probes(&self, c: &Client, token: i64) -> Result<(), tokio_postgres::Error> {
        self.probes(c, token, 2).await
    }

    /// The same with the probe `count` times.
    async fn probes(
        &self,
        c: &Client,
        token: i64,
        count: usize,
    ) -> Result<(), tokio_postgres::Error> {
        c.batch_execute(&begin_with(token)).await?;
        let outcome = async {
            for _ in 0..count {
                c.batch_execute(PROBE).await?;
            }
            Ok(())
        }
        .await;
        let end = if outcome.is_ok() {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        c.batch_execute(end).await.unwrap();
        outcome
    }

    async fn steps(&self) -> String {
        let sql = "SELECT steps FROM jobs WHERE id = 7";
        self.env.monitor.text(sql).await.unwrap()
    }

    /// Calls of `fencegate.admit_settings` published by `c`'s session so far (at least
    /// `at_least`, waited for).
    async fn belief_calls(&self, c: &Client, at_least: i64) -> i64 {
        c.batch_execute("SELECT pg_stat_force_next_flush()")
            .await
            .unwrap();
        self.env.wait_for_calls("admit_settings", at_least).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_settings_are_admitted_and_refused_once_superseded() {
    let (env, c) = Env::believing_5("belief_same").await;
    env.two_probes(&c, 5).await.expect("the belief, admitted");
    assert!(env.belief_calls(&c, 1).await >= 1);
    env.raise(6).await;
    let err = expect_code(env.two_probes(&c, 5).await, STALE);
    assert_stale(&err, JOB, 5, 6);
    assert_eq!(env.steps().await, "xxxx");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_settings_are_checked_as_without_a_belief() {
    let (env, c) = Env::believing_5("belief_other").await;
    // A newer token than the belief: raised by the first statement, which is alone.
    env.probes(&c, 7, 1).await.expect("a newer token raises");
    assert_eq!(env.env.monitor.high_water(JOB).await, Some(7));
    // Then the belief is gone: the next transaction reads the settings again.
    env.two_probes(&c, 7).await.expect("the newer token again");
    // An older one than the belief (7 now): refused.
    let err = expect_code(env.two_probes(&c, 6).await, STALE);
    assert_stale(&err, JOB, 6, 7);
    // No token in effect: the statement runs unchecked, as without fencegate.
    c.batch_execute(PROBE).await.expect("no token");
    // Counted: the newer token's and the last; not the transaction after the newer token
    // (no belief), nor the older token's (a call that raised is not counted).
    assert!(env.belief_calls(&c, 2).await >= 2);
    assert_eq!(env.steps().await, "xxxxxx");
    assert_eq!(env.env.monitor.high_water(JOB).await, Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_by_server_side_code_after_the_belief_are_checked() {
    let (env, c) = Env::believing_5("belief_server_side").await;
    c.batch_execute(&begin_with(5)).await.unwrap();
    c.batch_execute(PROBE).await.expect("the belief, admitted");
    jobs::stale_after_switch_to_4(&c, PROBE).await;
    assert!(env.belief_calls(&c, 1).await >= 1);
    assert_eq!(env.steps().await, "xx");
}
