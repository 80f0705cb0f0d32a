//! Protocol corners real tools reach: FunctionCall (libpq's large-object calls), CopyBoth
//! (streaming replication with pg_basebackup), protocol 3.2 negotiation, and an unknown
//! message type, each through the proxy as the server itself answers it.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use fencegate_tests::cluster::SUPERUSER;
use fencegate_tests::endpoint::{run, run_ok};
use fencegate_tests::raw::{exchange, messages, read_to_close, read_until_ready, startup_version};
use fencegate_tests::wire::{msg, normalize, render, tags, Message, WireClient};
use fencegate_tests::{Cluster, TestProxy};

#[test]
fn large_objects_use_function_calls_through_the_proxy() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("large_objects");
    let proxy = TestProxy::plain(cluster.port());
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    // psql's \lo_import / \lo_export run libpq's lo_* calls: FunctionCall messages.
    let script = format!(
        "\\lo_import {}\nSELECT :LASTOID AS oid \\gset\n\\lo_export :oid {}\n",
        input.display(),
        output.display()
    );
    let mut cmd = proxy.endpoint().command("psql", SUPERUSER, &db);
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
    run_ok(&mut cmd, script.as_bytes());
    assert_eq!(std::fs::read(&output).unwrap(), data);
    let count = cluster.execute(&db, "SELECT count(*) FROM pg_largeobject_metadata");
    assert_eq!(count.trim(), "1");
}

#[test]
fn pg_basebackup_streams_through_the_proxy() {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("backup");
    let mut cmd = proxy
        .endpoint()
        .command("pg_basebackup", SUPERUSER, "postgres");
    cmd.arg("-D")
        .arg(&target)
        .args(["-X", "stream", "-c", "fast", "--no-sync", "-w"]);
    let out = run(&mut cmd, b"");
    assert!(
        out.status.success(),
        "pg_basebackup through the proxy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(target.join("PG_VERSION").is_file());
    let wal: Vec<_> = std::fs::read_dir(target.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().len() == 24)
        .collect();
    assert!(!wal.is_empty(), "the streamed WAL is missing");
}

/// Sends a raw startup packet and reads up to ReadyForQuery; then, unless `after` is empty,
/// sends `after` and reads until the server closes.
fn startup_then(addr: SocketAddr, startup: &[u8], after: &[u8]) -> Vec<Message> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(startup).unwrap();
    let mut out = read_until_ready(&mut stream);
    if !after.is_empty() {
        stream.write_all(after).unwrap();
        out.extend(messages(&read_to_close(&mut stream).bytes));
    }
    out
}

#[test]
fn protocol_3_2_is_negotiated_by_the_server_as_directly() {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let startup = startup_version(3, 2, &[("user", SUPERUSER), ("database", "postgres")]);
    let direct = startup_then(cluster.endpoint().addr, &startup, b"");
    let proxied = startup_then(proxy.addr(), &startup, b"");
    assert_eq!(render(&normalize(&proxied)), render(&normalize(&direct)));
    assert_eq!(
        direct.last().map(|m| m.0),
        Some(b'Z'),
        "{:?}",
        render(&direct)
    );
}

#[test]
fn unknown_message_type_gets_the_servers_answer() {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let startup = msg::startup(&[("user", SUPERUSER), ("database", "postgres")]);
    let unknown = [b'y', 0, 0, 0, 4];
    let direct = startup_then(cluster.endpoint().addr, &startup, &unknown);
    let proxied = startup_then(proxy.addr(), &startup, &unknown);
    assert_eq!(render(&normalize(&proxied)), render(&normalize(&direct)));
    let last = direct.last().unwrap();
    assert_eq!(last.0, b'E', "{:?}", render(&direct));
    assert!(String::from_utf8_lossy(&last.1).contains("invalid frontend message type"));
    // The proxy keeps serving.
    let (mut client, _) = WireClient::connect(proxy.addr(), SUPERUSER, "postgres").unwrap();
    client.send(&msg::query("SELECT 1")).unwrap();
    assert_eq!(client.read_until_ready(1).unwrap().last().unwrap().0, b'Z');
}

#[test]
fn queries_pipelined_behind_the_startup_packet_are_answered() {
    let cluster = Cluster::shared();
    let proxy = TestProxy::plain(cluster.port());
    let mut bytes = msg::startup(&[("user", SUPERUSER), ("database", "postgres")]);
    bytes.extend(msg::query("SELECT 1 AS one; SELECT 2 AS two"));
    bytes.extend(msg::terminate());
    let direct = messages(&exchange(cluster.endpoint().addr, &bytes, false).bytes);
    let proxied = messages(&exchange(proxy.addr(), &bytes, false).bytes);
    assert_eq!(render(&normalize(&proxied)), render(&normalize(&direct)));
    let tags = tags(&direct);
    assert!(tags.ends_with("ZTDCTDCZ"), "{tags}");
}
