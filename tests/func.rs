//! Function caching and funcname key sets against a real redis-server.
//!
//! Every test starts its own server (see `support`). Values live in Redis
//! under `t:f:{name}:{suffix}`, key-set shards under `t:ks:{name}:{0..15}`,
//! the registry of functions under `t:ks`.
//!
//! What is in a node's RAM is read with a *probe*: a RAM-only handle on the
//! same function (same name and key options) whose computation fails, so a
//! probe call answers from RAM or returns the error, and never stores
//! anything (errors are not cached).

mod support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachenode::{
    with_request, Args, AtomicWrites, CacheNode, CachedFn, Computed, Error, Lookup, Progress,
    RequestCached, RequestContext, ThreadLocalFn,
};
use cachenode::{ArgsInKey, Layers, Ttl};
use redis::Commands;
use support::{bus_seq, caught_up, eventually, node, ram_value, TestRedis, PLAIN};
use xxhash_rust::xxh3::xxh3_64;

/// How long a RAM invalidation may take to reach another node: normally one
/// pub/sub hop, at worst the bus's deletion-check period (1 s) plus a round
/// trip; the rest is margin for loaded test machines.
const PROPAGATION: Duration = Duration::from_secs(5);

async fn nodes3(redis: &TestRedis) -> (CacheNode, CacheNode, CacheNode) {
    (node(redis).await, node(redis).await, node(redis).await)
}

/// A computation that counts its runs and returns `v`.
fn counted<V>(runs: &AtomicUsize, v: V) -> impl FnOnce() -> Ready<Result<V, Infallible>> + '_
where
    V: 'static,
{
    move || {
        runs.fetch_add(1, SeqCst);
        ready(Ok(v))
    }
}

fn pttl(redis: &TestRedis, key: &str) -> i64 {
    redis.conn().pttl(key).unwrap()
}

/// Every member of every shard of `name`'s key set.
fn key_set_members(redis: &TestRedis, name: &str) -> HashSet<String> {
    let mut conn = redis.conn();
    let mut all = HashSet::new();
    for shard in 0..16 {
        let members: HashSet<String> = conn.smembers(format!("t:ks:{name}:{shard}")).unwrap();
        all.extend(members);
    }
    all
}

fn shard_of(name: &str, redis_key: &str) -> String {
    format!("t:ks:{name}:{}", xxh3_64(redis_key.as_bytes()) % 16)
}

fn ul(user: u32, lang: &str) -> Args {
    Args::new()
        .arg("user", &user)
        .unwrap()
        .arg("lang", lang)
        .unwrap()
}

// ---------------------------------------------------------------------------
// Builder options
// ---------------------------------------------------------------------------

#[tokio::test]
async fn ttl_expires_values_in_redis_and_in_the_ram_of_every_node() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let ttl = Duration::from_millis(1000);
    let fa = a.func::<(u32,), String>("short").ttl(ttl).build().unwrap();
    let fb = b.func::<(u32,), String>("short").ttl(ttl).build().unwrap();
    let pa = a
        .func::<(u32,), String>("short")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    let pb = b
        .func::<(u32,), String>("short")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    assert_eq!(fa.ttl(), Ttl::After(ttl));
    let runs = AtomicUsize::new(0);

    assert_eq!(
        fa.call(&(1,), counted(&runs, "v".to_string()))
            .await
            .unwrap(),
        "v"
    );
    let key = fa.cache_key(&(1,)).unwrap();
    let left = pttl(&redis, &key);
    assert!(left > 0 && left <= 1000, "Redis TTL {left} ms");
    // B fills its RAM from Redis; that copy must not outlive Redis's.
    assert_eq!(
        fb.call(&(1,), counted(&runs, "x".to_string()))
            .await
            .unwrap(),
        "v"
    );
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!(ram_value(&pa, &(1,)).await.as_deref(), Some("v"));
    assert_eq!(ram_value(&pb, &(1,)).await.as_deref(), Some("v"));

    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(!redis.exists(&key), "expired in Redis");
    assert_eq!(ram_value(&pa, &(1,)).await, None, "expired in A's RAM");
    assert_eq!(ram_value(&pb, &(1,)).await, None, "expired in B's RAM");
    assert_eq!(
        fb.call(&(1,), counted(&runs, "w".to_string()))
            .await
            .unwrap(),
        "w"
    );
    assert_eq!(runs.load(SeqCst), 2, "an expired value is computed again");
}

#[tokio::test]
async fn ttl_zero_never_expires_and_no_ttl_uses_the_node_default() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let never = n
        .func::<(u32,), u32>("never")
        .ttl(Duration::ZERO)
        .build()
        .unwrap();
    let default = n.func::<(u32,), u32>("default").build().unwrap();
    assert_eq!(default.ttl(), Ttl::Default);
    never
        .call(&(1,), || ready(Ok::<_, Infallible>(1)))
        .await
        .unwrap();
    default
        .call(&(1,), || ready(Ok::<_, Infallible>(1)))
        .await
        .unwrap();
    assert_eq!(pttl(&redis, &never.cache_key(&(1,)).unwrap()), -1);
    let d = pttl(&redis, &default.cache_key(&(1,)).unwrap());
    assert!(d > 290_000 && d <= 300_000, "default TTL {d} ms");
}

#[tokio::test]
async fn unless_skips_both_reading_and_writing_the_cache() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let plain = n.func::<(u32,), String>("unl").build().unwrap();
    let guarded = n
        .func::<(u32,), String>("unl")
        .unless(|args: &(u32,)| args.0 == 1)
        .build()
        .unwrap();
    let runs = AtomicUsize::new(0);
    // A value is cached for (1,) under the same function and key.
    plain
        .call(&(1,), counted(&runs, "cached".to_string()))
        .await
        .unwrap();
    let key = plain.cache_key(&(1,)).unwrap();
    assert_eq!(guarded.cache_key(&(1,)).unwrap(), key);

    // unless(true): the cached value is not read...
    for i in 0..2 {
        let v = guarded
            .call(&(1,), counted(&runs, format!("fresh{i}")))
            .await
            .unwrap();
        assert_eq!(v, format!("fresh{i}"));
    }
    assert_eq!(runs.load(SeqCst), 3, "computed on every call");
    // ...and the fresh one is not written, in RAM or Redis.
    assert_eq!(
        plain
            .call(&(1,), counted(&runs, "x".to_string()))
            .await
            .unwrap(),
        "cached"
    );
    let other = node(&redis).await;
    let other_plain = other.func::<(u32,), String>("unl").build().unwrap();
    assert_eq!(
        other_plain
            .call(&(1,), counted(&runs, "x".to_string()))
            .await
            .unwrap(),
        "cached",
        "Redis still holds the old value"
    );
    assert_eq!(runs.load(SeqCst), 3);
    assert_eq!(guarded.key_set_size().await.unwrap(), 1);

    // unless(false): cached as usual.
    guarded
        .call(&(2,), counted(&runs, "two".to_string()))
        .await
        .unwrap();
    guarded
        .call(&(2,), counted(&runs, "again".to_string()))
        .await
        .unwrap();
    assert_eq!(runs.load(SeqCst), 4);
    assert!(redis.exists(&guarded.cache_key(&(2,)).unwrap()));
}

#[tokio::test]
async fn ram_layer_function_writes_nothing_to_redis() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let fa = a
        .func::<(u32,), String>("ramf")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    let fb = b
        .func::<(u32,), String>("ramf")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    let runs = AtomicUsize::new(0);
    assert_eq!(
        fa.call(&(1,), counted(&runs, "a".to_string()))
            .await
            .unwrap(),
        "a"
    );
    assert_eq!(
        fa.call(&(1,), counted(&runs, "x".to_string()))
            .await
            .unwrap(),
        "a"
    );
    assert_eq!(runs.load(SeqCst), 1, "second call answered from RAM");
    assert!(redis.keys("t:f:*").is_empty(), "no value in Redis");
    assert!(redis.keys("t:ks*").is_empty(), "no key set either");
    assert_eq!(fa.key_set_size().await.unwrap(), 0);
    // Another instance has its own RAM.
    assert_eq!(
        fb.call(&(1,), counted(&runs, "b".to_string()))
            .await
            .unwrap(),
        "b"
    );
    assert_eq!(runs.load(SeqCst), 2);
    assert!(redis.keys("t:f:*").is_empty());
}

#[tokio::test]
async fn redis_layer_function_leaves_ram_empty() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n
        .func::<(u32,), String>("redisf")
        .layers(Layers::Redis)
        .build()
        .unwrap();
    let probe = n
        .func::<(u32,), String>("redisf")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    let runs = AtomicUsize::new(0);
    assert_eq!(
        f.call(&(1,), counted(&runs, "v".to_string()))
            .await
            .unwrap(),
        "v"
    );
    let key = f.cache_key(&(1,)).unwrap();
    assert!(redis.exists(&key));
    assert_eq!(ram_value(&probe, &(1,)).await, None, "not written to RAM");
    assert_eq!(n.stats().ram_entries, 0);
    assert_eq!(
        f.call(&(1,), counted(&runs, "x".to_string()))
            .await
            .unwrap(),
        "v"
    );
    assert_eq!(runs.load(SeqCst), 1, "served from Redis");
    assert_eq!(
        ram_value(&probe, &(1,)).await,
        None,
        "a Redis hit does not fill RAM"
    );
    // With the Redis copy gone, nothing in RAM answers: it is computed again.
    let _: () = redis.conn().del(&key).unwrap();
    assert_eq!(
        f.call(&(1,), counted(&runs, "new".to_string()))
            .await
            .unwrap(),
        "new"
    );
    assert_eq!(runs.load(SeqCst), 2);
}

#[tokio::test]
async fn static_prefix_changes_the_key() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let plain = n.func::<(u32,), String>("pre").build().unwrap();
    let v2 = n
        .func::<(u32,), String>("pre")
        .key_prefix("v2")
        .build()
        .unwrap();
    let k_plain = plain.cache_key(&(1,)).unwrap();
    let k_v2 = v2.cache_key(&(1,)).unwrap();
    assert_ne!(k_plain, k_v2);
    assert!(k_v2.starts_with("t:f:pre:v2|"), "{k_v2}");
    assert!(k_plain.starts_with("t:f:pre:|"), "{k_plain}");
    let runs = AtomicUsize::new(0);
    plain
        .call(&(1,), counted(&runs, "old".to_string()))
        .await
        .unwrap();
    assert_eq!(
        v2.call(&(1,), counted(&runs, "new".to_string()))
            .await
            .unwrap(),
        "new"
    );
    assert_eq!(
        plain
            .call(&(1,), counted(&runs, "x".to_string()))
            .await
            .unwrap(),
        "old"
    );
    assert_eq!(runs.load(SeqCst), 2);
    assert!(redis.exists(&k_v2));
    // A prefix that would break the key layout is refused.
    for bad in ["a|b", "a;b"] {
        let err = n
            .func::<(u32,), String>("pre")
            .key_prefix(bad)
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
    }
}

