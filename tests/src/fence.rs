//! Helpers for the fencing tests: databases with the `fencegate` schema, proxies that
//! enforce fencing tokens, sqlcommenter annotations, and a [`Monitor`] that looks at Postgres
//! directly (the high-water mark, backends waiting for locks or gone), which no client
//! through the proxy can see.
//!
//! Synchronisation is by polling Postgres with a deadline ([`eventually`]), never by sleeping:
//! "B is blocked" means B's backend has an ungranted lock in `pg_locks`.

use std::fmt::Display;
use std::future::Future;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fencegate::config::Config;
use fencegate::fence::hook::FenceHooks;
use fencegate::fence::plan::FencePolicy;
use fencegate::fence::stats::FenceStats;
use tokio_postgres::error::DbError;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::cluster::{Cluster, SUPERUSER, TRUST_USER};
use crate::endpoint::{run, Endpoint};
use crate::proxy::TestProxy;

/// SQLSTATE of a stale fencing token.
pub const STALE: &str = "55Z01";
/// SQLSTATE of a malformed or missing fencing annotation.
pub const INVALID: &str = "55Z02";
/// SQLSTATE of a fenced statement in a database without the `fencegate` schema.
pub const NOT_INSTALLED: &str = "55Z03";

/// How long any awaited condition may take before the test fails (generous: the test
/// machine may be busy compiling).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A proxy that enforces fencing tokens, and the counters its sessions share.
pub struct FenceProxy {
    /// The running proxy.
    pub proxy: TestProxy,
    /// Its fencing counters.
    pub stats: Arc<FenceStats>,
}

impl FenceProxy {
    /// Starts a fencing proxy in front of `127.0.0.1:upstream_port` whose preemption grace is
    /// `grace` (`Duration::ZERO`: an older holder's open transaction is never ended). The
    /// policy is built from the same [`Config`] the proxy gets, as `fencegate serve` does.
    pub fn start(upstream_port: u16, grace: Duration) -> FenceProxy {
        let tweak = move |c: &mut Config| c.preempt_grace = grace;
        let mut config = Config::default();
        tweak(&mut config);
        let stats = Arc::new(FenceStats::default());
        let hooks = FenceHooks::new(FencePolicy::from_config(&config), stats.clone());
        let proxy = TestProxy::start(upstream_port, tweak, Arc::new(hooks));
        FenceProxy { proxy, stats }
    }

    /// Where clients reach the proxy.
    pub fn endpoint(&self) -> Endpoint {
        self.proxy.endpoint()
    }
}

/// One test's world: a fencing proxy (no preemption, unless made [`FenceEnv::with_grace`])
/// in front of the shared cluster, a fresh
/// fenced database prepared with some setup SQL, and a [`Monitor`] on it.
pub struct FenceEnv {
    /// The proxy.
    pub fp: FenceProxy,
    /// The database.
    pub db: String,
    /// A direct superuser connection to it.
    pub monitor: Monitor,
}

impl FenceEnv {
    /// Calls of `fencegate.<function>` its sessions published so far (a database made with
    /// [`FenceEnv::counting`]).
    pub async fn calls(&self, function: &str) -> i64 {
        self.count_calls(&format!(
            "schemaname = 'fencegate' AND funcname = '{function}'"
        ))
        .await
    }

    /// Waits until at least `at_least` calls of `function` are counted; the count.
    pub async fn wait_for_calls(&self, function: &str, at_least: i64) -> i64 {
        eventually(
            &format!("{at_least} calls of {function} counted"),
            || async {
                let n = self.calls(function).await;
                (n >= at_least).then_some(n)
            },
        )
        .await
    }

    /// [`FenceEnv::wait_for_calls`] of one routine, `fencegate.<signature>` (such as
    /// `settings_unchanged(text,text)`), where overloads share a name.
    pub async fn wait_for_routine_calls(&self, signature: &str, at_least: i64) -> i64 {
        let filter = format!("funcid = 'fencegate.{signature}'::regprocedure");
        eventually(
            &format!("{at_least} calls of {signature} counted"),
            || async {
                let n = self.count_calls(&filter).await;
                (n >= at_least).then_some(n)
            },
        )
        .await
    }

