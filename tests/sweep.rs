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
        .ttl(Duration::from_millis(100))
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

/// The sweep takes its lock for nine tenths of the period (`sweep_task`:
/// held for most of the period, so that one instance sweeps per period):
/// 360 ms of a 400 ms period. The command says so exactly, and the expiry
/// Redis stored is that long after the command ran (its `MONITOR`
/// timestamp): at most 360 ms, at least 358 (the expiry is counted from the
/// server's whole millisecond, the timestamp in microseconds).
#[tokio::test]
async fn sweep_lock_is_held_for_nine_tenths_of_the_period() {
    let redis = TestRedis::start();
    let mut monitor = redis.monitor();
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
    // The first to run is the one that took the lock (SET NX).
    let line = monitor
        .next_with(&[r#""SET""#, r#""sw:lock:sweep""#, r#""NX""#])
        .await;
    // `<secs>.<micros> [0 127.0.0.1:port] "SET" "sw:lock:sweep" "<token>" "NX" "PX" "360"`
    let args: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
    assert_eq!(args.len(), 6, "{line}");
    assert_eq!(args[..2], ["SET", "sw:lock:sweep"], "{line}");
    assert_eq!(args[3..], ["NX", "PX", "360"], "{line}");
    let ran_at: &str = line.split(' ').next().unwrap().trim_start_matches('+');
    let ran_at_ms = ran_at.parse::<f64>().unwrap() * 1000.0;
    let holder: Option<String> = redis::cmd("GET")
        .arg("sw:lock:sweep")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(holder.as_deref(), Some(args[2]), "the first SET holds it");
    let expires_at_ms: i64 = redis::cmd("PEXPIRETIME")
        .arg("sw:lock:sweep")
        .query(&mut redis.conn())
        .unwrap();
    let stored = expires_at_ms as f64 - ran_at_ms;
    assert!((358.0..=360.0).contains(&stored), "lock TTL {stored} ms");
    for n in nodes {
        n.shutdown().await;
    }
}
