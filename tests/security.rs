//! Security: TLS (`rediss://`, feature `tls`), a Redis user restricted by an
//! ACL to the namespace, and isolation between namespaces on one server.
//!
//! Every test starts its own redis-server (never the one on 6379).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use cachenode::Layers;
use cachenode::{AtomicWrites, CacheNode, Lookup, Ttl};
use redis::Commands;
use support::{
    create_user, eventually, health, in_ram, subscribed, user_url, Nodes, TestRedis, ACL_COMMANDS,
};

/// A deletion check period so long that, after the one at start-up, no
/// periodic check runs during a test: what reaches other nodes quickly came
/// through pub/sub.
const NO_CHECK: Duration = Duration::from_secs(60);
/// For what may take a while on a slow machine (subscribing, one hop).
const LONG: Duration = Duration::from_secs(10);

/// Every node here: namespace `ns` unless a test says another, the default
/// 2 s per Redis call, no periodic check.
const NODES: Nodes = Nodes::new("ns", Duration::from_secs(2)).checking_every(NO_CHECK);

/// Reads `key` through `node` until the value is also in its RAM (a fill is
/// refused while an invalidation of the key is still on its way).
async fn read_into_ram<T>(node: &CacheNode, key: &str, expected: T)
where
    T: serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + PartialEq
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let filled = eventually(LONG, || async {
        assert_eq!(node.get::<T>(key).await.unwrap(), Some(expected.clone()));
        in_ram::<T>(node, key).await == Some(expected.clone())
    })
    .await;
    assert!(filled, "{key:?} never reached RAM: {:?}", health(node));
}

/// Writes through `a`, reads through `b` (filling its RAM), invalidates
/// through `a` and checks the invalidation reaches `b`'s RAM over pub/sub.
async fn set_get_and_invalidate_across(a: &CacheNode, b: &CacheNode) {
    subscribed([a, b]).await;
    a.set("user:1", &"alice".to_string(), Ttl::Default)
        .await
        .unwrap();
    read_into_ram(b, "user:1", "alice".to_string()).await;
    let applied = health(b).applied;
    a.set("user:1", &"bob".to_string(), Ttl::Default)
        .await
        .unwrap();
    // Dropped from B's RAM by an invalidation B applied (the counter may be
    // bumped just after the entry is dropped).
    let dropped = eventually(LONG, || async {
        in_ram::<String>(b, "user:1").await.as_deref() != Some("alice")
            && health(b).applied > applied
    })
    .await;
    assert!(dropped, "the invalidation did not reach B: {:?}", health(b));
    read_into_ram(b, "user:1", "bob".to_string()).await;
    assert!(a.delete("user:1").await.unwrap());
    let dropped = eventually(LONG, || async {
        in_ram::<String>(b, "user:1").await.is_none()
    })
    .await;
    assert!(dropped, "the delete did not reach B");
    assert_eq!(b.get::<String>("user:1").await.unwrap(), None);
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use support::TlsRedis;

    /// Two nodes over TLS (one checking the server's certificate against the
    /// test CA, one with `#insecure`): set/get, and invalidations reach the
    /// other node's RAM through the bus's pub/sub connection, which is TLS
    /// too (the server has no plain-text port at all).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_over_tls_share_values_and_invalidations() {
        let redis = TlsRedis::start();
        // rustls-native-certs reads the roots from SSL_CERT_FILE when set
        // (for every rediss:// connection of the process, so this binary
        // has only one TLS test: another server's CA file, deleted with it,
        // would make every TLS connection fail).
        std::env::set_var("SSL_CERT_FILE", redis.ca_file());
        let a = NODES.in_namespace("tls").node(&redis.verified_url()).await;
        let b = NODES.in_namespace("tls").node(&redis.insecure_url()).await;
        set_get_and_invalidate_across(&a, &b).await;
        set_get_and_invalidate_across(&b, &a).await;

        // Both listeners hold a subscription on the TLS port.
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut redis.conn())
            .unwrap();
        assert_eq!(list.lines().filter(|l| !l.is_empty()).count(), 2, "{list}");

        // clear_all goes through TLS as well and reaches the other RAM.
        a.set("x", &1u32, Ttl::Default).await.unwrap();
        read_into_ram(&b, "x", 1u32).await;
        a.delete_all().await.unwrap();
        let dropped = eventually(LONG, || async { in_ram::<u32>(&b, "x").await.is_none() }).await;
        assert!(dropped, "clear_all did not reach B");
        let left: Vec<String> = redis.conn().keys("tls:k:*").unwrap();
        assert!(left.is_empty(), "{left:?}");

        // The TLS-only port refuses plain text.
        let plain = CacheNode::builder()
            .redis_url(redis.plain_url())
            .namespace("tls")
            .connect_timeout(Duration::from_millis(500))
            .op_timeout(Duration::from_millis(500))
            .build()
            .await;
        assert!(plain.is_err(), "plain text connected to a TLS-only port");
        a.shutdown().await;
        b.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// ACL