    /// The calls pg_stat_user_functions counts for the routines `filter` selects, read
    /// afresh.
    async fn count_calls(&self, filter: &str) -> i64 {
        let sql = format!(
            "SELECT pg_stat_clear_snapshot(); SELECT COALESCE(sum(calls), 0)::text \
             FROM pg_stat_user_functions WHERE {filter}"
        );
        let rows = self.monitor.client().simple_query(&sql).await.unwrap();
        // The last row: the first is pg_stat_clear_snapshot()'s.
        rows.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .last()
            .and_then(|v| v.parse().ok())
            .expect("a count")
    }

    /// The fence rows, (resource, token), ordered by resource.
    pub async fn fence_rows(&self) -> Vec<(String, i64)> {
        let sql = "SELECT resource, token FROM fencegate.fence ORDER BY resource";
        let rows = self.monitor.client().query(sql, &[]).await.unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }

    /// Starts the proxy, creates the database (name from `prefix`), installs the schema and
    /// runs `setup` in it.
    pub async fn new(prefix: &str, setup: &str) -> FenceEnv {
        FenceEnv::with_grace(prefix, setup, Duration::ZERO).await
    }

    /// [`FenceEnv::new`] with a proxy whose preemption grace is `grace` (see
    /// [`FenceProxy::start`]).
    pub async fn with_grace(prefix: &str, setup: &str, grace: Duration) -> FenceEnv {
        let cluster = Cluster::shared();
        let fp = FenceProxy::start(cluster.port(), grace);
        let db = fenced_database(cluster, prefix, setup).await;
        let monitor = Monitor::connect(cluster, &db).await;
        FenceEnv { fp, db, monitor }
    }

    /// [`FenceEnv::new`] for a database whose sessions count their function calls
    /// (`track_functions = 'all'`), for a test that reads pg_stat_user_functions.
    pub async fn counting(prefix: &str, setup: &str) -> FenceEnv {
        FenceEnv::counting_with_grace(prefix, setup, Duration::ZERO).await
    }

    /// [`FenceEnv::counting`] with a proxy whose preemption grace is `grace`.
    pub async fn counting_with_grace(prefix: &str, setup: &str, grace: Duration) -> FenceEnv {
        let env = FenceEnv::with_grace(prefix, setup, grace).await;
        env.monitor
            .client()
            .batch_execute(&format!(
                "ALTER DATABASE \"{}\" SET track_functions = 'all'",
                env.db
            ))
            .await
            .expect("enable track_functions for the test database");
        env
    }

    /// Asserts that a check ended backend `pid`, holder of token `older` for `resource`, to
    /// admit `newer`: the server log `log` (read once the newer holder was admitted) names
    /// it, the backend goes away, and the proxy counted one preemption.
    pub async fn assert_preempted(
        &self,
        log: &str,
        pid: i32,
        resource: &str,
        older: i64,
        newer: i64,
    ) {
        let ended = format!(
            "fencegate: ended session {pid} holding stale token {older} for resource {resource} (newer token {newer})"
        );
        assert!(
            log.contains(&ended),
            "the newer holder was admitted but no line {ended:?} is in the server log:\n{log}"
        );
        self.monitor.wait_until_gone(pid).await;
        assert_eq!(
            FenceStats::get(&self.fp.stats.preempted),
            1,
            "preemptions counted"
        );
    }

    /// A tokio-postgres client through the proxy, as the ordinary role [`TRUST_USER`].
    pub async fn client(&self) -> Client {
        self.fp.endpoint().connect(TRUST_USER, &self.db).await
    }

