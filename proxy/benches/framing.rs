//! Frame splitting: `peek_tagged` walked over a buffer of many messages, as the relay does
//! with each read (server replies and client requests of pgbench select-only rounds).
#![forbid(unsafe_code)]

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fencegate::protocol::framing::peek_tagged;

const ROUNDS: usize = 500;

fn buffer(round: &[Vec<u8>]) -> (Vec<u8>, usize) {
    let mut buf = Vec::new();
    for _ in 0..ROUNDS {
        for m in round {
            buf.extend_from_slice(m);
        }
    }
    (buf, ROUNDS * round.len())
}

/// Splits the whole buffer; returns the number of messages (checked against the input).
fn split_all(mut buf: &[u8]) -> usize {
    let mut n = 0;
    while let Ok(Some(info)) = peek_tagged(buf, 1 << 30) {
        buf = &buf[info.total_len..];
        n += 1;
    }
    n
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("framing/peek_tagged");
    for (name, round) in [
        ("server_extended_select", common::server_extended_round()),
        ("client_extended_select", common::client_extended_round()),
    ] {
        let (buf, messages) = buffer(&round);
        assert_eq!(split_all(&buf), messages);
        group.throughput(Throughput::Elements(messages as u64));
        group.bench_function(name, |b| b.iter(|| split_all(black_box(&buf))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
