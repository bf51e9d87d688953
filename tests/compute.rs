//! Computation across instances against real redis-servers: at-most-once
//! and at-least-once atomic writes, async compute with builder nodes,
//! periodic refresh and warm-up.
//!
//! Every test starts its own server (see `support`). Values live in Redis
//! under `t:f:{name}:{suffix}`; the lock of value key `K` is `{K}:lock`, its
//! version `{K}:ver`, its build-job marker `{K}:job`; build jobs are in the
//! stream `t:jobs` (consumer group `builders`).
//!
//! Two tests need an instance to die mid-computation with SIGKILL: the test
//! binary runs itself again as a child process (`support::child`) executing
//! one of the `child_*` tests, which are `#[ignore]`d and do nothing unless
//! the parent set [`CHILD_REDIS`].

mod support;

use std::convert::Infallible;
use std::future::ready;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachenode::Layers;
use cachenode::{AtomicWrites, CacheNode, CachedFn, Error, Lookup};
use redis::Commands;
use support::{eventually, ChildTest, Nodes, TestRedis};

/// How long a RAM invalidation may take to reach another node (one pub/sub
/// hop, at worst the bus's deletion-check period), with margin.
const PROPAGATION: Duration = Duration::from_secs(5);

/// How long a builder's `XREADGROUP` blocks. A job queued while a builder
/// waits on it is delivered at once; one already queued when a builder
/// (re)starts, or recreates its consumer group, is delivered at its next
/// read: within one block period either way.
const BLOCK: Duration = Duration::from_secs(1);

/// A job left pending (its builder died, or did not know its function yet)
/// is claimed again once idle for 1 s, by a reclaim pass that runs at most
/// 1 s plus one block period after the previous one: within 3 s.
const RECLAIM: Duration = Duration::from_secs(3);

/// The longest pause between a builder's attempts to reconnect to Redis.
const RECONNECT: Duration = Duration::from_secs(1);

/// The environment variable that makes a `child_*` test run, carrying the
/// URL of the parent's test server.
const CHILD_REDIS: &str = "CACHENODE_COMPUTE_CHILD_REDIS";

/// Every node here: namespace `t`, 1 s per Redis call.
const NODES: Nodes = Nodes::new("t", Duration::from_secs(1));

fn lock_of(value_key: &str) -> String {
    format!("{{{value_key}}}:lock")
}

fn marker_of(value_key: &str) -> String {
    format!("{{{value_key}}}:job")
}

fn xlen(redis: &TestRedis) -> usize {
    redis.conn().xlen("t:jobs").unwrap()
}

/// Jobs delivered to a builder and not acknowledged (0 before a builder
/// has created the consumer group).
fn pending_jobs(redis: &TestRedis) -> i64 {
    let summary: redis::RedisResult<redis::Value> = redis::cmd("XPENDING")
        .arg("t:jobs")
        .arg("builders")
        .query(&mut redis.conn());
    let summary = match summary {
        Err(e) if e.to_string().contains("NOGROUP") => return 0,
        other => other.unwrap(),
    };
    match summary {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("XPENDING summary {other:?}"),
        },
        other => panic!("XPENDING summary {other:?}"),
    }
}

/// How many jobs were ever added to the stream (deleted ones included).
fn jobs_added(redis: &TestRedis) -> i64 {
    let info: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg("t:jobs")
        .query(&mut redis.conn())
        .unwrap();
    let at = info
        .iter()
        .position(|v| matches!(v, redis::Value::BulkString(b) if b == b"entries-added"))
        .expect("XINFO STREAM has entries-added (Redis 7)");
    match info[at + 1] {
        redis::Value::Int(n) => n,
        ref other => panic!("entries-added {other:?}"),
    }
}

/// A handle reading Redis only, whose computation fails: it answers what
/// Redis holds for a call, and never stores anything.
fn redis_probe(n: &CacheNode, name: &str) -> CachedFn<(u32,), String> {
    n.func(name).layers(Layers::Redis).build().unwrap()
}

/// A handle reading this node's RAM only, whose computation fails.
fn ram_probe<V>(n: &CacheNode, name: &str) -> CachedFn<(u32,), V>
where
    V: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    n.func(name).layers(Layers::Ram).build().unwrap()
}

async fn probe<V>(p: &CachedFn<(u32,), V>, arg: u32) -> Option<V>
where
    V: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    p.call(&(arg,), || ready(Err::<V, ()>(()))).await.ok()
}

/// A computation that must not run.
fn must_not_compute() -> std::future::Ready<Result<String, &'static str>> {
    ready(Err("computed, but a cached value was expected"))
}

// ---------------------------------------------------------------------------
// At most once
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_most_once_200_callers_on_4_nodes_compute_a_cold_key_once() {
    let redis = TestRedis::start();
    let runs = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(200));
    let mut nodes = Vec::new();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let n = NODES.node(&redis.url()).await;
        let f = n
            .func::<(u32,), String>("report")
            .atomic_writes(AtomicWrites::AtMostOnce)
            .atomic_wait_timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        for _ in 0..50 {
            let (f, runs, start) = (f.clone(), runs.clone(), start.clone());
            callers.spawn(async move {
                start.wait().await;
                f.call(&(7,), move || async move {
                    runs.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, Infallible>("computed".to_string())
                })
                .await
            });
        }
        nodes.push(n);
    }
    let results = callers.join_all().await;
    assert_eq!(results.len(), 200);
    for r in results {
        assert_eq!(r.unwrap(), "computed");
    }
    assert_eq!(
        runs.load(SeqCst),
        1,
        "one computation across 4 nodes and 200 callers"
    );
    let f = nodes[0].func::<(u32,), String>("report").build().unwrap();
    let key = f.cache_key(&(7,)).unwrap();
    assert!(redis.exists(&key), "the value is stored");
    assert!(!redis.exists(&lock_of(&key)), "the lock is released");
    assert_eq!(
        probe(&redis_probe(&nodes[3], "report"), 7).await.as_deref(),
        Some("computed")
    );
}

/// The lock TTL of the holder killed in the next test.
const HELD_LOCK_TTL: Duration = Duration::from_secs(1);

