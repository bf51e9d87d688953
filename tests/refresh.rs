//! Periodic refresh and the bookkeeping it leaves in Redis, against real
//! redis-servers: refresh keeps live values fresh and never brings back one
//! that expired or was deleted; the recorded arguments
//! (`{ns}:args:{func}`) shrink with the values; a namespace `clear_all`
//! leaves only the keys that must outlive it.
//!
//! Every test starts its own server (see `support`). Values live in Redis
//! under `t:f:{name}:{suffix}`; the lock of value key `K` is `{K}:lock`, its
//! version `{K}:ver`, its build-job marker `{K}:job`.

mod support;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cachenode::ArgsInKey;
use cachenode::{AtomicWrites, CacheNode, CacheNodeBuilder, CachedFn, Lookup};
use redis::Commands;
use support::{connect, eventually, Nodes, TestRedis};

/// The refresh period of the tests' functions.
const PERIOD: Duration = Duration::from_secs(1);

/// Every node here: namespace `t`, 1 s per Redis call, refresh periods down
/// to [`PERIOD`].
fn base(redis: &TestRedis) -> CacheNodeBuilder {
    Nodes::new("t", Duration::from_secs(1))
        .builder(&redis.url())
        .min_refresh_period(PERIOD)
}

/// A node with the builder role: refreshes functions due, looking every
/// 50 ms.
async fn refreshing_node(redis: &TestRedis) -> CacheNode {
    connect(
        base(redis)
            .builder_role(true)
            .refresh_granularity(Duration::from_millis(50)),
    )
    .await
}

/// A node that does not refresh (no builder role).
async fn plain_node(redis: &TestRedis) -> CacheNode {
    connect(base(redis)).await
}

/// The keys whose arguments `{t}:args:{func}` records.
fn args_record(redis: &TestRedis, func: &str) -> BTreeSet<String> {
    redis.conn().hkeys(format!("t:args:{func}")).unwrap()
}

/// Every member of `func`'s key set (all shards).
fn key_set(redis: &TestRedis, func: &str) -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for shard in 0..cachenode::SHARDS {
        let members: Vec<String> = redis
            .conn()
            .smembers(format!("t:ks:{func}:{shard}"))
            .unwrap();
        all.extend(members);
    }
    all
}

/// When the last refresh of `func` ended (ms), if one ran.
fn last_refresh(redis: &TestRedis, func: &str) -> Option<u64> {
    redis.conn().hget("t:refresh:last", func).unwrap()
}

/// Waits until `n` more refresh passes of `func` have ended.
async fn passes(redis: &TestRedis, func: &str, n: usize) {
    for _ in 0..n {
        let before = last_refresh(redis, func);
        assert!(
            eventually(PERIOD * 5, || async { last_refresh(redis, func) != before }).await,
            "a refresh pass of {func} ends within 5 periods"
        );
    }
}

