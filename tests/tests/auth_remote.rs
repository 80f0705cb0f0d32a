//! A login the server grants without a password is never given to a client that is not on
//! the proxy's loopback. The cluster trusts 127.0.0.1, where the proxy's own connection
//! comes from; a client on another host (a network namespace made here, reached over a
//! veth pair) must be refused with FATAL 28000 by default, while a password login from
//! there works and a loopback client keeps its passwordless login. `--upstream-auth any`
//! gives the decision back to the server.
#![forbid(unsafe_code)]

use std::net::IpAddr;

use fencegate::config::UpstreamAuth;
use fencegate_tests::cluster::{Cluster, SCRAM_PASSWORD, SCRAM_USER, SUPERUSER, TRUST_USER};
use fencegate_tests::netns::RemoteHost;
use fencegate_tests::TestProxy;

/// psql run on `host` against `proxy`: the role it logged in as, or the server's error.
fn psql_from(
    host: &RemoteHost,
    proxy: &TestProxy,
    user: &str,
    password: Option<&str>,
) -> Result<String, String> {
    let addr = proxy.addr();
    let mut psql = host.command("psql");
    psql.args([
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "SELECT current_user",
        &format!(
            "host={} port={} user={user} dbname=postgres connect_timeout=10",
            addr.ip(),
            addr.port()
        ),
    ]);
    psql.env("PGPASSWORD", password.unwrap_or(""));
    psql.env("PGCONNECT_TIMEOUT", "10");
    let out = psql.output().map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[tokio::test]
async fn a_client_from_another_host_never_gets_a_passwordless_login() {
    let host = match RemoteHost::create("auth") {
        Ok(host) => host,
        Err(why) => {
            eprintln!("skipped: no network namespace can be made here: {why}");
            return;
        }
    };
    let cluster = Cluster::shared();
    let listen = IpAddr::V4(host.host_ip());

    let proxy = TestProxy::plain_on(listen, cluster.port(), |_| {});
    for user in [TRUST_USER, SUPERUSER] {
        let refused = psql_from(&host, &proxy, user, None).expect_err(user);
        assert!(
            refused.contains("FATAL:  the server accepted this login without a password"),
            "{user} from {}: {refused}",
            host.remote_ip()
        );
    }
    // The remote host reaches the proxy, and a password login passes through.
    assert_eq!(
        psql_from(&host, &proxy, SCRAM_USER, Some(SCRAM_PASSWORD)),
        Ok(SCRAM_USER.to_string())
    );
    proxy.stop().expect("proxy stops");

    // A client on loopback could log in to the server directly the same way: let it in.
    let local = TestProxy::plain(cluster.port());
    assert_eq!(
        local.endpoint().login(TRUST_USER, None, "postgres").await,
        Ok(TRUST_USER.to_string())
    );
    local.stop().expect("proxy stops");

    // `any`: the server decides, as for test setups on trust.
    let any = TestProxy::plain_on(listen, cluster.port(), |c| {
        c.upstream_auth = UpstreamAuth::Any
    });
    assert_eq!(
        psql_from(&host, &any, TRUST_USER, None),
        Ok(TRUST_USER.to_string())
    );
    any.stop().expect("proxy stops");

    // `required`: refused on loopback too.
    let required =
        TestProxy::plain_with(cluster.port(), |c| c.upstream_auth = UpstreamAuth::Required);
    let refused = required
        .endpoint()
        .login(TRUST_USER, None, "postgres")
        .await
        .expect_err("required refuses loopback too");
    assert!(refused.starts_with("FATAL 28000"), "{refused}");
    required.stop().expect("proxy stops");
}
