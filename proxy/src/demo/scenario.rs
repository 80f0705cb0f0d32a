//! The FM12 scenario of the spec, scripted: worker A takes the lease on `job:7`, reads the
//! job and freezes past its lease; worker B takes the lease, does the job and writes; A
//! wakes up and writes what it computed from its stale read.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// Lease time-to-live the workers ask for.
pub const LEASE_TTL: Duration = Duration::from_millis(800);

/// Where A freezes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// Between its read and its write transaction.
    BetweenTransactions,
    /// Inside the transaction that read, before writing.
    InsideTransaction,
}

/// What one run left behind.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Tokens A and B were granted.
    pub tokens: (i64, i64),
    /// Workers whose lines are in the job (sorted, distinct).
    pub line_writers: Vec<String>,
    /// The job's total and who wrote it last.
    pub total: i32,
    /// Who wrote the total.
    pub written_by: String,
    /// A's stale write: `Ok` when it committed, else the error it got.
    pub stale_write: Result<(), String>,
    /// How long B's first statement waited.
    pub b_waited: Duration,
}

impl Outcome {
    /// The record holds exactly B's work.
    pub fn only_b(&self) -> bool {
        self.line_writers == ["worker-b"] && self.written_by == "worker-b" && self.total == 2
    }
}

/// The role the workers log in as: an ordinary application role, as in production (the
/// fence's preemption cannot end a superuser's session).
pub const WORKER_ROLE: &str = "demo_worker";

/// Connects to `database` on 127.0.0.1:`port` as `user`.
pub async fn connect_as(
    port: u16,
    database: &str,
    user: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .dbname(database)
        .application_name("fencegate-demo")
        .connect(NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Connects to `database` on 127.0.0.1:`port` as the workers' role.
pub async fn connect(port: u16, database: &str) -> Result<Client, tokio_postgres::Error> {
    connect_as(port, database, WORKER_ROLE).await
}

/// Tables of the scenario, and the workers' role (run as the superuser).
pub const SETUP: &str = "
    DO $$BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'demo_worker') THEN
            CREATE ROLE demo_worker LOGIN;
        END IF;
    END$$;
    CREATE TABLE job (id int PRIMARY KEY, total int NOT NULL, written_by text);
    CREATE TABLE job_line (job_id int NOT NULL, worker text NOT NULL, item text NOT NULL);
    INSERT INTO job VALUES (7, 0, NULL);
    GRANT ALL ON job, job_line TO demo_worker;
";

fn tag(token: i64) -> String {
    format!("/*fencing_resource='job%3A7',fencing_token='{token}'*/")
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None if e.is_closed() => {
            "its transaction was ended for the newer holder (session terminated)".into()
        }
        None => e.to_string(),
    }
}

async fn acquire(client: &Client, holder: &str) -> Result<i64, tokio_postgres::Error> {
    let ttl = format!("{} milliseconds", LEASE_TTL.as_millis());
    loop {
        let row = client
            .query_one(
                "SELECT fencegate.acquire('job:7', $1, $2::text::interval)",
                &[&holder, &ttl],
            )
            .await?;
        if let Some(token) = row.get::<_, Option<i64>>(0) {
            return Ok(token);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Worker B: takes over the lease once A's has expired, reads, writes its two lines and the
/// total, commits. Returns how long its first (fenced) statement waited.
async fn worker_b(port: u16, database: &str) -> Result<(i64, Duration), tokio_postgres::Error> {
    let b = connect(port, database).await?;
    let token = acquire(&b, "worker-b").await?;
    let t = tag(token);
    b.batch_execute("BEGIN").await?;
    let started = Instant::now();
    let total: i32 = b
        .query_one(&format!("SELECT total FROM job WHERE id = 7 {t}"), &[])
        .await?
        .get(0);
    let waited = started.elapsed();
    b.batch_execute(&format!(
        "INSERT INTO job_line VALUES (7, 'worker-b', 'b-1'), (7, 'worker-b', 'b-2') {t};
         UPDATE job SET total = {}, written_by = 'worker-b' WHERE id = 7 {t};
         COMMIT",
        total + 2
    ))
    .await?;
    Ok((token, waited))
}

/// Runs the scenario against `database` on `port` (PostgreSQL itself, or the proxy).
pub async fn run(
    port: u16,
    database: &str,
    pause: Pause,
) -> Result<Outcome, tokio_postgres::Error> {
    let a = connect(port, database).await?;
    let token_a = acquire(&a, "worker-a").await?;
    let t = tag(token_a);
    let read = format!("SELECT total FROM job WHERE id = 7 {t}");
    let (stale_write, token_b, b_waited) = match pause {
        Pause::BetweenTransactions => {
            let seen: i32 = a.query_one(&read, &[]).await?.get(0);
            // A freezes; its lease expires; B does the job meanwhile.
            let (token_b, waited) = worker_b(port, database).await?;
            let write = format!(
                "BEGIN;
                 INSERT INTO job_line VALUES (7, 'worker-a', 'a-1') {t};
                 UPDATE job SET total = {}, written_by = 'worker-a' WHERE id = 7 {t};
                 COMMIT",
                seen + 1
            );
            let result = a.batch_execute(&write).await;
            if result.is_err() {
                let _ = a.batch_execute("ROLLBACK").await;
            }
            (result, token_b, waited)
        }
        Pause::InsideTransaction => {
            a.batch_execute("BEGIN").await?;
            let seen: i32 = a.query_one(&read, &[]).await?.get(0);
            a.batch_execute(&format!(
                "INSERT INTO job_line VALUES (7, 'worker-a', 'a-1') {t}"
            ))
            .await?;
            // A freezes inside its transaction; B takes over meanwhile.
            let (token_b, waited) = worker_b(port, database).await?;
            let write = format!(
                "UPDATE job SET total = {}, written_by = 'worker-a' WHERE id = 7 {t}; COMMIT",
                seen + 1
            );
            (a.batch_execute(&write).await, token_b, waited)
        }
    };
    let check = connect(port, database).await?;
    let line_writers = check
        .query(
            "SELECT DISTINCT worker FROM job_line WHERE job_id = 7 ORDER BY worker",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let row = check
        .query_one("SELECT total, written_by FROM job WHERE id = 7", &[])
        .await?;
    Ok(Outcome {
        tokens: (token_a, token_b),
        line_writers,
        total: row.get(0),
        written_by: row.get::<_, Option<String>>(1).unwrap_or_default(),
        stale_write: stale_write.map_err(|e| describe(&e)),
        b_waited,
    })
}
