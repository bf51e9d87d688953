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

/// The raw bytes under a Redis key, and a way to plant some.
fn raw_get(redis: &TestRedis, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query(&mut redis.conn()).unwrap()
}

fn raw_set(redis: &TestRedis, key: &str, bytes: &[u8]) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(bytes)
        .query(&mut redis.conn())
        .unwrap();
}

#[tokio::test]
async fn a_value_read_as_another_type_is_a_counted_miss_never_a_misread() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    // bincode writes a u64 0 as the byte 0, which is also an empty String.
    a.set("n", &0u64, Ttl::Default).await.unwrap();
    assert_eq!(b.get::<String>("n").await.unwrap(), None);
    assert_eq!(b.stats().decode_failures, 1);
    assert_eq!(b.get_many::<String>(&["n"]).await.unwrap(), vec![None]);
    assert_eq!(b.stats().decode_failures, 2);
    // The writer's RAM holds a u64: a RAM miss, then the same Redis miss.
    assert_eq!(a.get::<String>("n").await.unwrap(), None);
    assert_eq!(a.stats().decode_failures, 1);
    // The value is the reader's mistake, not bad data: it stays, and a
    // reader asking for the right type gets it.
    assert!(raw_get(&redis, "h:k:n").is_some());
    assert_eq!(b.get::<u64>("n").await.unwrap(), Some(0));
    assert_eq!(b.stats().decode_failures, 2);
}

#[tokio::test]
async fn a_cached_function_whose_value_type_changed_recomputes() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    // Release 1 stored a u64 under the function's name...
    let old = a.func::<(u64,), u64>("stored").build().unwrap();
    assert_eq!(old.call(&(1,), || async { Ok::<_, ()>(0) }).await, Ok(0));
    // ...release 2 reads the same keys as a String.
    let new = b.func::<(u64,), String>("stored").build().unwrap();
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let compute = || async {
        runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, ()>("fresh".to_owned())
    };
    assert_eq!(new.call(&(1,), compute).await, Ok("fresh".to_owned()));
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(b.stats().decode_failures, 1);
    // Its own value is stored over the old one and read back.
    assert_eq!(new.call(&(1,), compute).await, Ok("fresh".to_owned()));
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(b.stats().decode_failures, 1);
}

#[tokio::test]
async fn a_value_in_the_older_envelope_format_is_a_counted_miss_and_removed() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    // Version 1: magic, version, codec, flags, expiry (8 bytes, 0 = never),
    // then the payload: the u64 5.
    let mut v1 = vec![0xCB, 1, 1, 0];
    v1.extend_from_slice(&0u64.to_le_bytes());
    v1.push(5);
    raw_set(&redis, "h:k:old", &v1);
    assert_eq!(n.get::<u64>("old").await.unwrap(), None);
    assert_eq!(n.stats().decode_failures, 1);
    assert_eq!(raw_get(&redis, "h:k:old"), None, "removed");
}

#[tokio::test]
async fn removing_an_undecodable_value_is_announced_to_nodes_holding_it_in_ram() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    a.set("k", &"value".to_owned(), Ttl::Default).await.unwrap();
    // The bytes under k are damaged behind the nodes' backs (cut short), as
    // a foreign writer or a failing disk would leave them.
    let good = raw_get(&redis, "h:k:k").unwrap();
    raw_set(&redis, "h:k:k", &good[..good.len() - 1]);
    let from_ram = a.ram_only().get::<String>("k").await.unwrap();
    assert_eq!(from_ram.as_deref(), Some("value"), "the writer's RAM copy");
    // Another node reads it: a counted miss, and the value is removed...
    assert_eq!(b.get::<String>("k").await.unwrap(), None);
    assert_eq!(b.stats().decode_failures, 1);
    assert_eq!(raw_get(&redis, "h:k:k"), None);
    // ...and the writer stops serving its copy of what Redis no longer holds.
    let dropped = eventually(Duration::from_secs(1), || async {
        a.ram_only().get::<String>("k").await.unwrap().is_none()
    })
    .await;
    assert!(
        dropped,
        "the writer still serves a value removed from Redis"
    );
    assert_eq!(a.get::<String>("k").await.unwrap(), None);
}

#[tokio::test]
async fn removing_an_undecodable_function_value_is_announced_too() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let f = |n: &CacheNode| n.func::<(u64,), String>("damaged").build().unwrap();
    let (fa, fb) = (f(&a), f(&b));
    let value = |v: &'static str| move || async move { Ok::<_, ()>(v.to_owned()) };
    assert_eq!(fa.call(&(1,), value("first")).await, Ok("first".into()));
    let key = fa.cache_key(&(1,)).unwrap();
    let good = raw_get(&redis, &key).unwrap();
    raw_set(&redis, &key, &good[..good.len() - 1]);
    // The other node misses, counts it and computes its own value.
    assert_eq!(fb.call(&(1,), value("second")).await, Ok("second".into()));
    assert_eq!(b.stats().decode_failures, 1);
    // The first node drops its RAM copy: it answers from Redis or computes.
    let dropped = eventually(Duration::from_secs(1), || async {
        fa.call(&(1,), value("third")).await != Ok("first".into())
    })
    .await;
    assert!(
        dropped,
        "the first node still serves a value removed from Redis"
    );
}

#[tokio::test]
async fn removing_an_undecodable_value_drops_the_readers_own_ram_copy() {
    let redis = TestRedis::start();
    let a = node(&redis).await;
    a.set("k", &"value".to_owned(), Ttl::Default).await.unwrap();
    let good = raw_get(&redis, "h:k:k").unwrap();
    raw_set(&redis, "h:k:k", &good[..good.len() - 1]);
    // A Redis-only read on the node that holds the RAM copy: a node does not
    // hear its own announcements, so the read itself drops the copy.
    assert_eq!(a.redis_only().get::<String>("k").await.unwrap(), None);
    assert_eq!(a.stats().decode_failures, 1);
    assert_eq!(raw_get(&redis, "h:k:k"), None);
    assert_eq!(a.ram_only().get::<String>("k").await.unwrap(), None);
}
