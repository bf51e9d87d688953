//! Value codecs against a real redis-server: MessagePack and a codec of the
//! user's own through plain keys, cached functions and build jobs; values
//! written with another codec than the reader's, a counted miss that the
//! reader's own write then replaces; reserved format ids refused at build.
#![cfg(feature = "msgpack")]

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use cachenode::{
    metrics, Bincode, CacheNode, CacheNodeBuilder, Codec, Error, Layers, Lookup, MsgPack, Ttl,
    ValueRef, ValueSlot,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use serde::{Deserialize, Serialize};
use support::{eventually, Nodes, TestRedis};

/// Every node here: namespace `c`, 1 s per Redis call.
const NODES: Nodes = Nodes::new("c", Duration::from_secs(1));

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    tags: Vec<String>,
}

fn user(id: u64, name: &str) -> User {
    User {
        id,
        name: name.into(),
        tags: vec!["a".into(), "b".into()],
    }
}

/// A codec of the user's own: JSON, format id 64 (the first a user's codec
/// may take).
#[derive(Debug)]
struct Json;

impl Codec for Json {
    fn format_id(&self) -> u8 {
        64
    }

    fn name(&self) -> &str {
        "json"
    }

    fn encode(&self, value: ValueRef<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        serde_json::to_writer(out, &value).map_err(|e| e.to_string())
    }

    fn decode(&self, bytes: &[u8], _limit: usize, slot: ValueSlot<'_>) -> Result<(), String> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        slot.deserialize(&mut de).map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())
    }
}

/// A codec claiming format id `.0`.
#[derive(Debug)]
struct Claims(u8);

impl Codec for Claims {
    fn format_id(&self) -> u8 {
        self.0
    }

    fn encode(&self, value: ValueRef<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        (&Json as &dyn Codec).encode(value, out)
    }

    fn decode(&self, bytes: &[u8], limit: usize, slot: ValueSlot<'_>) -> Result<(), String> {
        (&Json as &dyn Codec).decode(bytes, limit, slot)
    }
}

/// A node on `redis` with `codec`.
async fn node(redis: &TestRedis, codec: impl Codec) -> CacheNode {
    support::connect(NODES.builder(&redis.url()).codec(codec)).await
}

/// The envelope under a Redis key: its codec's format id and its payload.
fn stored(redis: &TestRedis, key: &str) -> Option<(u8, Vec<u8>)> {
    let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(&mut redis.conn()).unwrap();
    bytes.map(|b| (b[2], b[20..].to_vec()))
}