// ---------------------------------------------------------------------------

/// What the ACL refused, as `reason object` pairs (e.g. `command config|get`),
/// ignoring `CLIENT SETINFO`, which redis-rs sends on connect and whose
/// refusal it ignores.
fn acl_denials(redis: &TestRedis) -> Vec<String> {
    let entries: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .arg(1000)
        .query(&mut redis.conn())
        .unwrap();
    let mut out = Vec::new();
    for entry in entries {
        let fields: Vec<redis::Value> = redis::from_redis_value(entry).unwrap();
        let mut map = std::collections::HashMap::new();
        for pair in fields.chunks(2) {
            let k: String = redis::from_redis_value(pair[0].clone()).unwrap();
            let v: String = redis::from_redis_value(pair[1].clone()).unwrap_or_default();
            map.insert(k, v);
        }
        let object = map.get("object").cloned().unwrap_or_default();
        if object == "client|setinfo" {
            continue;
        }
        out.push(format!(
            "{} {} ({})",
            map.get("reason").cloned().unwrap_or_default(),
            object,
            map.get("username").cloned().unwrap_or_default()
        ));
    }
    out
}

fn reset_acl_log(redis: &TestRedis) {
    let _: () = redis::cmd("ACL")
        .arg("LOG")
        .arg("RESET")
        .query(&mut redis.conn())
        .unwrap();
}

