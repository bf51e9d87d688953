//! cachenode and a real Redis Cluster (six servers on loopback, see
//! `support::cluster`).
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