#[tokio::test]
async fn dynamic_prefix_is_computed_per_call() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n
        .func::<(String, u32), String>("dyn")
        .key_prefix_from_args(|args: &(String, u32)| format!("tenant-{}", args.0))
        .build()
        .unwrap();
    let k_acme = f.cache_key(&("acme".into(), 1)).unwrap();
    let k_beta = f.cache_key(&("beta".into(), 1)).unwrap();
    assert!(k_acme.starts_with("t:f:dyn:tenant-acme|"), "{k_acme}");
    assert!(k_beta.starts_with("t:f:dyn:tenant-beta|"), "{k_beta}");
    // Separators in a computed prefix cannot break the layout.
    let k_bad = f.cache_key(&("x|y;z".into(), 1)).unwrap();
    assert!(k_bad.starts_with("t:f:dyn:tenant-x_y_z|"), "{k_bad}");
    let runs = AtomicUsize::new(0);
    f.call(&("acme".into(), 1), counted(&runs, "a".to_string()))
        .await
        .unwrap();
    f.call(&("beta".into(), 1), counted(&runs, "b".to_string()))
        .await
        .unwrap();
    assert_eq!(
        f.call(&("acme".into(), 1), counted(&runs, "x".to_string()))
            .await
            .unwrap(),
        "a"
    );
    assert_eq!(runs.load(SeqCst), 2);
    assert!(redis.exists(&k_acme) && redis.exists(&k_beta));
}

#[tokio::test]
async fn without_func_args_every_call_shares_one_value() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n
        .func::<(u32,), String>("noargs")
        .key_args(ArgsInKey::Omitted)
        .build()
        .unwrap();
    assert_eq!(f.cache_key(&(1,)).unwrap(), "t:f:noargs:|-");
    assert_eq!(f.cache_key(&(1,)).unwrap(), f.cache_key(&(2,)).unwrap());
    let runs = AtomicUsize::new(0);
    assert_eq!(
        f.call(&(1,), counted(&runs, "first".to_string()))
            .await
            .unwrap(),
        "first"
    );
    assert_eq!(
        f.call(&(2,), counted(&runs, "second".to_string()))
            .await
            .unwrap(),
        "first"
    );
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!(
        redis.keys("t:f:noargs:*"),
        vec!["t:f:noargs:|-".to_string()]
    );
}

#[tokio::test]
async fn args_to_ignore_makes_calls_differing_only_there_share_a_value() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n
        .func::<Args, String>("ign")
        .ignore_args(["db"])
        .build()
        .unwrap();
    let args = |db: &str, id: u32| Args::new().arg("db", db).unwrap().arg("id", &id).unwrap();
    assert_eq!(
        f.cache_key(&args("conn-1", 7)).unwrap(),
        f.cache_key(&args("conn-2", 7)).unwrap()
    );
    let runs = AtomicUsize::new(0);
    assert_eq!(
        f.call(&args("conn-1", 7), counted(&runs, "u7".to_string()))
            .await
            .unwrap(),
        "u7"
    );
    assert_eq!(
        f.call(&args("conn-2", 7), counted(&runs, "x".to_string()))
            .await
            .unwrap(),
        "u7"
    );
    assert_eq!(runs.load(SeqCst), 1);
    // The other arguments still count.
    assert_eq!(
        f.call(&args("conn-1", 8), counted(&runs, "u8".to_string()))
            .await
            .unwrap(),
        "u8"
    );
    assert_eq!(runs.load(SeqCst), 2);
    // Without ignore_args, db is part of the key.
    let g = n.func::<Args, String>("ign").build().unwrap();
    assert_ne!(
        g.cache_key(&args("conn-1", 7)).unwrap(),
        g.cache_key(&args("conn-2", 7)).unwrap()
    );
    // Tuple arguments are named by position.
    let t = n
        .func::<(String, u32), String>("ign_t")
        .ignore_args(["0"])
        .build()
        .unwrap();
    t.call(&("conn-1".into(), 7), counted(&runs, "t7".to_string()))
        .await
        .unwrap();
    assert_eq!(
        t.call(&("conn-2".into(), 7), counted(&runs, "x".to_string()))
            .await
            .unwrap(),
        "t7"
    );
    assert_eq!(runs.load(SeqCst), 3);
}

#[tokio::test]
async fn ignore_self_makes_calls_differing_only_in_self_share_a_value() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n
        .func::<Args, String>("meth")
        .ignore_self()
        .build()
        .unwrap();
    let args = |me: &str, id: u32| Args::new().arg("self", me).unwrap().arg("id", &id).unwrap();
    let runs = AtomicUsize::new(0);
    f.call(&args("instance-1", 1), counted(&runs, "one".to_string()))
        .await
        .unwrap();
    assert_eq!(
        f.call(&args("instance-2", 1), counted(&runs, "x".to_string()))
            .await
            .unwrap(),
        "one"
    );
    assert_eq!(runs.load(SeqCst), 1);
    f.call(&args("instance-1", 2), counted(&runs, "two".to_string()))
        .await
        .unwrap();
    assert_eq!(runs.load(SeqCst), 2);
    let g = n.func::<Args, String>("meth").build().unwrap();
    assert_ne!(
        g.cache_key(&args("instance-1", 1)).unwrap(),
        g.cache_key(&args("instance-2", 1)).unwrap()
    );
}

/// The `;name=hash` parts of a full-args key, checked for shape.
fn full_args_parts(key: &str) -> Vec<(String, String)> {
    let (_, args) = key.split_once('|').expect("key has a |");
    assert!(args.starts_with(';'), "{key}");
    args[1..]
        .split(';')
        .map(|part| {
            let (name, hash) = part.split_once('=').expect("name=hash");
            assert_eq!(hash.len(), 16, "{key}");
            assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
            (name.to_string(), hash.to_string())
        })
        .collect()
}

#[tokio::test]
async fn full_args_keys_have_one_hashed_part_per_argument() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n
        .func::<Args, String>("full")
        .key_args(ArgsInKey::Each)
        .build()
        .unwrap();
    let fr = f.cache_key(&ul(1, "fr")).unwrap();
    let en = f.cache_key(&ul(1, "en")).unwrap();
    let other_user = f.cache_key(&ul(2, "fr")).unwrap();
    let p_fr = full_args_parts(&fr);
    let p_en = full_args_parts(&en);
    let p_other = full_args_parts(&other_user);
    let names: Vec<&str> = p_fr.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["user", "lang"]);
    assert_eq!(p_fr[0], p_en[0], "same user, same part");
    assert_ne!(p_fr[1], p_en[1], "other lang, other part");
    assert_eq!(p_fr[1], p_other[1], "same lang, same part");
    assert_ne!(p_fr[0], p_other[0]);
    // Tuples: parts named by position; ignored arguments have no part.
    let t = n
        .func::<(u8, u8, u8), u8>("full_t")
        .key_args(ArgsInKey::Each)
        .ignore_args(["1"])
        .build()
        .unwrap();
    let tk = t.cache_key(&(1, 2, 3)).unwrap();
    let names: Vec<String> = full_args_parts(&tk).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0", "2"]);
    // The default (hashed) key has no parts: one 128-bit hash.
    let h = n.func::<Args, String>("hashed").build().unwrap();
    let hk = h.cache_key(&ul(1, "fr")).unwrap();
    let suffix = hk.strip_prefix("t:f:hashed:|").unwrap();
    assert_eq!(suffix.len(), 32, "{hk}");
    // And the value is stored under the full-args key.
    f.call(&ul(1, "fr"), || {
        ready(Ok::<_, Infallible>("bonjour".to_string()))
    })
    .await
    .unwrap();
    assert_eq!(redis.keys("t:f:full:*"), vec![fr]);
}

#[tokio::test]
async fn none_is_not_cached_by_default() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n
        .func::<(u32,), Option<u32>>("none_default")
        .build()
        .unwrap();
    let runs = AtomicUsize::new(0);
    assert_eq!(f.call(&(1,), counted(&runs, None)).await.unwrap(), None);
    assert_eq!(f.call(&(1,), counted(&runs, None)).await.unwrap(), None);
    assert_eq!(runs.load(SeqCst), 2, "None is computed again");
    assert!(redis.keys("t:f:*").is_empty());
    assert_eq!(f.key_set_size().await.unwrap(), 0);
    // Some is cached.
    f.call(&(1,), counted(&runs, Some(5))).await.unwrap();
    assert_eq!(f.call(&(1,), counted(&runs, None)).await.unwrap(), Some(5));
    assert_eq!(runs.load(SeqCst), 3);
    // () counts as None too.
    let unit = n.func::<(u32,), ()>("unit").build().unwrap();
    unit.call(&(1,), counted(&runs, ())).await.unwrap();
    unit.call(&(1,), counted(&runs, ())).await.unwrap();
    assert_eq!(runs.load(SeqCst), 5);
}

#[tokio::test]
async fn cache_none_values_caches_none() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let fa = a
        .func::<(u32,), Option<u32>>("none_cached")
        .cache_none(true)
        .build()
        .unwrap();
    let fb = b
        .func::<(u32,), Option<u32>>("none_cached")
        .cache_none(true)
        .build()
        .unwrap();
    let runs = AtomicUsize::new(0);
    assert_eq!(fa.call(&(1,), counted(&runs, None)).await.unwrap(), None);
    assert_eq!(fa.call(&(1,), counted(&runs, Some(9))).await.unwrap(), None);
    assert_eq!(
        fb.call(&(1,), counted(&runs, Some(9))).await.unwrap(),
        None,
        "from Redis"
    );
    assert_eq!(runs.load(SeqCst), 1);
    assert!(redis.exists(&fa.cache_key(&(1,)).unwrap()));
}