/// A node as the restricted user: set/get/delete, clear_all, function calls
/// and their clear_all, an at-most-once call (lock keys `{ns:f:…}:lock`), an
/// async-compute job consumed by a builder node (stream, consumer group,
/// `{…}:job` marker), and bus invalidations between two nodes. Nothing the
/// ACL refuses is ever sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_restricted_to_the_namespace_can_do_everything() {
    let redis = TestRedis::start();
    create_user(&redis, "ns", &[]);
    reset_acl_log(&redis);
    let url = user_url(&redis);
    let a = NODES.node(&url).await;
    let b = NODES.node(&url).await;
    set_get_and_invalidate_across(&a, &b).await;

    // get_many, has, delete_many.
    a.set("m1", &1u32, Ttl::Default).await.unwrap();
    a.set("m2", &2u32, Ttl::After(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        b.get_many::<u32>(&["m1", "m2", "m3"]).await.unwrap(),
        vec![Some(1), Some(2), None]
    );
    assert!(b.has("m1").await.unwrap());
    assert_eq!(b.delete_many(&["m1"]).await.unwrap(), vec!["m1"]);

    // clear_all: SCAN + UNLINK of the namespace only, reaching B's RAM.
    read_into_ram(&b, "m2", 2u32).await;
    a.delete_all().await.unwrap();
    assert!(
        eventually(LONG, || async { in_ram::<u32>(&b, "m2").await.is_none() }).await,
        "clear_all did not reach B"
    );

    // Function values, their key sets and clear_all.
    let runs = Arc::new(AtomicUsize::new(0));
    let fa = a.func::<(u64,), u64>("square").build().unwrap();
    let fb = b.func::<(u64,), u64>("square").build().unwrap();
    for x in 1..=3u64 {
        let runs = runs.clone();
        let v = fa
            .call(&(x,), || async move {
                runs.fetch_add(1, SeqCst);
                Ok::<_, String>(x * x)
            })
            .await
            .unwrap();
        assert_eq!(v, x * x);
    }
    assert_eq!(fb.key_set_size().await.unwrap(), 3);
    let v = fb
        .call(&(2,), || async { Err::<u64, _>("B must not compute") })
        .await
        .unwrap();
    assert_eq!(v, 4, "B read A's value from Redis");
    assert!(fa.delete(&(1,)).await.unwrap());
    assert_eq!(fa.delete_all().await.unwrap(), 2);
    assert_eq!(fb.key_set_size().await.unwrap(), 0);
    a.key_sets().await.unwrap();
    a.prune_key_sets().await.unwrap();
    let left: Vec<String> = redis.conn().keys("ns:f:*").unwrap();
    assert!(left.is_empty(), "{left:?}");

    // At most once across nodes: lock, version and compare-and-set scripts.
    let once_a = a
        .func::<(u64,), u64>("once")
        .atomic_writes(AtomicWrites::AtMostOnce)
        .build()
        .unwrap();
    let once_b = b
        .func::<(u64,), u64>("once")
        .atomic_writes(AtomicWrites::AtMostOnce)
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let call = |f: cachenode::CachedFn<(u64,), u64>, runs: Arc<AtomicUsize>| async move {
        f.call(&(7,), || async move {
            runs.fetch_add(1, SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, String>(49)
        })
        .await
    };
    let (ra, rb) = tokio::join!(
        call(once_a.clone(), runs.clone()),
        call(once_b.clone(), runs.clone())
    );
    assert_eq!((ra.unwrap(), rb.unwrap()), (49, 49));
    assert_eq!(runs.load(SeqCst), 1, "computed once across both nodes");
    assert_eq!(once_a.delete_all().await.unwrap(), 1);

    // At least once: start times from the server's clock, versioned write.
    let latest = a
        .func::<(u64,), u64>("latest")
        .atomic_writes(AtomicWrites::AtLeastOnce)
        .build()
        .unwrap();
    assert_eq!(
        latest.call(&(1,), || async { Ok::<_, String>(1) }).await,
        Ok(1)
    );
    assert!(latest.delete(&(1,)).await.unwrap());

    // Async compute: a job in the namespace's stream, built by a builder
    // node through its consumer group.
    let builder = CacheNode::builder()
        .redis_url(&url)
        .namespace("ns")
        .op_timeout(Duration::from_secs(2))
        .deletion_check_period(NO_CHECK)
        .builder_role(true)
        .min_refresh_period(Duration::from_secs(1))
        .refresh_granularity(Duration::from_millis(50))
        .build()
        .await
        .expect("builder node connects");
    let report = |n: &CacheNode| {
        n.func::<(u32,), String>("report")
            .async_compute(|(x,)| async move { Ok::<_, String>(format!("built {x}")) })
            .build()
            .unwrap()
    };
    let _on_builder = report(&builder);
    let client = report(&a);
    assert!(
        eventually(LONG, || async {
            client.get_or_build(&(1,)).await.unwrap() == Lookup::Ready("built 1".to_string())
        })
        .await,
        "the job was not built"
    );

    // Refresh on the builder node: a pass rebuilds the live value and
    // forgets the one deleted from Redis, with its recorded arguments.
    let rates = builder
        .func::<(u32,), u32>("rates")
        .computed_by(|(x,): (u32,)| async move { Ok::<_, String>(x) })
        .refresh_every(Duration::from_secs(1))
        .build()
        .unwrap();
    for x in [1, 2] {
        rates
            .call(&(x,), || async move { Ok::<_, String>(x) })
            .await
            .unwrap();
    }
    let _: () = redis
        .conn()
        .unlink(rates.cache_key(&(1,)).unwrap())
        .unwrap();
    let live = vec![rates.cache_key(&(2,)).unwrap()];
    assert!(
        eventually(LONG, || async {
            redis
                .conn()
                .hkeys::<_, Vec<String>>("ns:args:rates")
                .unwrap()
                == live
        })
        .await,
        "no refresh pass forgot the deleted value"
    );

    // Broadcast invalidations.
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    read_into_ram(&b, "k", 1u32).await;
    a.invalidate_many(&["k"]).await.unwrap();
    assert!(
        eventually(LONG, || async { in_ram::<u32>(&b, "k").await.is_none() }).await,
        "invalidate_many did not reach B"
    );
    a.invalidate_all().await.unwrap();
    a.invalidate_function("square").await.unwrap();

    // Operator views: namespace statistics (SCAN, XLEN, XRANGE) and a tail
    // of the bus (its own subscription).
    a.namespace_stats().await.unwrap();
    let mut tail = a.tail_bus().await.unwrap();
    a.set("t", &1u32, Ttl::Default).await.unwrap();
    let seen = tokio::time::timeout(LONG, tail.next()).await;
    assert!(
        matches!(seen, Ok(Some(Ok(_)))),
        "the tail saw nothing: {seen:?}"
    );
    drop(tail);

    let h = health(&b);
    assert!(h.connected && h.gap_flushes == 0, "{h:?}");
    builder.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
    let denied = acl_denials(&redis);
    assert!(denied.is_empty(), "the ACL refused: {denied:?}");
}

/// The key pattern `~ns:*` alone is not enough: lock keys (`{ns:f:…}:lock`,
/// `{…}:ver`, `{…}:job`) start with `{` and need `~{ns:*` too.
#[tokio::test]
async fn lock_keys_need_the_braced_key_pattern() {
    let redis = TestRedis::start();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("reset")
        .arg("on")
        .arg(">pw")
        .arg("~ns:*")
        .arg("&ns:*")
        .arg("-@all")
        .arg(ACL_COMMANDS.to_vec())
        .query(&mut redis.conn())
        .unwrap();
    let node = NODES.node(&user_url(&redis)).await;
    // Plain values work with `~ns:*` alone.
    node.set("x", &1u32, Ttl::Default).await.unwrap();
    let once = node
        .func::<(u64,), u64>("once")
        .atomic_writes(AtomicWrites::AtMostOnce)
        .atomic_wait_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    // The lock cannot be taken; the call errs or computes without caching,
    // but the ACL logs the refused key.
    let _ = once.call(&(1,), || async { Ok::<_, String>(1) }).await;
    let denied = acl_denials(&redis);
    assert!(
        denied.iter().any(|d| d.starts_with("key {ns:f:")),
        "expected a refused lock key: {denied:?}"
    );
    node.shutdown().await;
}

/// The restricted user never needs the dangerous commands, and the ACL
/// refuses them: a node works without KEYS, FLUSHALL, FLUSHDB or CONFIG.
#[tokio::test]
async fn the_restricted_user_cannot_run_keys_flush_or_config() {
    let redis = TestRedis::start();
    create_user(&redis, "ns", &[]);
    let mut conn = redis::Client::open(user_url(&redis))
        .unwrap()
        .get_connection()
        .unwrap();
    let ok: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(ok, "PONG");
    for cmd in [
        vec!["KEYS", "*"],
        vec!["FLUSHALL"],
        vec!["FLUSHDB"],
        vec!["CONFIG", "GET", "notify-keyspace-events"],
        vec!["CONFIG", "SET", "notify-keyspace-events", "Kgx"],
        vec!["GET", "other:k:x"],
        vec!["PUBLISH", "other:bus", "x"],
    ] {
        let r: redis::RedisResult<redis::Value> =
            redis::cmd(cmd[0]).arg(&cmd[1..]).query(&mut conn);
        let err = r.expect_err(&format!("{cmd:?} must be refused"));
        assert!(
            err.to_string().contains("NOPERM") || err.code() == Some("NOPERM"),
            "{cmd:?}: {err}"
        );
    }
}

/// With `watch_keyspace(true)`, a restricted user cannot read
/// `notify-keyspace-events`: the node says so in `bus_health()` and keeps
/// working. The keyspace channels must be granted literally as the
/// patterns the node subscribes to (PSUBSCRIBE patterns are matched
/// literally against the ACL): `&__keyspace@0__:ns:k:*` and
/// `&__keyspace@0__:ns:f:*`.
#[tokio::test]
async fn keyspace_watching_says_it_cannot_read_the_config() {
    let redis = TestRedis::start();
    create_user(
        &redis,
        "ns",
        &[
            "+psubscribe",
            "&__keyspace@0__:ns:k:*",
            "&__keyspace@0__:ns:f:*",
        ],
    );
    let watcher = CacheNode::builder()
        .redis_url(user_url(&redis))
        .namespace("ns")
        .op_timeout(Duration::from_secs(2))
        .deletion_check_period(NO_CHECK)
        .watch_keyspace(true)
        .build()
        .await
        .unwrap();
    let reported = eventually(LONG, || async {
        health(&watcher).keyspace_problem.is_some()
    })
    .await;
    assert!(reported, "{:?}", health(&watcher));
    let problem = health(&watcher).keyspace_problem.unwrap();
    assert!(
        problem.contains("cannot read notify-keyspace-events"),
        "{problem}"
    );
    assert!(
        problem.contains("NOPERM") || problem.contains("permission"),
        "{problem}"
    );
    let up = eventually(LONG, || async { health(&watcher).connected }).await;
    assert!(
        up,
        "the bus did not subscribe: {:?}; ACL refused {:?}",
        health(&watcher),
        acl_denials(&redis)
    );
    let other = NODES.node(&user_url(&redis)).await;
    set_get_and_invalidate_across(&other, &watcher).await;
}

// ---------------------------------------------------------------------------
// Namespace isolation
// ---------------------------------------------------------------------------

/// Two namespaces on one server, one a prefix of the other's name: writes,
/// invalidations, clear_all and function clear_all in one never touch the
/// other's RAM, Redis values, key sets or bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_never_see_each_other() {
    let redis = TestRedis::start();
    let a = NODES.in_namespace("iso").node(&redis.url()).await;
    let b = NODES.in_namespace("iso2").node(&redis.url()).await;
    let b2 = NODES.in_namespace("iso2").node(&redis.url()).await;
    subscribed([&a, &b, &b2]).await;

    // Same key names and function names in both.
    for n in [&a, &b] {
        n.set("shared", &n.namespace().to_string(), Ttl::Default)
            .await
            .unwrap();
    }
    read_into_ram(&a, "shared", "iso".to_string()).await;
    read_into_ram(&b, "shared", "iso2".to_string()).await;
    read_into_ram(&b2, "shared", "iso2".to_string()).await;
    let fa = a.func::<(u64,), String>("f").build().unwrap();
    let fb = b.func::<(u64,), String>("f").build().unwrap();
    for x in 0..5u64 {
        fa.call(&(x,), || async move { Ok::<_, String>(format!("a{x}")) })
            .await
            .unwrap();
        fb.call(&(x,), || async move { Ok::<_, String>(format!("b{x}")) })
            .await
            .unwrap();
    }
    // B2 applied B's own writes; from here on, nothing more.
    let before = [health(&b), health(&b2)];
    assert_eq!(before[0].applied, 0, "{:?}", before[0]);
    let b_keys_before = redis.keys("iso2:*");
    assert!(b_keys_before.iter().any(|k| k.starts_with("iso2:f:")));
    assert!(b_keys_before.iter().any(|k| k.starts_with("iso2:ks:")));
    let b_values_before: Vec<Option<Vec<u8>>> = b_keys_before
        .iter()
        .filter(|k| k.starts_with("iso2:k:") || k.starts_with("iso2:f:"))
        .map(|k| redis.conn().get(k).unwrap())
        .collect();

    // Everything destructive, in A.
    a.set("shared", &"iso again".to_string(), Ttl::Default)
        .await
        .unwrap();
    a.delete("shared").await.unwrap();
    a.invalidate_many(&["shared"]).await.unwrap();
    a.invalidate_function("f").await.unwrap();
    a.invalidate_all().await.unwrap();
    assert_eq!(fa.delete_all().await.unwrap(), 5);
    a.delete_all().await.unwrap();
    a.delete_functions(&["f"], |_, _| {}).await.unwrap();

    // Give the bus time to deliver anything it (wrongly) would.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (n, was) in [&b, &b2].into_iter().zip(&before) {
        assert_eq!(
            in_ram::<String>(n, "shared").await.as_deref(),
            Some("iso2"),
            "B's RAM was touched"
        );
        let h = health(n);
        assert_eq!(h.applied, was.applied, "B applied A's messages: {h:?}");
        assert_eq!(h.last_seen_seq, was.last_seen_seq, "{h:?}");
        assert_eq!(h.gap_flushes, 0, "{h:?}");
    }
    for x in 0..5u64 {
        let v = fb
            .call(&(x,), || async { Err::<String, _>("B must not recompute") })
            .await
            .unwrap();
        assert_eq!(v, format!("b{x}"));
    }
    assert_eq!(fb.key_set_size().await.unwrap(), 5);
    assert_eq!(redis.keys("iso2:*"), b_keys_before, "B's keys changed");
    let b_values_after: Vec<Option<Vec<u8>>> = b_keys_before
        .iter()
        .filter(|k| k.starts_with("iso2:k:") || k.starts_with("iso2:f:"))
        .map(|k| redis.conn().get(k).unwrap())
        .collect();
    assert_eq!(b_values_after, b_values_before, "B's values changed");
    let a_left: Vec<String> = redis
        .keys("iso:*")
        .into_iter()
        .filter(|k| k.starts_with("iso:k:") || k.starts_with("iso:f:"))
        .collect();
    assert!(a_left.is_empty(), "{a_left:?}");

    // And the other way round: B's clear_all leaves A's new value alone.
    a.set("mine", &1u32, Ttl::Default).await.unwrap();
    b.delete_all().await.unwrap();
    fb.delete_all().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(in_ram::<u32>(&a, "mine").await, Some(1));
    assert_eq!(
        a.with_layers(Layers::Redis)
            .get::<u32>("mine")
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(health(&a).applied, 0, "{:?}", health(&a));
}

/// Without the keyspace channels in the ACL, keyspace watching cannot
/// subscribe: it says so in `keyspace_problem`, and the bus (its own channel
/// is allowed) stays connected and applies invalidations.
#[tokio::test]
async fn keyspace_watching_refused_by_the_acl_leaves_the_bus_up() {
    let redis = TestRedis::start();
    create_user(&redis, "ns", &["+psubscribe"]);
    let watcher = CacheNode::builder()
        .redis_url(user_url(&redis))
        .namespace("ns")
        .op_timeout(Duration::from_secs(2))
        .deletion_check_period(NO_CHECK)
        .watch_keyspace(true)
        .build()
        .await
        .unwrap();
    let up = eventually(LONG, || async { health(&watcher).connected }).await;
    assert!(up, "the bus did not subscribe: {:?}", health(&watcher));
    let problem = health(&watcher).keyspace_problem.unwrap_or_default();
    assert!(problem.contains("__keyspace@0__:ns:"), "{problem}");
}
