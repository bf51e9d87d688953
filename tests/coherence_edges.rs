//! Interleavings at the edges of the staleness promise (once an
//! invalidation call returns `Ok`, no node serves the old value from RAM
//! later than `deletion_check_period` plus one Redis round trip): a
//! failover the node never sees as an outage, a single flight joined after
//! an invalidation, values that live in RAM alone, and a foreign log under
//! the README's ACL. Each used to fail.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cachenode::Layers;
use cachenode::{CacheNode, Ttl};
use redis::Commands;
use support::{bus_seq, clients, eventually, in_ram, Nodes, Proxy, TestRedis};

const NS: &str = "edges";
const LONG: Duration = Duration::from_secs(15);
/// Slack on top of the stated bound, as in tests/staleness.rs.
const MARGIN: Duration = Duration::from_millis(100);

/// Every node here: 2 s per Redis call; each test sets the check period.
const NODES: Nodes = Nodes::new(NS, Duration::from_secs(2));

/// Waits for the next successful deletion check of `node`.
async fn next_check(node: &CacheNode) {
    let before = node.bus_health().unwrap().last_check_ok_ms;
    assert!(
        eventually(LONG, || async {
            node.bus_health().unwrap().last_check_ok_ms > before
        })
        .await,
        "a check succeeds: {:?}",
        node.bus_health()
    );
}

/// A failover behind one address while node `x` stays connected to it (no
/// partition): `x` applied up to `s0 + 3` on the old primary; the promoted
/// replica is at `s0`. The first check after `x` subscribes again meets the
/// shared connection the failover closed, and fails; the new primary's
/// messages `s0 + 1 ..= s0 + 3` are then dropped as already applied, and
/// `s0 + 4` is applied as the next one, which also makes its fingerprint
/// the one the next check compares. Nothing ever tells `x` that `s0 + 1`
/// (a write of `k`) happened.
#[tokio::test]
async fn a_failover_without_a_partition_keeps_the_new_primarys_first_invalidations() {
    let every = Duration::from_secs(2);
    let primary = TestRedis::start();
    let replication = Proxy::start(primary.port());
    let replica = TestRedis::start();
    replica.replicate_from(replication.port());
    let px = Proxy::start(primary.port());
    let w1 = NODES.checking_every(every).node(&primary.url()).await;
    let x = NODES.checking_every(every).node(&px.url()).await;
    w1.set("k", &1u64, Ttl::Default).await.unwrap();
    let s0 = bus_seq(&primary, NS);
    assert!(
        eventually(LONG, || async {
            x.bus_health().unwrap().last_applied_seq == s0
        })
        .await
    );
    assert_eq!(x.get::<u64>("k").await.unwrap(), Some(1));
    assert_eq!(in_ram::<u64>(&x, "k").await, Some(1));
    assert!(
        eventually(LONG, || async {
            replica.replica_synced() && bus_seq(&replica, NS) == s0
        })
        .await,
        "replica synced"
    );
    // The replica misses the last three invalidations; x applies them.
    replication.cut();
    for other in ["a", "b", "c"] {
        w1.invalidate_many(&[other]).await.unwrap();
    }
    assert!(
        eventually(LONG, || async {
            x.bus_health().unwrap().last_applied_seq == s0 + 3
        })
        .await
    );

    replica.promote();
    let w2 = CacheNode::builder()
        .redis_url(replica.url())
        .namespace(NS)
        .without_ram()
        .build()
        .await
        .unwrap();
    // Right after one of x's periodic checks, so that the next is a whole
    // half period away.
    next_check(&x).await;
    px.retarget(replica.port());
    assert!(
        eventually(LONG, || async { clients(&replica, "pubsub") == 1 }).await,
        "x subscribed to the new primary"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;

    w2.set("k", &2u64, Ttl::Default).await.unwrap();
    let acked = Instant::now();
    for other in ["d", "e", "f"] {
        w2.invalidate_many(&[other]).await.unwrap();
    }
    assert_eq!(bus_seq(&replica, NS), s0 + 4);
    // x's next checks succeed against the new primary...
    next_check(&x).await;
    next_check(&x).await;
    tokio::time::sleep_until((acked + every + MARGIN).into()).await;
    let h = x.bus_health().unwrap();
    assert!(!h.suspended && h.last_applied_seq == s0 + 4, "{h:?}");
    // ...and, past the bound, it still serves the value the new primary's
    // s0 + 1 replaced.
    let stale = in_ram::<u64>(&x, "k").await;
    assert_ne!(
        stale,
        Some(1),
        "x serves the old value {:?} after the write returned Ok (bound {:?}): {h:?}",
        acked.elapsed(),
        every
    );
    assert_eq!(x.get::<u64>("k").await.unwrap(), Some(2));
}

/// Single-flight: a call that joins a flight *after* an invalidation of its
/// key returned `Ok` (and after the bound has passed) is handed the value
/// the leader computed before the invalidation. The node itself knows that
/// value is fenced (it refuses to store it), yet gives it to the follower.
#[tokio::test]
async fn a_call_joining_a_flight_after_an_invalidation_never_gets_the_replaced_value() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let redis = TestRedis::start();
    let every = Duration::from_millis(300);
    let x = NODES.checking_every(every).node(&redis.url()).await;
    let w = NODES.checking_every(every).node(&redis.url()).await;
    let fx = x.func::<(u64,), u64>("slow").build().unwrap();
    let fw = w.func::<(u64,), u64>("slow").build().unwrap();
    // The source of truth the function reads.
    let source = Arc::new(AtomicU64::new(1));
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());

    let leader = {
        let (source, started, release) = (source.clone(), started.clone(), release.clone());
        fx.call(&(7,), move || async move {
            let v = source.load(Ordering::SeqCst);
            started.notify_one();
            release.notified().await;
            Ok::<u64, std::convert::Infallible>(v)
        })
    };
    let script = async {
        started.notified().await;
        // The source changes and the change is announced.
        source.store(2, Ordering::SeqCst);
        fw.delete(&(7,)).await.unwrap();
        let acked = Instant::now();
        tokio::time::sleep(every + MARGIN).await;
        // A call made past the bound.
        let follower = fx.call(&(7,), || async {
            Ok::<u64, std::convert::Infallible>(source.load(Ordering::SeqCst))
        });
        let let_leader_finish = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            release.notify_one();
        };
        let (v, ()) = tokio::join!(follower, let_leader_finish);
        (v.unwrap(), acked.elapsed())
    };
    let (leader_v, (follower_v, after)) = tokio::join!(leader, script);
    assert_eq!(leader_v.unwrap(), 1, "the leader's own call began before");
    assert_eq!(
        follower_v, 2,
        "a call made {after:?} after the invalidation returned Ok (bound {every:?}) \
         got the value it invalidated"
    );
}