#[tokio::test]
async fn on_cache_computed_keeps_replaces_or_vetoes_the_value() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let seen: Arc<Mutex<Vec<(String, i32)>>> = Arc::default();
    let build = |n: &CacheNode| {
        let seen = seen.clone();
        n.func::<(i32,), i32>("occ")
            .on_computed(move |key: &str, v: &i32| {
                seen.lock().unwrap().push((key.to_string(), *v));
                match *v {
                    v if v < 0 => Computed::DontCache,
                    v if v >= 100 => Computed::Replace(v / 100),
                    _ => Computed::Keep,
                }
            })
            .build()
            .unwrap()
    };
    let (fa, fb) = (build(&a), build(&b));
    let runs = AtomicUsize::new(0);

    // Keep.
    assert_eq!(fa.call(&(1,), counted(&runs, 7)).await.unwrap(), 7);
    assert_eq!(fb.call(&(1,), counted(&runs, 0)).await.unwrap(), 7);
    assert_eq!(runs.load(SeqCst), 1);
    // Replace: the replacement is returned and cached.
    assert_eq!(fa.call(&(2,), counted(&runs, 500)).await.unwrap(), 5);
    assert_eq!(fa.call(&(2,), counted(&runs, 0)).await.unwrap(), 5);
    assert_eq!(
        fb.call(&(2,), counted(&runs, 0)).await.unwrap(),
        5,
        "from Redis"
    );
    assert_eq!(runs.load(SeqCst), 2);
    // DontCache: returned, not cached anywhere.
    assert_eq!(fa.call(&(3,), counted(&runs, -1)).await.unwrap(), -1);
    assert_eq!(fa.call(&(3,), counted(&runs, -2)).await.unwrap(), -2);
    assert_eq!(runs.load(SeqCst), 4);
    assert!(!redis.exists(&fa.cache_key(&(3,)).unwrap()));
    assert_eq!(fa.key_set_size().await.unwrap(), 2);

    // The callback sees each computed value with the call's cache key, and
    // never sees values served from the cache.
    let seen = seen.lock().unwrap().clone();
    let key = |i| fa.cache_key(&(i,)).unwrap();
    assert_eq!(
        seen,
        vec![(key(1), 7), (key(2), 500), (key(3), -1), (key(3), -2)]
    );
}

#[tokio::test]
async fn request_path_is_part_of_the_key_per_request_scope() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n
        .func::<(u32,), String>("by_path")
        .key_with_request_path(true)
        .build()
        .unwrap();
    let runs = AtomicUsize::new(0);
    let call_in = |path: &'static str, query: &'static str, v: &'static str| {
        let f = f.clone();
        let runs = &runs;
        async move {
            with_request(RequestContext::new(path, query), async {
                let k = f.cache_key(&(1,)).unwrap();
                let v = f.call(&(1,), counted(runs, v.to_string())).await.unwrap();
                (k, v)
            })
            .await
        }
    };
    let (ka, va) = call_in("/a", "x=1", "A").await;
    let (kb, vb) = call_in("/b", "x=1", "B").await;
    assert_ne!(ka, kb);
    assert_eq!((va.as_str(), vb.as_str()), ("A", "B"));
    assert_eq!(runs.load(SeqCst), 2, "each path computes its own value");
    // Same path, another query string: the query is not part of this key.
    let (ka2, va2) = call_in("/a", "x=2", "other").await;
    assert_eq!((ka2, va2.as_str()), (ka.clone(), "A"));
    assert_eq!(runs.load(SeqCst), 2);
    // Outside a request the path counts as empty: yet another key.
    let outside = f.cache_key(&(1,)).unwrap();
    assert!(outside != ka && outside != kb);
    assert!(ka.contains("|r="), "{ka}");
    assert_eq!(redis.keys("t:f:by_path:*").len(), 2);
}

#[tokio::test]
async fn query_string_is_part_of_the_key_per_request_scope() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n
        .func::<(u32,), String>("by_query")
        .key_with_query_string(true)
        .build()
        .unwrap();
    let both = n
        .func::<(u32,), String>("by_both")
        .key_with_request_path(true)
        .key_with_query_string(true)
        .build()
        .unwrap();
    let runs = AtomicUsize::new(0);
    let in_req = |path: &'static str, query: &'static str| RequestContext::new(path, query);
    let v1 = with_request(
        in_req("/a", "page=1"),
        f.call(&(1,), counted(&runs, "p1".to_string())),
    );
    assert_eq!(v1.await.unwrap(), "p1");
    let v2 = with_request(
        in_req("/a", "page=2"),
        f.call(&(1,), counted(&runs, "p2".to_string())),
    );
    assert_eq!(v2.await.unwrap(), "p2");
    assert_eq!(
        runs.load(SeqCst),
        2,
        "each query string computes its own value"
    );
    // Same query, another path: the path is not part of this key.
    let v3 = with_request(
        in_req("/b", "page=1"),
        f.call(&(1,), counted(&runs, "x".to_string())),
    );
    assert_eq!(v3.await.unwrap(), "p1");
    assert_eq!(runs.load(SeqCst), 2);
    let keys = |func: &CachedFn<(u32,), String>, path: &'static str, q: &'static str| {
        let func = func.clone();
        with_request(
            in_req(path, q),
            async move { func.cache_key(&(1,)).unwrap() },
        )
    };
    assert_ne!(
        keys(&f, "/a", "page=1").await,
        keys(&f, "/a", "page=2").await
    );
    assert_eq!(
        keys(&f, "/a", "page=1").await,
        keys(&f, "/b", "page=1").await
    );
    // With both, either one changes the key.
    let base = keys(&both, "/a", "page=1").await;
    assert_ne!(base, keys(&both, "/b", "page=1").await);
    assert_ne!(base, keys(&both, "/a", "page=2").await);
    assert_eq!(base, keys(&both, "/a", "page=1").await);
}

#[tokio::test]
async fn errors_from_the_function_are_returned_and_never_cached() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let fa = a.func::<(u32,), String>("fails").build().unwrap();
    let fb = b.func::<(u32,), String>("fails").build().unwrap();
    let runs = AtomicUsize::new(0);
    let failing = |msg: &'static str| {
        let runs = &runs;
        move || {
            runs.fetch_add(1, SeqCst);
            ready(Err::<String, String>(msg.to_string()))
        }
    };
    assert_eq!(
        fa.call(&(1,), failing("boom")).await,
        Err("boom".to_string())
    );
    assert_eq!(
        fa.call(&(1,), failing("again")).await,
        Err("again".to_string())
    );
    assert_eq!(fb.call(&(1,), failing("b")).await, Err("b".to_string()));
    assert_eq!(
        runs.load(SeqCst),
        3,
        "an error is computed again everywhere"
    );
    assert!(redis.keys("t:f:*").is_empty());
    assert_eq!(fa.key_set_size().await.unwrap(), 0);
    // Concurrent callers of a failing leader are not handed its error: each
    // computes for itself.
    let calls = (0..10).map(|_| fa.call(&(2,), failing("each")));
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(|r| r == &Err("each".to_string())));
    assert_eq!(runs.load(SeqCst), 13);
    // A success afterwards is cached as usual.
    let ok = || ready(Ok::<_, String>("fine".to_string()));
    assert_eq!(fa.call(&(1,), ok).await.unwrap(), "fine");
    assert_eq!(fb.call(&(1,), failing("not run")).await.unwrap(), "fine");
    assert_eq!(runs.load(SeqCst), 13);
}

