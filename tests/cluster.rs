//! cachenode and a real Redis Cluster (six servers on loopback, see
//! `support::cluster`), and a Sentinel.
//!
//! A node speaks to one server, or to a replica set behind one address;
//! Redis Cluster is not supported yet. Pointed at a node of a cluster, it
//! must refuse at connect with a clear error, not connect and then fail on
//! every key whose slot another primary serves.

mod support;

use cachenode::{CacheNode, Error};
use support::TestCluster;

#[tokio::test]
async fn connecting_to_a_node_of_a_cluster_is_refused_with_a_clear_error() {
    let cluster = TestCluster::start();
    assert_eq!(cluster.primaries().len(), 3);
    for url in cluster.urls() {
        let err = CacheNode::builder()
            .redis_url(&url)
            .build()
            .await
            .expect_err("a node of a Redis Cluster is refused");
        match err {
            Error::Config(msg) => assert!(
                msg.contains("Redis Cluster") && msg.contains(&url),
                "the error names the cause and the server: {msg}"
            ),
            other => panic!("expected Error::Config, got {other:?}"),
        }
    }
}

/// A Sentinel answers on a Redis port but holds no data: refused at
/// connect with a clear error too.
#[tokio::test]
async fn connecting_to_a_sentinel_is_refused_with_a_clear_error() {
    let redis = support::TestRedis::start();
    let port = support::free_port();
    let dir =
        std::env::temp_dir().join(format!("cachenode-sentinel-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\nsentinel monitor m 127.0.0.1 {} 1\n",
            redis.port()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(support::server::server_binary());
    cmd.arg(&conf)
        .arg("--sentinel")
        .stdout(std::process::Stdio::null());
    support::spawn::die_with_parent(&mut cmd);
    let child = support::spawn::on_spawner_thread(move || cmd.spawn()).expect("start a sentinel");
    struct Kill(std::process::Child, std::path::PathBuf);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _sentinel = Kill(child, dir);
    let url = format!("redis://127.0.0.1:{port}");
    assert!(
        support::eventually(std::time::Duration::from_secs(10), || async {
            redis::Client::open(url.as_str())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .is_ok()
        })
        .await,
        "the sentinel never answered"
    );
    let err = CacheNode::builder()
        .redis_url(&url)
        .build()
        .await
        .expect_err("a sentinel is refused");
    match err {
        Error::Config(msg) => assert!(
            msg.contains("Sentinel") && msg.contains(&url),
            "the error names the cause and the server: {msg}"
        ),
        other => panic!("expected Error::Config, got {other:?}"),
    }
}
