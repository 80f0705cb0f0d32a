//! One worker of the fault suite (`tests/tests/fault_suite/`), run as its own OS process so
//! that the suite can freeze it with SIGSTOP and every connection it has is its own.
//!
//! The worker takes leases from the suite's lease server (a line protocol on loopback:
//! `acquire R` → `granted R TOKEN TTL_MS`, `release R TOKEN` → `ok`), and for each lease adds
//! one element to set R: a first touch of the fence on one connection (autocommit), then a
//! read-modify-write transaction on another, with a read on the first while it is open;
//! every statement carries the lease's token as a statement comment (unless started with
//! `--fence off`). `--pause-pct` percent of the operations first pause past the lease.
//!
//! It reports on stdout, one line per event:
//! - `ready` once all its connections are up;
//! - `ack R TOKEN ELEMENT VERSION LATE`: a COMMIT returned (LATE is 1 when the lease had
//!   expired by then);
//! - `err KIND CODE R TOKEN MESSAGE`: KIND `op` (the add failed), `side` (the read beside
//!   the open transaction failed) or `connect`; CODE is the SQLSTATE, `closed` when the
//!   connection ended without an ErrorResponse, `timeout` when a statement did not answer
//!   within the operation timeout, `08001` when a connection could not be made;
//! - `parked inside|between R TOKEN` when it stops where the suite asked it to, and
//!   `resumed` when it goes on;
//! - `done OPS` when it stops.
//!
//! It reads commands on stdin: `freeze inside` (park in the next transaction after its
//! first fenced read), `freeze between` (park after taking the next lease, before its
//! transaction), `go` (leave the park), `stop`. End of input also means stop.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::time::{Duration, Instant};

use fencegate_tests::fence::comment;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_postgres::{Client, SimpleQueryMessage};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Delay between connection attempts while the server or the proxy is away.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// The command line: `--key value` pairs.
struct Args {
    id: usize,
    port: u16,
    db: String,
    lease: String,
    resources: usize,
    conns: usize,
    fence: bool,
    seed: u64,
    pause_pct: u32,
    op_timeout: Duration,
}

impl Args {
    fn parse() -> Args {
        let raw: Vec<String> = std::env::args().skip(1).collect();
        let get = |key: &str| -> String {
            raw.iter()
                .position(|a| a == key)
                .and_then(|i| raw.get(i + 1).cloned())
                .unwrap_or_else(|| panic!("fault_worker: missing {key}"))
        };
        let num = |key: &str| -> u64 {
            get(key)
                .parse()
                .unwrap_or_else(|e| panic!("fault_worker: {key}: {e}"))
        };
        Args {
            id: num("--id") as usize,
            port: num("--port") as u16,
            db: get("--db"),
            lease: get("--lease"),
            resources: num("--resources") as usize,
            conns: num("--conns").max(2) as usize,
            fence: get("--fence") == "on",
            seed: num("--seed"),
            pause_pct: num("--pause-pct") as u32,
            op_timeout: Duration::from_millis(num("--op-timeout-ms")),
        }
    }
}

/// Where the suite asked the worker to park.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Park {
    Inside,
    Between,
}

/// A command from stdin.
enum Command {
    Freeze(Park),
    Go,
    Stop,
}

/// Prints one event line and flushes it, so the suite sees it at once.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reads stdin commands into a channel, on a thread of their own; end of input is `stop`.
fn commands() -> mpsc::UnboundedReceiver<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            let command = match line.trim() {
                "freeze inside" => Command::Freeze(Park::Inside),
                "freeze between" => Command::Freeze(Park::Between),
                "go" => Command::Go,
                "stop" => Command::Stop,
                other => panic!("fault_worker: unknown command {other:?}"),
            };
            if tx.send(command).is_err() {
                return;
            }
        }
        let _ = tx.send(Command::Stop);
    });
    rx
}

/// The lease server connection.
struct Leases {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Leases {
    async fn connect(addr: &str) -> Leases {
        let stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("fault_worker: lease server {addr}: {e}"));
        let (read, write) = stream.into_split();
        Leases {
            lines: BufReader::new(read).lines(),
            write,
        }
    }

    async fn ask(&mut self, line: String) -> String {
        self.write
            .write_all(line.as_bytes())
            .await
            .expect("fault_worker: lease server gone");
        self.lines
            .next_line()
            .await
            .expect("fault_worker: lease server gone")
            .expect("fault_worker: lease server closed")
    }

    /// Waits for the lease on `r`: its token and when it expires.
    async fn acquire(&mut self, r: usize) -> (i64, Instant) {
        let reply = self.ask(format!("acquire {r}\n")).await;
        let asked = Instant::now();
        let parts: Vec<&str> = reply.split_whitespace().collect();
        match parts.as_slice() {
            ["granted", _, token, ttl_ms] => {
                let ttl = Duration::from_millis(ttl_ms.parse().expect("ttl"));
                (token.parse().expect("token"), asked + ttl)
            }
            _ => panic!("fault_worker: lease server said {reply:?}"),
        }
    }