// ---------------------------------------------------------------------------
// Sharing and single-flight
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_value_computed_on_one_node_is_served_to_two_others_without_recomputing() {
    let redis = TestRedis::start();
    let (a, b, c) = nodes3(&redis).await;
    let build = |n: &CacheNode| n.func::<(u64, String), Vec<u64>>("shared").build().unwrap();
    let (fa, fb, fc) = (build(&a), build(&b), build(&c));
    let runs = AtomicUsize::new(0);
    let args = (42u64, "fr".to_string());
    let value = vec![1, 2, 3];
    assert_eq!(
        fa.call(&args, counted(&runs, value.clone())).await.unwrap(),
        value
    );
    assert_eq!(fb.call(&args, counted(&runs, vec![])).await.unwrap(), value);
    assert_eq!(fc.call(&args, counted(&runs, vec![])).await.unwrap(), value);
    assert_eq!(runs.load(SeqCst), 1, "computed once, on A");
    // B and C now answer from their own RAM, even with Redis's copy gone.
    let _: () = redis.conn().del(fa.cache_key(&args).unwrap()).unwrap();
    for f in [&fa, &fb, &fc] {
        assert_eq!(f.call(&args, counted(&runs, vec![])).await.unwrap(), value);
    }
    assert_eq!(runs.load(SeqCst), 1);
    // Other arguments are another value.
    let other = (43u64, "fr".to_string());
    assert_eq!(
        fb.call(&other, counted(&runs, vec![9])).await.unwrap(),
        vec![9]
    );
    assert_eq!(runs.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn single_flight_1000_concurrent_callers_of_a_cold_key_compute_once() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n.func::<(u32,), String>("hot").build().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (f, runs, start) = (f.clone(), runs.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            f.call(&(7,), || async {
                runs.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, Infallible>("seven".to_string())
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "seven");
    }
    assert_eq!(runs.load(SeqCst), 1, "one computation for 1000 callers");
    assert_eq!(f.key_set_size().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_leader_does_not_strand_its_followers() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n.func::<(u32,), String>("cancel").build().unwrap();
    let leader = {
        let f = f.clone();
        tokio::spawn(async move {
            f.call(&(1,), || async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<_, Infallible>("never".to_string())
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let follower = {
        let f = f.clone();
        tokio::spawn(async move {
            f.call(&(1,), || ready(Ok::<_, Infallible>("mine".to_string())))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!follower.is_finished(), "the follower waits for the leader");
    leader.abort();
    let got = tokio::time::timeout(Duration::from_secs(5), follower)
        .await
        .expect("the follower is released when the leader is dropped")
        .unwrap();
    assert_eq!(got.unwrap(), "mine", "and computes for itself");
    // The next caller is served the follower's value.
    let v = f
        .call(&(1,), || ready(Ok::<_, Infallible>("x".to_string())))
        .await;
    assert_eq!(v.unwrap(), "mine");
    // Single-flight still works for that key afterwards (the cancelled
    // flight left nothing behind).
    assert!(f.delete(&(1,)).await.unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (f, runs, start) = (f.clone(), runs.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                f.call(&(1,), || async {
                    runs.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Infallible>("again".to_string())
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "again");
    }
    assert_eq!(runs.load(SeqCst), 1);
}

#[tokio::test]
async fn redis_down_calls_compute_and_recover_after_restart() {
    let mut redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n.func::<(u32,), u32>("down").build().unwrap();
    let runs = AtomicUsize::new(0);
    assert_eq!(f.call(&(0,), counted(&runs, 0)).await.unwrap(), 0);
    assert_eq!(n.key_sets().await.unwrap(), vec![("down".to_string(), 1)]);

    redis.kill();
    let started = Instant::now();
    for i in 1..=3 {
        assert_eq!(f.call(&(i,), counted(&runs, i * 10)).await, Ok(i * 10));
    }
    assert_eq!(runs.load(SeqCst), 4, "computed without Redis, no error");
    eprintln!("3 calls without Redis took {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // Redis comes back empty: values are written again, key set and
    // registry included.
    redis.restart();
    let next = AtomicU32::new(100);
    let back = eventually(Duration::from_secs(10), || async {
        let i = next.fetch_add(1, SeqCst);
        let v = f
            .call(&(i,), || ready(Ok::<_, Infallible>(i)))
            .await
            .unwrap();
        assert_eq!(v, i);
        redis.exists(&f.cache_key(&(i,)).unwrap())
    })
    .await;
    assert!(back, "values reach Redis again after a restart");
    let last = next.load(SeqCst) - 1;
    assert!(key_set_members(&redis, "down").contains(&f.cache_key(&(last,)).unwrap()));
    let sets = n.key_sets().await.unwrap();
    assert!(
        sets.iter().any(|(name, size)| name == "down" && *size >= 1),
        "the function is in the registry again: {sets:?}"
    );
    assert!(f.delete_all().await.unwrap() >= 1);
    assert!(redis.keys("t:f:down:*").is_empty());
}

// ---------------------------------------------------------------------------
// Key sets, clear, clear_all
// ---------------------------------------------------------------------------

#[tokio::test]
async fn key_sets_record_the_keys_written_by_every_node() {
    let redis = TestRedis::start();
    let nodes = nodes3(&redis).await;
    let fs: Vec<CachedFn<(u32,), u32>> = [&nodes.0, &nodes.1, &nodes.2]
        .iter()
        .map(|n| n.func("ks").build().unwrap())
        .collect();
    for (i, f) in fs.iter().enumerate() {
        for j in 0..5u32 {
            let arg = i as u32 * 100 + j;
            f.call(&(arg,), || ready(Ok::<_, Infallible>(arg)))
                .await
                .unwrap();
        }
    }
    for f in &fs {
        assert_eq!(f.key_set_size().await.unwrap(), 15);
    }
    let members = key_set_members(&redis, "ks");
    let values: HashSet<String> = redis.keys("t:f:ks:*").into_iter().collect();
    assert_eq!(
        members, values,
        "every value is in the key set, nothing else"
    );
    for key in &values {
        let shard = shard_of("ks", key);
        let there: bool = redis.conn().sismember(&shard, key).unwrap();
        assert!(there, "{key} is in shard {shard}");
    }
    let registry: Vec<String> = redis.conn().smembers("t:ks").unwrap();
    assert_eq!(registry, vec!["ks".to_string()]);
}

#[tokio::test]
async fn clear_removes_one_value_from_redis_and_the_ram_of_every_node() {
    let redis = TestRedis::start();
    let (a, b, c) = nodes3(&redis).await;
    let build = |n: &CacheNode| n.func::<(u32,), String>("one").build().unwrap();
    let probe = |n: &CacheNode| {
        n.func::<(u32,), String>("one")
            .layers(Layers::Ram)
            .build()
            .unwrap()
    };
    let fs = [build(&a), build(&b), build(&c)];
    let ps = [probe(&a), probe(&b), probe(&c)];
    let runs = AtomicUsize::new(0);
    for f in &fs {
        for i in [1, 2] {
            f.call(&(i,), counted(&runs, format!("v{i}")))
                .await
                .unwrap();
        }
    }
    assert_eq!(runs.load(SeqCst), 2);
    for p in &ps {
        assert_eq!(ram_value(p, &(1,)).await.as_deref(), Some("v1"));
    }
    let key1 = fs[0].cache_key(&(1,)).unwrap();

    assert!(fs[0].delete(&(1,)).await.unwrap(), "it existed");
    assert!(!redis.exists(&key1));
    assert!(!key_set_members(&redis, "one").contains(&key1));
    assert_eq!(fs[0].key_set_size().await.unwrap(), 1);
    let started = Instant::now();
    for p in &ps {
        assert!(
            eventually(PROPAGATION, || async {
                ram_value(p, &(1,)).await.is_none()
            })
            .await,
            "dropped from every node's RAM"
        );
    }
    assert!(started.elapsed() < PROPAGATION);
    // The other value is untouched everywhere.
    for p in &ps {
        assert_eq!(ram_value(p, &(2,)).await.as_deref(), Some("v2"));
    }
    assert!(redis.exists(&fs[0].cache_key(&(2,)).unwrap()));
    assert!(!fs[1].delete(&(1,)).await.unwrap(), "already gone");
    // The next call computes it again.
    assert_eq!(
        fs[2]
            .call(&(1,), counted(&runs, "new".to_string()))
            .await
            .unwrap(),
        "new"
    );
    assert_eq!(runs.load(SeqCst), 3);
}

#[tokio::test]
async fn clear_all_removes_every_value_of_the_function_and_spares_others() {
    let redis = TestRedis::start();
    let (a, b, c) = nodes3(&redis).await;
    let nodes = [&a, &b, &c];
    let users: Vec<CachedFn<(u32,), u32>> = nodes
        .iter()
        .map(|n| n.func("users").build().unwrap())
        .collect();
    let orders: Vec<CachedFn<(u32,), u32>> = nodes
        .iter()
        .map(|n| n.func("orders").build().unwrap())
        .collect();
    let user_probes: Vec<CachedFn<(u32,), u32>> = nodes
        .iter()
        .map(|n| n.func("users").layers(Layers::Ram).build().unwrap())
        .collect();
    let order_probes: Vec<CachedFn<(u32,), u32>> = nodes
        .iter()
        .map(|n| n.func("orders").layers(Layers::Ram).build().unwrap())
        .collect();
    let runs = AtomicUsize::new(0);
    for i in 0..20u32 {
        for f in &users {
            f.call(&(i,), counted(&runs, i)).await.unwrap();
        }
    }
    for i in 0..5u32 {
        for f in &orders {
            f.call(&(i,), counted(&runs, 1000 + i)).await.unwrap();
        }
    }
    assert_eq!(runs.load(SeqCst), 25);
    assert_eq!(redis.keys("t:f:users:*").len(), 20);

    let mut reports = Vec::new();
    let deleted = users[1].delete_all_with(|p| reports.push(p)).await.unwrap();
    assert_eq!(deleted, 20);
    assert_eq!(
        reports.last(),
        Some(&Progress {
            deleted: 20,
            foreign: 0,
            finished: true
        })
    );
    assert!(
        redis.keys("t:f:users:*").is_empty(),
        "no value left in Redis"
    );
    assert!(redis.keys("t:ks:users:*").is_empty(), "key set emptied");
    assert_eq!(users[0].key_set_size().await.unwrap(), 0);
    // Every node's RAM is emptied of the function...
    for p in &user_probes {
        let gone = eventually(PROPAGATION, || async {
            for i in 0..20u32 {
                if ram_value(p, &(i,)).await.is_some() {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(gone, "users dropped from every node's RAM");
    }
    // ...while the other function keeps its values in Redis and in RAM.
    assert_eq!(redis.keys("t:f:orders:*").len(), 5);
    assert_eq!(orders[0].key_set_size().await.unwrap(), 5);
    for p in &order_probes {
        for i in 0..5u32 {
            assert_eq!(ram_value(p, &(i,)).await, Some(1000 + i));
        }
    }
    // The cleared function computes again.
    assert_eq!(users[2].call(&(3,), counted(&runs, 33)).await.unwrap(), 33);
    assert_eq!(runs.load(SeqCst), 26);
}

/// Writes `count` values of function `name` straight into Redis, each with
/// its key-set entry in the right shard, as `call` would.
fn plant_values(redis: &TestRedis, name: &str, count: usize) -> Vec<String> {
    let mut conn = redis.conn();
    let keys: Vec<String> = (0..count)
        .map(|i| format!("t:f:{name}:|{i:032x}"))
        .collect();
    for chunk in keys.chunks(5000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("SET")
                .arg(k)
                .arg("v")
                .arg("PX")
                .arg(600_000)
                .ignore();
            pipe.cmd("SADD").arg(shard_of(name, k)).arg(k).ignore();
        }
        let _: () = pipe.query(&mut conn).unwrap();
    }
    let _: () = conn.sadd("t:ks", name).unwrap();
    keys
}

fn dbsize(redis: &TestRedis) -> usize {
    redis::cmd("DBSIZE").query(&mut redis.conn()).unwrap()
}

async fn clear_all_of_many_keys(count: usize) {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    plant_values(&redis, "big", count);
    let keep = a.func::<(u32,), u32>("keep").build().unwrap();
    for i in 0..10u32 {
        keep.call(&(i,), || ready(Ok::<_, Infallible>(i)))
            .await
            .unwrap();
    }
    let big = b.func::<(u32,), u32>("big").build().unwrap();
    assert_eq!(big.key_set_size().await.unwrap(), count as u64);

    let started = Instant::now();
    let mut reports: Vec<Progress> = Vec::new();
    let deleted = big.delete_all_with(|p| reports.push(p)).await.unwrap();
    let took = started.elapsed();
    eprintln!(
        "clear_all of {count} keys took {took:?} in {} steps",
        reports.len()
    );
    assert_eq!(deleted, count as u64);
    assert!(redis.keys("t:f:big:*").is_empty());
    assert!(redis.keys("t:ks:big:*").is_empty());
    assert_eq!(big.key_set_size().await.unwrap(), 0);
    // Progress only grows, and says finished at the end.
    assert!(reports.windows(2).all(|w| w[0].deleted <= w[1].deleted));
    assert!(
        reports.len() > 16,
        "one report per batch: {}",
        reports.len()
    );
    assert_eq!(
        reports.last(),
        Some(&Progress {
            deleted: count as u64,
            foreign: 0,
            finished: true
        })
    );
    // The other function is intact.
    assert_eq!(redis.keys("t:f:keep:*").len(), 10);
    assert_eq!(keep.key_set_size().await.unwrap(), 10);
    let runs = AtomicUsize::new(0);
    for i in 0..10u32 {
        assert_eq!(keep.call(&(i,), counted(&runs, 0)).await.unwrap(), i);
    }
    assert_eq!(runs.load(SeqCst), 0);
    // Only bookkeeping and the 10 kept values are left.
    let left = redis.keys("t:*");
    assert!(left.iter().all(|k| !k.starts_with("t:f:big:")), "{left:?}");
    assert!(dbsize(&redis) < 40, "{left:?}");
}

// 200k keys: about 4 s in a debug build (planting them included), so it runs
// by default.
#[tokio::test]
async fn clear_all_of_200k_keys_deletes_them_all_with_progress() {
    clear_all_of_many_keys(200_000).await;
}

/// `invalidate_all` drops every value of the function from the RAM of
/// every instance, at once on the caller; Redis keeps them, so the next
/// calls read them from there without computing. Other functions keep
/// theirs.
#[tokio::test]
async fn invalidate_all_drops_the_function_from_every_ram_and_redis_keeps_its_values() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let users = |n: &CacheNode, layers| {
        n.func::<(u32,), String>("users")
            .layers(layers)
            .build()
            .unwrap()
    };
    let (fa, fb) = (users(&a, Layers::Both), users(&b, Layers::Both));
    let (pa, pb) = (users(&a, Layers::Ram), users(&b, Layers::Ram));
    let orders = b.func::<(u32,), String>("orders").build().unwrap();
    let orders_probe = b
        .func::<(u32,), String>("orders")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    let runs = AtomicUsize::new(0);
    for id in 0..3u32 {
        let v = format!("user-{id}");
        fa.call(&(id,), counted(&runs, v.clone())).await.unwrap();
        // B reads A's value from Redis and holds it in RAM.
        assert_eq!(
            fb.call(&(id,), counted(&runs, String::new()))
                .await
                .unwrap(),
            v
        );
    }
    orders
        .call(&(1,), counted(&runs, "order-1".to_string()))
        .await
        .unwrap();
    assert_eq!(runs.load(SeqCst), 4);
    for id in 0..3u32 {
        for probe in [&pa, &pb] {
            assert_eq!(ram_value(probe, &(id,)).await, Some(format!("user-{id}")));
        }
    }

    fa.invalidate_all().await.unwrap();

    for id in 0..3u32 {
        assert_eq!(ram_value(&pa, &(id,)).await, None, "dropped on the caller");
    }
    let dropped = eventually(PROPAGATION, || async {
        for id in 0..3u32 {
            if ram_value(&pb, &(id,)).await.is_some() {
                return false;
            }
        }
        true
    })
    .await;
    assert!(dropped, "dropped from B's RAM");
    assert_eq!(
        ram_value(&orders_probe, &(1,)).await,
        Some("order-1".to_string()),
        "other functions keep their values"
    );
    assert_eq!(redis.keys("t:f:users:*").len(), 3, "Redis keeps them");
    for id in 0..3u32 {
        assert_eq!(
            fb.call(&(id,), counted(&runs, "recomputed".to_string()))
                .await
                .unwrap(),
            format!("user-{id}")
        );
    }
    assert_eq!(runs.load(SeqCst), 4, "read from Redis, not computed");
}

// ---------------------------------------------------------------------------
// delete_some
// ---------------------------------------------------------------------------

const LANGS: [&str; 3] = ["fr", "en", "de"];

#[tokio::test]
async fn clear_some_deletes_exactly_the_matching_values_with_progress() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let build = |n: &CacheNode| {
        n.func::<Args, String>("greet")
            .key_args(ArgsInKey::Each)
            .build()
            .unwrap()
    };
    let (fa, fb) = (build(&a), build(&b));
    let pb = b
        .func::<Args, String>("greet")
        .key_args(ArgsInKey::Each)
        .layers(Layers::Ram)
        .build()
        .unwrap();
    let runs = AtomicUsize::new(0);
    for user in 0..60u32 {
        for lang in LANGS {
            let v = format!("{lang}-{user}");
            fa.call(&ul(user, lang), counted(&runs, v.clone()))
                .await
                .unwrap();
            // B holds every value in RAM too.
            assert_eq!(
                fb.call(&ul(user, lang), counted(&runs, String::new()))
                    .await
                    .unwrap(),
                v
            );
        }
    }
    assert_eq!(runs.load(SeqCst), 180);
    assert_eq!(fa.key_set_size().await.unwrap(), 180);

    // Step by step.
    let mut clear = fa
        .delete_some(&Args::new().arg("lang", "fr").unwrap())
        .unwrap();
    assert_eq!(clear.progress(), Progress::default());
    let mut steps = Vec::new();
    loop {
        let p = clear.step().await.unwrap();
        steps.push(p);
        if p.finished {
            break;
        }
        assert!(steps.len() < 1000, "delete_some does not end");
    }
    assert!(
        steps.windows(2).all(|w| w[0].deleted <= w[1].deleted),
        "{steps:?}"
    );
    let distinct: HashSet<u64> = steps.iter().map(|p| p.deleted).collect();
    assert!(
        distinct.len() > 2,
        "deleted grows batch by batch: {steps:?}"
    );
    assert!(steps[..steps.len() - 1].iter().all(|p| !p.finished));
    assert_eq!(
        steps.last(),
        Some(&Progress {
            deleted: 60,
            foreign: 0,
            finished: true
        })
    );
    assert_eq!(
        clear.progress(),
        Progress {
            deleted: 60,
            foreign: 0,
            finished: true
        }
    );
    assert_eq!(
        clear.step().await.unwrap().deleted,
        60,
        "a finished clear stays finished"
    );

    // Exactly the fr values are gone from Redis and the key set.
    for user in 0..60u32 {
        for lang in LANGS {
            let key = fa.cache_key(&ul(user, lang)).unwrap();
            assert_eq!(redis.exists(&key), lang != "fr", "{user} {lang}");
        }
    }
    assert_eq!(fa.key_set_size().await.unwrap(), 120);
    // ...and from B's RAM, while B keeps the others.
    let dropped = eventually(PROPAGATION, || async {
        for user in 0..60u32 {
            if ram_value(&pb, &ul(user, "fr")).await.is_some() {
                return false;
            }
        }
        true
    })
    .await;
    assert!(dropped, "fr values dropped from B's RAM");
    for user in 0..60u32 {
        for lang in ["en", "de"] {
            assert_eq!(
                ram_value(&pb, &ul(user, lang)).await,
                Some(format!("{lang}-{user}"))
            );
        }
    }

    // Several arguments: all must match; run() reports progress too.
    let mut reports = Vec::new();
    let filter = Args::new()
        .arg("user", &5u32)
        .unwrap()
        .arg("lang", "de")
        .unwrap();
    let n = fa
        .delete_some(&filter)
        .unwrap()
        .run(|p| reports.push(p))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        reports.last(),
        Some(&Progress {
            deleted: 1,
            foreign: 0,
            finished: true
        })
    );
    assert!(!redis.exists(&fa.cache_key(&ul(5, "de")).unwrap()));
    assert!(redis.exists(&fa.cache_key(&ul(5, "en")).unwrap()));
    assert!(redis.exists(&fa.cache_key(&ul(6, "de")).unwrap()));
    // By user: the remaining value of user 7 (en; fr is already gone, de).
    let n = fa
        .delete_some(&Args::new().arg("user", &7u32).unwrap())
        .unwrap()
        .run(|_| {})
        .await
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(fa.key_set_size().await.unwrap(), 117);
    // A filter nothing matches deletes nothing.
    let n = fa
        .delete_some(&Args::new().arg("lang", "it").unwrap())
        .unwrap()
        .run(|_| {})
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(redis.keys("t:f:greet:*").len(), 117);
    // Cleared values are computed again.
    assert_eq!(
        fb.call(&ul(1, "fr"), counted(&runs, "again".to_string()))
            .await
            .unwrap(),
        "again"
    );
    assert_eq!(runs.load(SeqCst), 181);
}

/// A filter naming an argument the function does not have, one it leaves
/// out of its keys, or a value of another type than the argument's would
/// match no key: it is refused, naming the argument, and deletes nothing.
/// A right filter still deletes exactly its values (a `&str` matches a
/// `String` argument: serde writes them alike).
#[tokio::test]
async fn delete_some_refuses_a_filter_no_key_can_match() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n
        .func::<(u64, String, bool), String>("profile")
        .key_args(ArgsInKey::Each)
        .ignore_args(["2"])
        .build()
        .unwrap();
    for user in 0..4u64 {
        for lang in ["fr", "en"] {
            let v = format!("{lang}-{user}");
            f.call(&(user, lang.to_string(), false), || {
                ready(Ok::<_, Infallible>(v))
            })
            .await
            .unwrap();
        }
    }
    assert_eq!(f.key_set_size().await.unwrap(), 8);
    let refused = |filter: Args| match f.delete_some(&filter) {
        Err(Error::Config(text)) => text,
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(
        refused(Args::new().arg("user", &1u64).unwrap()),
        r#"delete_some on "profile": no argument "user" (its keys hold 0, 1)"#
    );
    assert_eq!(
        refused(Args::new().arg("0", &1i32).unwrap()),
        r#"delete_some on "profile": argument "0" is u64, the filter gives i32"#
    );
    assert_eq!(
        refused(
            Args::new()
                .arg("1", "fr")
                .unwrap()
                .arg("0", &Some(1u64))
                .unwrap()
        ),
        r#"delete_some on "profile": argument "0" is u64, the filter gives Option<u64>"#
    );
    assert_eq!(
        refused(Args::new().arg("2", &true).unwrap()),
        r#"delete_some on "profile": argument "2" is ignored, so no key holds it"#
    );
    // An empty filter would match every value, without the clear
    // generation delete_all sets.
    assert_eq!(
        refused(Args::new()),
        r#"delete_some on "profile": an empty filter matches every value; delete_all deletes them all"#
    );
    assert_eq!(f.key_set_size().await.unwrap(), 8, "nothing deleted");

    let fr = Args::new().arg("1", "fr").unwrap();
    assert_eq!(f.delete_some(&fr).unwrap().run(|_| {}).await.unwrap(), 4);
    let user_2 = Args::new().arg("0", &2u64).unwrap();
    assert_eq!(
        f.delete_some(&user_2).unwrap().run(|_| {}).await.unwrap(),
        1
    );
    let en_3 = Args::new()
        .arg("0", &3u64)
        .unwrap()
        .arg("1", &"en".to_string())
        .unwrap();
    assert_eq!(f.delete_some(&en_3).unwrap().run(|_| {}).await.unwrap(), 1);
    assert_eq!(f.key_set_size().await.unwrap(), 2);
    for user in [0u64, 1] {
        let key = f.cache_key(&(user, "en".to_string(), false)).unwrap();
        assert!(redis.exists(&key), "{user} en kept");
    }
}

/// `delete` and `invalidate` build the key when called: their futures
/// borrow the handle only, so a `'static` handle's can be spawned after the
/// arguments are gone.
#[tokio::test]
async fn delete_and_invalidate_futures_do_not_borrow_the_arguments() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f: &'static CachedFn<(String,), String> = Box::leak(Box::new(
        n.func::<(String,), String>("owned").build().unwrap(),
    ));
    let probe = n
        .func::<(String,), String>("owned")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    let a = ("a".to_string(),);
    f.call(&a, || ready(Ok::<_, Infallible>("v".to_string())))
        .await
        .unwrap();
    let key = f.cache_key(&a).unwrap();
    assert_eq!(ram_value(&probe, &a).await, Some("v".to_string()));

    let invalidate = {
        let args = ("a".to_string(),);
        f.invalidate(&args)
    };
    tokio::spawn(invalidate).await.unwrap().unwrap();
    assert_eq!(ram_value(&probe, &a).await, None, "dropped from RAM");
    assert!(redis.exists(&key), "Redis keeps it");

    let delete = {
        let args = ("a".to_string(),);
        f.delete(&args)
    };
    assert!(tokio::spawn(delete).await.unwrap().unwrap());
    assert!(!redis.exists(&key));
}

#[tokio::test]
async fn clear_some_needs_full_args_keys() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n.func::<Args, String>("hashed_only").build().unwrap();
    f.call(&ul(1, "fr"), || ready(Ok::<_, Infallible>("x".to_string())))
        .await
        .unwrap();
    let err = f
        .delete_some(&Args::new().arg("lang", "fr").unwrap())
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("hashed_only") && text.contains("key_args(ArgsInKey::Each)"),
        "{text}"
    );
    assert_eq!(redis.keys("t:f:hashed_only:*").len(), 1, "nothing deleted");
}

fn greet(n: &CacheNode, name: &str) -> CachedFn<Args, String> {
    n.func::<Args, String>(name)
        .key_args(ArgsInKey::Each)
        .build()
        .unwrap()
}

fn greet_probe(n: &CacheNode, name: &str) -> CachedFn<Args, String> {
    n.func::<Args, String>(name)
        .key_args(ArgsInKey::Each)
        .layers(Layers::Ram)
        .build()
        .unwrap()
}

/// Computes `lang-user` for `users` × [`LANGS`] through `fa`, then reads
/// each value through every handle of `readers` (from Redis: they hold it
/// in RAM afterwards).
async fn greetings(fa: &CachedFn<Args, String>, readers: &[&CachedFn<Args, String>], users: u32) {
    for user in 0..users {
        for lang in LANGS {
            let v = format!("{lang}-{user}");
            fa.call(&ul(user, lang), || ready(Ok::<_, Infallible>(v.clone())))
                .await
                .unwrap();
            for f in readers {
                let seen = f
                    .call(&ul(user, lang), || {
                        ready(Ok::<_, Infallible>(String::new()))
                    })
                    .await
                    .unwrap();
                assert_eq!(seen, v, "read from Redis, not computed");
            }
        }
    }
}

#[tokio::test]
async fn clear_some_drops_values_from_every_ram_even_when_redis_had_lost_them() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let (fa, fb) = (greet(&a, "lost"), greet(&b, "lost"));
    let (pa, pb) = (greet_probe(&a, "lost"), greet_probe(&b, "lost"));
    greetings(&fa, &[&fb], 6).await;
    // The fr values of users 0 to 2 leave Redis behind cachenode's back
    // (expired, evicted under maxmemory, deleted by hand), while their
    // key-set entries and the RAM copies of both nodes stay.
    for user in 0..3 {
        let removed: u64 = redis
            .conn()
            .del(fa.cache_key(&ul(user, "fr")).unwrap())
            .unwrap();
        assert_eq!(removed, 1);
    }
    for p in [&pa, &pb] {
        assert_eq!(ram_value(p, &ul(0, "fr")).await.as_deref(), Some("fr-0"));
    }

    let deleted = fa
        .delete_some(&Args::new().arg("lang", "fr").unwrap())
        .unwrap()
        .run(|_| {})
        .await
        .unwrap();
    assert_eq!(deleted, 3, "the count is of the keys Redis still held");
    assert_eq!(fa.key_set_size().await.unwrap(), 12);
    caught_up([&a, &b], bus_seq(&redis, "t")).await;
    for (who, p) in [("a", &pa), ("b", &pb)] {
        for user in 0..6 {
            assert_eq!(
                ram_value(p, &ul(user, "fr")).await,
                None,
                "{who} still serves fr-{user}"
            );
            for lang in ["en", "de"] {
                assert_eq!(
                    ram_value(p, &ul(user, lang)).await,
                    Some(format!("{lang}-{user}")),
                    "{who} keeps {lang}-{user}"
                );
            }
        }
    }

    // clear_all too: one more value leaves Redis; every other one is counted,
    // and neither node serves any of them.
    let removed: u64 = redis
        .conn()
        .del(fa.cache_key(&ul(0, "en")).unwrap())
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(fa.delete_all().await.unwrap(), 11);
    caught_up([&a, &b], bus_seq(&redis, "t")).await;
    for (who, p) in [("a", &pa), ("b", &pb)] {
        for user in 0..6 {
            for lang in LANGS {
                assert_eq!(ram_value(p, &ul(user, lang)).await, None, "{who}");
            }
        }
    }
    assert!(redis.keys("t:f:lost:*").is_empty());
    assert!(redis.keys("t:ks:lost:*").is_empty());
}

#[tokio::test]
async fn clear_some_step_that_could_not_announce_is_retried_without_losing_keys() {
    let redis = TestRedis::start();
    let a = node(&redis).await;
    // B hears invalidations through pub/sub only during the test: a periodic
    // check would read the bus counter broken below.
    let b = PLAIN
        .builder(&redis.url())
        .deletion_check_period(Duration::from_secs(600))
        .build()
        .await
        .unwrap();
    let (fa, fb, pb) = (
        greet(&a, "retry"),
        greet(&b, "retry"),
        greet_probe(&b, "retry"),
    );
    greetings(&fa, &[&fb], 8).await;
    let seq: Option<String> = redis.conn().get("t:{bus}:seq").unwrap();

    let mut clear = fa
        .delete_some(&Args::new().arg("lang", "fr").unwrap())
        .unwrap();
    // Something foreign at the bus counter: publishing fails (nothing is
    // published, so no message is lost either).
    let _: () = redis.conn().set("t:{bus}:seq", "not a number").unwrap();
    let err = loop {
        match clear.step().await {
            Ok(p) => assert!(!p.finished, "finished with a broken bus: {p:?}"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::Redis { op: "publish", .. }), "{err:?}");
    assert!(!clear.progress().finished);
    // The bus repaired, the deletion goes on where it stopped.
    match seq {
        Some(seq) => redis.conn().set::<_, _, ()>("t:{bus}:seq", seq).unwrap(),
        None => redis.conn().del::<_, ()>("t:{bus}:seq").unwrap(),
    }
    let last = loop {
        let p = clear.step().await.unwrap();
        if p.finished {
            break p;
        }
    };
    assert_eq!(
        last,
        Progress {
            deleted: 8,
            foreign: 0,
            finished: true
        }
    );
    caught_up([&a, &b], bus_seq(&redis, "t")).await;
    let h = b.bus_health().unwrap();
    assert!(
        h.gap_flushes == 0 && !h.suspended,
        "nothing hid B's RAM: {h:?}"
    );
    for user in 0..8 {
        assert!(!redis.exists(&fa.cache_key(&ul(user, "fr")).unwrap()));
        assert_eq!(
            ram_value(&pb, &ul(user, "fr")).await,
            None,
            "b still serves fr-{user}"
        );
        for lang in ["en", "de"] {
            assert_eq!(
                ram_value(&pb, &ul(user, lang)).await,
                Some(format!("{lang}-{user}"))
            );
        }
    }
}

// ---------------------------------------------------------------------------
// clear_all racing computations
// ---------------------------------------------------------------------------

/// Runs `call(1)` of function `name` on `writer` with a computation held
/// after it started; runs `clear_all` on another node meanwhile; lets the
/// computation finish once `clear_all` has returned (and, with
/// `wait_for_fence`, once the writer has applied its invalidation). Then no
/// node may serve what it computed: not from Redis, not from RAM.
async fn computation_started_before_clear_all(
    redis: &TestRedis,
    writer: &CacheNode,
    name: &str,
    atomic: Option<AtomicWrites>,
    wait_for_fence: bool,
) {
    let a = node(redis).await;
    let build = |n: &CacheNode| {
        let f = n.func::<(u32,), String>(name);
        match atomic {
            Some(mode) => f.atomic_writes(mode),
            None => f,
        }
        .build()
        .unwrap()
    };
    let (fa, fw) = (build(&a), build(writer));
    fa.call(&(0,), || ready(Ok::<_, Infallible>("zero".to_string())))
        .await
        .unwrap();
    let key = fw.cache_key(&(1,)).unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let call = tokio::spawn({
        let fw = fw.clone();
        async move {
            fw.call(&(1,), move || async move {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                Ok::<_, Infallible>("computed before the clear".to_string())
            })
            .await
        }
    });
    started_rx.await.expect("the computation started");
    assert_eq!(fa.delete_all().await.unwrap(), 1, "{name}");
    if wait_for_fence {
        caught_up([writer], bus_seq(redis, "t")).await;
    }
    release_tx.send(()).unwrap();
    let got = call.await.unwrap().unwrap();
    assert_eq!(
        got, "computed before the clear",
        "{name}: its caller has it"
    );
    assert!(
        !redis.exists(&key),
        "{name}: a value computed before clear_all reached Redis after it"
    );
    // No node serves it.
    for f in [&fw, &fa] {
        let v = f
            .call(&(1,), || ready(Ok::<_, Infallible>("fresh".to_string())))
            .await
            .unwrap();
        assert_eq!(v, "fresh", "{name}");
    }
    // A computation that starts after clear_all is stored as usual.
    fw.call(&(2,), || ready(Ok::<_, Infallible>("after".to_string())))
        .await
        .unwrap();
    assert!(redis.exists(&fw.cache_key(&(2,)).unwrap()), "{name}");
    assert_eq!(fa.key_set_size().await.unwrap(), 2, "{name}");
}

#[tokio::test]
async fn clear_all_keeps_out_values_computed_before_it_by_a_node_without_ram() {
    let redis = TestRedis::start();
    let writer = PLAIN
        .builder(&redis.url())
        .without_ram()
        .build()
        .await
        .unwrap();
    computation_started_before_clear_all(&redis, &writer, "ramless", None, false).await;
    computation_started_before_clear_all(
        &redis,
        &writer,
        "ramless_at_least_once",
        Some(AtomicWrites::AtLeastOnce),
        false,
    )
    .await;
    computation_started_before_clear_all(
        &redis,
        &writer,
        "ramless_at_most_once",
        Some(AtomicWrites::AtMostOnce),
        false,
    )
    .await;
}

#[tokio::test]
async fn clear_all_keeps_out_values_computed_before_it_by_a_node_that_missed_the_fence() {
    let redis = TestRedis::start();
    // A node whose invalidations are late (here: never come): its RAM check
    // cannot refuse the value, so Redis must.
    let writer = PLAIN
        .builder(&redis.url())
        .without_bus()
        .build()
        .await
        .unwrap();
    computation_started_before_clear_all(&redis, &writer, "deaf", None, false).await;
}

#[tokio::test]
async fn clear_all_keeps_out_values_computed_before_it_by_a_node_that_heard_the_fence() {
    let redis = TestRedis::start();
    let writer = node(&redis).await;
    computation_started_before_clear_all(&redis, &writer, "heard", None, true).await;
}

/// A build function that counts its runs and waits for `gate` to open.
fn gated_build(
    builds: &Arc<AtomicUsize>,
    gate: &tokio::sync::watch::Receiver<bool>,
) -> impl Fn((u32,)) -> futures::future::BoxFuture<'static, Result<String, Infallible>>
       + Send
       + Sync
       + 'static {
    let (builds, gate) = (builds.clone(), gate.clone());
    move |(x,): (u32,)| {
        let (builds, mut gate) = (builds.clone(), gate.clone());
        Box::pin(async move {
            let n = builds.fetch_add(1, SeqCst) + 1;
            let _ = gate.wait_for(|open| *open).await;
            Ok(format!("build {n} of {x}"))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_all_keeps_out_a_value_a_builder_started_building_before_it() {
    let redis = TestRedis::start();
    let client = node(&redis).await;
    let builder = PLAIN.builder_node(&redis.url()).await;
    let builds = Arc::new(AtomicUsize::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let report = |n: &CacheNode| {
        n.func::<(u32,), String>("report")
            .async_compute(gated_build(&builds, &gate))
            .build()
            .unwrap()
    };
    let (fc, _fb) = (report(&client), report(&builder));
    let key = fc.cache_key(&(1,)).unwrap();
    let marker = format!("{{{key}}}:job");
    assert_eq!(fc.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    let taken = eventually(PROPAGATION, || async { builds.load(SeqCst) == 1 }).await;
    assert!(taken, "the builder takes the job");
    assert_eq!(fc.delete_all().await.unwrap(), 0);
    open.send(true).unwrap();
    // The builder's write is done once it has removed the job's marker.
    let written = eventually(PROPAGATION, || async { !redis.exists(&marker) }).await;
    assert!(written, "the build ends");
    assert!(
        !redis.exists(&key),
        "a value built from before clear_all reached Redis after it"
    );
    // Asked again, it is built again and served.
    assert_eq!(fc.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    let served = eventually(PROPAGATION, || async {
        fc.get_or_build(&(1,)).await.unwrap() == Lookup::Ready("build 2 of 1".to_string())
    })
    .await;
    assert!(served, "the value built after clear_all is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_all_keeps_out_a_value_a_refresh_started_rebuilding_before_it() {
    let redis = TestRedis::start();
    let reader = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("t")
        .min_refresh_period(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let builder = PLAIN.builder_node(&redis.url()).await;
    let builds = Arc::new(AtomicUsize::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let prices = |n: &CacheNode| {
        n.func::<(u32,), String>("prices")
            .computed_by(gated_build(&builds, &gate))
            .refresh_every(Duration::from_secs(1))
            .build()
            .unwrap()
    };
    let (fr, _fb) = (prices(&reader), prices(&builder));
    let key = fr.cache_key(&(1,)).unwrap();
    fr.call(&(1,), || ready(Ok::<_, Infallible>("first".to_string())))
        .await
        .unwrap();
    let rebuilding = eventually(PROPAGATION, || async { builds.load(SeqCst) == 1 }).await;
    assert!(rebuilding, "the refresh starts rebuilding");
    let last_run = || -> Option<u64> { redis.conn().hget("t:refresh:last", "prices").unwrap() };
    let before = last_run();
    assert_eq!(fr.delete_all().await.unwrap(), 1);
    // After the clear, a caller computes the value anew; then the rebuild
    // that started before the clear finishes.
    let v = fr
        .call(&(1,), || ready(Ok::<_, Infallible>("fresh".to_string())))
        .await
        .unwrap();
    assert_eq!(v, "fresh");
    assert!(redis.exists(&key));
    open.send(true).unwrap();
    // The refresh has written (or not) once it records its run.
    let done = eventually(PROPAGATION, || async { last_run() != before }).await;
    assert!(done, "the refresh ends");
    let other = node(&redis).await;
    let fo = other.func::<(u32,), String>("prices").build().unwrap();
    let v = fo
        .call(&(1,), || ready(Ok::<_, Infallible>("computed".to_string())))
        .await
        .unwrap();
    assert_eq!(
        v, "fresh",
        "a value rebuilt from before clear_all replaced the one computed after it"
    );
}

// ---------------------------------------------------------------------------
// Node-level: delete_functions, background clear, key_sets, prune
// ---------------------------------------------------------------------------

async fn fill(n: &CacheNode, name: &str, count: u32) -> CachedFn<(u32,), u32> {
    let f = n.func::<(u32,), u32>(name).build().unwrap();
    for i in 0..count {
        f.call(&(i,), || ready(Ok::<_, Infallible>(i)))
            .await
            .unwrap();
    }
    f
}

#[tokio::test]
async fn clear_funcs_clears_several_functions_everywhere_with_progress() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    fill(&a, "f_one", 30).await;
    fill(&a, "f_two", 12).await;
    fill(&a, "f_three", 7).await;
    // B holds all of them in RAM.
    let fb1 = fill(&b, "f_one", 30).await;
    let fb3 = fill(&b, "f_three", 7).await;
    let p1 = b
        .func::<(u32,), u32>("f_one")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    let p2 = b
        .func::<(u32,), u32>("f_two")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    let p3 = b
        .func::<(u32,), u32>("f_three")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    fill(&b, "f_two", 12).await;
    assert_eq!(ram_value(&p2, &(11,)).await, Some(11));

    let mut reports: Vec<(String, Progress)> = Vec::new();
    let total = a
        .delete_functions(&["f_one", "f_two"], |name, p| {
            reports.push((name.to_string(), p))
        })
        .await
        .unwrap();
    assert_eq!(total, 42);
    assert!(redis.keys("t:f:f_one:*").is_empty());
    assert!(redis.keys("t:f:f_two:*").is_empty());
    assert_eq!(redis.keys("t:f:f_three:*").len(), 7);
    for name in ["f_one", "f_two"] {
        let mine: Vec<Progress> = reports
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0].deleted <= w[1].deleted),
            "{name}: {mine:?}"
        );
        let expected = if name == "f_one" { 30 } else { 12 };
        assert_eq!(
            mine.last(),
            Some(&Progress {
                deleted: expected,
                foreign: 0,
                finished: true
            })
        );
    }
    let first_two: Vec<&str> = reports.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(first_two.first(), Some(&"f_one"));
    assert_eq!(first_two.last(), Some(&"f_two"));
    // B's RAM drops both functions and keeps the third.
    let dropped = eventually(PROPAGATION, || async {
        ram_value(&p1, &(0,)).await.is_none() && ram_value(&p2, &(11,)).await.is_none()
    })
    .await;
    assert!(dropped);
    assert_eq!(ram_value(&p3, &(6,)).await, Some(6));
    assert_eq!(fb1.key_set_size().await.unwrap(), 0);
    assert_eq!(fb3.key_set_size().await.unwrap(), 7);
    // Invalid names are refused.
    assert!(matches!(
        a.delete_functions(&["bad name"], |_, _| {}).await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn clear_funcs_in_background_reports_progress_and_the_total() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    plant_values(&redis, "bg_one", 5000);
    fill(&a, "bg_two", 25).await;
    let keep = fill(&a, "bg_keep", 4).await;
    let probe = b
        .func::<(u32,), u32>("bg_two")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    fill(&b, "bg_two", 25).await;
    assert_eq!(ram_value(&probe, &(3,)).await, Some(3));

    let clear = a.delete_functions_in_background(vec!["bg_one".into(), "bg_two".into()]);
    let mut seen = vec![clear.progress()];
    let done = eventually(Duration::from_secs(20), || {
        let p = clear.progress();
        seen.push(p);
        ready(p.finished)
    })
    .await;
    assert!(done, "background clear finishes");
    assert!(
        seen.windows(2).all(|w| w[0].deleted <= w[1].deleted),
        "{seen:?}"
    );
    assert!(seen[..seen.len() - 1]
        .iter()
        .all(|p| !p.finished || p.deleted == 5025));
    assert_eq!(
        clear.progress(),
        Progress {
            deleted: 5025,
            foreign: 0,
            finished: true
        }
    );
    assert_eq!(clear.wait().await.unwrap(), 5025);
    assert!(redis.keys("t:f:bg_one:*").is_empty());
    assert!(redis.keys("t:f:bg_two:*").is_empty());
    assert_eq!(keep.key_set_size().await.unwrap(), 4);
    assert!(
        eventually(PROPAGATION, || async {
            ram_value(&probe, &(3,)).await.is_none()
        })
        .await
    );
}

#[tokio::test]
async fn key_sets_lists_functions_and_their_sizes() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    assert_eq!(a.key_sets().await.unwrap(), vec![]);
    fill(&a, "beta", 2).await;
    fill(&b, "alpha", 3).await;
    let alpha_a = fill(&a, "alpha", 5).await; // 3 shared with B, 2 new
    a.func::<(u32,), u32>("ram_fn")
        .layers(Layers::Ram)
        .build()
        .unwrap()
        .call(&(1,), || ready(Ok::<_, Infallible>(1)))
        .await
        .unwrap();
    let expected = vec![("alpha".to_string(), 5), ("beta".to_string(), 2)];
    assert_eq!(a.key_sets().await.unwrap(), expected);
    assert_eq!(b.key_sets().await.unwrap(), expected);
    alpha_a.delete(&(0,)).await.unwrap();
    let sets = b.key_sets().await.unwrap();
    assert!(sets.contains(&("alpha".to_string(), 4)), "{sets:?}");
    // A node without Redis has no key sets.
    let ram = CacheNode::builder().without_redis().build().await.unwrap();
    assert!(matches!(
        ram.key_sets().await,
        Err(Error::NoSharedLayer { .. })
    ));
    assert!(matches!(
        ram.prune_key_sets().await,
        Err(Error::NoSharedLayer { .. })
    ));
}

#[tokio::test]
async fn prune_key_sets_removes_members_whose_keys_expired() {
    let redis = TestRedis::start();
    let n = node(&redis).await;
    let short = n
        .func::<(u32,), u32>("short_lived")
        .ttl(Duration::from_millis(200))
        .build()
        .unwrap();
    for i in 0..6u32 {
        short
            .call(&(i,), || ready(Ok::<_, Infallible>(i)))
            .await
            .unwrap();
    }
    let long = fill(&n, "long_lived", 3).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        short.key_set_size().await.unwrap(),
        6,
        "expired members stay until pruned"
    );
    assert_eq!(n.prune_key_sets().await.unwrap(), 6);
    assert_eq!(short.key_set_size().await.unwrap(), 0);
    assert_eq!(long.key_set_size().await.unwrap(), 3);
    assert!(redis.keys("t:ks:short_lived:*").is_empty());
    assert_eq!(
        n.prune_key_sets().await.unwrap(),
        0,
        "nothing left to prune"
    );
    // Live values are kept.
    short
        .call(&(9,), || ready(Ok::<_, Infallible>(9)))
        .await
        .unwrap();
    assert_eq!(n.prune_key_sets().await.unwrap(), 0);
    assert_eq!(short.key_set_size().await.unwrap(), 1);
}

// ---------------------------------------------------------------------------
// Key stability
// ---------------------------------------------------------------------------

#[tokio::test]
async fn golden_redis_keys_never_change() {
    // These strings are the Redis keys of deployed caches: they must be the
    // same in every process, on every machine and in every release. NEVER
    // edit them; a change here means every cached value is lost (and, across
    // a rolling deploy, that instances stop sharing values).
    const HASHED: &str = "t:f:golden:|55d14fa839a1b10fdd7005eac6d73bf4";
    const FULL: &str = "t:f:golden_full:|;0=79d03016b7aeed0d;1=6c001624ba5c2236";
    const HASHED_SHARD: &str = "t:ks:golden:3";

    let redis = TestRedis::start();
    let n = node(&redis).await;
    let f = n.func::<(u64, &str), u32>("golden").build().unwrap();
    let full = n
        .func::<(u64, &str), u32>("golden_full")
        .key_args(ArgsInKey::Each)
        .build()
        .unwrap();
    assert_eq!(f.cache_key(&(42, "fr")).unwrap(), HASHED);
    assert_eq!(full.cache_key(&(42, "fr")).unwrap(), FULL);
    // The same arguments as owned values or named by position give the same key.
    let owned = n.func::<(u64, String), u32>("golden").build().unwrap();
    assert_eq!(owned.cache_key(&(42, "fr".to_string())).unwrap(), HASHED);
    let named = n.func::<Args, u32>("golden").build().unwrap();
    let args = Args::new()
        .arg("0", &42u64)
        .unwrap()
        .arg("1", "fr")
        .unwrap();
    assert_eq!(named.cache_key(&args).unwrap(), HASHED);

    f.call(&(42, "fr"), || ready(Ok::<_, Infallible>(1)))
        .await
        .unwrap();
    assert_eq!(redis.keys("t:f:*"), vec![HASHED.to_string()]);
    assert_eq!(shard_of("golden", HASHED), HASHED_SHARD);
    let there: bool = redis.conn().sismember(HASHED_SHARD, HASHED).unwrap();
    assert!(there);
}

// ---------------------------------------------------------------------------
// Scoped caches
// ---------------------------------------------------------------------------

#[tokio::test]
async fn request_cached_memoizes_per_request_including_none() {
    let f = RequestCached::<(u32,), Option<String>>::new("per_request").unwrap();
    let runs = AtomicUsize::new(0);
    with_request(RequestContext::new("/r", ""), async {
        assert_eq!(f.call(&(1,), counted(&runs, None)).await.unwrap(), None);
        assert_eq!(
            f.call(&(1,), counted(&runs, Some("x".into())))
                .await
                .unwrap(),
            None
        );
        assert_eq!(runs.load(SeqCst), 1, "None is memoized");
        assert_eq!(
            f.call(&(2,), counted(&runs, Some("two".into())))
                .await
                .unwrap()
                .as_deref(),
            Some("two")
        );
        assert_eq!(
            f.call(&(2,), counted(&runs, None))
                .await
                .unwrap()
                .as_deref(),
            Some("two")
        );
        assert_eq!(runs.load(SeqCst), 2);
        // Errors are not memoized.
        let failing = || ready(Err::<Option<String>, &str>("e"));
        assert_eq!(f.call(&(3,), failing).await, Err("e"));
        assert_eq!(
            f.call(&(3,), counted(&runs, Some("3".into())))
                .await
                .unwrap()
                .as_deref(),
            Some("3")
        );
        assert_eq!(runs.load(SeqCst), 3);
    })
    .await;
    // A new request starts empty.
    let v = with_request(
        RequestContext::new("/r", ""),
        f.call(&(1,), counted(&runs, Some("new".into()))),
    );
    assert_eq!(v.await.unwrap().as_deref(), Some("new"));
    assert_eq!(runs.load(SeqCst), 4);
    // Outside a request, nothing is memoized.
    f.call(&(1,), counted(&runs, None)).await.unwrap();
    f.call(&(1,), counted(&runs, None)).await.unwrap();
    assert_eq!(runs.load(SeqCst), 6);
    // Two functions with the same arguments do not share memos.
    let g = RequestCached::<(u32,), Option<String>>::new("other_request_fn").unwrap();
    with_request(RequestContext::new("/r", ""), async {
        f.call(&(1,), counted(&runs, Some("f".into())))
            .await
            .unwrap();
        assert_eq!(
            g.call(&(1,), counted(&runs, Some("g".into())))
                .await
                .unwrap()
                .as_deref(),
            Some("g")
        );
    })
    .await;
    assert_eq!(runs.load(SeqCst), 8);
    assert!(RequestCached::<(u32,), u32>::new("bad name").is_err());
}

/// A value that is not a serde type: a live handle.
#[derive(Clone)]
struct Handle {
    id: u32,
    shared: Arc<AtomicUsize>,
}

#[tokio::test]
async fn memory_fn_caches_values_that_are_not_serde_types_in_ram_only() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let fa = a.memory_fn::<(u32,), Handle>("handles", None).unwrap();
    let fb = b.memory_fn::<(u32,), Handle>("handles", None).unwrap();
    let runs = AtomicUsize::new(0);
    let make = |id| {
        let runs = &runs;
        move || {
            runs.fetch_add(1, SeqCst);
            ready(Ok::<_, Infallible>(Handle {
                id,
                shared: Arc::new(AtomicUsize::new(0)),
            }))
        }
    };
    let first = fa.call(&(1,), make(1)).await.unwrap();
    let again = fa.call(&(1,), make(99)).await.unwrap();
    assert_eq!(runs.load(SeqCst), 1);
    assert_eq!(again.id, 1);
    assert!(
        Arc::ptr_eq(&first.shared, &again.shared),
        "the same object, never serialized"
    );
    assert!(
        redis.keys("t:f:*").is_empty() && redis.keys("t:ks*").is_empty(),
        "nothing in Redis"
    );
    // Another node has its own RAM.
    assert_eq!(fb.call(&(1,), make(2)).await.unwrap().id, 2);
    assert_eq!(runs.load(SeqCst), 2);
    // clear_all drops this node's values.
    fa.clear();
    assert_eq!(fa.call(&(1,), make(3)).await.unwrap().id, 3);
    assert_eq!(runs.load(SeqCst), 3);
    // A TTL expires values.
    let short = a
        .memory_fn::<(u32,), Handle>("short_handles", Some(Duration::from_millis(500)))
        .unwrap();
    short.call(&(1,), make(4)).await.unwrap();
    assert_eq!(short.call(&(1,), make(5)).await.unwrap().id, 4);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(short.call(&(1,), make(6)).await.unwrap().id, 6);
    assert_eq!(runs.load(SeqCst), 5);
    // Works on a node without Redis too.
    let ram = CacheNode::builder().without_redis().build().await.unwrap();
    let fr = ram.memory_fn::<(u32,), Handle>("handles", None).unwrap();
    fr.call(&(1,), make(7)).await.unwrap();
    assert_eq!(fr.call(&(1,), make(8)).await.unwrap().id, 7);
}

#[tokio::test]
async fn owner_token_drop_removes_its_entries() {
    let n = CacheNode::builder().without_redis().build().await.unwrap();
    let f = n.memory_fn::<(u32,), Handle>("owned", None).unwrap();
    let runs = AtomicUsize::new(0);
    let make = |id| {
        let runs = &runs;
        move || {
            runs.fetch_add(1, SeqCst);
            ready(Ok::<_, Infallible>(Handle {
                id,
                shared: Arc::default(),
            }))
        }
    };
    let owner = n.owner_token();
    let other = n.owner_token();
    assert_eq!(f.call_owned(&owner, &(1,), make(1)).await.unwrap().id, 1);
    assert_eq!(f.call_owned(&owner, &(2,), make(2)).await.unwrap().id, 2);
    assert_eq!(f.call_owned(&owner, &(1,), make(9)).await.unwrap().id, 1);
    assert_eq!(runs.load(SeqCst), 2, "cached while the owner lives");
    // Entries are per owner.
    assert_eq!(f.call_owned(&other, &(1,), make(3)).await.unwrap().id, 3);
    assert_eq!(runs.load(SeqCst), 3);
    assert_eq!(n.stats().ram_entries, 3);

    drop(owner);
    assert_eq!(n.stats().ram_entries, 1, "the owner's two entries are gone");
    assert_eq!(
        f.call_owned(&other, &(1,), make(4)).await.unwrap().id,
        3,
        "others stay"
    );
    drop(other);
    assert_eq!(n.stats().ram_entries, 0);
}

#[test]
fn thread_local_fn_memoizes_per_thread_with_ttl() {
    let f = ThreadLocalFn::<(u32,), String>::new("tl_fn", None).unwrap();
    let mut runs = 0;
    let mut call = |f: &ThreadLocalFn<(u32,), String>, arg: u32, v: &str| {
        f.call(&(arg,), || {
            runs += 1;
            v.to_string()
        })
    };
    assert_eq!(call(&f, 1, "a"), "a");
    assert_eq!(call(&f, 1, "b"), "a");
    assert_eq!(call(&f, 2, "c"), "c");
    // Another thread has its own memo.
    let g = f.clone();
    let there = std::thread::spawn(move || {
        (
            g.call(&(1,), || "t1".to_string()),
            g.call(&(1,), || "t2".to_string()),
        )
    })
    .join()
    .unwrap();
    assert_eq!(there, ("t1".to_string(), "t1".to_string()));
    assert_eq!(call(&f, 1, "d"), "a", "this thread's memo is untouched");
    // clear_thread forgets this function's values only.
    let other = ThreadLocalFn::<(u32,), String>::new("tl_other", None).unwrap();
    assert_eq!(call(&other, 1, "o"), "o");
    f.clear_thread();
    assert_eq!(call(&f, 1, "e"), "e");
    assert_eq!(call(&other, 1, "x"), "o");
    // A TTL expires values.
    let short =
        ThreadLocalFn::<(u32,), String>::new("tl_short", Some(Duration::from_millis(500))).unwrap();
    assert_eq!(call(&short, 1, "s1"), "s1");
    assert_eq!(call(&short, 1, "s2"), "s1");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(call(&short, 1, "s3"), "s3");
    assert_eq!(runs, 6);
    assert!(ThreadLocalFn::<(u32,), String>::new("bad:name", None).is_err());
}
