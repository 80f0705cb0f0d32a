//! Byte-level comparison: the same raw protocol messages sent directly and through the proxy
//! must produce the same backend messages, byte for byte, except the BackendKeyData values
//! (masked by `wire::normalize`: a proxy may hand out its own cancel keys).
#![forbid(unsafe_code)]

use fencegate_tests::cluster::{Cluster, SUPERUSER};
use fencegate_tests::wire::msg::{self, batch};
use fencegate_tests::wire::{self, tags, Message, WireClient};
use fencegate_tests::TestProxy;

/// One step: bytes to send, and how many ReadyForQuery messages end its replies.
type Step = (Vec<u8>, usize);

/// Logs in to a fresh database at `addr`, runs `steps`, then Terminate; returns the startup
/// messages, each step's replies, and what arrived after Terminate.
fn converse(addr: std::net::SocketAddr, db: &str, steps: &[Step]) -> Vec<Vec<Message>> {
    let (mut client, startup) = WireClient::connect(addr, SUPERUSER, db).expect("log in");
    let mut out = vec![wire::normalize(&startup)];
    for (bytes, ready) in steps {
        client.send(bytes).expect("send");
        out.push(wire::normalize(
            &client.read_until_ready(*ready).expect("read replies"),
        ));
    }
    client.send(&msg::terminate()).expect("send Terminate");
    out.push(client.read_to_close());
    out
}

fn same_both_ways(name: &str, steps: &[Step]) -> Vec<Vec<Message>> {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let direct = converse(
        cluster.endpoint().addr,
        &cluster.create_database(name),
        steps,
    );
    let proxied = converse(proxy.addr(), &cluster.create_database(name), steps);
    wire::assert_same_transcripts(name, &direct, &proxied);
    direct
}

#[test]
fn simple_queries_byte_for_byte() {
    let steps: Vec<Step> = vec![
        (
            msg::query("CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'ä'), (2, NULL)"),
            1,
        ),
        (msg::query(""), 1),
        // Expressions, not bare columns: a column's RowDescription carries its table's OID,
        // which differs between the two fresh databases.
        (
            msg::query("SELECT id + 0, v || '' FROM t ORDER BY id; SELECT 1/0; SELECT 'never'"),
            1,
        ),
        (msg::query("DO $$ BEGIN RAISE NOTICE 'n'; END $$"), 1),
        (msg::query("SET application_name = 'wire test'"), 1),
        (
            batch([
                msg::query("BEGIN"),
                msg::query("SELEC"),
                msg::query("SELECT 1"),
                msg::query("ROLLBACK"),
            ]),
            4,
        ),
    ];
    let replies = same_both_ways("wire_simple", &steps);
    assert_eq!(tags(&replies[0]).chars().next(), Some('R'));
    assert_eq!(tags(&replies[1]), "CCZ");
    assert_eq!(tags(&replies[2]), "IZ");
    assert_eq!(tags(&replies[3]), "TDDCEZ");
    assert_eq!(tags(&replies[4]), "NCZ");
    assert_eq!(
        tags(&replies[5]),
        "CSZ",
        "ParameterStatus for application_name"
    );
    assert_eq!(tags(&replies[6]), "CZEZEZCZ");
    assert!(
        replies[7].is_empty(),
        "messages after Terminate: {:?}",
        wire::render(&replies[7])
    );
}

#[test]
fn extended_protocol_byte_for_byte() {
    let steps: Vec<Step> = vec![
        (
            batch([
                msg::parse_described("s1", "SELECT g, $1::text FROM generate_series(1, 5) g"),
                msg::bind_described("p1", "s1", &[Some("ü")]),
                msg::execute("p1", 2),
                msg::execute("p1", 2),
                msg::execute("p1", 0),
                msg::sync(),
            ]),
            1,
        ),
        (
            // An error mid-batch: the rest is skipped until Sync.
            batch([
                msg::run_prepared("s1", &[None]),
                msg::run_unnamed("SELECT 1/0", &[]),
                msg::run_prepared("s1", &[Some("skipped")]),
                msg::sync(),
            ]),
            1,
        ),
        (
            batch([
                msg::parse("bad", "SELEC"),
                msg::sync(),
                msg::bind("", "missing", &[]),
                msg::sync(),
            ]),
            2,
        ),
    ];
    let replies = same_both_ways("wire_extended", &steps);
    assert_eq!(tags(&replies[1]), "1tT2TDDsDDsDCZ");
    // `SELECT 1/0` is constant-folded when planned, so the error comes at Bind.
    assert_eq!(tags(&replies[2]), "2DDDDDC1EZ");
    assert_eq!(tags(&replies[3]), "EZEZ");
}
