//! Reply-queue bookkeeping: `ReplyTracker::client_message` for each client message and
//! `server_message` for each server reply of one round, in the steady state (one tracker
//! reused, as in a session).
#![forbid(unsafe_code)]

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fencegate::fence::plan::FencePolicy;
use fencegate::protocol::backend::TxStatus;
use fencegate::protocol::build;
use fencegate::protocol::framing::{peek_tagged, HEADER_LEN};
use fencegate::protocol::frontend::FrontendMessage;
use fencegate::session::replies::{Action, ReplyTracker, Route};

/// The name of the fence's own statement and portal (as in `fence::hook`).
const CHECK: &str = "__fencegate_check";

/// Tag and body of each message.
fn split(messages: &[Vec<u8>]) -> Vec<(u8, &[u8])> {
    messages
        .iter()
        .map(|m| {
            let info = peek_tagged(m, usize::MAX >> 1).unwrap().unwrap();
            (info.tag, &m[HEADER_LEN..info.total_len])
        })
        .collect()
}

/// One round: every client message recorded, every server message routed; returns how
/// many server messages reach the client.
fn round(t: &mut ReplyTracker, client: &[(u8, &[u8], Action)], server: &[(u8, &[u8])]) -> usize {
    for (tag, body, action) in client {
        t.client_message(&FrontendMessage { tag: *tag, body }, action.clone());
    }
    while t.take_synthesized().is_some() {}
    server
        .iter()
        .filter(|(tag, body)| t.server_message(*tag, body) != Route::Drop)
        .count()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("replies/round");

    // Simple Query: Q -> T D C Z.
    let server_msgs = common::server_extended_round();
    let server_simple: Vec<_> = split(&server_msgs).into_iter().skip(2).collect();
    let simple = [(b'Q', &b"SELECT 1\0"[..], Action::Forward)];
    check(&simple, &server_simple, 4);
    group.throughput(Throughput::Elements(5));
    group.bench_function("simple_select", |b| {
        let mut t = ReplyTracker::new(TxStatus::Idle);
        b.iter(|| round(&mut t, black_box(&simple), black_box(&server_simple)))
    });

    // Extended: P B D E S -> 1 2 T D C Z.
    let client_msgs = common::client_extended_round();
    let extended: Vec<_> = split(&client_msgs)
        .into_iter()
        .map(|(tag, body)| (tag, body, Action::Forward))
        .collect();
    let server_extended = split(&server_msgs);
    check(&extended, &server_extended, 6);
    group.throughput(Throughput::Elements(11));
    group.bench_function("extended_select", |b| {
        let mut t = ReplyTracker::new(TxStatus::Idle);
        b.iter(|| round(&mut t, black_box(&extended), black_box(&server_extended)))
    });

    // Extended with the fence's check before Bind, as the fence hook injects it:
    // P [C C P B E] B D E S -> 1 [3 3 1 2 D C] 2 T D C Z, the check's replies hidden.
    let check_sql = FencePolicy::default()
        .sql(
            &FencePolicy::default()
                .decide(common::annotated(common::SELECT_ONLY).as_bytes(), false),
            true,
        )
        .unwrap();
    let check_msgs: Vec<Vec<u8>> = [
        build::close_statement(CHECK),
        build::close_portal(CHECK),
        build::parse(CHECK, &check_sql),
        build::bind(CHECK, CHECK, &[]),
        build::execute(CHECK),
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    let mut fenced: Vec<_> = extended[..1].to_vec();
    fenced.extend(
        split(&check_msgs)
            .into_iter()
            .map(|(tag, body)| (tag, body, Action::Check)),
    );
    fenced.extend(extended[1..].iter().cloned());
    let check_replies = [
        common::message(b'3', b""),
        common::message(b'3', b""),
        common::message(b'1', b""),
        common::message(b'2', b""),
        server_msgs[3].clone(),
        server_msgs[4].clone(),
    ];
    let mut server_fenced = split(&server_msgs[..1]);
    server_fenced.extend(split(&check_replies));
    server_fenced.extend(split(&server_msgs[1..]));
    check(&fenced, &server_fenced, 6);
    group.throughput(Throughput::Elements(22));
    group.bench_function("extended_select_checked", |b| {
        let mut t = ReplyTracker::new(TxStatus::Idle);
        b.iter(|| round(&mut t, black_box(&fenced), black_box(&server_fenced)))
    });
    group.finish();

    // A driver's batch (JDBC executeBatch, a pgx or psycopg pipeline): one Parse, N
    // Bind/Execute pairs, one Sync, then every reply. The relay asks `awaiting_ready` before
    // each client message when a hook is present, so the cost per message must not grow
    // with the depth of the queue: compare the per-element figures of the two depths.
    let mut group = c.benchmark_group("replies/pipeline");
    let parse = build::parse("", "INSERT INTO t VALUES ($1)").to_vec();
    let bind = build::bind("", "", &[]).to_vec();
    let execute = build::execute("").to_vec();
    let sync = common::message(b'S', b"");
    let replies = [
        common::message(b'1', b""),
        common::message(b'2', b""),
        common::message(b'C', b"INSERT 0 1\0"),
        common::message(b'Z', b"I"),
    ];
    for depth in [100usize, 10_000] {
        let mut client = vec![(b'P', &parse[HEADER_LEN..])];
        for _ in 0..depth {
            client.push((b'B', &bind[HEADER_LEN..]));
            client.push((b'E', &execute[HEADER_LEN..]));
        }
        client.push((b'S', &sync[HEADER_LEN..]));
        let mut server = vec![(b'1', &replies[0][HEADER_LEN..])];
        for _ in 0..depth {
            server.push((b'2', &replies[1][HEADER_LEN..]));
            server.push((b'C', &replies[2][HEADER_LEN..]));
        }
        server.push((b'Z', &replies[3][HEADER_LEN..]));
        let batch = |t: &mut ReplyTracker| {
            let mut awaiting = 0;
            for (tag, body) in &client {
                awaiting += usize::from(t.awaiting_ready());
                t.client_message(&FrontendMessage { tag: *tag, body }, Action::Forward);
            }
            let forwarded = server
                .iter()
                .filter(|(tag, body)| t.server_message(*tag, body) != Route::Drop)
                .count();
            (awaiting, forwarded)
        };
        let mut t = ReplyTracker::new(TxStatus::Idle);
        assert_eq!(batch(&mut t), (0, server.len()));
        assert!(t.is_idle() && t.desync().is_none());
        group.throughput(Throughput::Elements((client.len() + server.len()) as u64));
        group.bench_function(format!("batch_{depth}"), |b| {
            let mut t = ReplyTracker::new(TxStatus::Idle);
            b.iter(|| batch(black_box(&mut t)))
        });
    }
    group.finish();
}

/// The scripted round is what the tracker expects: `forwarded` messages reach the client
/// and nothing is left outstanding.
fn check(client: &[(u8, &[u8], Action)], server: &[(u8, &[u8])], forwarded: usize) {
    let mut t = ReplyTracker::new(TxStatus::Idle);
    assert_eq!(round(&mut t, client, server), forwarded);
    assert!(t.is_idle() && t.desync().is_none());
}

criterion_group!(benches, bench);
criterion_main!(benches);
