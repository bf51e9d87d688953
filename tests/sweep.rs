//! The background key-set sweep against a real redis-server.

mod support;

use std::time::Duration;

use cachenode::CacheNode;
use support::{eventually, TestRedis};

#[tokio::test]
async fn background_sweep_prunes_expired_keys_from_key_sets() {
    let redis = TestRedis::start();
    let node = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("sw")
        .key_set_sweep_every(Some(Duration::from_millis(300)))
        .build()
        .await
        .unwrap();
    let short = node
        .func::<(u32,), u32>("short")
        .expire_in(Duration::from_millis(100))
        .build()
        .unwrap();
    let long = node.func::<(u32,), u32>("long").build().unwrap();
    for i in 0..50 {
        short
            .call(&(i,), || async move { Ok::<_, ()>(i) })
            .await
            .unwrap();
        long.call(&(i,), || async move { Ok::<_, ()>(i) })
            .await
            .unwrap();
    }
    assert_eq!(short.key_set_size().await.unwrap(), 50);
    let pruned = eventually(Duration::from_secs(5), || async {
        short.key_set_size().await.unwrap() == 0
    })
    .await;
    assert!(pruned, "expired keys leave the key set");
    assert_eq!(long.key_set_size().await.unwrap(), 50, "live keys stay");
    node.shutdown().await;
}

#[tokio::test]
async fn sweep_lock_is_held_for_most_of_the_period() {
    let redis = TestRedis::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(
            CacheNode::builder()
                .redis_url(redis.url())
                .namespace("sw")
                .key_set_sweep_every(Some(Duration::from_millis(400)))
                .build()
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The lock a sweeping instance takes is there, held by one of them.
    let lock: Option<String> = redis::cmd("GET")
        .arg("sw:lock:sweep")
        .query(&mut redis.conn())
        .unwrap();
    assert!(lock.is_some(), "an instance took the sweep lock");
    let pttl: i64 = redis::cmd("PTTL")
        .arg("sw:lock:sweep")
        .query(&mut redis.conn())
        .unwrap();
    assert!(pttl > 0 && pttl <= 360, "{pttl}");
}
