//! TLS from the proxy to PostgreSQL (`--upstream-tls`): against a private cluster with
//! `ssl = on` the upstream link is encrypted (`pg_stat_ssl` says so); `verify-full` with a
//! CA that did not sign the server's certificate refuses to connect; `require` against a
//! server without TLS fails with a FATAL naming the upstream, `prefer` falls back.
#![forbid(unsafe_code)]

use std::sync::Arc;

use fencegate::config::UpstreamTls;
use fencegate::demo::pgtemp::TempCluster;
use fencegate::session::hook::NoHooks;
use fencegate_tests::cluster::TRUST_USER;
use fencegate_tests::pgbin::PgBin;
use fencegate_tests::{Cluster, TestProxy};

struct TlsCluster {
    cluster: TempCluster,
    _certs: tempfile::TempDir,
}

fn write_cert(dir: &std::path::Path, name: &str) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), certified.cert.pem()).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        certified.key_pair.serialize_pem(),
    )
    .unwrap();
}

fn tls_cluster() -> TlsCluster {
    let certs = tempfile::tempdir().unwrap();
    write_cert(certs.path(), "server");
    write_cert(certs.path(), "other");
    let bin = PgBin::get().clone();
    bin.chown_to_server_user(certs.path()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(certs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        certs.path().join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let settings = format!(
        "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
        certs.path().display()
    );
    let cluster = TempCluster::start(bin, &settings, None).expect("start a TLS cluster");
    TlsCluster {
        cluster,
        _certs: certs,
    }
}

async fn upstream_ssl(proxy: &TestProxy) -> Result<bool, tokio_postgres::Error> {
    let (client, connection) = proxy
        .endpoint()
        .pg_config("postgres", "postgres")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_link_is_encrypted_when_required() {
    let tls = tls_cluster();
    let port = tls.cluster.port();
    for mode in [UpstreamTls::Require, UpstreamTls::Prefer] {
        let proxy = TestProxy::start(port, |c| c.upstream_tls = mode, Arc::new(NoHooks));
        assert!(upstream_ssl(&proxy).await.unwrap(), "{mode:?}");
    }
    let plain = TestProxy::start(port, |_| {}, Arc::new(NoHooks));
    assert!(!upstream_ssl(&plain).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_certificate_from_another_ca() {
    let tls = tls_cluster();
    let wrong_ca = tls._certs.path().join("other.crt");
    let proxy = TestProxy::start(
        tls.cluster.port(),
        |c| {
            c.upstream_tls = UpstreamTls::VerifyFull;
            c.upstream_ca = Some(wrong_ca);
        },
        Arc::new(NoHooks),
    );
    let err = upstream_ssl(&proxy).await.unwrap_err();
    let db = err.as_db_error().expect("a FATAL from the proxy");
    assert_eq!(db.code().code(), "08006");
    assert!(db.message().contains("TLS"), "{}", db.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_names_the_upstream() {
    let cluster = Cluster::shared();
    let proxy = TestProxy::start(
        cluster.port(),
        |c| c.upstream_tls = UpstreamTls::Require,
        Arc::new(NoHooks),
    );
    let (client, connection) = match proxy
        .endpoint()
        .pg_config(TRUST_USER, "postgres")
        .connect(tokio_postgres::NoTls)
        .await
    {
        Ok(pair) => pair,
        Err(err) => {
            let db = err.as_db_error().expect("a FATAL from the proxy");
            assert!(
                db.message().contains("does not support TLS"),
                "{}",
                db.message()
            );
            assert!(db.message().contains(&cluster.port().to_string()));
            return;
        }
    };
    drop((client, connection));
    panic!("connected although the upstream has no TLS and upstream_tls = require");
}