/// `rates(x)`, refreshed every [`PERIOD`]; its build function records each
/// argument it is run with, and returns how many builds ran so far.
fn rates(n: &CacheNode, ttl: Duration, builds: &Arc<Mutex<Vec<u32>>>) -> CachedFn<(u32,), u64> {
    let builds = builds.clone();
    let generation = Arc::new(AtomicU64::new(0));
    n.func::<(u32,), u64>("rates")
        .ttl(ttl)
        .computed_by(move |(x,): (u32,)| {
            builds.lock().unwrap().push(x);
            ready(Ok::<_, Infallible>(generation.fetch_add(1, SeqCst) + 1))
        })
        .refresh_every(PERIOD)
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Refresh keeps live values, never gone ones
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rebuilds_live_values_only_and_never_brings_back_an_expired_or_deleted_one() {
    let redis = TestRedis::start();
    let n = refreshing_node(&redis).await;
    let builds = Arc::new(Mutex::new(Vec::new()));
    // A TTL far above the period: only a refresh pass or a deletion can
    // change what Redis holds during the test.
    let f = rates(&n, Duration::from_secs(60), &builds);
    let key = |x: u32| f.cache_key(&(x,)).unwrap();
    for x in 1..=4 {
        assert_eq!(f.call(&(x,), || ready(Ok::<_, Infallible>(0))).await, Ok(0));
    }
    // One pass rebuilds all four, then the next one starts a period later.
    passes(&redis, "rates", 1).await;
    passes(&redis, "rates", 1).await;
    let before: Vec<u32> = builds.lock().unwrap().clone();

    // Right after a pass (the next one is a period away), three values go:
    // 1 expires in Redis, 2 is evicted or deleted by another tool (its
    // key-set member and arguments stay), 3 is cleared by the application.
    let _: () = redis.conn().pexpire(key(1), 1).unwrap();
    let _: () = redis.conn().unlink(key(2)).unwrap();
    assert!(f.delete(&(3,)).await.unwrap());
    assert!(eventually(PERIOD, || async { !redis.exists(&key(1)) }).await);

    passes(&redis, "rates", 1).await;
    let after: Vec<u32> = builds.lock().unwrap()[before.len()..].to_vec();
    assert_eq!(after, [4], "one pass rebuilt the live value, and it alone");
    for x in 1..=3 {
        assert!(!redis.exists(&key(x)), "value {x} stays gone");
    }
    assert!(redis.exists(&key(4)));
    let live = BTreeSet::from([key(4)]);
    assert_eq!(
        key_set(&redis, "rates"),
        live,
        "the pass pruned the key set"
    );
    assert_eq!(args_record(&redis, "rates"), live, "and the arguments");

    // Still gone a pass later; a caller asking again brings a value back.
    passes(&redis, "rates", 1).await;
    assert!((1..=3).all(|x| !redis.exists(&key(x))));
    assert_eq!(
        f.call(&(2,), || ready(Ok::<_, Infallible>(7))).await,
        Ok(7),
        "a gone value is computed again by the next caller"
    );
    assert!(redis.exists(&key(2)));
    passes(&redis, "rates", 1).await;
    assert_eq!(
        args_record(&redis, "rates"),
        BTreeSet::from([key(2), key(4)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_does_not_rebuild_a_value_whose_ttl_ran_out_between_passes() {
    let redis = TestRedis::start();
    let n = refreshing_node(&redis).await;
    let builds = Arc::new(Mutex::new(Vec::new()));
    // A TTL below the period: each value outlives at most one pass.
    let f = rates(&n, Duration::from_millis(300), &builds);
    let key = f.cache_key(&(1,)).unwrap();
    assert_eq!(f.call(&(1,), || ready(Ok::<_, Infallible>(0))).await, Ok(0));
    assert!(eventually(PERIOD * 2, || async { !redis.exists(&key) }).await);
    let built = builds.lock().unwrap().len();

    // Two whole passes run after it expired.
    passes(&redis, "rates", 2).await;
    assert!(!redis.exists(&key), "the expired value stays gone");
    assert_eq!(builds.lock().unwrap().len(), built, "nothing was rebuilt");
    assert_eq!(key_set(&redis, "rates"), BTreeSet::new());
    assert_eq!(args_record(&redis, "rates"), BTreeSet::new());
}

// ---------------------------------------------------------------------------
// The recorded arguments shrink with the values
// ---------------------------------------------------------------------------

#[tokio::test]
async fn recorded_arguments_shrink_to_the_live_keys_on_prune_clear_and_clear_all() {
    let redis = TestRedis::start();
    // No builder role: no refresh pass runs, the sweep and clears alone
    // trim the record.
    let n = plain_node(&redis).await;
    let builds = Arc::new(Mutex::new(Vec::new()));
    let f = rates(&n, Duration::from_secs(60), &builds);
    let g = n
        .func::<(u32, u32), u64>("grid")
        .key_args(ArgsInKey::Each)
        .computed_by(|(x, y): (u32, u32)| ready(Ok::<_, Infallible>(u64::from(x * y))))
        .refresh_every(PERIOD)
        .build()
        .unwrap();
    let key = |x: u32| f.cache_key(&(x,)).unwrap();
    for x in 1..=5 {
        f.call(&(x,), || ready(Ok::<_, Infallible>(0)))
            .await
            .unwrap();
    }
    assert_eq!(args_record(&redis, "rates"), (1..=5).map(key).collect());

    // 1 expires, 2 is evicted: the sweep (prune) forgets both.
    let _: () = redis.conn().pexpire(key(1), 1).unwrap();
    let _: () = redis.conn().unlink(key(2)).unwrap();
    assert!(eventually(PERIOD, || async { !redis.exists(&key(1)) }).await);
    assert_eq!(n.prune_key_sets().await.unwrap(), 2);
    let live: BTreeSet<String> = (3..=5).map(key).collect();
    assert_eq!(
        args_record(&redis, "rates"),
        live,
        "pruned with the key set"
    );
    assert_eq!(key_set(&redis, "rates"), live);

    // Clearing one call forgets its arguments.
    assert!(f.delete(&(3,)).await.unwrap());
    assert_eq!(
        args_record(&redis, "rates"),
        (4..=5).map(key).collect(),
        "cleared with the value"
    );

    // Clearing some calls (full-args keys) forgets theirs.
    let gkey = |x: u32, y: u32| g.cache_key(&(x, y)).unwrap();
    for (x, y) in [(1, 1), (1, 2), (2, 1)] {
        g.call(&(x, y), || ready(Ok::<_, Infallible>(0)))
            .await
            .unwrap();
    }
    let filter = cachenode::Args::new().arg("0", &1u32).unwrap();
    assert_eq!(
        g.delete_some(&filter).unwrap().run(|_| {}).await.unwrap(),
        2
    );
    assert_eq!(args_record(&redis, "grid"), BTreeSet::from([gkey(2, 1)]));

    // Clearing the whole function forgets every argument.
    assert_eq!(f.delete_all().await.unwrap(), 2);
    assert!(!redis.exists("t:args:rates"), "no arguments left");
    assert_eq!(g.delete_all().await.unwrap(), 1);
    assert!(!redis.exists("t:args:grid"));
    assert_eq!(builds.lock().unwrap().len(), 0, "nothing was refreshed");
}

// ---------------------------------------------------------------------------
// Namespace clear_all
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_clear_all_leaves_only_the_bus_the_build_queue_and_new_generations() {
    let redis = TestRedis::start();
    let full = |n: &CacheNode| {
        n.func::<(u32, u32), u64>("full")
            .key_args(ArgsInKey::Each)
            .computed_by(|(x, y): (u32, u32)| ready(Ok::<_, Infallible>(u64::from(x + y))))
            .refresh_every(Duration::from_secs(3600))
            .build()
            .unwrap()
    };
    // A builder that ran one refresh pass of `full` (its registry entry
    // and period lock), then stopped, so nothing writes them again.
    let c = refreshing_node(&redis).await;
    let _fc = full(&c);
    assert!(
        eventually(PERIOD * 5, || async {
            last_refresh(&redis, "full").is_some()
        })
        .await
    );
    c.shutdown().await;

    let a = plain_node(&redis).await;
    // A plain value.
    a.set("p", &1u32, Duration::from_secs(60)).await.unwrap();
    // A function in full-args mode, with its recorded arguments.
    let fa = full(&a);
    fa.call(&(1, 2), || ready(Ok::<_, Infallible>(3)))
        .await
        .unwrap();
    let full_key = fa.cache_key(&(1, 2)).unwrap();
    // An at-least-once write, with its version.
    let alo = a
        .func::<(u32,), u64>("alo")
        .atomic_writes(AtomicWrites::AtLeastOnce)
        .build()
        .unwrap();
    alo.call(&(1,), || ready(Ok::<_, Infallible>(1)))
        .await
        .unwrap();
    let alo_key = alo.cache_key(&(1,)).unwrap();
    // An at-most-once computation in progress, holding its lock.
    let amo = a
        .func::<(u32,), u64>("amo")
        .atomic_writes(AtomicWrites::AtMostOnce)
        .build()
        .unwrap();
    let amo_key = amo.cache_key(&(1,)).unwrap();
    let (open, gate) = tokio::sync::watch::channel(false);
    let computing = tokio::spawn({
        let amo = amo.clone();
        async move {
            amo.call(&(1,), || async move {
                let mut gate = gate;
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, Infallible>(1)
            })
            .await
        }
    });
    let amo_lock = format!("{{{amo_key}}}:lock");
    assert!(eventually(PERIOD * 5, || async { redis.exists(&amo_lock) }).await);
    // An async computation queued for a builder that does not know the
    // function yet: its job and marker.
    let b = refreshing_node(&redis).await;
    let job = |n: &CacheNode| {
        n.func::<(u32,), String>("job")
            .async_compute(|(x,): (u32,)| ready(Ok::<_, Infallible>(format!("built {x}"))))
            .build()
            .unwrap()
    };
    let fj = job(&a);
    assert_eq!(fj.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    let job_marker = format!("{{{}}}:job", fj.cache_key(&(1,)).unwrap());

    let bus = ["t:{bus}:epoch", "t:{bus}:log", "t:{bus}:seq"];
    let mut before = BTreeSet::from([
        "t:k:p".to_owned(),
        full_key.clone(),
        "t:args:full".to_owned(),
        "t:ks".to_owned(),
        "t:refresh:last".to_owned(),
        "t:lock:refresh:full".to_owned(),
        alo_key.clone(),
        format!("{{{alo_key}}}:ver"),
        amo_lock.clone(),
        "t:jobs".to_owned(),
        job_marker.clone(),
    ]);
    before.extend(bus.map(String::from));
    let shards: BTreeSet<String> = redis.keys("t:ks:*").into_iter().collect();
    assert_eq!(shards.len(), 2, "one key-set shard each for full and alo");
    before.extend(shards);
    let all: BTreeSet<String> = redis.keys("*").into_iter().collect();
    assert_eq!(all, before, "every feature left its keys");

    a.delete_all().await.unwrap();
    // What survives: the bus (its sequence, log and epoch: nodes read them
    // to tell a missed invalidation from a lost Redis state), and the build
    // queue (the stream with its consumer group, which builders read, and
    // the markers of the jobs still in it); and a new clear generation for
    // each function that had values (so that a computation begun before the
    // clear does not store its value after it).
    let mut survivors = BTreeSet::from([
        "t:jobs".to_owned(),
        job_marker,
        "t:gen:alo".to_owned(),
        "t:gen:full".to_owned(),
    ]);
    survivors.extend(bus.map(String::from));
    let left: BTreeSet<String> = redis.keys("*").into_iter().collect();
    assert_eq!(
        left, survivors,
        "clear_all leaves the bus, the queue and the new generations only"
    );

    // The computation whose lock was cleared does not store its value.
    open.send(true).unwrap();
    assert_eq!(computing.await.unwrap(), Ok(1));
    assert!(!redis.exists(&amo_key), "written after the clear");
    // The queued job is built once a builder knows its function.
    let _fb = job(&b);
    assert!(
        eventually(Duration::from_secs(10), || async {
            fj.get_or_build(&(1,)).await.unwrap() == Lookup::Ready("built 1".to_owned())
        })
        .await,
        "the job queued before the clear is built"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_compute_still_builds_after_a_namespace_clear_all() {
    let redis = TestRedis::start();
    let a = plain_node(&redis).await;
    let b = refreshing_node(&redis).await;
    let job = |n: &CacheNode| {
        n.func::<(u32,), String>("job")
            .async_compute(|(x,): (u32,)| ready(Ok::<_, Infallible>(format!("built {x}"))))
            .build()
            .unwrap()
    };
    let (fj, _fb) = (job(&a), job(&b));
    // The builder has created the queue and its consumer group.
    assert!(eventually(PERIOD * 5, || async { redis.exists("t:jobs") }).await);
    a.delete_all().await.unwrap();
    assert_eq!(fj.get_or_build(&(1,)).await.unwrap(), Lookup::BeingBuilt);
    assert!(
        eventually(Duration::from_secs(10), || async {
            fj.get_or_build(&(1,)).await.unwrap() == Lookup::Ready("built 1".to_owned())
        })
        .await,
        "builders keep reading the queue after a clear_all"
    );
}