    async fn release(&mut self, r: usize, token: i64) {
        let reply = self.ask(format!("release {r} {token}\n")).await;
        assert_eq!(reply, "ok", "fault_worker: lease server said {reply:?}");
    }
}

/// Why an operation failed: a code for the report and a message.
struct Failure {
    code: String,
    message: String,
}

impl Failure {
    fn from_pg(e: &tokio_postgres::Error) -> Failure {
        match e.as_db_error() {
            Some(db) => Failure {
                code: db.code().code().to_string(),
                message: db.message().to_string(),
            },
            None => Failure {
                code: "closed".into(),
                message: e.to_string(),
            },
        }
    }

    fn timeout(after: Duration) -> Failure {
        Failure {
            code: "timeout".into(),
            message: format!("no answer within {after:?}"),
        }
    }

    /// Whether the connection it happened on is unusable now.
    fn ends_connection(&self) -> bool {
        matches!(
            self.code.as_str(),
            "closed" | "timeout" | "57P01" | "08006" | "08P01"
        )
    }
}

/// The suite's commands as they arrive, and what they asked for.
struct Control {
    commands: mpsc::UnboundedReceiver<Command>,
    pending: Option<Park>,
    stopping: bool,
}

impl Control {
    fn poll(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            self.apply(command);
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Freeze(park) => self.pending = Some(park),
            Command::Go => {}
            Command::Stop => self.stopping = true,
        }
    }

    /// Parks here if the suite asked for a park at `park`: says so, waits for `go`.
    async fn park_at(&mut self, park: Park, r: usize, token: i64) {
        self.poll();
        if self.pending != Some(park) {
            return;
        }
        self.pending = None;
        let place = match park {
            Park::Inside => "inside",
            Park::Between => "between",
        };
        say(&format!("parked {place} {r} {token}"));
        loop {
            match self.commands.recv().await {
                Some(Command::Go) => break,
                Some(Command::Stop) | None => {
                    self.stopping = true;
                    break;
                }
                Some(other) => self.apply(other),
            }
        }
        say("resumed");
    }
}

/// One connection, retried until it is made or the worker is told to stop.
async fn connect(args: &Args, ctl: &mut Control) -> Option<Client> {
    loop {
        ctl.poll();
        if ctl.stopping {
            return None;
        }
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(args.port)
            .user(fencegate_tests::cluster::TRUST_USER)
            .dbname(&args.db)
            .connect_timeout(CONNECT_TIMEOUT);
        let attempt =
            tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tokio_postgres::NoTls)).await;
        let failure = match attempt {
            Ok(Ok((client, connection))) => {
                tokio::spawn(connection);
                return Some(client);
            }
            Ok(Err(e)) => match e.as_db_error() {
                Some(_) => Failure::from_pg(&e),
                None => Failure {
                    code: "08001".into(),
                    message: e.to_string(),
                },
            },
            Err(_) => Failure {
                code: "08001".into(),
                message: format!("connect timed out after {CONNECT_TIMEOUT:?}"),
            },
        };
        say(&format!(
            "err connect {} - - {}",
            failure.code,
            one_line(&failure.message)
        ));
        tokio::time::sleep(RECONNECT_BACKOFF).await;
    }
}

/// Makes sure every connection is open; false when told to stop meanwhile.
async fn fill(args: &Args, ctl: &mut Control, conns: &mut [Option<Client>]) -> bool {
    for slot in conns.iter_mut() {
        if slot.as_ref().is_none_or(|c| c.is_closed()) {
            *slot = None;
            match connect(args, ctl).await {
                Some(c) => *slot = Some(c),
                None => return false,
            }
        }
    }
    true
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The fence of resource `r`.
fn fence_name(r: usize) -> String {
    format!("faults:set:{r}")
}

/// Runs `sql` on `client` within `limit`.
async fn query(
    client: &Client,
    sql: &str,
    limit: Duration,
) -> Result<Vec<SimpleQueryMessage>, Failure> {
    match tokio::time::timeout(limit, client.simple_query(sql)).await {
        Ok(Ok(messages)) => Ok(messages),
        Ok(Err(e)) => Err(Failure::from_pg(&e)),
        Err(_) => Err(Failure::timeout(limit)),
    }
}

/// The first column of the first row.
fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    })
}

/// The lease an add is made with: resource and token.
type Lease = (usize, i64);

