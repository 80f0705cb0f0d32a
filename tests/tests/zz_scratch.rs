use fencegate::session::hook::NoHooks;
use fencegate_tests::cluster::{Cluster, TRUST_USER};
use fencegate_tests::TestProxy;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_slowloris() {
    let cluster = Cluster::shared();
    let proxy = TestProxy::start(cluster.port(), |c| c.max_connections = 2, Arc::new(NoHooks));
    let _idle: Vec<_> = (0..2)
        .map(|_| std::net::TcpStream::connect(proxy.addr()).unwrap())
        .collect();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        proxy
            .endpoint()
            .pg_config(TRUST_USER, "postgres")
            .connect_timeout(std::time::Duration::from_secs(30))
            .connect(tokio_postgres::NoTls),
    )
    .await;
    println!(
        "SLOWLORIS result: {:?}",
        r.map(|x| x.map(|_| ()).map_err(|e| e.to_string()))
    );
}
