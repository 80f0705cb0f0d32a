//! The per-statement fence work: annotation extraction, classification, statement
//! splitting and the policy decision, on the statements pgbench sends (with and without a
//! sqlcommenter token) and on a 4 KiB statement.
#![forbid(unsafe_code)]

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fencegate::fence::annotation;
use fencegate::fence::plan::{Decision, FencePolicy};
use fencegate::sql::{classify, lexer};

fn statements() -> Vec<(&'static str, String)> {
    vec![
        ("select_only", common::SELECT_ONLY.to_string()),
        ("select_only_token", common::annotated(common::SELECT_ONLY)),
        ("update_token", common::annotated(common::TPCB[1])),
        ("insert_4k", common::long_insert()),
    ]
}

fn per_statement(c: &mut Criterion) {
    let policy = FencePolicy::default();
    for (name, stmt) in statements() {
        let s = stmt.as_bytes();
        let mut group = c.benchmark_group(format!("fence/{name}"));
        group.throughput(Throughput::Bytes(s.len() as u64));
        group.bench_function("annotation_find", |b| {
            b.iter(|| annotation::find(black_box(s)))
        });
        group.bench_function("classify", |b| b.iter(|| classify::classify(black_box(s))));
        group.bench_function("split_statements", |b| {
            b.iter(|| lexer::split_statements(black_box(s)))
        });
        group.bench_function("policy_analyze", |b| {
            b.iter(|| policy.analyze(black_box(s)))
        });
        let analysis = policy.analyze(s);
        group.bench_function("policy_decide_analyzed", |b| {
            b.iter(|| policy.decide_analyzed(black_box(&analysis), false))
        });
        group.bench_function("policy_decide", |b| {
            b.iter(|| policy.decide(black_box(s), false))
        });
        group.finish();
    }
}

/// A tpcb-like transaction sent as one simple Query string, every data statement
/// annotated: split, then decide per statement, as the hook does for a Query.
fn whole_query(c: &mut Criterion) {
    let policy = FencePolicy::default();
    let query: String = common::TPCB
        .iter()
        .enumerate()
        .map(|(i, s)| match i {
            0 | 6 => s.to_string(),
            _ => common::annotated(s),
        })
        .collect::<Vec<_>>()
        .join(" ");
    let q = query.as_bytes();
    let checks = lexer::split_statements(q)
        .into_iter()
        .filter(|r| matches!(policy.decide(&q[r.clone()], false), Decision::Check(_)))
        .count();
    assert_eq!(checks, 5);
    let mut group = c.benchmark_group("fence/tpcb_query_token");
    group.throughput(Throughput::Bytes(q.len() as u64));
    group.bench_function("split_and_decide", |b| {
        b.iter(|| {
            lexer::split_statements(black_box(q))
                .into_iter()
                .map(|r| policy.decide(&q[r], false))
                .filter(Decision::needs_injection)
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, per_statement, whole_query);
criterion_main!(benches);