    /// Runs psql (see [`psql_command`]) through the proxy as [`TRUST_USER`] with extra
    /// `args`, environment `vars` and `stdin`; returns (success, stdout, stderr).
    pub fn psql(
        &self,
        args: &[&str],
        vars: &[(&str, &str)],
        stdin: &str,
    ) -> (bool, String, String) {
        let mut cmd = psql_command(self.fp.endpoint(), TRUST_USER, &self.db);
        cmd.args(args);
        for (key, value) in vars {
            cmd.env(key, value);
        }
        let (out, stdout, stderr) = run_text(&mut cmd, stdin);
        (out.status.success(), stdout, stderr)
    }
}

/// Installs the `fencegate` schema in `db` the way `fencegate migrate` does, connecting to
/// Postgres directly as the superuser.
pub async fn install(port: u16, db: &str) {
    let url = format!("postgres://{SUPERUSER}@127.0.0.1:{port}/{db}");
    fencegate::schema::migrate::run(&url)
        .await
        .unwrap_or_else(|e| panic!("fencegate migrate {url}: {e}"));
}

/// A fresh database of `cluster` with the `fencegate` schema installed, and `setup` SQL run in
/// it directly as the superuser.
pub async fn fenced_database(cluster: &Cluster, prefix: &str, setup: &str) -> String {
    let db = cluster.create_database(prefix);
    install(cluster.port(), &db).await;
    if !setup.is_empty() {
        cluster.execute(&db, setup);
    }
    db
}

/// The sqlcommenter annotation `/*fencing_resource='…',fencing_token='…'*/`, both values
/// URL-encoded (the token is written as given, so tests can pass malformed ones).
pub fn comment(resource: &str, token: impl Display) -> String {
    format!(
        "/*fencing_resource='{}',fencing_token='{}'*/",
        url_encode(resource),
        url_encode(&token.to_string())
    )
}

/// Percent-encodes every byte except RFC 3986 unreserved characters.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The server error of a failed call, asserting its SQLSTATE is `code`.
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, tokio_postgres::Error>,
    code: &str,
) -> DbError {
    match result {
        Ok(v) => panic!("expected SQLSTATE {code}, got success: {v:?}"),
        Err(e) => match e.as_db_error() {
            Some(db) if db.code().code() == code => db.clone(),
            Some(db) => panic!(
                "expected SQLSTATE {code}, got {}: {} ({:?})",
                db.code().code(),
                db.message(),
                db.hint()
            ),
            None => panic!("expected SQLSTATE {code}, got a non-server error: {e}"),
        },
    }
}

/// Asserts `err` is the stale-token error for `resource`, naming the presented token and
/// the current high-water mark.
pub fn assert_stale(err: &DbError, resource: &str, presented: i64, current: i64) {
    assert_eq!(err.code().code(), STALE, "{err:?}");
    let want = format!(
        "stale fencing token {presented} for resource '{resource}': the current token is {current}"
    );
    assert_eq!(err.message(), want, "{err:?}");
}

/// Asserts the connection is usable after an error: `ROLLBACK` (a warning outside a
/// transaction) and `SELECT 1` succeed.
pub async fn assert_usable(client: &Client) {
    client
        .batch_execute("ROLLBACK")
        .await
        .expect("ROLLBACK after the error");
    let one: i32 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("SELECT 1 after the error")
        .get(0);
    assert_eq!(one, 1);
}

