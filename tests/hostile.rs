//! Keys and arguments with any bytes, hostile or corrupt things planted in
//! Redis where clears look, and values nested far deeper than any decoder's
//! stack allows, against a real redis-server.

mod support;

use std::time::Duration;

use cachenode::{Args, CacheNode, CachedFn, Progress, Ttl};
use cachenode::{ArgsInKey, Layers};
use cachenode::{Bincode, CacheNodeBuilder, Codec, ValueRef, ValueSlot, MAX_DECODE_DEPTH};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use redis::Commands;
use serde::{Deserialize, Serialize};
use support::{eventually, Nodes, TestRedis};

/// Every node here: namespace `h`, the default 2 s per Redis call.
const NODES: Nodes = Nodes::new("h", Duration::from_secs(2));

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
    let (a, b) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
    for (i, key) in hostile_keys().iter().enumerate() {
        a.set(key, &(i as u64), Ttl::Default).await.unwrap();
        assert_eq!(b.get::<u64>(key).await.unwrap(), Some(i as u64), "{key:?}");
        assert!(a.has(key).await.unwrap());
        a.set(key, &(i as u64 + 100), Ttl::Default).await.unwrap();
        let dropped = eventually(Duration::from_secs(3), || async {
            b.with_layers(Layers::Ram).get::<u64>(key).await.unwrap() != Some(i as u64)
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
    assert_eq!(a.delete_all().await.unwrap(), 0);
    assert!(redis.keys("h:k:*").is_empty());
}

#[tokio::test]
async fn function_arguments_with_any_bytes_get_distinct_keys_and_clear_by_value() {
    let redis = TestRedis::start();
    let (a, b) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
    let f = |n: &CacheNode| {
        n.func::<Args, String>("hostile")
            .key_args(ArgsInKey::Each)
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
    let deleted = fa.delete_some(&filter).unwrap().run(|_| {}).await.unwrap();
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
    assert_eq!(fa.delete_all().await.unwrap(), 11);
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
    let (a, b) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
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
    let (a, b) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
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
    let n = NODES.node(&redis.url()).await;
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
    let (a, b) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
    a.set("k", &"value".to_owned(), Ttl::Default).await.unwrap();
    // The bytes under k are damaged behind the nodes' backs (cut short), as
    // a foreign writer or a failing disk would leave them.
    let good = raw_get(&redis, "h:k:k").unwrap();
    raw_set(&redis, "h:k:k", &good[..good.len() - 1]);
    let from_ram = a.with_layers(Layers::Ram).get::<String>("k").await.unwrap();
    assert_eq!(from_ram.as_deref(), Some("value"), "the writer's RAM copy");
    // Another node reads it: a counted miss, and the value is removed...
    assert_eq!(b.get::<String>("k").await.unwrap(), None);
    assert_eq!(b.stats().decode_failures, 1);
    assert_eq!(raw_get(&redis, "h:k:k"), None);
    // ...and the writer stops serving its copy of what Redis no longer holds.
    let dropped = eventually(Duration::from_secs(1), || async {
        a.with_layers(Layers::Ram)
            .get::<String>("k")
            .await
            .unwrap()
            .is_none()
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
    let (a, b) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
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
    let a = NODES.node(&redis.url()).await;
    a.set("k", &"value".to_owned(), Ttl::Default).await.unwrap();
    let good = raw_get(&redis, "h:k:k").unwrap();
    raw_set(&redis, "h:k:k", &good[..good.len() - 1]);
    // A Redis-only read on the node that holds the RAM copy: a node does not
    // hear its own announcements, so the read itself drops the copy.
    assert_eq!(
        a.with_layers(Layers::Redis)
            .get::<String>("k")
            .await
            .unwrap(),
        None
    );
    assert_eq!(a.stats().decode_failures, 1);
    assert_eq!(raw_get(&redis, "h:k:k"), None);
    assert_eq!(
        a.with_layers(Layers::Ram).get::<String>("k").await.unwrap(),
        None
    );
}

// ---------------------------------------------------------------------------
// Hostile or corrupt things planted in Redis, where clears look
// ---------------------------------------------------------------------------

fn victim(n: &CacheNode) -> CachedFn<Args, String> {
    n.func::<Args, String>("victim")
        .key_args(ArgsInKey::Each)
        .build()
        .unwrap()
}

fn va(user: u32, lang: &str) -> Args {
    Args::new()
        .arg("user", &user)
        .unwrap()
        .arg("lang", lang)
        .unwrap()
}

fn fr() -> Args {
    Args::new().arg("lang", "fr").unwrap()
}

/// `users` × fr/en values of `f`, each `lang-user`.
async fn victim_values(f: &CachedFn<Args, String>, users: u32) {
    for user in 0..users {
        for lang in ["fr", "en"] {
            let v = format!("{lang}-{user}");
            f.call(&va(user, lang), || async { Ok::<_, ()>(v.clone()) })
                .await
                .unwrap();
        }
    }
}

/// The `;name=hash` part of a full-args key.
fn part_of(key: &str, name: &str) -> String {
    let part = key
        .split(';')
        .find(|p| p.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{key} has no part {name}"));
    format!(";{part}")
}

/// Adds `member` (any bytes) to shard `shard` of the victim's key set.
fn plant_member(redis: &TestRedis, shard: u64, member: &[u8]) {
    let added: u64 = redis
        .conn()
        .sadd(format!("h:ks:victim:{shard}"), member)
        .unwrap();
    assert_eq!(added, 1);
}

#[tokio::test]
async fn key_set_members_shaped_like_the_namespace_do_not_panic_a_clear() {
    let redis = TestRedis::start();
    let a = NODES.node(&redis.url()).await;
    let f = victim(&a);
    victim_values(&f, 3).await;
    let lang_fr = part_of(&f.cache_key(&va(0, "fr")).unwrap(), "lang");
    // Members a corrupt or hostile writer put in the key set, naming keys
    // that exist: the namespace alone, and the namespace followed by other
    // bytes (a multibyte character first); the last two carry the filter's
    // part, so the walk of `delete_some(lang = fr)` looks at them.
    let planted = [
        "h".to_string(),
        "h☃".to_string(),
        format!("h{lang_fr}"),
        format!("hé{lang_fr}"),
    ];
    for (shard, m) in (0u64..).zip(&planted) {
        plant_member(&redis, shard, m.as_bytes());
        let _: () = redis.conn().set(m, "not the victim's").unwrap();
    }
    let mut last = Progress::default();
    let deleted = f
        .delete_some(&fr())
        .unwrap()
        .run(|p| last = p)
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    let counted = Progress {
        deleted: 3,
        foreign: 2,
        finished: true,
    };
    assert_eq!(last, counted, "the two that carry the part are met");
    for user in 0..3 {
        assert!(!redis.exists(&f.cache_key(&va(user, "fr")).unwrap()));
        assert!(redis.exists(&f.cache_key(&va(user, "en")).unwrap()));
    }
    assert_eq!(f.delete_all_with(|p| last = p).await.unwrap(), 3);
    assert_eq!(last, counted, "then the other two");
    assert!(redis.keys("h:f:victim:*").is_empty());
    for m in &planted {
        assert!(redis.exists(m), "{m:?} is not the victim's to delete");
    }
    assert_eq!(f.key_set_size().await.unwrap(), 0);
}

#[tokio::test]
async fn a_clear_never_deletes_keys_a_key_set_names_that_the_function_does_not_own() {
    let redis = TestRedis::start();
    let a = NODES.node(&redis.url()).await;
    let f = victim(&a);
    victim_values(&f, 3).await;
    let other = a
        .func::<Args, String>("other")
        .key_args(ArgsInKey::Each)
        .build()
        .unwrap();
    other
        .call(&va(0, "fr"), || async { Ok::<_, ()>("theirs".to_string()) })
        .await
        .unwrap();
    let lang_fr = part_of(&f.cache_key(&va(0, "fr")).unwrap(), "lang");
    // Keys that are not the victim's values, named in its key set: a plain
    // value (its name carries the filter's part), another function's value,
    // another namespace's value, the bus's own keys, and a member that is
    // not even UTF-8.
    let plain = format!("precious{lang_fr}");
    a.set(&plain, &7u32, Ttl::Default).await.unwrap();
    let other_key = other.cache_key(&va(0, "fr")).unwrap();
    let elsewhere = format!("x:f:victim:|{lang_fr}");
    let _: () = redis.conn().set(&elsewhere, "another namespace").unwrap();
    let mut binary = vec![0xFF, 0xFE];
    binary.extend_from_slice(lang_fr.as_bytes());
    let planted: Vec<Vec<u8>> = vec![
        format!("h:k:{plain}").into_bytes(),
        other_key.clone().into_bytes(),
        elsewhere.clone().into_bytes(),
        b"h:{bus}:seq".to_vec(),
        b"h:{bus}:log".to_vec(),
        binary,
    ];
    for (shard, m) in (0u64..).zip(&planted) {
        plant_member(&redis, shard % 16, m);
    }
    assert!(redis.exists("h:{bus}:seq") && redis.exists("h:{bus}:log"));

    let mut last = Progress::default();
    let deleted = f
        .delete_some(&fr())
        .unwrap()
        .run(|p| last = p)
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    assert_eq!(last.foreign, 4, "the four that carry the part");
    assert_eq!(f.delete_all_with(|p| last = p).await.unwrap(), 3);
    assert_eq!(last.foreign, 2, "the bus's keys");
    assert!(redis.keys("h:f:victim:*").is_empty());
    // Everything else is still there.
    assert_eq!(a.get::<u32>(&plain).await.unwrap(), Some(7));
    assert!(redis.exists(&other_key));
    assert!(redis.exists(&elsewhere));
    assert!(redis.exists("h:{bus}:seq") && redis.exists("h:{bus}:log"));
    assert_eq!(
        other
            .call(&va(0, "fr"), || async {
                Ok::<_, ()>("recomputed".to_string())
            })
            .await
            .unwrap(),
        "theirs"
    );
    // The foreign members are out of the key set.
    assert_eq!(f.key_set_size().await.unwrap(), 0);
}

#[tokio::test]
async fn a_key_set_of_the_wrong_type_makes_clear_fail_clearly_until_it_is_removed() {
    let redis = TestRedis::start();
    let a = NODES.node(&redis.url()).await;
    let f = victim(&a);
    victim_values(&f, 3).await;
    // A string where shard 5 of the key set belongs (any members it had are
    // lost with it: the values they named stay until their TTL).
    let _: () = redis.conn().set("h:ks:victim:5", "not a set").unwrap();
    let wrong_type = |e: &cachenode::Error, op: &str| {
        matches!(e, cachenode::Error::Redis { op: o, .. } if *o == op)
            && e.to_string().contains("WRONGTYPE")
    };
    let err = f.delete_some(&fr()).unwrap().run(|_| {}).await.unwrap_err();
    assert!(wrong_type(&err, "keyset_scan"), "{err}");
    let err = f.delete_all().await.unwrap_err();
    assert!(wrong_type(&err, "keyset_scan"), "{err}");
    let err = f.key_set_size().await.unwrap_err();
    assert!(wrong_type(&err, "keyset_size"), "{err}");
    // The registry of functions of the wrong type: listing and pruning fail
    // clearly, calls still answer.
    let _: () = redis.conn().del("h:ks").unwrap();
    let _: () = redis.conn().rpush("h:ks", "not a set").unwrap();
    let err = a.key_sets().await.unwrap_err();
    assert!(wrong_type(&err, "keyset_functions"), "{err}");
    let err = a.prune_key_sets().await.unwrap_err();
    assert!(wrong_type(&err, "keyset_functions"), "{err}");
    assert_eq!(
        f.call(&va(9, "fr"), || async { Ok::<_, ()>("fr-9".to_string()) })
            .await
            .unwrap(),
        "fr-9"
    );
    // Once the foreign keys are gone, a clear finishes: every value still
    // in Redis and recorded in the key set is deleted.
    let _: () = redis.conn().del(&["h:ks:victim:5", "h:ks"]).unwrap();
    let left = redis.keys("h:f:victim:*").len() as u64;
    assert!(left > 0);
    assert_eq!(f.delete_all().await.unwrap(), left);
    assert!(redis.keys("h:f:victim:*").is_empty());
}

#[tokio::test]
async fn corrupt_or_wrong_typed_values_under_function_keys_are_recomputed_and_cleared() {
    let redis = TestRedis::start();
    let (a, b) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
    let (fa, fb) = (victim(&a), victim(&b));
    victim_values(&fa, 1).await;
    let garbage = fa.cache_key(&va(0, "fr")).unwrap();
    let listed = fa.cache_key(&va(0, "en")).unwrap();
    let corrupt = |redis: &TestRedis| {
        let mut conn = redis.conn();
        let _: () = conn.set(&garbage, b"\xCB\x01 not an envelope").unwrap();
        let _: () = conn.del(&listed).unwrap();
        let _: () = conn.rpush(&listed, "a list").unwrap();
    };
    corrupt(&redis);
    // B never saw them: it reads Redis, finds junk, computes and stores.
    for (args, v) in [(va(0, "fr"), "fr-new"), (va(0, "en"), "en-new")] {
        let got = fb
            .call(&args, || async { Ok::<_, ()>(v.to_string()) })
            .await
            .unwrap();
        assert_eq!(got, v);
    }
    assert_eq!(
        b.stats().decode_failures,
        1,
        "the undecodable one is counted"
    );
    // What B stored over them is real: a third node reads both without
    // computing.
    let c = NODES.node(&redis.url()).await;
    let fc = victim(&c);
    for (args, v) in [(va(0, "fr"), "fr-new"), (va(0, "en"), "en-new")] {
        let got = fc
            .call(&args, || async { Ok::<_, ()>("computed".to_string()) })
            .await
            .unwrap();
        assert_eq!(got, v);
    }
    // Junk under the keys is deleted (and counted) by clears like any value.
    corrupt(&redis);
    assert_eq!(fa.delete_some(&fr()).unwrap().run(|_| {}).await.unwrap(), 1);
    assert_eq!(fa.delete_all().await.unwrap(), 1);
    assert!(redis.keys("h:f:victim:*").is_empty());
    assert_eq!(fa.key_set_size().await.unwrap(), 0);
}

#[tokio::test]
async fn pruning_removes_members_that_are_not_utf8_or_gone_and_rehomes_misplaced_ones() {
    let redis = TestRedis::start();
    let a = NODES.node(&redis.url()).await;
    let f = victim(&a);
    victim_values(&f, 2).await;
    // Not UTF-8; a key that is gone; a live key in a shard not its own.
    plant_member(&redis, 3, &[0xFF, 0xFE, b'x']);
    plant_member(&redis, 4, b"h:f:victim:|gone");
    let live = f.cache_key(&va(0, "fr")).unwrap();
    let own: u64 = (0..16)
        .find(|s| {
            redis
                .conn()
                .sismember(format!("h:ks:victim:{s}"), &live)
                .unwrap()
        })
        .unwrap();
    plant_member(&redis, (own + 1) % 16, live.as_bytes());
    assert_eq!(f.key_set_size().await.unwrap(), 7);
    assert_eq!(a.prune_key_sets().await.unwrap(), 2);
    assert_eq!(
        f.key_set_size().await.unwrap(),
        4,
        "the live one is kept once"
    );
    assert_eq!(a.prune_key_sets().await.unwrap(), 0);
    assert_eq!(f.delete_all().await.unwrap(), 4);
    assert_eq!(f.key_set_size().await.unwrap(), 0);
}

#[tokio::test]
async fn a_clear_generation_of_the_wrong_type_stops_storing_until_clear_all_replaces_it() {
    let redis = TestRedis::start();
    let (a, b) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
    let (fa, fb) = (victim(&a), victim(&b));
    victim_values(&fa, 1).await;
    let _: () = redis
        .conn()
        .rpush("h:gen:victim", "not a generation")
        .unwrap();
    // Values already stored are served as before...
    let got = fb
        .call(&va(0, "fr"), || async {
            Ok::<_, ()>("recomputed".to_string())
        })
        .await
        .unwrap();
    assert_eq!(got, "fr-0");
    // ...and new ones are computed and answered, not stored in Redis: the
    // call cannot tell whether a clear_all ran while it computed.
    let got = fb
        .call(&va(5, "fr"), || async { Ok::<_, ()>("fr-5".to_string()) })
        .await
        .unwrap();
    assert_eq!(got, "fr-5");
    let key5 = fb.cache_key(&va(5, "fr")).unwrap();
    assert!(!redis.exists(&key5));
    // clear_all replaces it with a generation of its own; storing resumes.
    assert_eq!(fa.delete_all().await.unwrap(), 2);
    let kind: String = redis::cmd("TYPE")
        .arg("h:gen:victim")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(kind, "string");
    let got = fa
        .call(&va(5, "fr"), || async {
            Ok::<_, ()>("fr-5 again".to_string())
        })
        .await
        .unwrap();
    assert_eq!(got, "fr-5 again");
    assert!(redis.exists(&key5));
}

// ---------------------------------------------------------------------------
// Values nested far deeper than a decoder's stack allows
// ---------------------------------------------------------------------------

/// A recursive enum: each `Node` is one level deeper.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Tree {
    Leaf(u64),
    Node(Box<Tree>),
}

/// A recursive struct: a linked list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Link {
    next: Option<Box<Link>>,
}

/// How many levels the planted values nest.
const DEEP: usize = 100_000;

/// The stack of the thread that reads them: half a tokio worker's (a
/// debug build reads a value at the limit through a user's codec, the
/// costliest path, in a little over 512 KiB).
const STACK: usize = 1024 * 1024;

/// Runs `test` on a current-thread runtime, on a thread of its own with a
/// stack of [`STACK`] bytes, with a metrics recorder local to that thread
/// (every read of the test runs there, so it records there alone). Fails
/// if it takes more than two minutes: a read must not spin either.
fn on_a_small_stack<F, Fut>(test: F)
where
    F: FnOnce(PrometheusHandle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (done, finished) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("small-stack".into())
        .stack_size(STACK)
        .spawn(move || {
            let recorder = PrometheusBuilder::new().build_recorder();
            let _local = ::metrics::set_default_local_recorder(&recorder);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(test(recorder.handle()));
            done.send(()).unwrap();
        })
        .unwrap();
    // A panic drops the sender: then `join` reports it.
    if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        finished.recv_timeout(Duration::from_secs(120))
    {
        panic!("the test's reads did not finish within 2 minutes");
    }
    thread.join().expect("the test thread panicked");
}

/// The value of `cachenode_decode_failures_total{reason}`.
fn decode_failures(metrics: &PrometheusHandle, reason: &str) -> u64 {
    let series = format!(
        "{}{{reason=\"{reason}\"}} ",
        cachenode::metrics::DECODE_FAILURES_TOTAL
    );
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// The envelope of a value nested `levels` deep, from the stored
/// envelopes of a value (`zero`) and of that value wrapped once (`one`):
/// `zero`'s header (its type fingerprint), `levels` times the bytes the
/// wrapping adds, then `zero`'s payload.
fn nested(zero: &[u8], one: &[u8], levels: usize) -> Vec<u8> {
    let (header, inner) = zero.split_at(20);
    let level = one[20..]
        .strip_suffix(inner)
        .expect("the wrapped value ends with the value");
    let mut out = header.to_vec();
    for _ in 0..levels {
        out.extend_from_slice(level);
    }
    out.extend_from_slice(inner);
    out
}

/// The envelope of a `T` nested `levels` deep, from the envelopes `writer`
/// stores for `zero` and for `one` (`zero` wrapped once).
async fn deep<T>(redis: &TestRedis, writer: &CacheNode, zero: T, one: T, levels: usize) -> Vec<u8>
where
    T: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    writer.set("zero", &zero, Ttl::Never).await.unwrap();
    writer.set("one", &one, Ttl::Never).await.unwrap();
    let (zero, one) = (
        raw_get(redis, "h:k:zero").unwrap(),
        raw_get(redis, "h:k:one").unwrap(),
    );
    nested(&zero, &one, levels)
}

/// Plants under the plain key `key` a `T` nested [`DEEP`] levels (see
/// [`deep`]).
async fn plant_deep<T>(redis: &TestRedis, writer: &CacheNode, key: &str, zero: T, one: T)
where
    T: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    let bytes = deep(redis, writer, zero, one, DEEP).await;
    raw_set(redis, &format!("h:k:{key}"), &bytes);
}

/// `Tree::Leaf(leaf)` inside `n` `Node`s: its `u64` is at level `n + 1`.
fn tree(n: usize, leaf: u64) -> Tree {
    (0..n).fold(Tree::Leaf(leaf), |t, _| Tree::Node(Box::new(t)))
}

/// A node made by `build` reads a recursive value nested [`DEEP`] levels,
/// under a plain key and under a cached function's key, on a [`STACK`]-byte
/// stack: each is a miss (a cached call recomputes), counted once as a
/// decode failure of reason `too_deep`, and removed from Redis. A value
/// nested to [`MAX_DECODE_DEPTH`] reads on the same stack, one level more
/// is refused; a corrupt value 40 levels deep is refused at once.
fn deep_values_are_counted_misses(build: fn(&str) -> CacheNodeBuilder) {
    on_a_small_stack(move |metrics| async move {
        let redis = TestRedis::start();
        let writer = support::connect(build(&redis.url())).await;
        let reader = support::connect(build(&redis.url())).await;
        let leaf = Tree::Leaf(7);
        let node = Tree::Node(Box::new(leaf.clone()));

        // A plain key holding a Tree.
        plant_deep(&redis, &writer, "tree", leaf.clone(), node.clone()).await;
        assert_eq!(reader.get::<Tree>("tree").await.unwrap(), None);
        assert_eq!(reader.stats().decode_failures, 1);
        assert_eq!(decode_failures(&metrics, "too_deep"), 1);
        assert_eq!(decode_failures(&metrics, "payload"), 0);
        assert_eq!(raw_get(&redis, "h:k:tree"), None, "removed");

        // A plain key holding a linked list.
        let end = Link { next: None };
        let link = Link {
            next: Some(Box::new(end.clone())),
        };
        plant_deep(&redis, &writer, "list", end, link).await;
        assert_eq!(reader.get::<Link>("list").await.unwrap(), None);
        assert_eq!(reader.stats().decode_failures, 2);
        assert_eq!(decode_failures(&metrics, "too_deep"), 2);
        assert_eq!(raw_get(&redis, "h:k:list"), None, "removed");

        // A cached function's value.
        let f = |n: &CacheNode| n.func::<(u64,), Tree>("deep").build().unwrap();
        let (fw, fr) = (f(&writer), f(&reader));
        let given = |t: &Tree| {
            let t = t.clone();
            move || async move { Ok::<_, ()>(t) }
        };
        assert_eq!(fw.call(&(0,), given(&leaf)).await, Ok(leaf.clone()));
        assert_eq!(fw.call(&(1,), given(&node)).await, Ok(node.clone()));
        let (zero, one) = (
            raw_get(&redis, &fw.cache_key(&(0,)).unwrap()).unwrap(),
            raw_get(&redis, &fw.cache_key(&(1,)).unwrap()).unwrap(),
        );
        let key = fw.cache_key(&(2,)).unwrap();
        raw_set(&redis, &key, &nested(&zero, &one, DEEP));
        let runs = std::sync::atomic::AtomicUsize::new(0);
        let compute = || async {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>(Tree::Leaf(9))
        };
        assert_eq!(fr.call(&(2,), compute).await, Ok(Tree::Leaf(9)));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(reader.stats().decode_failures, 3);
        assert_eq!(decode_failures(&metrics, "too_deep"), 3);
        // The recomputed value replaced it: the reader serves it, the
        // writer reads it from Redis.
        assert_eq!(fr.call(&(2,), compute).await, Ok(Tree::Leaf(9)));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            fw.call(&(2,), given(&leaf)).await,
            Ok(Tree::Leaf(9)),
            "stored over the deep value"
        );
        assert_eq!(reader.stats().decode_failures, 3);
        assert_eq!(writer.stats().decode_failures, 0);
        assert_eq!(decode_failures(&metrics, "payload"), 0);

        // At the limit, the value reads; one level more is refused.
        let edge = tree(MAX_DECODE_DEPTH - 1, 7);
        let bytes = deep(
            &redis,
            &writer,
            leaf.clone(),
            node.clone(),
            MAX_DECODE_DEPTH - 1,
        )
        .await;
        raw_set(&redis, "h:k:edge", &bytes);
        assert_eq!(reader.get::<Tree>("edge").await.unwrap(), Some(edge));
        assert_eq!(reader.stats().decode_failures, 3);
        let bytes = deep(
            &redis,
            &writer,
            leaf.clone(),
            node.clone(),
            MAX_DECODE_DEPTH,
        )
        .await;
        raw_set(&redis, "h:k:past", &bytes);
        assert_eq!(reader.get::<Tree>("past").await.unwrap(), None);
        assert_eq!(reader.stats().decode_failures, 4);
        assert_eq!(decode_failures(&metrics, "too_deep"), 4);

        // A corrupt value well within the limit: its last bytes cut off.
        let mut bytes = deep(&redis, &writer, tree(0, u64::MAX), tree(1, u64::MAX), 40).await;
        bytes.truncate(bytes.len() - 4);
        raw_set(&redis, "h:k:cut", &bytes);
        assert_eq!(reader.get::<Tree>("cut").await.unwrap(), None);
        assert_eq!(reader.stats().decode_failures, 5);
        assert_eq!(decode_failures(&metrics, "payload"), 1);
        assert_eq!(decode_failures(&metrics, "too_deep"), 4);
        assert_eq!(raw_get(&redis, "h:k:cut"), None, "removed");
    });
}

#[test]
fn deep_bincode_values_are_counted_misses_not_a_stack_overflow() {
    deep_values_are_counted_misses(|url| NODES.builder(url));
}

#[cfg(feature = "msgpack")]
#[test]
fn deep_msgpack_values_are_counted_misses_not_a_stack_overflow() {
    deep_values_are_counted_misses(|url| NODES.builder(url).codec(cachenode::MsgPack));
}

/// A codec of the user's own, run through the object-safe trait: bincode
/// under format id 64.
#[derive(Debug)]
struct OwnBincode;

impl Codec for OwnBincode {
    fn format_id(&self) -> u8 {
        64
    }

    fn encode(&self, value: ValueRef<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        Bincode.encode(value, out)
    }

    fn decode(&self, bytes: &[u8], limit: usize, slot: ValueSlot<'_>) -> Result<(), String> {
        Bincode.decode(bytes, limit, slot)
    }
}

#[test]
fn deep_values_of_a_users_codec_are_counted_misses_not_a_stack_overflow() {
    deep_values_are_counted_misses(|url| NODES.builder(url).codec(OwnBincode));
}

/// A build job as builders read it from the stream `{ns}:jobs` (field `j`):
/// the version byte 1, then the job in bincode (as `func/jobs.rs` writes
/// it).
#[derive(Serialize)]
struct PlantedJob<'a> {
    func: &'a str,
    record_args: bool,
    args: Vec<u8>,
    redis_key: &'a str,
    ttl_ms: u64,
    timeout_ms: u64,
}

/// Queues a job of `func` building `redis_key` from `args`; its stream id.
fn plant_job(redis: &TestRedis, func: &str, args: Vec<u8>, redis_key: &str) -> String {
    let job = PlantedJob {
        func,
        record_args: false,
        args,
        redis_key,
        ttl_ms: 60_000,
        timeout_ms: 5_000,
    };
    let mut bytes = vec![1u8];
    bytes.extend(bincode::serde::encode_to_vec(&job, bincode::config::standard()).unwrap());
    redis::cmd("XADD")
        .arg("h:jobs")
        .arg("*")
        .arg("j")
        .arg(bytes)
        .query(&mut redis.conn())
        .unwrap()
}

#[test]
fn a_build_job_whose_arguments_nest_too_deep_is_dropped_not_a_stack_overflow() {
    on_a_small_stack(|_| async move {
        let redis = TestRedis::start();
        let builder = NODES.builder_node(&redis.url()).await;
        let depth = |t: &Tree| {
            let (mut t, mut n) = (t, 0u64);
            while let Tree::Node(inner) = t {
                (t, n) = (inner, n + 1);
            }
            n
        };
        let _f = builder
            .func::<(Tree,), u64>("deepargs")
            .async_compute(move |(t,): (Tree,)| async move {
                Ok::<_, std::convert::Infallible>(depth(&t))
            })
            .build()
            .unwrap();
        // The arguments `(Tree,)` in bincode: a Node is the variant index
        // 1, a Leaf(7) the bytes 0 7.
        let mut deep = vec![1u8; DEEP];
        deep.extend_from_slice(&[0, 7]);
        plant_job(&redis, "deepargs", deep, "h:f:deepargs:deep");
        let last = plant_job(&redis, "deepargs", vec![1, 1, 0, 7], "h:f:deepargs:two");
        // Both are delivered (read in order) and done with (acknowledged):
        // the shallow one built, the deep one dropped as a failed build.
        let handled = || {
            let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg("h:jobs")
                .query(&mut redis.conn())
                .unwrap();
            // No group yet: the builder has not read.
            let field = |name: &str| groups.first().and_then(|g| g.get(name)).cloned();
            field("last-delivered-id") == Some(redis::Value::BulkString(last.clone().into()))
                && field("pending") == Some(redis::Value::Int(0))
        };
        let done = eventually(Duration::from_secs(10), || async { handled() }).await;
        assert!(done, "the builder handles both jobs");
        assert!(redis.exists("h:f:deepargs:two"));
        assert!(!redis.exists("h:f:deepargs:deep"), "nothing built for it");
    });
}