/// Values that live in this process's RAM only (a `ram_only()` write, a
/// `memory_fn`) have no other copy to go to: the lease must not hide them
/// while Redis is unreachable, or the RAM-only value would read as missing
/// and the memoized function run on every call during the outage.
#[tokio::test]
async fn ram_only_values_and_memory_fns_stay_served_while_redis_is_unreachable() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let redis = TestRedis::start();
    let every = Duration::from_millis(300);
    let px = Proxy::start(redis.port());
    let x = NODES.checking_every(every).node(&px.url()).await;
    let runs = Arc::new(AtomicU64::new(0));
    let m = x.memory_fn::<(u64,), u64>("local", None).unwrap();
    let call = || {
        let runs = runs.clone();
        m.call(&(1,), move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<u64, std::convert::Infallible>(42)
        })
    };
    assert_eq!(call().await.unwrap(), 42);
    assert_eq!(call().await.unwrap(), 42);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    x.with_layers(Layers::Ram)
        .set("session", &7u64, Ttl::Default)
        .await
        .unwrap();
    assert_eq!(in_ram::<u64>(&x, "session").await, Some(7));

    px.cut();
    assert!(
        eventually(LONG, || async { x.bus_health().unwrap().suspended }).await,
        "{:?}",
        x.bus_health()
    );
    for _ in 0..3 {
        assert_eq!(call().await.unwrap(), 42);
    }
    assert_eq!(
        in_ram::<u64>(&x, "session").await,
        Some(7),
        "a value written to this process's RAM only reads as missing"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a RAM-only memo recomputes on every call while Redis is down"
    );
}

/// The publish script steps around a foreign log (so that no outside client
/// can stop announcements), but that path calls `TYPE`, which the README's
/// ACL does not grant: under it, every write after a foreign entry fails as
/// not announced.
#[tokio::test]
async fn a_foreign_log_does_not_stop_writes_under_the_readme_acl() {
    let redis = TestRedis::start();
    support::create_user(&redis, NS, &[]);
    let url = support::user_url(&redis);
    let n = NODES
        .checking_every(Duration::from_millis(500))
        .node(&url)
        .await;
    n.set("k", &1u64, Ttl::Default).await.unwrap();
    let _: () = redis
        .conn()
        .set(format!("{NS}:{{bus}}:log"), "not a stream")
        .unwrap();
    let result = n.set("k", &2u64, Ttl::Default).await;
    assert!(result.is_ok(), "write after a foreign log: {result:?}");
}