/// Runs each of `statements` on `client` as a simple Query of its own, in order, failing
/// the test on the first error.
pub async fn execute_all(client: &Client, statements: &[&str]) {
    for sql in statements {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Runs `sql` on `client` under the session settings `fencing.resource = resource` and
/// `fencing.token = token`, then `RESET ALL`; `sql` must succeed (`what` it is).
pub async fn run_under_token_settings(
    client: &Client,
    resource: &str,
    token: i64,
    sql: &str,
    what: &str,
) {
    let set = format!("SET fencing.resource = '{resource}'; SET fencing.token = '{token}'");
    client.batch_execute(&set).await.expect(&set);
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{what}: {sql}: {e}"));
    client.batch_execute("RESET ALL").await.expect("RESET ALL");
}

/// The server process id behind a client (through the proxy: the upstream backend's).
pub async fn backend_pid(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid")
        .get(0)
}

/// What a simple Query returned, as text: column names, rows, and command tags' row counts.
pub fn render(messages: &[SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                let names: Vec<&str> = cols.iter().map(|c| c.name()).collect();
                format!("columns {names:?}")
            }
            SimpleQueryMessage::Row(row) => {
                let values: Vec<Option<&str>> = (0..row.len()).map(|i| row.get(i)).collect();
                format!("row {values:?}")
            }
            SimpleQueryMessage::CommandComplete(n) => format!("complete {n}"),
            _ => "other".to_string(),
        })
        .collect()
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut`, failing the test (instead of hanging it) after [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
}

/// A superuser connection straight to Postgres, for looking at what clients cannot see.
pub struct Monitor {
    client: Client,
}

impl Monitor {
    /// Connects to `db` on `cluster` directly.
    pub async fn connect(cluster: &Cluster, db: &str) -> Monitor {
        Monitor {
            client: cluster.endpoint().connect(SUPERUSER, db).await,
        }
    }

    /// The direct client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The committed high-water mark of `resource` (`fencegate.fence`), if any.
    pub async fn high_water(&self, resource: &str) -> Option<i64> {
        self.client
            .query_opt(
                "SELECT token FROM fencegate.fence WHERE resource = $1",
                &[&resource],
            )
            .await
            .expect("read fencegate.fence")
            .map(|r| r.get(0))
    }

    /// One text value from `sql` (a query returning one row, one column).
    pub async fn text(&self, sql: &str) -> Option<String> {
        self.client
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }

    /// When backend `pid` began waiting for a lock it has not been granted, if it is waiting.
    pub async fn lock_wait_start(&self, pid: i32) -> Option<String> {
        self.client
            .query_opt(
                "SELECT waitstart::text FROM pg_locks \
                 WHERE pid = $1 AND NOT granted AND waitstart IS NOT NULL LIMIT 1",
                &[&pid],
            )
            .await
            .expect("read pg_locks")
            .map(|r| r.get(0))
    }

    /// Waits until backend `pid` is blocked on a lock; returns when its wait began.
    pub async fn wait_until_blocked(&self, pid: i32) -> String {
        eventually(&format!("backend {pid} to wait for a lock"), || {
            self.lock_wait_start(pid)
        })
        .await
    }

    /// Waits until backend `pid` waits for a lock again, in a wait that began after `since`
    /// (a wait ended by `lock_timeout` and begun anew); fails at once if backend `holder`
    /// (whose lock `pid` waits for) is gone in the meantime.
    pub async fn wait_until_waiting_again(&self, pid: i32, since: &str, holder: i32) -> String {
        eventually(&format!("backend {pid} to wait again"), || async move {
            assert!(
                self.backend_exists(holder).await,
                "backend {holder}, which {pid} waited for, was ended"
            );
            self.lock_wait_start(pid).await.filter(|s| s != since)
        })
        .await
    }

    /// Waits until `pid` waits for a lock, then until it has waited out a preemption grace
    /// and started waiting again `times` times (a new `waitstart` each), while `holder`, the
    /// backend it waits for, must stay alive throughout and still be there after.
    pub async fn wait_until_waited_again(&self, pid: i32, holder: i32, times: usize) {
        let mut since = self.wait_until_blocked(pid).await;
        for _ in 0..times {
            since = self.wait_until_waiting_again(pid, &since, holder).await;
        }
        assert!(
            self.backend_exists(holder).await,
            "backend {holder}, which {pid} waited for, was ended"
        );
    }

    /// True while backend `pid` exists.
    pub async fn backend_exists(&self, pid: i32) -> bool {
        self.client
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .expect("read pg_stat_activity")
            .is_some()
    }

    /// Waits until backend `pid` has exited.
    pub async fn wait_until_gone(&self, pid: i32) {
        eventually(&format!("backend {pid} to exit"), || async {
            (!self.backend_exists(pid).await).then_some(())
        })
        .await
    }
}

/// A `psql` command for `db` at `ep` as `user`: no psqlrc, unaligned tuples-only output,
/// stop at the first error, errors printed with their SQLSTATE.
pub fn psql_command(ep: Endpoint, user: &str, db: &str) -> Command {
    let mut cmd = ep.command("psql", user, db);
    cmd.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "VERBOSITY=verbose",
    ]);
    cmd
}

/// Runs `cmd` with `stdin`, returning exit status, stdout and stderr as text.
pub fn run_text(cmd: &mut Command, stdin: &str) -> (Output, String, String) {
    let out = run(cmd, stdin.as_bytes());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// The table most fence tests work on: job 7 accumulates the steps its writers appended.
pub mod jobs {
    use super::{FenceEnv, Monitor};
    use tokio_postgres::Client;

    /// The resource the tests fence.
    pub const JOB: &str = "job:7";

    /// Creates `jobs` (row 7, no steps yet) and `log`, usable by [`crate::cluster::TRUST_USER`].
    pub const SETUP: &str = "
CREATE TABLE jobs (id int PRIMARY KEY, steps text NOT NULL DEFAULT '');
INSERT INTO jobs VALUES (7, '');
CREATE TABLE log (id int PRIMARY KEY, note text);
GRANT ALL ON jobs, log TO trust_user;
";

    /// To run after [`SETUP`]: `switch_to(r, t)`, which any client may call, server-side code
    /// that sets both fencing settings for the transaction, unseen by the proxy.
    pub const SWITCH_TO: &str = "
CREATE FUNCTION switch_to(r text, t text) RETURNS text LANGUAGE sql
    AS $$ SELECT set_config('fencing.resource', r, true) || set_config('fencing.token', t, true) $$;
GRANT EXECUTE ON FUNCTION switch_to(text, text) TO trust_user;
";

    /// A [`FenceEnv`] set up with [`SETUP`] (database named after `prefix`) in which a client
    /// through the proxy raised H([`JOB`]) to `token` with an annotated `SELECT 1`; and that
    /// client.
    pub async fn env_raised_to(prefix: &str, token: i64) -> (FenceEnv, Client) {
        let env = FenceEnv::new(prefix, SETUP).await;
        let client = env.client().await;
        let raise = format!("SELECT 1 {}", super::comment(JOB, token));
        client
            .simple_query(&raise)
            .await
            .unwrap_or_else(|e| panic!("{raise}: {e}"));
        (env, client)
    }

    /// The steps recorded in job 7, read directly.
    pub async fn steps(monitor: &Monitor) -> String {
        monitor
            .text("SELECT steps FROM jobs WHERE id = 7")
            .await
            .unwrap()
    }

    /// The ids in `log`, in order, read directly.
    pub async fn log_ids(monitor: &Monitor) -> Vec<i32> {
        monitor
            .client()
            .query("SELECT id FROM log ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// The statement that appends `step` to job 7.
    pub fn append(step: &str) -> String {
        format!("UPDATE jobs SET steps = steps || '{step}' WHERE id = 7")
    }

    /// [`append`] of `step`, carrying `token` for [`JOB`].
    pub fn fenced_append(token: i64, step: &str) -> String {
        format!("{} {}", append(step), super::comment(JOB, token))
    }

    /// Reads job 7's steps, carrying `token` for [`JOB`].
    pub fn fenced_read(token: i64) -> String {
        format!(
            "SELECT steps FROM jobs WHERE id = 7 {}",
            super::comment(JOB, token)
        )
    }

    /// Inside a transaction block whose fence holds H([`JOB`]) = 5: [`SWITCH_TO`] sets token
    /// 4 unseen by the proxy, so the next statement, `probe`, is refused as stale; then the
    /// block is rolled back.
    pub async fn stale_after_switch_to_4(c: &Client, probe: &str) {
        c.batch_execute("SELECT switch_to('job:7', '4')")
            .await
            .unwrap();
        let err = super::expect_code(c.batch_execute(probe).await, super::STALE);
        super::assert_stale(&err, JOB, 4, 5);
        c.batch_execute("ROLLBACK").await.unwrap();
    }
}