/// The value of `cachenode_decode_failures_total{reason}` in `recorder`.
fn decode_failures(recorder: &PrometheusRecorder, reason: &str) -> u64 {
    let series = format!("{}{{reason=\"{reason}\"}} ", metrics::DECODE_FAILURES_TOTAL);
    recorder
        .handle()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

// `current_thread` tests (the default) with a thread-local recorder: a
// node's reads record their metrics on the test's thread, into this
// recorder alone.

#[tokio::test]
async fn a_value_written_with_another_codec_is_one_counted_miss_then_the_readers_write_replaces_it()
{
    let recorder = PrometheusBuilder::new().build_recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let redis = TestRedis::start();
    let a = node(&redis, Bincode).await;
    let b = node(&redis, MsgPack).await;
    support::subscribed([&a, &b]).await;

    a.set("u", &user(1, "ada"), Ttl::Default).await.unwrap();
    let (format, _) = stored(&redis, "c:k:u").unwrap();
    assert_eq!(format, 1, "bincode");
    assert_eq!(b.stats().decode_failures, 0);
    assert_eq!(decode_failures(&recorder, "other_codec"), 0);

    // B reads it: a miss, counted once, by reason; never a misread.
    assert_eq!(b.get::<User>("u").await.unwrap(), None);
    assert_eq!(b.stats().decode_failures, 1);
    assert_eq!(decode_failures(&recorder, "other_codec"), 1);
    assert_eq!(decode_failures(&recorder, "payload"), 0);
    // The value is sound: it stays, and A's nodes still read it.
    assert_eq!(stored(&redis, "c:k:u").unwrap().0, 1);
    let a2 = node(&redis, Bincode).await;
    assert_eq!(
        a2.with_layers(Layers::Redis)
            .get::<User>("u")
            .await
            .unwrap(),
        Some(user(1, "ada"))
    );
    assert_eq!(a2.stats().decode_failures, 0);

    // B's own write replaces it, and every MessagePack node reads it.
    b.set("u", &user(1, "ada b"), Ttl::Default).await.unwrap();
    assert_eq!(stored(&redis, "c:k:u").unwrap().0, 2, "msgpack");
    assert_eq!(b.get::<User>("u").await.unwrap(), Some(user(1, "ada b")));
    let b2 = node(&redis, MsgPack).await;
    assert_eq!(
        b2.with_layers(Layers::Redis)
            .get::<User>("u")
            .await
            .unwrap(),
        Some(user(1, "ada b"))
    );
    assert_eq!(b.stats().decode_failures, 1, "no second failure on B");
    assert_eq!(b2.stats().decode_failures, 0);
    assert_eq!(decode_failures(&recorder, "other_codec"), 1);

    // A heard B's write (its RAM copy is gone) and now misses in turn.
    let dropped = eventually(Duration::from_secs(5), || async {
        support::in_ram::<User>(&a, "u").await.is_none()
    })
    .await;
    assert!(dropped, "A still holds its copy in RAM");
    assert_eq!(a.get::<User>("u").await.unwrap(), None);
    assert_eq!(a.stats().decode_failures, 1);
    assert_eq!(decode_failures(&recorder, "other_codec"), 2);

    // The batch read takes the same route.
    assert_eq!(
        a.get_many::<User>(&["u"]).await.unwrap(),
        vec![None::<User>]
    );
    assert_eq!(a.stats().decode_failures, 2);
    assert_eq!(decode_failures(&recorder, "other_codec"), 3);
}

#[tokio::test]
async fn a_function_value_of_another_codec_is_one_counted_miss_and_the_refill_is_read_back() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let redis = TestRedis::start();
    let a = node(&redis, Bincode).await;
    let b = node(&redis, MsgPack).await;
    let runs = AtomicUsize::new(0);
    let compute = |name: &'static str| {
        let runs = &runs;
        move || async move {
            runs.fetch_add(1, SeqCst);
            Ok::<_, Infallible>(user(7, name))
        }
    };
    let f = |n: &CacheNode| n.func::<(u64,), User>("load").build().unwrap();
    let (fa, fb) = (f(&a), f(&b));
    assert_eq!(
        fa.call(&(7,), compute("from a")).await,
        Ok(user(7, "from a"))
    );
    assert_eq!(runs.load(SeqCst), 1);
    let key = fa.cache_key(&(7,)).unwrap();
    assert_eq!(
        fb.cache_key(&(7,)).unwrap(),
        key,
        "keys do not depend on the codec"
    );
    assert_eq!(stored(&redis, &key).unwrap().0, 1);

    // B misses once, counted, and computes its own value...
    assert_eq!(
        fb.call(&(7,), compute("from b")).await,
        Ok(user(7, "from b"))
    );
    assert_eq!(runs.load(SeqCst), 2);
    assert_eq!(b.stats().decode_failures, 1);
    assert_eq!(decode_failures(&recorder, "other_codec"), 1);
    // ...which replaces A's in Redis and is read back without computing, by
    // B from Redis and by another MessagePack node.
    assert_eq!(stored(&redis, &key).unwrap().0, 2);
    let from_redis = b
        .with_layers(Layers::Redis)
        .func::<(u64,), User>("load")
        .build()
        .unwrap();
    assert_eq!(
        from_redis.call(&(7,), compute("again")).await,
        Ok(user(7, "from b"))
    );
    let b2 = node(&redis, MsgPack).await;
    assert_eq!(
        f(&b2).call(&(7,), compute("again")).await,
        Ok(user(7, "from b"))
    );
    assert_eq!(runs.load(SeqCst), 2, "nothing recomputed");
    assert_eq!(b.stats().decode_failures, 1);
    assert_eq!(b2.stats().decode_failures, 0);
    assert_eq!(decode_failures(&recorder, "other_codec"), 1);
}

#[tokio::test]
async fn msgpack_values_round_trip_through_redis_as_maps_with_field_names() {
    let redis = TestRedis::start();
    let (w, r) = (node(&redis, MsgPack).await, node(&redis, MsgPack).await);
    let r = r.with_layers(Layers::Redis);
    w.set("u", &user(1, "ada"), Ttl::Default).await.unwrap();
    let (format, payload) = stored(&redis, "c:k:u").unwrap();
    assert_eq!(format, 2);
    // Real MessagePack, readable without the Rust type.
    let json: serde_json::Value = rmp_serde::from_slice(&payload).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"id": 1, "name": "ada", "tags": ["a", "b"]})
    );
    assert_eq!(r.get::<User>("u").await.unwrap(), Some(user(1, "ada")));
    assert!(w
        .fill("v", &"filled".to_owned(), Ttl::Default)
        .await
        .unwrap());
    assert_eq!(
        r.get_many::<String>(&["v", "none"]).await.unwrap(),
        vec![Some("filled".to_owned()), None]
    );
    // A value of another type under the same codec is still refused.
    assert_eq!(r.get::<String>("u").await.unwrap(), None);
    assert_eq!(r.stats().decode_failures, 1);
    assert_eq!(w.stats().decode_failures, 0);
}