fn held_fn(n: &CacheNode) -> CachedFn<(u32,), String> {
    n.func::<(u32,), String>("held")
        .atomic_writes(AtomicWrites::AtMostOnce)
        .atomic_lock_ttl(HELD_LOCK_TTL)
        .atomic_wait_timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_holder_killed_mid_computation_is_replaced_once_its_lock_expires() {
    let redis = TestRedis::start();
    let (p, q) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
    let (fp, fq) = (held_fn(&p), held_fn(&q));
    let key = fp.cache_key(&(1,)).unwrap();
    let lock = lock_of(&key);

    let mut child = ChildTest::spawn(
        "child_computes_under_the_lock_until_killed",
        CHILD_REDIS,
        &redis.url(),
    );
    child.line_with("@computing", Duration::from_secs(30)).await;
    assert!(redis.exists(&lock), "the child computes under the lock");

    // Callers on two nodes of this process wait for the child's value.
    let starts = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let mut callers = tokio::task::JoinSet::new();
    for f in [fp.clone(), fq.clone()] {
        for _ in 0..10 {
            let (f, starts) = (f.clone(), starts.clone());
            callers.spawn(async move {
                f.call(&(1,), move || async move {
                    starts.lock().unwrap().push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, Infallible>("parent".to_string())
                })
                .await
            });
        }
    }
    // A live holder keeps its lock past its TTL: nobody takes over.
    tokio::time::sleep(HELD_LOCK_TTL * 3 / 2).await;
    assert!(redis.exists(&lock), "the keep-alive extends the lock");
    assert!(
        starts.lock().unwrap().is_empty(),
        "no one computes meanwhile"
    );

    child.kill();
    let asked = Instant::now();
    let left: i64 = redis.conn().pttl(&lock).unwrap();
    let answered = Instant::now();
    assert!(
        left > 0 && left <= HELD_LOCK_TTL.as_millis() as i64,
        "the dead holder's lock outlives it until its TTL: PTTL {left}"
    );
    assert!(!redis.exists(&key), "the dead holder wrote nothing");
    let left = Duration::from_millis(left as u64);

    let results = tokio::time::timeout(Duration::from_secs(20), callers.join_all())
        .await
        .expect("the waiting callers get a value");
    for r in results {
        assert_eq!(r.unwrap(), "parent");
    }
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 1, "computed once after the holder died");
    // The lock expires `left` after it was measured; 5 ms for rounding.
    let earliest = asked + left - Duration::from_millis(5);
    assert!(
        starts[0] >= earliest,
        "computed {:?} before the dead holder's lock expired",
        earliest - starts[0]
    );
    // Waiters poll at most every 200 ms; the rest is margin.
    let latest = answered + left + Duration::from_millis(1200);
    assert!(
        starts[0] <= latest,
        "computed {:?} after the lock expired",
        starts[0] - (answered + left)
    );
    assert!(!redis.exists(&lock), "the new holder released its lock");
    assert_eq!(
        probe(&redis_probe(&NODES.node(&redis.url()).await, "held"), 1)
            .await
            .as_deref(),
        Some("parent"),
        "the value is stored"
    );
}

/// Run by the test above in a child process: takes the lock of `held(1)`
/// and computes until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of at_most_once_holder_killed_mid_computation_is_replaced_once_its_lock_expires"]
async fn child_computes_under_the_lock_until_killed() {
    let Ok(url) = std::env::var(CHILD_REDIS) else {
        return;
    };
    let n = NODES
        .builder(&url)
        .build()
        .await
        .expect("child node connects");
    let f = held_fn(&n);
    let _ = f
        .call(&(1,), || async {
            println!("@computing");
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok::<_, Infallible>("child".to_string())
        })
        .await;
    println!("@finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_a_holder_that_lost_its_lock_cannot_overwrite_the_next_holders_value() {
    let redis = TestRedis::start();
    let (a, b, c) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
    let fenced = |n: &CacheNode| {
        n.func::<(u32,), String>("fenced")
            .atomic_writes(AtomicWrites::AtMostOnce)
            .atomic_lock_ttl(Duration::from_millis(600))
            .build()
            .unwrap()
    };
    let (fa, fb) = (fenced(&a), fenced(&b));
    let key = fa.cache_key(&(1,)).unwrap();
    let lock = lock_of(&key);

    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (finish, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let first = tokio::spawn({
        let fa = fa.clone();
        async move {
            fa.call(&(1,), move || async move {
                let _ = started_tx.send(());
                let _ = finish_rx.await;
                Ok::<_, Infallible>("v1".to_string())
            })
            .await
        }
    });
    started.await.unwrap();
    let token_a: String = redis.conn().get(&lock).unwrap();

    // A loses its lock mid-computation (it stalled past it, say); B takes
    // over, computes v2 and stores it.
    let _: () = redis.conn().del(&lock).unwrap();
    let b_runs = AtomicUsize::new(0);
    let v = fb
        .call(&(1,), || {
            b_runs.fetch_add(1, SeqCst);
            ready(Ok::<_, Infallible>("v2".to_string()))
        })
        .await
        .unwrap();
    assert_eq!((v.as_str(), b_runs.load(SeqCst)), ("v2", 1));
    // A's keep-alive, which ran meanwhile, does not take the lock back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let now: Option<String> = redis.conn().get(&lock).unwrap();
    assert_ne!(now.as_deref(), Some(token_a.as_str()));

    // A finishes late: its write is refused.
    finish.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), "v1", "A answers its caller");
    let stored = redis_probe(&c, "fenced");
    assert_eq!(probe(&stored, 1).await.as_deref(), Some("v2"), "v2 stays");
    assert_eq!(
        fa.call(&(1,), must_not_compute).await.unwrap(),
        "v2",
        "A did not keep its refused value in RAM either"
    );
    assert!(!redis.exists(&lock), "no lock left behind");

    // Same without a successor: a holder whose lock is gone stores nothing.
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (finish, finish_rx) = tokio::sync::oneshot::channel::<()>();
    let lone = tokio::spawn({
        let fa = fa.clone();
        async move {
            fa.call(&(2,), move || async move {
                let _ = started_tx.send(());
                let _ = finish_rx.await;
                Ok::<_, Infallible>("lost".to_string())
            })
            .await
        }
    });
    started.await.unwrap();
    let _: () = redis
        .conn()
        .del(lock_of(&fa.cache_key(&(2,)).unwrap()))
        .unwrap();
    finish.send(()).unwrap();
    assert_eq!(lone.await.unwrap().unwrap(), "lost");
    assert_eq!(probe(&stored, 2).await, None, "not stored without the lock");
}

