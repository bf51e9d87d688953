//! The two-layer node against a real redis-server.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cachenode::{CacheNode, Error, Layers, Ttl};
use redis::Commands;
use serde::{Deserialize, Serialize};
use support::{bus_seq, caught_up, eventually, node, node_in, TestRedis};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

fn user(id: u64) -> User {
    User {
        id,
        name: format!("user-{id}"),
    }
}

#[tokio::test]
async fn set_then_get_reads_ram_and_redis_holds_the_value() {
    let redis = TestRedis::start();
    let node = node(&redis).await;
    node.set("user:1", &user(1), Ttl::After(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(redis.keys("t:k:*"), vec!["t:k:user:1".to_string()]);
    // Remove the Redis copy behind the node's back: RAM still answers.
    let _: () = redis.conn().del("t:k:user:1").unwrap();
    assert_eq!(node.get::<User>("user:1").await.unwrap(), Some(user(1)));
    // A second node has no RAM copy and now misses.
    let other = node_in(&redis, "t").await;
    assert_eq!(other.get::<User>("user:1").await.unwrap(), None);
}

#[tokio::test]
async fn redis_hit_fills_ram() {
    let redis = TestRedis::start();
    let writer = node(&redis).await;
    let reader = node(&redis).await;
    writer
        .set("k", &user(2), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        reader
            .with_layers(Layers::Ram)
            .get::<User>("k")
            .await
            .unwrap(),
        None
    );
    // Let the writer's invalidation reach the reader first: arriving during
    // the read, it would rightly make the reader skip its RAM fill.
    let published: u64 = redis::cmd("GET")
        .arg("t:{bus}:seq")
        .query(&mut redis.conn())
        .unwrap();
    let caught_up = eventually(Duration::from_secs(5), || async {
        reader.bus_health().unwrap().last_applied_seq >= published
    })
    .await;
    assert!(caught_up);
    assert_eq!(reader.get::<User>("k").await.unwrap(), Some(user(2)));
    assert_eq!(
        reader
            .with_layers(Layers::Ram)
            .get::<User>("k")
            .await
            .unwrap(),
        Some(user(2))
    );
}

#[tokio::test]
async fn ttl_expires_in_both_layers() {
    let redis = TestRedis::start();
    let writer = node(&redis).await;
    let reader = node(&redis).await;
    writer
        .set("short", &7u32, Duration::from_millis(400))
        .await
        .unwrap();
    // The reader fills its RAM from Redis; its RAM expiry must not outlive Redis's.
    assert_eq!(reader.get::<u32>("short").await.unwrap(), Some(7));
    let pttl: i64 = redis.conn().pttl("t:k:short").unwrap();
    assert!(pttl > 0 && pttl <= 400, "pttl {pttl}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        writer
            .with_layers(Layers::Ram)
            .get::<u32>("short")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        reader
            .with_layers(Layers::Ram)
            .get::<u32>("short")
            .await
            .unwrap(),
        None
    );
    assert_eq!(reader.get::<u32>("short").await.unwrap(), None);
    assert!(redis.keys("t:k:*").is_empty());
}

#[tokio::test]
async fn ttl_never_sets_no_redis_expiry() {
    let redis = TestRedis::start();
    let node = node(&redis).await;
    node.set("forever", &1u8, Duration::ZERO).await.unwrap();
    node.set("default", &1u8, Ttl::Default).await.unwrap();
    let forever: i64 = redis.conn().pttl("t:k:forever").unwrap();
    assert_eq!(forever, -1);
    let default: i64 = redis.conn().pttl("t:k:default").unwrap();
    assert!(default > 290_000 && default <= 300_000, "{default}");
}

#[tokio::test]
async fn has_get_many_delete_and_delete_many() {
    let redis = TestRedis::start();
    let node = node(&redis).await;
    let other = node_in(&redis, "t").await;
    for i in 0..4 {
        node.set(&format!("u{i}"), &user(i), Ttl::Default)
            .await
            .unwrap();
    }
    assert!(node.has("u1").await.unwrap());
    assert!(other.has("u1").await.unwrap(), "answered by Redis");
    assert!(!node.has("nope").await.unwrap());

    let got = other.get_many::<User>(&["u0", "nope", "u3"]).await.unwrap();
    assert_eq!(got, vec![Some(user(0)), None, Some(user(3))]);

    assert!(node.delete("u0").await.unwrap());
    assert!(!node.delete("u0").await.unwrap());
    assert!(!node.has("u0").await.unwrap());

    let deleted = node
        .delete_many(&["u1", "missing", "u2", "u1"])
        .await
        .unwrap();
    assert_eq!(deleted, vec!["u1", "u2"]);
    assert_eq!(redis.keys("t:k:*"), vec!["t:k:u3".to_string()]);
}

#[tokio::test]
async fn clear_all_removes_only_this_namespace() {
    let redis = TestRedis::start();
    let a = node_in(&redis, "a").await;
    let b = node_in(&redis, "b").await;
    for i in 0..2500 {
        a.set(&format!("x{i}"), &i, Ttl::Default).await.unwrap();
    }
    b.set("x1", &1u32, Ttl::Default).await.unwrap();
    let _: () = redis.conn().set("unrelated", "v").unwrap();
    assert_eq!(a.delete_all().await.unwrap(), 2500);
    assert!(redis.keys("a:k:*").is_empty());
    assert_eq!(a.get::<i32>("x1").await.unwrap(), None, "RAM dropped too");
    assert_eq!(b.get::<u32>("x1").await.unwrap(), Some(1));
    assert_eq!(redis.keys("unrelated"), vec!["unrelated".to_string()]);
}

#[tokio::test]
async fn ram_only_and_redis_only_calls_use_one_layer() {
    let redis = TestRedis::start();
    let node = node(&redis).await;
    node.with_layers(Layers::Ram)
        .set("ram", &1u32, Ttl::Default)
        .await
        .unwrap();
    assert!(redis.keys("t:k:*").is_empty());
    assert_eq!(node.get::<u32>("ram").await.unwrap(), Some(1));
    assert_eq!(
        node.with_layers(Layers::Redis)
            .get::<u32>("ram")
            .await
            .unwrap(),
        None
    );

    node.with_layers(Layers::Redis)
        .set("redis", &2u32, Ttl::Default)
        .await
        .unwrap();
    assert_eq!(redis.keys("t:k:*"), vec!["t:k:redis".to_string()]);
    assert_eq!(
        node.with_layers(Layers::Ram)
            .get::<u32>("redis")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        node.with_layers(Layers::Redis)
            .get::<u32>("redis")
            .await
            .unwrap(),
        Some(2)
    );
    // A Redis-only read does not fill RAM.
    assert_eq!(
        node.with_layers(Layers::Ram)
            .get::<u32>("redis")
            .await
            .unwrap(),
        None
    );
    assert_eq!(node.with_layers(Layers::Both).layers(), Layers::Both);

    assert!(node.with_layers(Layers::Ram).delete("ram").await.unwrap());
    assert!(node
        .with_layers(Layers::Redis)
        .delete("redis")
        .await
        .unwrap());
    assert!(redis.keys("t:k:*").is_empty());
}

#[tokio::test]
async fn disabled_node_stores_nothing_and_always_misses() {
    let redis = TestRedis::start();
    let node = CacheNode::builder()
        .redis_url(redis.url())
        .disabled()
        .build()
        .await
        .unwrap();
    assert!(node.is_disabled());
    node.set("k", &1u32, Ttl::Default).await.unwrap();
    assert_eq!(node.get::<u32>("k").await.unwrap(), None);
    assert!(!node.has("k").await.unwrap());
    assert!(!node.delete("k").await.unwrap());
    assert_eq!(
        node.with_layers(Layers::Redis)
            .get::<u32>("k")
            .await
            .unwrap(),
        None
    );
    assert!(redis.keys("*").is_empty());
}

#[tokio::test]
async fn ram_only_node_runs_without_redis() {
    let node = CacheNode::builder().without_redis().build().await.unwrap();
    assert!(!node.has_redis());
    node.set("k", &user(1), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(node.get::<User>("k").await.unwrap(), Some(user(1)));
    assert_eq!(
        node.get_many::<User>(&["k", "x"]).await.unwrap(),
        vec![Some(user(1)), None]
    );
    assert!(node.delete("k").await.unwrap());
    assert!(matches!(
        node.with_layers(Layers::Redis).get::<User>("k").await,
        Err(Error::NoSharedLayer { op: "get" })
    ));
}

#[tokio::test]
async fn ram_layer_stays_within_its_byte_bound() {
    let node = CacheNode::builder()
        .without_redis()
        .ram_capacity_bytes(200_000)
        .build()
        .await
        .unwrap();
    let payload = vec![7u8; 1000];
    for i in 0..2000 {
        node.set(&format!("k{i}"), &payload, Ttl::Never)
            .await
            .unwrap();
    }
    let stats = node.stats();
    assert!(stats.ram_bytes <= 200_000, "{stats:?}");
    assert!(
        stats.ram_entries > 50 && stats.ram_entries < 2000,
        "{stats:?}"
    );
}

#[tokio::test]
async fn ram_entry_of_another_type_is_answered_from_redis() {
    let redis = TestRedis::start();
    let node = node(&redis).await;
    // RAM holds a u32, Redis a u64 (a u32 in Redis would be a value of
    // another type: a miss, not a u64).
    node.with_layers(Layers::Redis)
        .set("n", &5u64, Ttl::Default)
        .await
        .unwrap();
    node.with_layers(Layers::Ram)
        .set("n", &5u32, Ttl::Default)
        .await
        .unwrap();
    assert_eq!(node.get::<u64>("n").await.unwrap(), Some(5));
    assert_eq!(node.stats().decode_failures, 0);
}

#[tokio::test]
async fn corrupt_values_in_redis_are_counted_misses_and_removed() {
    let redis = TestRedis::start();
    let node = node(&redis).await;
    let mut conn = redis.conn();
    // Not an envelope at all, as redis-cli SET would leave it.
    let _: () = conn.set("t:k:plain", "hello").unwrap();
    // A good envelope, truncated.
    let writer = node_in(&redis, "t").await;
    writer
        .with_layers(Layers::Redis)
        .set("cut", &user(1), Ttl::Default)
        .await
        .unwrap();
    let good: Vec<u8> = conn.get("t:k:cut").unwrap();
    let _: () = conn.set("t:k:cut", &good[..good.len() - 2]).unwrap();
    // From a future envelope version.
    let mut future = good.clone();
    future[1] = 200;
    let _: () = conn.set("t:k:future", future).unwrap();
    // Empty bytes.
    let _: () = conn.set("t:k:empty", "").unwrap();

    for key in ["plain", "cut", "future", "empty"] {
        assert_eq!(node.get::<User>(key).await.unwrap(), None, "{key}");
    }
    assert_eq!(node.get_many::<User>(&["plain"]).await.unwrap(), vec![None]);
    assert_eq!(node.stats().decode_failures, 4);
    assert!(
        redis.keys("t:k:*").is_empty(),
        "undecodable values are removed"
    );
}

/// `stats()` counts, for plain keys and cached functions together, the
/// reads each layer answered and the reads no layer answered, exactly.
#[tokio::test]
async fn stats_count_ram_hits_redis_hits_and_misses_of_keys_and_functions() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    a.set("k2", &2u32, Ttl::Default).await.unwrap();
    // b must have applied a's announcements, or one arriving during b's
    // read would rightly keep b from filling its RAM.
    caught_up([&b], bus_seq(&redis, "t")).await;

    // Plain keys. a: three RAM hits.
    for _ in 0..3 {
        assert_eq!(a.get::<u32>("k").await.unwrap(), Some(1));
    }
    // b: a Redis hit that fills RAM, then a RAM hit; a miss in both layers.
    assert_eq!(b.get::<u32>("k").await.unwrap(), Some(1));
    assert_eq!(b.get::<u32>("k").await.unwrap(), Some(1));
    assert_eq!(b.get::<u32>("missing").await.unwrap(), None);
    // A batch: one of each.
    assert_eq!(
        b.get_many::<u32>(&["k", "k2", "missing"]).await.unwrap(),
        vec![Some(1), Some(2), None]
    );
    // A RAM-only read: a hit, and a miss (Redis is not asked).
    let ram = b.with_layers(Layers::Ram);
    assert_eq!(ram.get::<u32>("k2").await.unwrap(), Some(2));
    assert_eq!(ram.get::<u32>("nope").await.unwrap(), None);
    // A value that does not decode is a miss.
    let _: () = redis.conn().set("t:k:corrupt", "x").unwrap();
    assert_eq!(b.get::<u32>("corrupt").await.unwrap(), None);

    // A function: computed on a (a miss), then a RAM hit; on b a Redis hit,
    // then a RAM hit. (A first write is not announced: nothing to wait for.)
    let f = a.func::<(u32,), u32>("squares").build().unwrap();
    assert_eq!(f.call(&(3,), || async { Ok::<_, ()>(9) }).await, Ok(9));
    assert_eq!(f.call(&(3,), || async { Ok::<_, ()>(0) }).await, Ok(9));
    let g = b.func::<(u32,), u32>("squares").build().unwrap();
    assert_eq!(g.call(&(3,), || async { Ok::<_, ()>(0) }).await, Ok(9));
    assert_eq!(g.call(&(3,), || async { Ok::<_, ()>(0) }).await, Ok(9));

    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        (sa.ram_hits, sa.redis_hits, sa.misses),
        (4, 0, 1),
        "a: {sa:?}"
    );
    assert_eq!(
        (sb.ram_hits, sb.redis_hits, sb.misses),
        (4, 3, 4),
        "b: {sb:?}"
    );
    assert_eq!(sb.decode_failures, 1);
    // For a JSON stats endpoint.
    let json = serde_json::to_value(&sb).unwrap();
    assert_eq!(
        (json["ram_hits"].as_u64(), json["misses"].as_u64()),
        (Some(4), Some(4))
    );
}

#[tokio::test]
async fn oversized_values_are_refused_on_write_and_read() {
    let redis = TestRedis::start();
    let small = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("t")
        .max_value_bytes(1000)
        .build()
        .await
        .unwrap();
    let big = vec![1u8; 5000];
    assert!(matches!(
        small.set("big", &big, Ttl::Default).await,
        Err(Error::ValueTooLarge { limit: 1000, .. })
    ));
    assert!(redis.keys("t:k:*").is_empty());
    node(&redis)
        .await
        .set("big", &big, Ttl::Default)
        .await
        .unwrap();
    assert_eq!(small.get::<Vec<u8>>("big").await.unwrap(), None);
    assert_eq!(small.stats().decode_failures, 1);
}

#[tokio::test]
async fn connect_error_names_the_url_without_password() {
    let redis = TestRedis::start();
    let port = redis.port();
    drop(redis);
    let url = format!("redis://app:hunter2@127.0.0.1:{port}");
    let err = CacheNode::builder()
        .redis_url(&url)
        .connect_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(matches!(
        CacheNode::builder().namespace("bad ns").build().await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn redis_killed_and_restarted_under_a_running_node() {
    let mut redis = TestRedis::start();
    let node = node(&redis).await;
    node.set("warm", &1u32, Ttl::Default).await.unwrap();
    redis.kill();
    // RAM still answers; Redis calls fail with a typed, transient error.
    assert_eq!(node.get::<u32>("warm").await.unwrap(), Some(1));
    let started = std::time::Instant::now();
    let err = node.get::<u32>("cold").await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(node
        .set("x", &1u32, Ttl::Default)
        .await
        .unwrap_err()
        .is_transient());

    redis.restart();
    let back = eventually(Duration::from_secs(10), || async {
        node.set("after", &2u32, Ttl::Default).await.is_ok()
    })
    .await;
    assert!(back, "node reconnects when Redis comes back");
    let other = node_in(&redis, "t").await;
    assert_eq!(other.get::<u32>("after").await.unwrap(), Some(2));
}

#[tokio::test]
async fn paused_redis_makes_calls_time_out_not_hang() {
    let redis = TestRedis::start();
    let node = node(&redis).await;
    redis.pause(Duration::from_secs(2));
    let started = std::time::Instant::now();
    let err = node.get::<u32>("k").await.unwrap_err();
    assert!(matches!(err, Error::Timeout { op: "get", .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn node_is_a_cheap_shared_handle() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<CacheNode>();
    let redis = TestRedis::start();
    let node = node(&redis).await;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let key = format!("c{}", i % 10);
                node.set(&key, &(t * 100 + i), Ttl::Default).await.unwrap();
                assert!(node.get::<u64>(&key).await.unwrap().is_some());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let value: Arc<u64> = node.get_arc("c0").await.unwrap().unwrap();
    assert!(*value < 800);
}

#[tokio::test]
async fn fill_stores_an_absent_key_without_a_bus_message_and_never_overwrites() {
    let redis = TestRedis::start();
    let a = node(&redis).await;
    let b = node_in(&redis, "t").await;
    let seq = || -> Option<u64> { redis.conn().get("t:{bus}:seq").unwrap() };
    let ttl = Ttl::After(Duration::from_secs(60));

    // b holds user:1 in RAM; a fills another key: b keeps its entry (no
    // bus message was published).
    b.set("user:1", &user(1), ttl).await.unwrap();
    let before = seq();
    assert!(before.is_some(), "set publishes on the bus");
    assert!(a.fill("user:2", &user(2), ttl).await.unwrap());
    assert_eq!(seq(), before, "fill published on the bus");
    assert_eq!(
        a.with_layers(Layers::Ram)
            .get::<User>("user:2")
            .await
            .unwrap(),
        Some(user(2))
    );
    assert_eq!(b.get::<User>("user:2").await.unwrap(), Some(user(2)));
    let pttl: i64 = redis.conn().pttl("t:k:user:2").unwrap();
    assert!(pttl > 50_000, "TTL kept: {pttl}");

    // Present in Redis: not overwritten, and not put in a's RAM.
    let stale = User {
        id: 1,
        name: "old".into(),
    };
    assert!(!a.fill("user:1", &stale, ttl).await.unwrap());
    assert_eq!(
        a.with_layers(Layers::Ram)
            .get::<User>("user:1")
            .await
            .unwrap(),
        None
    );
    assert_eq!(a.get::<User>("user:1").await.unwrap(), Some(user(1)));
    assert_eq!(b.get::<User>("user:1").await.unwrap(), Some(user(1)));
}

#[tokio::test]
async fn a_url_that_does_not_parse_is_a_config_error_not_a_connect_error() {
    for url in [
        "not a url",
        "http://127.0.0.1:6390",
        "redis://127.0.0.1:notaport",
    ] {
        let e = CacheNode::connect(url).await.unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{url}: {e:?}");
        assert!(e.to_string().contains("Redis URL"), "{url}: {e}");
    }
}

/// A URL that does not parse says which form is expected; a server that
/// answers in another protocol (an HTTP port given by mistake) is named
/// as such, on one line.
#[tokio::test]
async fn connect_errors_say_what_to_fix() {
    let e = CacheNode::connect("redis//127.0.0.1:6390")
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("expected redis://[user:password@]host[:port][/db]"),
        "{e}"
    );
    let e = CacheNode::connect("").await.unwrap_err();
    assert!(e.to_string().contains(r#"invalid Redis URL """#), "{e}");

    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = http.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in http.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 512];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let e = CacheNode::builder()
        .redis_url(format!("redis://127.0.0.1:{port}"))
        .connect_timeout(std::time::Duration::from_millis(300))
        .build()
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(
        text.contains("does not speak the Redis protocol") && !text.contains('\n'),
        "{text}"
    );
}