#[tokio::test]
async fn msgpack_function_values_are_shared_between_nodes() {
    let redis = TestRedis::start();
    let (a, b) = (node(&redis, MsgPack).await, node(&redis, MsgPack).await);
    let f = |n: &CacheNode| n.func::<(u64, String), User>("users").build().unwrap();
    let (fa, fb) = (f(&a), f(&b));
    let got = fa
        .call(&(3, "x".into()), || async {
            Ok::<_, Infallible>(user(3, "computed"))
        })
        .await;
    assert_eq!(got, Ok(user(3, "computed")));
    assert_eq!(
        stored(&redis, &fa.cache_key(&(3, "x".into())).unwrap())
            .unwrap()
            .0,
        2
    );
    let seen = fb
        .call(&(3, "x".into()), || async {
            Ok::<_, Infallible>(user(3, "recomputed"))
        })
        .await;
    assert_eq!(seen, Ok(user(3, "computed")), "read from Redis");
    assert_eq!(b.stats().decode_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_node_stores_what_it_builds_with_its_codec() {
    let redis = TestRedis::start();
    let client = node(&redis, MsgPack).await;
    let builder = support::connect(
        NODES
            .builder(&redis.url())
            .codec(MsgPack)
            .builder_role(true),
    )
    .await;
    let build = |(n,): (u64,)| async move { Ok::<_, Infallible>(user(n, "built")) };
    let f = |n: &CacheNode| {
        n.func::<(u64,), User>("built")
            .async_compute(build)
            .build()
            .unwrap()
    };
    let (fc, _fb) = (f(&client), f(&builder));
    assert_eq!(fc.get_or_build(&(5,)).await.unwrap(), Lookup::BeingBuilt);
    let ready = eventually(Duration::from_secs(10), || async {
        fc.get_or_build(&(5,)).await.unwrap() == Lookup::Ready(user(5, "built"))
    })
    .await;
    assert!(ready, "the job was built and read back");
    let key = fc.cache_key(&(5,)).unwrap();
    assert_eq!(stored(&redis, &key).unwrap().0, 2);
    assert_eq!(client.stats().decode_failures, 0);
}

#[tokio::test]
async fn a_users_codec_round_trips_through_redis_and_other_codecs_miss_its_values() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let redis = TestRedis::start();
    let (w, r) = (node(&redis, Json).await, node(&redis, Json).await);
    let r = r.with_layers(Layers::Redis);
    w.set("u", &user(2, "grace"), Ttl::Default).await.unwrap();
    let (format, payload) = stored(&redis, "c:k:u").unwrap();
    assert_eq!(format, 64);
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        r#"{"id":2,"name":"grace","tags":["a","b"]}"#
    );
    assert_eq!(r.get::<User>("u").await.unwrap(), Some(user(2, "grace")));

    let f = |n: &CacheNode| n.func::<(u64,), Vec<u32>>("squares").build().unwrap();
    let got = f(&w)
        .call(&(3,), || async { Ok::<_, Infallible>(vec![1, 4, 9]) })
        .await;
    assert_eq!(got, Ok(vec![1, 4, 9]));
    let seen = f(&r)
        .call(&(3,), || async { Ok::<_, Infallible>(vec![0]) })
        .await;
    assert_eq!(seen, Ok(vec![1, 4, 9]), "read from Redis");
    assert_eq!(r.stats().decode_failures, 0);

    // Bytes in Redis that are not JSON: the codec's error is a counted
    // miss, and the value is removed as any undecodable one.
    let mut forged = cachenode::__fuzz::seal_with(Bincode, &5u64).unwrap();
    forged[2] = 64;
    let _: () = redis::cmd("SET")
        .arg("c:k:bad")
        .arg(&forged[..])
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(r.get::<u64>("bad").await.unwrap(), None);
    assert_eq!(r.stats().decode_failures, 1);
    assert_eq!(decode_failures(&recorder, "payload"), 1);
    assert!(!redis.exists("c:k:bad"), "removed");

    // The built-in codecs miss the user's values, and keep them.
    for other in [node(&redis, Bincode).await, node(&redis, MsgPack).await] {
        assert_eq!(other.get::<User>("u").await.unwrap(), None);
        assert_eq!(other.stats().decode_failures, 1);
    }
    assert_eq!(decode_failures(&recorder, "other_codec"), 2);
    assert_eq!(stored(&redis, "c:k:u").unwrap().0, 64);
}

#[tokio::test]
async fn a_users_codec_claiming_a_reserved_format_id_is_refused_at_build() {
    for id in [0, 1, 2, 3, 63] {
        let e = CacheNodeBuilder::new()
            .codec(Claims(id))
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Config(m) if m.contains(&format!("format id {id},")) && m.contains("64..=255")),
            "{id}: {e}"
        );
    }
    assert_eq!(cachenode::USER_CODEC_IDS, 64..=255);
    for id in [64, 255] {
        let n = CacheNodeBuilder::new()
            .codec(Claims(id))
            .build()
            .await
            .unwrap();
        n.set("k", &1u8, Ttl::Default).await.unwrap();
        assert_eq!(n.get::<u8>("k").await.unwrap(), Some(1));
    }
    // The built-in codecs keep their own ids.
    for codec in [&Bincode as &dyn Codec, &MsgPack] {
        assert!(codec.format_id() < 64, "{}", codec.name());
    }
    assert_eq!((Bincode::FORMAT_ID, MsgPack::FORMAT_ID), (1, 2));
}
