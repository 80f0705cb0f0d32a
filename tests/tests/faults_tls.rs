//! TLS negotiation with clients: the proxy terminates TLS with its configured certificate
//! (the upstream link stays plain TCP), refuses `sslmode=require` without one while `prefer`
//! works, and refuses bytes pipelined behind an SSLRequest (CVE-2021-23214) when it would
//! answer `S`. Other faults are in `faults.rs`.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use fencegate::session::hook::NoHooks;
use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::endpoint::run;
use fencegate_tests::raw::{assert_one_fatal, exchange, messages, read_message, ssl_request};
use fencegate_tests::wire::{self, msg};
use fencegate_tests::{Endpoint, TestProxy};

/// A self-signed certificate for `localhost` and `127.0.0.1`, as PEM files in a tempdir.
struct TestCert {
    dir: tempfile::TempDir,
}

impl TestCert {
    fn new() -> TestCert {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("generate certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            certified.key_pair.serialize_pem(),
        )
        .unwrap();
        TestCert { dir }
    }

    fn cert(&self) -> std::path::PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("key.pem")
    }

    fn proxy(&self, upstream_port: u16) -> TestProxy {
        let (cert, key) = (self.cert(), self.key());
        TestProxy::start(
            upstream_port,
            |c| {
                c.tls_cert = Some(cert);
                c.tls_key = Some(key);
            },
            Arc::new(NoHooks),
        )
    }
}

/// The commands that show whether the session is encrypted, then one answer: 42.
const CONNINFO_AND_42: [&str; 2] = ["\\conninfo", "SELECT 40 + 2"];

/// Runs psql with `-c` commands and libpq settings in `env`; returns (exit code, stdout, stderr).
fn psql(
    ep: Endpoint,
    db: &str,
    env: &[(&str, &str)],
    commands: &[&str],
) -> (Option<i32>, String, String) {
    let mut cmd = ep.command("psql", TRUST_USER, db);
    cmd.arg("-X");
    for c in commands {
        cmd.args(["-c", c]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd, b"");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`psql`] with only `PGSSLMODE` set, to `sslmode`.
fn psql_with_sslmode(
    proxy: &TestProxy,
    db: &str,
    sslmode: &str,
    commands: &[&str],
) -> (Option<i32>, String, String) {
    psql(proxy.endpoint(), db, &[("PGSSLMODE", sslmode)], commands)
}

#[test]
fn tls_terminated_by_proxy_with_configured_certificate() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("faults_tls");
    let cert = TestCert::new();
    let proxy = cert.proxy(cluster.port());
    let root = cert.cert();
    for env in [
        vec![("PGSSLMODE", "require")],
        // The proxy presents the configured certificate, valid for the host.
        vec![
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", root.to_str().unwrap()),
        ],
    ] {
        let (code, out, err) = psql(proxy.endpoint(), &db, &env, &CONNINFO_AND_42);
        assert_eq!(code, Some(0), "{env:?}: {err}");
        assert!(
            out.contains("SSL connection (protocol: TLSv1."),
            "{env:?}: {out}"
        );
        assert!(out.contains("42"), "{out}");
    }
    // The upstream link is plain TCP: Postgres sees no TLS on the proxied session.
    let ssl = ["SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"];
    let (code, out, err) = psql_with_sslmode(&proxy, &db, "require", &ssl);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(" f\n"), "{out}");
}

#[test]
fn without_certificate_require_fails_and_prefer_works() {
    let cluster = Cluster::shared();
    let db = cluster.create_database("faults_notls");
    let proxy = TestProxy::plain(cluster.port());
    let (code, _, err) = psql_with_sslmode(&proxy, &db, "require", &["SELECT 1"]);
    let why = "sslmode=require succeeded without TLS";
    assert_eq!(code, Some(2), "{why}: {err}");
    assert!(err.contains("server does not support SSL"), "{err}");
    let (code, out, err) = psql_with_sslmode(&proxy, &db, "prefer", &CONNINFO_AND_42);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.contains("SSL connection"), "{out}");
    assert!(out.contains("42"), "{out}");
}

#[test]
fn bytes_pipelined_after_ssl_request_are_refused() {
    // CVE-2021-23214: bytes sent together with SSLRequest, before the handshake, could be a
    // man in the middle's; a server that answers `S` and later reads them as if they had been
    // encrypted is injectable. The proxy must not answer `S`.
    let cluster = Cluster::shared();
    let cert = TestCert::new();
    let proxy = cert.proxy(cluster.port());
    let startup = msg::startup(&[("user", TRUST_USER), ("database", "postgres")]);
    let reply = exchange(
        proxy.addr(),
        &[ssl_request(), startup.clone()].concat(),
        false,
    );
    assert_ne!(
        reply.bytes.first(),
        Some(&b'S'),
        "answered S with plaintext pending: {reply:?}"
    );
    assert!(!reply.reset, "{reply:?}");
    assert_one_fatal(
        &messages(&reply.bytes),
        &["08P01"],
        "SSLRequest + StartupMessage",
    );

    // With TLS not configured the answer is `N` and the pipelined startup is fine (nothing
    // is encrypted, so nothing can be smuggled): the session starts.
    let plain = TestProxy::plain(cluster.port());
    let mut stream = TcpStream::connect(plain.addr()).unwrap();
    stream
        .write_all(&[ssl_request(), startup].concat())
        .unwrap();
    let mut answer = [0u8];
    stream.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], b'N');
    let mut got = vec![read_message(&mut stream)];
    while got.last().unwrap().0 != b'Z' {
        got.push(read_message(&mut stream));
    }
    assert_eq!(got[0], (b'R', vec![0, 0, 0, 0]), "{:?}", wire::render(&got));
}