// ---------------------------------------------------------------------------
// At least once
// ---------------------------------------------------------------------------

/// A computation that tells when it started and returns `value` when
/// released.
struct Gated {
    started: tokio::sync::oneshot::Receiver<()>,
    release: tokio::sync::oneshot::Sender<()>,
    call: tokio::task::JoinHandle<Result<String, Infallible>>,
}

fn gated_call(f: &CachedFn<(u32,), String>, arg: u32, value: &str) -> Gated {
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (release, release_rx) = tokio::sync::oneshot::channel::<()>();
    let (f, value) = (f.clone(), value.to_owned());
    let call = tokio::spawn(async move {
        f.call(&(arg,), move || async move {
            let _ = started_tx.send(());
            let _ = release_rx.await;
            Ok(value)
        })
        .await
    });
    Gated {
        started,
        release,
        call,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_stores_the_value_of_the_computation_that_started_last() {
    let redis = TestRedis::start();
    let (a, b, c) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
    let f = |n: &CacheNode| {
        n.func::<(u32,), String>("latest")
            .atomic_writes(AtomicWrites::AtLeastOnce)
            .build()
            .unwrap()
    };
    let (fa, fb) = (f(&a), f(&b));
    let stored = redis_probe(&c, "latest");

    // 1. The older computation finishes last: its write is refused.
    let mut older = gated_call(&fa, 1, "older");
    (&mut older.started).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut newer = gated_call(&fb, 1, "newer");
    (&mut newer.started).await.unwrap();
    newer.release.send(()).unwrap();
    assert_eq!(newer.call.await.unwrap().unwrap(), "newer");
    assert_eq!(probe(&stored, 1).await.as_deref(), Some("newer"));
    older.release.send(()).unwrap();
    assert_eq!(older.call.await.unwrap().unwrap(), "older", "both computed");
    assert_eq!(
        probe(&stored, 1).await.as_deref(),
        Some("newer"),
        "an older computation never replaces a newer value"
    );
    assert_eq!(
        fa.call(&(1,), must_not_compute).await.unwrap(),
        "newer",
        "A did not keep its refused value in RAM"
    );
    let key = fa.cache_key(&(1,)).unwrap();
    assert!(redis.exists(&format!("{{{key}}}:ver")), "versioned");

    // 2. The newer computation finishes last: it replaces the older value.
    let mut older = gated_call(&fa, 2, "older");
    (&mut older.started).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut newer = gated_call(&fb, 2, "newer");
    (&mut newer.started).await.unwrap();
    older.release.send(()).unwrap();
    assert_eq!(older.call.await.unwrap().unwrap(), "older");
    assert_eq!(probe(&stored, 2).await.as_deref(), Some("older"));
    newer.release.send(()).unwrap();
    assert_eq!(newer.call.await.unwrap().unwrap(), "newer");
    assert_eq!(probe(&stored, 2).await.as_deref(), Some("newer"));
    assert_eq!(fb.call(&(2,), must_not_compute).await.unwrap(), "newer");
    // A had kept "older" in RAM when it stored it: the newer write reaches
    // A's RAM too, or A would serve a value older than the stored one.
    assert!(
        eventually(PROPAGATION, || async {
            fa.call(&(2,), must_not_compute).await == Ok("newer".to_string())
        })
        .await,
        "A still serves the older value from RAM"
    );
}

fn version_of(value_key: &str) -> String {
    format!("{{{value_key}}}:ver")
}

/// One hour, in ms: how far the skewed hosts below are off.
const HOUR_MS: i64 = 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_orders_by_start_on_redis_whatever_the_hosts_clocks_say() {
    let redis = TestRedis::start();
    let (a, b, c, d) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
    let f = |n: &CacheNode, skew_ms: i64| {
        n.func::<(u32,), String>("skewed")
            .atomic_writes(AtomicWrites::AtLeastOnce)
            // No expiry: the skew then touches nothing but the ordering.
            .ttl(Duration::ZERO)
            .skew_host_clock_for_tests(skew_ms)
            .build()
            .unwrap()
    };
    // Three hosts: one on time, one an hour behind, one an hour ahead.
    let (on_time, behind, ahead) = (f(&a, 0), f(&b, -HOUR_MS), f(&c, HOUR_MS));
    let stored = redis_probe(&d, "skewed");

    // 1. The host whose clock is behind starts later: its value stays.
    let mut older = gated_call(&on_time, 1, "older");
    (&mut older.started).await.unwrap();
    let mut newer = gated_call(&behind, 1, "newer");
    (&mut newer.started).await.unwrap();
    newer.release.send(()).unwrap();
    assert_eq!(newer.call.await.unwrap().unwrap(), "newer");
    older.release.send(()).unwrap();
    assert_eq!(older.call.await.unwrap().unwrap(), "older");
    assert_eq!(
        probe(&stored, 1).await.as_deref(),
        Some("newer"),
        "the write that started later, on a host whose clock is behind, lost"
    );

    // 2. The host whose clock is ahead starts first: its value does not
    // replace the newer one.
    let mut older = gated_call(&ahead, 2, "older");
    (&mut older.started).await.unwrap();
    let mut newer = gated_call(&on_time, 2, "newer");
    (&mut newer.started).await.unwrap();
    newer.release.send(()).unwrap();
    assert_eq!(newer.call.await.unwrap().unwrap(), "newer");
    older.release.send(()).unwrap();
    assert_eq!(older.call.await.unwrap().unwrap(), "older");
    assert_eq!(
        probe(&stored, 2).await.as_deref(),
        Some("newer"),
        "the write that started first, on a host whose clock is ahead, won"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_leaves_no_version_key_once_its_value_expires_or_is_deleted() {
    let redis = TestRedis::start();
    let n = NODES.node(&redis.url()).await;
    let f = |name: &str, ttl: Duration| {
        n.func::<(u32,), String>(name)
            .atomic_writes(AtomicWrites::AtLeastOnce)
            .ttl(ttl)
            .build()
            .unwrap()
    };
    let value = |x: u32| ready(Ok::<_, Infallible>(format!("v{x}")));

    // A value with a TTL: its version expires with it.
    let brief = f("brief", Duration::from_millis(300));
    brief.call(&(1,), || value(1)).await.unwrap();
    let key = brief.cache_key(&(1,)).unwrap();
    assert!(redis.exists(&version_of(&key)), "versioned");
    assert!(eventually(Duration::from_secs(1), || async { !redis.exists(&key) }).await);
    assert!(
        !redis.exists(&version_of(&key)),
        "the version outlived its value"
    );

    // Values that never expire: their versions go when they are deleted.
    let forever = f("forever", Duration::ZERO);
    for x in 1..=3 {
        forever.call(&(x,), || value(x)).await.unwrap();
        let key = forever.cache_key(&(x,)).unwrap();
        let left: i64 = redis.conn().pttl(version_of(&key)).unwrap();
        assert_eq!(left, -1, "no TTL, like its value");
    }
    assert!(forever.delete(&(1,)).await.unwrap());
    let key = forever.cache_key(&(1,)).unwrap();
    assert!(!redis.exists(&key));
    assert!(
        !redis.exists(&version_of(&key)),
        "clear left the version behind"
    );
    assert_eq!(forever.delete_all().await.unwrap(), 2);
    for x in 2..=3 {
        let key = forever.cache_key(&(x,)).unwrap();
        assert!(!redis.exists(&key));
        assert!(
            !redis.exists(&version_of(&key)),
            "clear_all left the version of {x} behind"
        );
    }
    assert_eq!(redis.keys("*:ver"), Vec::<String>::new());

    // A version left behind by a value deleted some other way does not
    // refuse the next write.
    forever.call(&(4,), || value(4)).await.unwrap();
    let key = forever.cache_key(&(4,)).unwrap();
    let _: () = redis.conn().del(&key).unwrap();
    let _: () = redis.conn().set(version_of(&key), u64::MAX / 2).unwrap();
    let other = NODES.node(&redis.url()).await;
    let fo = other
        .func::<(u32,), String>("forever")
        .atomic_writes(AtomicWrites::AtLeastOnce)
        .ttl(Duration::ZERO)
        .build()
        .unwrap();
    assert_eq!(fo.call(&(4,), || value(40)).await.unwrap(), "v40");
    assert_eq!(
        probe(&redis_probe(&other, "forever"), 4).await.as_deref(),
        Some("v40"),
        "a version without its value refused a write"
    );
}

// ---------------------------------------------------------------------------
// Bounds
// ---------------------------------------------------------------------------

/// How many `SET` commands the server has run.
fn set_calls(redis: &TestRedis) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_set:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_with_an_unbounded_wait_timeout_waits_for_the_holder() {
    let redis = TestRedis::start();
    let (a, b) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
    let f = |n: &CacheNode| {
        n.func::<(u32,), String>("patient")
            .atomic_writes(AtomicWrites::AtMostOnce)
            .atomic_wait_timeout(Duration::MAX)
            .build()
            .unwrap()
    };
    let (fa, fb) = (f(&a), f(&b));
    let mut holder = gated_call(&fa, 1, "from a");
    if (&mut holder.started).await.is_err() {
        panic!("the holder's call failed: {:?}", holder.call.await);
    }
    let lock = lock_of(&fa.cache_key(&(1,)).unwrap());
    assert!(redis.exists(&lock), "A computes under the lock");
    let sets = set_calls(&redis);
    let waiter = tokio::spawn({
        let fb = fb.clone();
        async move { fb.call(&(1,), must_not_compute).await }
    });
    // B tried the lock (a SET NX that failed): it waits for A's value.
    assert!(
        eventually(Duration::from_secs(1), || async {
            set_calls(&redis) > sets
        })
        .await
    );
    holder.release.send(()).unwrap();
    assert_eq!(holder.call.await.unwrap().unwrap(), "from a");
    assert_eq!(waiter.await.unwrap().unwrap(), "from a", "B waited for A");
}

// ---------------------------------------------------------------------------
// Single flight
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_arriving_after_an_invalidation_does_not_share_the_flight_begun_before_it() {
    let redis = TestRedis::start();
    let n = NODES.node(&redis.url()).await;
    let f = n.func::<(u32,), String>("flight").build().unwrap();

    // The leader computes from data read before the invalidation.
    let mut leader = gated_call(&f, 1, "before");
    (&mut leader.started).await.unwrap();
    assert!(!f.delete(&(1,)).await.unwrap(), "nothing stored yet");

    // A caller arriving after it computes for itself.
    let computed = Arc::new(AtomicUsize::new(0));
    let late = tokio::spawn({
        let (f, computed) = (f.clone(), computed.clone());
        async move {
            f.call(&(1,), || {
                computed.fetch_add(1, SeqCst);
                ready(Ok::<_, Infallible>("after".to_string()))
            })
            .await
        }
    });
    let on_its_own = eventually(Duration::from_secs(1), || async {
        computed.load(SeqCst) == 1
    })
    .await;
    leader.release.send(()).unwrap();
    assert_eq!(
        leader.call.await.unwrap().unwrap(),
        "before",
        "the leader answers its caller"
    );
    assert_eq!(
        late.await.unwrap().unwrap(),
        "after",
        "the late caller got the value computed before the invalidation"
    );
    assert!(on_its_own);
    assert_eq!(computed.load(SeqCst), 1);
    // Only the value computed after the invalidation is kept.
    assert_eq!(
        probe(&redis_probe(&n, "flight"), 1).await.as_deref(),
        Some("after")
    );
    assert_eq!(f.call(&(1,), must_not_compute).await.unwrap(), "after");
}

// ---------------------------------------------------------------------------
// Async compute
// ---------------------------------------------------------------------------

/// `report(x)`, built asynchronously by builder nodes; `build` counts runs.
fn report_fn<F, Fut>(n: &CacheNode, build: F) -> CachedFn<(u32,), String>
where
    F: Fn((u32,)) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
{
    n.func::<(u32,), String>("report")
        .async_compute(build)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_build_queues_one_job_that_a_builder_node_builds_once() {
    let redis = TestRedis::start();
    let client = NODES.node(&redis.url()).await;
    let fc = report_fn(&client, |_| async {
        Err::<String, _>("the client is not a builder".to_string())
    });
    let key = fc.cache_key(&(1,)).unwrap();

    // No builder yet: the job waits in the stream, queued once.
    assert_eq!(fc.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    assert_eq!(fc.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    assert_eq!(xlen(&redis), 1, "one job for two lookups");
    assert!(redis.exists(&marker_of(&key)));

    // A builder node starts with the job pending; its build waits for a gate.
    let builds = Arc::new(AtomicUsize::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let b = NODES.builder_node(&redis.url()).await;
    let _fb = report_fn(&b, {
        let builds = builds.clone();
        move |(x,)| {
            let (builds, mut gate) = (builds.clone(), gate.clone());
            async move {
                builds.fetch_add(1, SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                Ok(format!("built {x}"))
            }
        }
    });
    // The job is queued before the builder starts: its first read takes it.
    assert!(
        eventually(BLOCK, || async { builds.load(SeqCst) == 1 }).await,
        "the builder node takes the job"
    );
    // While it builds, lookups queue nothing more.
    for _ in 0..5 {
        assert_eq!(fc.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    }
    assert_eq!(xlen(&redis), 1, "still one job");
    open.send(true).unwrap();
    assert!(
        eventually(BLOCK, || async {
            fc.get_or_build(&(1,)).await.unwrap() == Lookup::Ready("built 1".to_string())
        })
        .await,
        "the built value is served"
    );
    assert_eq!(builds.load(SeqCst), 1, "built once");
    assert!(redis.exists(&key));
    // The builder cleans up after writing the value: marker, job, lock.
    assert!(
        eventually(BLOCK, || async {
            !redis.exists(&marker_of(&key))
                && pending_jobs(&redis) == 0
                && xlen(&redis) == 0
                && !redis.exists(&lock_of(&key))
        })
        .await,
        "the job is acknowledged and removed, its marker and lock released"
    );
    // A plain call on any node now reads the built value.
    let other = NODES.node(&redis.url()).await;
    let fo = report_fn(&other, |_| async { Err::<String, _>("no".to_string()) });
    assert_eq!(fo.call(&(1,), must_not_compute).await.unwrap(), "built 1");
    // Nothing is built again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(builds.load(SeqCst), 1);
}

#[tokio::test]
async fn async_compute_misuse_is_a_config_error() {
    let redis = TestRedis::start();
    let n = NODES.node(&redis.url()).await;
    let plain = n.func::<(u32,), String>("plain").build().unwrap();
    let err = plain.get_or_build(&(1,)).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_eq!(xlen(&redis), 0, "nothing queued");

    let err = n
        .func::<(u32,), Option<String>>("nones")
        .cache_none(true)
        .async_compute(|_| async { Ok::<_, Infallible>(None) })
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("cache_none")),
        "{err:?}"
    );
    let err = n
        .func::<(u32,), String>("zero")
        .async_compute(|_| async { Ok::<_, Infallible>(String::new()) })
        .async_compute_job_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_read_before_its_function_is_registered_waits_for_it_and_unknown_ones_expire() {
    let redis = TestRedis::start();
    let client = NODES.node(&redis.url()).await;
    let fc = report_fn(&client, |_| async { Err::<String, _>("no".to_string()) });
    let nobody = client
        .func::<(u32,), String>("nobody")
        .async_compute(|_: (u32,)| async { Err::<String, _>("no".to_string()) })
        .async_compute_job_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(fc.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    assert_eq!(
        nobody.get_or_build(&(1,)).await.unwrap(),
        Lookup::BeingBuilt
    );

    // A builder node that reads both jobs before `report` is registered on
    // it (as at start-up, with jobs queued), and never knows `nobody`.
    let b = NODES.builder_node(&redis.url()).await;
    assert!(
        eventually(BLOCK, || async { pending_jobs(&redis) == 2 }).await,
        "the builder reads the jobs"
    );
    let builds = Arc::new(AtomicUsize::new(0));
    let _fb = report_fn(&b, {
        let builds = builds.clone();
        move |(x,)| {
            builds.fetch_add(1, SeqCst);
            ready(Ok(format!("built {x}")))
        }
    });
    // Left pending when read, the job is built when claimed again.
    assert!(
        eventually(RECLAIM, || async {
            fc.get_or_build(&(1,)).await.unwrap() == Lookup::Ready("built 1".to_string())
        })
        .await,
        "the job is built once its function is registered"
    );
    assert_eq!(builds.load(SeqCst), 1);
    // The job no builder knows is dropped once older than its timeout.
    assert!(
        eventually(RECLAIM, || async {
            pending_jobs(&redis) == 0 && xlen(&redis) == 0
        })
        .await,
        "the unknown function's job is dropped"
    );
}

/// The job timeout of the builder killed in the next test.
const JOB_TIMEOUT: Duration = Duration::from_secs(1);

fn job_fn<F, Fut>(n: &CacheNode, build: F) -> CachedFn<(u32,), String>
where
    F: Fn((u32,)) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
{
    n.func::<(u32,), String>("job")
        .async_compute(build)
        .async_compute_job_timeout(JOB_TIMEOUT)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_compute_job_of_a_killed_builder_process_is_reclaimed_and_built_once() {
    let redis = TestRedis::start();
    let mut child = ChildTest::spawn(
        "child_builder_builds_until_killed",
        CHILD_REDIS,
        &redis.url(),
    );
    child.line_with("@ready", Duration::from_secs(30)).await;

    let client = NODES.node(&redis.url()).await;
    let fc = job_fn(&client, |_| async {
        Err::<String, _>("the client is not a builder".to_string())
    });
    let key = fc.cache_key(&(1,)).unwrap();
    assert_eq!(fc.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    child.line_with("@building", Duration::from_secs(10)).await;
    assert!(
        redis.exists(&lock_of(&key)),
        "the child builds under the lock"
    );
    child.kill();
    assert!(!redis.exists(&key), "the dead builder stored nothing");
    assert_eq!(pending_jobs(&redis), 1, "its job is pending");
    // Its marker expires with the job timeout: a lookup then queues a
    // duplicate job, as an application asking again would.
    assert!(
        eventually(JOB_TIMEOUT, || async { !redis.exists(&marker_of(&key)) }).await,
        "the marker expires with the job timeout"
    );
    assert_eq!(fc.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    assert_eq!(jobs_added(&redis), 2, "a duplicate is queued");

    let builds = Arc::new(AtomicUsize::new(0));
    let b = NODES.builder_node(&redis.url()).await;
    let _fb = job_fn(&b, {
        let builds = builds.clone();
        move |(x,)| {
            builds.fetch_add(1, SeqCst);
            ready(Ok(format!("parent {x}")))
        }
    });
    // The dead builder's lock expires within the job timeout; the jobs
    // are claimed again within a reclaim period.
    let built = tokio::time::timeout(JOB_TIMEOUT + RECLAIM, async {
        loop {
            if let Lookup::Ready(v) = fc.get_or_build(&(1,)).await.unwrap() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the reclaimed job is built");
    assert_eq!(built, "parent 1");
    assert_eq!(builds.load(SeqCst), 1, "built once");
    // Later reclaim rounds find nothing more to build.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(builds.load(SeqCst), 1, "built once, duplicates included");
    assert_eq!(pending_jobs(&redis), 0, "every job is acknowledged");
    assert!(redis.exists(&key), "the value is stored");
    assert_eq!(
        probe(&redis_probe(&client, "job"), 1).await.as_deref(),
        Some("parent 1")
    );
}

/// Run by the test above in a child process: a builder node whose build of
/// `job` never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of async_compute_job_of_a_killed_builder_process_is_reclaimed_and_built_once"]
async fn child_builder_builds_until_killed() {
    let Ok(url) = std::env::var(CHILD_REDIS) else {
        return;
    };
    let b = NODES.builder_node(&url).await;
    let _f = job_fn(&b, |_| async {
        println!("@building");
        tokio::time::sleep(Duration::from_secs(120)).await;
        Ok("child".to_string())
    });
    println!("@ready");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

/// The id of the client blocked in `XREADGROUP` (a builder waiting for
/// jobs), if one is.
fn blocked_builder(redis: &TestRedis) -> Option<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut redis.conn())
        .unwrap();
    list.lines().find_map(|l| {
        let field = |name: &str| {
            l.split(' ')
                .find_map(|f| f.strip_prefix(name))
                .map(str::to_owned)
        };
        let blocked =
            l.contains(" cmd=xreadgroup ") && field("flags=").is_some_and(|f| f.contains('b'));
        blocked.then(|| field("id=")).flatten()
    })
}

fn builder_blocked(redis: &TestRedis) -> bool {
    blocked_builder(redis).is_some()
}

/// `report(x)` on a builder node, built at once as `built {x}`; records
/// for each build how many times its job had been delivered (a job claimed
/// again after a lost delivery shows 2 or more).
fn counting_report_fn(
    b: &CacheNode,
    redis: &TestRedis,
    deliveries: &Arc<Mutex<Vec<(u32, i64)>>>,
) -> CachedFn<(u32,), String> {
    let (client, deliveries) = (redis.client(), deliveries.clone());
    report_fn(b, move |(x,)| {
        let (client, deliveries) = (client.clone(), deliveries.clone());
        async move {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            // The job being built is the only one pending.
            let pending: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
                .arg("t:jobs")
                .arg("builders")
                .arg("-")
                .arg("+")
                .arg(10)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let times = pending.iter().map(|p| p.3).max().unwrap_or(0);
            deliveries.lock().unwrap().push((x, times));
            Ok(format!("built {x}"))
        }
    })
}

async fn is_built(f: &CachedFn<(u32,), String>, x: u32) -> bool {
    matches!(f.get_or_build(&(x,)).await, Ok(Lookup::Ready(v)) if v == format!("built {x}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_queued_while_the_builder_waits_is_built_at_once_not_after_a_reclaim() {
    let redis = TestRedis::start();
    let client = NODES.node(&redis.url()).await;
    let fc = report_fn(&client, |_| async { Err::<String, _>("no".to_string()) });
    let b = NODES.builder_node(&redis.url()).await;
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let _fb = counting_report_fn(&b, &redis, &deliveries);
    // Jobs queued at several points of a block period: each is delivered
    // to the waiting builder and built before the period is over (a job
    // whose delivery was lost would be claimed again only once idle 1 s).
    let offsets = [0, 300, 600, 900];
    assert!(eventually(BLOCK, || async { builder_blocked(&redis) }).await);
    let first = blocked_builder(&redis);
    for (x, into_block) in (1..).zip(offsets) {
        assert!(
            eventually(BLOCK, || async { builder_blocked(&redis) }).await,
            "the builder waits for jobs"
        );
        tokio::time::sleep(Duration::from_millis(into_block)).await;
        assert_eq!(fc.get_or_build(&(x,)).await.unwrap(), Lookup::BeingBuilt);
        assert!(
            eventually(BLOCK, || is_built(&fc, x)).await,
            "job {x}, queued {into_block} ms into a block, was not built within one block period"
        );
    }
    assert_eq!(
        *deliveries.lock().unwrap(),
        [(1, 1), (2, 1), (3, 1), (4, 1)],
        "each job was delivered once"
    );
    // On one connection throughout: no read outlived its reply timeout.
    assert!(eventually(BLOCK, || async { builder_blocked(&redis) }).await);
    assert_eq!(blocked_builder(&redis), first, "the builder reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_takes_jobs_again_after_the_namespace_is_cleared() {
    let redis = TestRedis::start();
    let client = NODES.node(&redis.url()).await;
    let fc = report_fn(&client, |_| async { Err::<String, _>("no".to_string()) });
    let b = NODES.builder_node(&redis.url()).await;
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let _fb = counting_report_fn(&b, &redis, &deliveries);
    assert!(eventually(BLOCK, || async { builder_blocked(&redis) }).await);
    assert_eq!(fc.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    assert!(eventually(BLOCK, || is_built(&fc, 1)).await, "job 1 built");

    // Clearing the namespace (which deletes the job stream and its group
    // here, and any node of a version that does so).
    client.delete_all().await.unwrap();
    assert_eq!(fc.get_or_build(&(2,)).await.unwrap(), Lookup::BeingBuilt);
    assert!(
        eventually(BLOCK, || is_built(&fc, 2)).await,
        "a job queued after the stream was deleted is not built within one block period"
    );
    // The stream deleted while the builder is blocked on it (it is told
    // so): it goes on waiting for jobs on the recreated group.
    assert!(eventually(BLOCK, || async { builder_blocked(&redis) }).await);
    let _: () = redis.conn().del("t:jobs").unwrap();
    assert_eq!(fc.get_or_build(&(3,)).await.unwrap(), Lookup::BeingBuilt);
    assert!(
        eventually(BLOCK, || is_built(&fc, 3)).await,
        "a job queued after the stream was deleted is not built within one block period"
    );

    // The group alone removed (the stream stays, with a job queued).
    assert!(eventually(BLOCK, || async { builder_blocked(&redis) }).await);
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg("t:jobs")
        .arg("builders")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(fc.get_or_build(&(4,)).await.unwrap(), Lookup::BeingBuilt);
    assert!(
        eventually(BLOCK, || is_built(&fc, 4)).await,
        "a job queued after the group was removed is not built within one block period"
    );
    assert_eq!(
        *deliveries.lock().unwrap(),
        [(1, 1), (2, 1), (3, 1), (4, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_builder_takes_jobs_again_after_redis_restarts() {
    let mut redis = TestRedis::start();
    let client = NODES.node(&redis.url()).await;
    let fc = report_fn(&client, |_| async { Err::<String, _>("no".to_string()) });
    let b = NODES.builder_node(&redis.url()).await;
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let _fb = counting_report_fn(&b, &redis, &deliveries);
    assert!(eventually(BLOCK, || async { builder_blocked(&redis) }).await);
    assert_eq!(fc.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    assert!(eventually(BLOCK, || is_built(&fc, 1)).await, "job 1 built");

    // An empty server comes back on the same port: no stream, no group,
    // every connection lost.
    tokio::task::block_in_place(|| redis.restart());
    // The client's first lookups may fail while it reconnects; the
    // builder reconnects within one pause, then reads at once.
    assert!(
        eventually(RECONNECT + BLOCK, || is_built(&fc, 2)).await,
        "a job queued after the restart is not built within {:?}",
        RECONNECT + BLOCK
    );
    assert_eq!(*deliveries.lock().unwrap(), [(1, 1), (2, 1)]);
}

// ---------------------------------------------------------------------------
// Refresh
// ---------------------------------------------------------------------------

const REFRESH_PERIOD: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_rebuilds_once_per_period_across_three_builders_and_readers_never_miss() {
    let redis = TestRedis::start();
    let generation = Arc::new(AtomicU64::new(0));
    let builds = Arc::new(Mutex::new(Vec::<(Instant, usize)>::new()));
    let prices = |n: &CacheNode, who: usize| {
        let (generation, builds) = (generation.clone(), builds.clone());
        n.func::<(u32,), u64>("prices")
            .ttl(Duration::from_secs(60))
            .computed_by(move |(_,): (u32,)| {
                builds.lock().unwrap().push((Instant::now(), who));
                let g = generation.fetch_add(1, SeqCst) + 1;
                ready(Ok::<_, Infallible>(g))
            })
            .refresh_every(REFRESH_PERIOD)
            .build()
            .unwrap()
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(NODES.builder_node(&redis.url()).await);
    }
    // A reader that is not a builder.
    nodes.push(
        NODES
            .builder(&redis.url())
            .min_refresh_period(REFRESH_PERIOD)
            .build()
            .await
            .unwrap(),
    );
    let fs: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| prices(n, i))
        .collect();

    // First value, computed by a call (generation 0).
    let misses = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        fs[3]
            .call(&(1,), || ready(Ok::<_, Infallible>(0)))
            .await
            .unwrap(),
        0
    );
    let window = Duration::from_millis(4200);
    let t0 = Instant::now();
    let mut readers = tokio::task::JoinSet::new();
    for f in &fs {
        let (f, misses) = (f.clone(), misses.clone());
        readers.spawn(async move {
            let mut seen = Vec::new();
            while t0.elapsed() < window {
                let v = f
                    .call(&(1,), || {
                        misses.fetch_add(1, SeqCst);
                        ready(Ok::<_, Infallible>(u64::MAX))
                    })
                    .await
                    .unwrap();
                if seen.last() != Some(&v) {
                    seen.push(v);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        });
    }
    let seen = readers.join_all().await;
    let builds = builds.lock().unwrap().clone();
    let in_window: Vec<_> = builds.iter().filter(|(at, _)| *at >= t0).collect();

    assert_eq!(misses.load(SeqCst), 0, "readers always got a value");
    for (i, values) in seen.iter().enumerate() {
        assert!(
            values.windows(2).all(|w| w[0] < w[1]),
            "node {i} went back in time: {values:?}"
        );
        assert!(
            values.len() >= 2,
            "node {i} kept serving an old value from RAM: {values:?}"
        );
    }
    assert!(
        (2..=6).contains(&in_window.len()),
        "about one rebuild per period in {window:?}, not one per builder: {builds:?}"
    );
    for w in builds.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= REFRESH_PERIOD - Duration::from_millis(100),
            "two rebuilds {gap:?} apart: {builds:?}"
        );
        assert!(gap <= REFRESH_PERIOD * 3, "a period skipped: {builds:?}");
    }
    assert!(
        builds.iter().all(|(_, who)| *who < 3),
        "only builder nodes refresh"
    );

    // After a refresh, every node's RAM serves the new value.
    let stored = nodes[0]
        .func::<(u32,), u64>("prices")
        .layers(Layers::Redis)
        .build()
        .unwrap();
    let ram_probes: Vec<_> = nodes
        .iter()
        .map(|n| ram_probe::<u64>(n, "prices"))
        .collect();
    assert!(
        eventually(PROPAGATION, || async {
            let Some(latest) = probe(&stored, 1).await else {
                return false;
            };
            for (f, p) in fs.iter().zip(&ram_probes) {
                let v = f.call(&(1,), || ready(Err::<u64, ()>(()))).await;
                if v != Ok(latest) || probe(p, 1).await != Some(latest) {
                    return false;
                }
            }
            true
        })
        .await,
        "every node serves the latest refreshed value from RAM"
    );
}

// ---------------------------------------------------------------------------
// Warm-up
// ---------------------------------------------------------------------------

#[tokio::test]
async fn warm_up_computes_and_stores_the_calls_marked_for_it() {
    let redis = TestRedis::start();
    let (n, other) = (
        NODES.node(&redis.url()).await,
        NODES.node(&redis.url()).await,
    );
    let builds = Arc::new(AtomicUsize::new(0));
    let f = n
        .func::<(u32,), String>("rates")
        .computed_by({
            let builds = builds.clone();
            move |(x,): (u32,)| {
                builds.fetch_add(1, SeqCst);
                ready(Ok::<_, Infallible>(format!("rate {x}")))
            }
        })
        .warm_up_with([(1,), (2,)])
        .build()
        .unwrap();
    assert_eq!(builds.load(SeqCst), 0, "nothing runs before warm_up");
    let report = n.warm_up().await;
    assert_eq!(report.warmed, 2);
    assert!(report.unfinished.is_empty(), "{report:?}");
    assert_eq!(builds.load(SeqCst), 2);
    for x in [1, 2] {
        assert!(redis.exists(&f.cache_key(&(x,)).unwrap()));
    }
    // Another node reads the warmed values without computing.
    let fo = other.func::<(u32,), String>("rates").build().unwrap();
    assert_eq!(fo.call(&(1,), must_not_compute).await.unwrap(), "rate 1");
    assert_eq!(fo.call(&(2,), must_not_compute).await.unwrap(), "rate 2");
    assert_eq!(f.call(&(2,), must_not_compute).await.unwrap(), "rate 2");
    assert_eq!(builds.load(SeqCst), 2);
}

#[tokio::test]
async fn warm_up_does_not_wait_for_a_slow_function_past_its_timeout_and_reports_it() {
    let redis = TestRedis::start();
    let n = NODES.node(&redis.url()).await;
    let fast = n
        .func::<(u32,), String>("fast")
        .computed_by(|(x,): (u32,)| ready(Ok::<_, Infallible>(format!("fast {x}"))))
        .warm_up_with([(1,)])
        .build()
        .unwrap();
    let slow = n
        .func::<(u32,), String>("slow")
        .computed_by(|(x,): (u32,)| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Infallible>(format!("slow {x}"))
        })
        .warm_up_with([(1,)])
        .warm_up_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let report = n.warm_up().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "warm_up took {took:?}"
    );
    assert_eq!(report.warmed, 1, "{report:?}");
    assert_eq!(report.unfinished.len(), 1, "{report:?}");
    assert_eq!(report.unfinished[0].0, "slow");
    assert!(redis.exists(&fast.cache_key(&(1,)).unwrap()));
    assert!(!redis.exists(&slow.cache_key(&(1,)).unwrap()));
}

// ---------------------------------------------------------------------------
// Build-time checks
// ---------------------------------------------------------------------------

fn config_error<T: std::fmt::Debug>(built: cachenode::Result<T>, needle: &str) {
    match built {
        Err(Error::Config(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a config error about {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn refresh_and_warm_up_options_are_checked_when_the_function_is_built() {
    let n = CacheNode::builder()
        .min_refresh_period(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let build = |(x,): (u32,)| ready(Ok::<_, Infallible>(x));

    // Without computed_by there is nothing to rebuild values with.
    config_error(
        n.func::<(u32,), u32>("r")
            .refresh_every(Duration::from_secs(1))
            .build(),
        "computed_by",
    );
    config_error(
        n.func::<(u32,), u32>("w").warm_up_with([(1,)]).build(),
        "computed_by",
    );
    // Keys that depend on the request cannot be rebuilt outside it.
    config_error(
        n.func::<(u32,), u32>("r")
            .key_with_request_path(true)
            .computed_by(build)
            .refresh_every(Duration::from_secs(1))
            .build(),
        "request path",
    );
    config_error(
        n.func::<(u32,), u32>("r")
            .key_with_query_string(true)
            .computed_by(build)
            .refresh_every(Duration::from_secs(1))
            .build(),
        "request path",
    );
    config_error(
        n.func::<(u32,), u32>("w")
            .key_with_request_path(true)
            .computed_by(build)
            .warm_up_with([(1,)])
            .build(),
        "request path",
    );
    // Periods below the node's minimum are refused; the minimum is fine.
    config_error(
        n.func::<(u32,), u32>("r")
            .computed_by(build)
            .refresh_every(Duration::from_millis(999))
            .build(),
        "minimum refresh period",
    );
    n.func::<(u32,), u32>("r")
        .computed_by(build)
        .refresh_every(Duration::from_secs(1))
        .build()
        .unwrap();
    // The default minimum is the seed's 5 minutes.
    let default = CacheNode::builder().build().await.unwrap();
    config_error(
        default
            .func::<(u32,), u32>("r")
            .computed_by(build)
            .refresh_every(Duration::from_secs(299))
            .build(),
        "minimum refresh period",
    );
    default
        .func::<(u32,), u32>("r")
        .computed_by(build)
        .refresh_every(Duration::from_secs(300))
        .build()
        .unwrap();
}
