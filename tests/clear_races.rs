//! Interleavings around function clears and single flight, each against a
//! real redis-server (see `support`): a prune racing `clear_all`, a caller
//! of a Redis-only function after `clear_all`, a computation begun before
//! the namespace `clear_all`. Each says which promise it holds the code to;
//! each failed before its fix.

mod support;

use std::convert::Infallible;
use std::future::ready;
use std::time::Duration;

use cachenode::CacheNode;
use cachenode::Layers;
use redis::Commands;
use support::{Nodes, Proxy, TestRedis};
use tokio::sync::oneshot;

/// Every node here: namespace `t`, 5 s per Redis call (some go through a
/// slowed-down proxy).
const NODES: Nodes = Nodes::new("t", Duration::from_secs(5));

/// The promise of `singleflight`: "a caller that arrives after an
/// invalidation of the key does not join a flight begun before it". A
/// function cached in Redis only has no RAM fill ticket, so the staleness
/// check of its flights never says stale: a caller that starts after
/// `clear_all` returned joins the flight begun before it and gets the value
/// computed from the data the clear was meant to drop (however long after the
/// clear that computation ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_only_caller_after_clear_all_does_not_join_the_flight_begun_before() {
    let redis = TestRedis::start();
    let node = NODES.node(&redis.url()).await;
    let f = node
        .func::<(u64,), String>("so")
        .layers(Layers::Redis)
        .build()
        .unwrap();
    let (started_tx, started_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let leader = tokio::spawn({
        let f = f.clone();
        async move {
            f.call(&(1,), || async move {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                Ok::<_, Infallible>("computed before the clear".to_string())
            })
            .await
        }
    });
    started_rx.await.unwrap();
    f.delete_all().await.expect("clear_all");

    // A caller that begins after clear_all returned Ok. Its first poll
    // reaches the flight table synchronously (no RAM, no await before it).
    let mut after = Box::pin(f.call(&(1,), || {
        ready(Ok::<_, Infallible>("computed after the clear".to_string()))
    }));
    let _ = futures::poll!(after.as_mut());
    release_tx.send(()).unwrap();
    assert_eq!(
        leader.await.unwrap().unwrap(),
        "computed before the clear",
        "the leader gets its own value"
    );
    assert_eq!(
        after.await.unwrap(),
        "computed after the clear",
        "a caller after clear_all got the value of a flight begun before it"
    );
}

/// The promise of `clear_all` (README, `keysets`): once it returns Ok, no
/// value computed before it survives in Redis. `prune_key_sets` (as the
/// background sweep runs it) forgets a member it saw gone by `SREM`, then
/// puts it back if the key exists again: a value written between its look and
/// its `SREM` is out of the key set for one round trip. A `clear_all` whose
/// walk passes the shard in that round trip misses the value, and the pruner
/// then records it again: the value computed before the clear is served from
/// Redis after it.
///
/// The pruning node talks to Redis through a proxy that adds 100 ms each way,
/// so that round trip is wide; MONITOR tells the test when to act.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_from_before_clear_all_does_not_survive_a_concurrent_prune() {
    let redis = TestRedis::start();
    let mut r = redis.conn();
    let func = |n: &CacheNode| n.func::<(u64,), String>("pr").build().unwrap();
    let clearer = NODES.node(&redis.url()).await;
    let writer = NODES.node(&redis.url()).await;
    let proxy = Proxy::start(redis.port());
    let pruner = NODES.node(&proxy.url()).await;
    let (fc, fw) = (func(&clearer), func(&writer));
    let key = fc.cache_key(&(1,)).unwrap();

    // A key-set member whose value went (expired or evicted: deleted here).
    fc.call(&(1,), || ready(Ok::<_, Infallible>("v0".to_string())))
        .await
        .unwrap();
    let _: () = r.del(&key).unwrap();

    let mut monitor = redis.monitor();
    proxy.set_delay(Duration::from_millis(100));
    let prune = tokio::spawn(async move { pruner.prune_key_sets().await });

    // The pruner sees it gone...
    monitor.next_with(&["\"EXISTS\"", &key]).await;
    // ...a call computes it again before any clear...
    let v1 = fw
        .call(&(1,), || {
            ready(Ok::<_, Infallible>("computed before the clear".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(v1, "computed before the clear");
    // ...the pruner's forget reaches the server (it used to take the entry
    // out of the key set and put it back a round trip later), and clear_all
    // runs to the end in that round trip.
    monitor.next_with(&["EVAL", "t:ks:pr:", &key]).await;
    fc.delete_all().await.expect("clear_all");
    prune.await.unwrap().expect("prune");

    let stored: Option<Vec<u8>> = r.get(&key).unwrap();
    let reader = NODES.node(&redis.url()).await;
    let got = func(&reader)
        .call(&(1,), || {
            ready(Ok::<_, Infallible>("computed after the clear".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(
        (stored.is_some(), got.as_str()),
        (false, "computed after the clear"),
        "a value computed before clear_all is still in Redis and served after it"
    );
}

/// The namespace-wide `clear_all` deletes every value but gives no function
/// a new clear generation: a computation that started before it (and that no
/// RAM fence stops: a function cached in Redis only, or a node whose bus has
/// not delivered the clear yet) writes its value after the clear returned,
/// and every node then reads that value from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computation_from_before_the_namespace_clear_all_is_not_stored_after_it() {
    let redis = TestRedis::start();
    let node = NODES.node(&redis.url()).await;
    let f = node
        .func::<(u64,), String>("ns")
        .layers(Layers::Redis)
        .build()
        .unwrap();
    let (started_tx, started_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let slow = tokio::spawn({
        let f = f.clone();
        async move {
            f.call(&(1,), || async move {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                Ok::<_, Infallible>("computed before the clear".to_string())
            })
            .await
        }
    });
    started_rx.await.unwrap();
    node.delete_all().await.expect("namespace clear_all");
    release_tx.send(()).unwrap();
    slow.await.unwrap().unwrap();

    let other = NODES.node(&redis.url()).await;
    let got = other
        .func::<(u64,), String>("ns")
        .build()
        .unwrap()
        .call(&(1,), || {
            ready(Ok::<_, Infallible>("computed after the clear".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(
        got, "computed after the clear",
        "a value computed before the namespace clear_all was stored after it"
    );
}