/// One add with `lease` on `main`, reading on `side` before and while its transaction is
/// open.
/// Returns the row's version after the add; `side_dead` is set when `side` is unusable.
async fn add(
    args: &Args,
    ctl: &mut Control,
    (main, side): (&Client, &Client),
    (r, token): Lease,
    element: i32,
    side_dead: &mut bool,
) -> Result<i64, Failure> {
    let limit = args.op_timeout;
    let note = if args.fence {
        comment(&fence_name(r), token)
    } else {
        String::new()
    };
    // The holder's first touch, on its own (autocommit) statement, as the client crate's
    // `Fence` does: until a raise of the fence commits, the holder's other connections
    // wait for it (docs/fencing.md, "First touch of a new token"), and the read beside
    // the transaction below would wait for the transaction that waits for it.
    let sql = format!("SELECT version FROM sets WHERE id = {r} {note}");
    query(side, &sql, limit).await.inspect_err(|f| {
        *side_dead = f.ends_connection();
    })?;
    query(main, "BEGIN", limit).await?;
    let sql = format!("SELECT elems FROM sets WHERE id = {r} {note}");
    let read = query(main, &sql, limit).await?;
    let elems = first_value(&read).unwrap_or_else(|| "{}".into());
    ctl.park_at(Park::Inside, r, token).await;
    // Same holder, another connection, the transaction above open: G7 says no wait.
    let sql = format!("SELECT version FROM sets WHERE id = {r} {note}");
    if let Err(f) = query(side, &sql, limit).await {
        let message = one_line(&f.message);
        say(&format!("err side {} {r} {token} {message}", f.code));
        *side_dead = f.ends_connection();
    }
    let inner = elems.trim_matches(|c| c == '{' || c == '}');
    let set = if inner.is_empty() {
        format!("{{{element}}}")
    } else {
        format!("{{{inner},{element}}}")
    };
    let write = format!(
        "WITH u AS (UPDATE sets SET elems = '{set}', version = version + 1 WHERE id = {r} \
         RETURNING version) INSERT INTO history SELECT {r}, {token}, {element}, version FROM u \
         RETURNING version {note}"
    );
    let written = query(main, &write, limit).await?;
    let version = first_value(&written)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Failure {
            code: "noversion".into(),
            message: "the add returned no version".into(),
        })?;
    query(main, "COMMIT", limit).await?;
    Ok(version)
}

/// One operation with `lease` on connections `main` and `side`: reports its outcome and
/// drops the connections it left unusable.
async fn operate(
    args: &Args,
    ctl: &mut Control,
    conns: &mut [Option<Client>],
    (main, side): (usize, usize),
    lease: Lease,
    element: i32,
    expires: Instant,
) {
    let (r, token) = lease;
    let mut side_dead = false;
    let pair = (
        conns[main].as_ref().expect("connected"),
        conns[side].as_ref().expect("connected"),
    );
    match add(args, ctl, pair, lease, element, &mut side_dead).await {
        Ok(version) => {
            let late = u8::from(Instant::now() >= expires);
            say(&format!("ack {r} {token} {element} {version} {late}"));
        }
        Err(f) => {
            let message = one_line(&f.message);
            say(&format!("err op {} {r} {token} {message}", f.code));
            let rolled_back =
                !f.ends_connection() && query(pair.0, "ROLLBACK", args.op_timeout).await.is_ok();
            if !rolled_back {
                conns[main] = None;
            }
        }
    }
    if side_dead {
        conns[side] = None;
    }
}

/// Takes leases and adds until told to stop; returns the number of operations.
async fn run(args: &Args, ctl: &mut Control) -> u64 {
    let mut rng = StdRng::seed_from_u64(args.seed ^ ((args.id as u64) << 32));
    let mut leases = Leases::connect(&args.lease).await;
    let mut conns: Vec<Option<Client>> = (0..args.conns).map(|_| None).collect();
    if !fill(args, ctl, &mut conns).await {
        return 0;
    }
    say("ready");
    let mut ops = 0u64;
    while !ctl.stopping {
        let r = rng.random_range(0..args.resources);
        let (token, expires) = leases.acquire(r).await;
        ctl.park_at(Park::Between, r, token).await;
        if rng.random_ratio(args.pause_pct, 100) {
            // A deliberate holder pause (a GC pause) past the lease: the stale writes the
            // fence must refuse.
            tokio::time::sleep(expires.saturating_duration_since(Instant::now()) * 2).await;
        }
        ops += 1;
        let element = ((args.id as i32) + 1) * 1_000_000 + ops as i32;
        let n = conns.len();
        let pair = (ops as usize % n, (ops as usize + 1) % n);
        operate(args, ctl, &mut conns, pair, (r, token), element, expires).await;
        leases.release(r, token).await;
        ctl.poll();
        if !ctl.stopping && !fill(args, ctl, &mut conns).await {
            break;
        }
    }
    ops
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let mut ctl = Control {
        commands: commands(),
        pending: None,
        stopping: false,
    };
    let ops = run(&args, &mut ctl).await;
    say(&format!("done {ops}"));
}
