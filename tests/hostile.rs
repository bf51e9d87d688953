//! Keys and arguments with any bytes, against a real redis-server.

mod support;

use std::time::Duration;

use cachenode::{Args, CacheNode, Ttl};
use support::{eventually, TestRedis};

async fn node(redis: &TestRedis) -> CacheNode {
    CacheNode::builder()
        .redis_url(redis.url())
        .namespace("h")
        .build()
        .await
        .unwrap()
}

fn hostile_keys() -> Vec<String> {
    vec![
        "with space".into(),
        "new\nline\r\n".into(),
        "*".into(),
        "a*b?c[d]".into(),
        ":::".into(),
        "{tag}:x".into(),
        "\0fleading-nul".into(),
        "\0kescaped-looking".into(),
        "ünïcödé ☃".into(),
        "k".repeat(10_000),
        String::new(),
    ]
}

#[tokio::test]
async fn plain_keys_with_any_bytes_round_trip_and_invalidate_across_nodes() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    for (i, key) in hostile_keys().iter().enumerate() {
        a.set(key, &(i as u64), Ttl::Default).await.unwrap();
        assert_eq!(b.get::<u64>(key).await.unwrap(), Some(i as u64), "{key:?}");
        assert!(a.has(key).await.unwrap());
        a.set(key, &(i as u64 + 100), Ttl::Default).await.unwrap();
        let dropped = eventually(Duration::from_secs(3), || async {
            b.ram_only().get::<u64>(key).await.unwrap() != Some(i as u64)
        })
        .await;
        assert!(dropped, "{key:?}: invalidation reaches the other node");
        assert_eq!(b.get::<u64>(key).await.unwrap(), Some(i as u64 + 100));
    }
    // Keys that differ only where a naive escape would merge them stay apart.
    assert_eq!(a.get::<u64>("\0fleading-nul").await.unwrap(), Some(106));
    assert_eq!(a.get::<u64>("\0kescaped-looking").await.unwrap(), Some(107));
    let keys = hostile_keys();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(a.delete_many(&refs).await.unwrap().len(), refs.len());
    assert_eq!(a.clear_all().await.unwrap(), 0);
    assert!(redis.keys("h:k:*").is_empty());
}

#[tokio::test]
async fn function_arguments_with_any_bytes_get_distinct_keys_and_clear_by_value() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let f = |n: &CacheNode| {
        n.func::<Args, String>("hostile")
            .cache_key_with_full_args(true)
            .build()
            .unwrap()
    };
    let (fa, fb) = (f(&a), f(&b));
    let values: Vec<Vec<u8>> = vec![
        vec![0xFF, 0xFE, 0x00],
        b"new\nline".to_vec(),
        b"*".to_vec(),
        b":".to_vec(),
        vec![b'x'; 10_000],
        Vec::new(),
    ];
    let args =
        |v: &Vec<u8>, tag: &str| Args::new().arg("blob", v).unwrap().arg("tag", tag).unwrap();
    let mut keys = std::collections::HashSet::new();
    for (i, v) in values.iter().enumerate() {
        for tag in ["a", "b"] {
            let want = format!("{i}-{tag}");
            let got = fa
                .call(&args(v, tag), || async { Ok::<_, ()>(want.clone()) })
                .await
                .unwrap();
            assert_eq!(got, want);
            assert!(keys.insert(fa.cache_key(&args(v, tag)).unwrap()));
            // The other node reads it from Redis, not recomputing.
            let seen = fb
                .call(&args(v, tag), || async {
                    Ok::<_, ()>("recomputed".to_owned())
                })
                .await
                .unwrap();
            assert_eq!(seen, want);
        }
    }
    assert_eq!(fa.key_set_size().await.unwrap(), 12);
    // Clear every value whose blob is the non-UTF-8 one, on both nodes.
    let filter = Args::new().arg("blob", &values[0]).unwrap();
    let deleted = fa.clear_some(&filter).unwrap().run(|_| {}).await.unwrap();
    assert_eq!(deleted, 2);
    let gone = eventually(Duration::from_secs(3), || async {
        fb.call(&args(&values[0], "a"), || async {
            Ok::<_, ()>("fresh".to_owned())
        })
        .await
        .unwrap()
            == "fresh"
    })
    .await;
    assert!(gone, "cleared on the other node too");
    assert_eq!(fa.key_set_size().await.unwrap(), 11);
    assert_eq!(fa.clear_all().await.unwrap(), 11);
}
