//! Heap allocations of a RAM hit, counted exactly.
//!
//! This test binary installs a counting global allocator (it is the only
//! one that does). Counting is armed per thread: only the allocations made
//! by the test's own thread while it runs 1000 hits are counted, so the
//! node's background tasks (bus listener, sweeps) on other threads never
//! enter the figure. Every call completes in its first poll (a RAM hit has
//! nothing to wait for), so each runs entirely on the test thread.
//!
//! The promised figures: a plain `get_arc` hit allocates nothing; a cached
//! function's hit allocates nothing of its own, whatever its arguments, so
//! 1000 hits allocate exactly what 1000 clones of the returned value do
//! (none for a `u64`, one each for a `String`).

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{ready, Future};
use std::time::Duration;

use cachenode::{cached, CacheNode, CachedFn, KeyArgs, Layers, Ttl};
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use support::{node, TestRedis};

struct Counting;

thread_local! {
    /// Whether this thread's allocations are counted now.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    /// This thread's allocations while armed.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    if ARMED.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter only reads and bumps const-initialised thread-locals, which
// never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const HITS: u64 = 1000;

/// Hits counted between two runs of moka's maintenance (fewer than the 64
/// reads after which a read runs it).
const BATCH: u64 = 50;

/// Counts the allocations of `HITS` runs of `hit` on this thread.
///
/// moka applies an insert's bookkeeping later, and every 64 reads runs
/// its maintenance on the reading thread; there crossbeam-epoch, which
/// moka uses, may allocate a node of its garbage queue (about one per 100
/// reads once the queue has been used: moka's cost, a bare moka `get`'s as
/// much as a cached hit's). So `node`'s RAM layer is settled
/// ([`CacheNode::stats`] runs the maintenance), uncounted, before the
/// first hit and after every [`BATCH`] hits: what is counted is the hits'
/// own allocations, exactly. The first hits warm up (first-use buffers).
fn allocations_per_1000_hits(node: &CacheNode, mut hit: impl FnMut()) -> u64 {
    for _ in 0..BATCH {
        hit();
    }
    let mut allocations = 0;
    for _ in 0..HITS / BATCH {
        let _ = node.stats();
        let before = ALLOCATIONS.with(Cell::get);
        ARMED.with(|a| a.set(true));
        for _ in 0..BATCH {
            hit();
        }
        ARMED.with(|a| a.set(false));
        allocations += ALLOCATIONS.with(Cell::get) - before;
    }
    allocations
}

/// The output of a future that must complete in its first poll.
fn at_once<T>(f: impl Future<Output = T>) -> T {
    f.now_or_never().expect("a RAM hit completes at once")
}

/// A computation a hit must never run.
fn not_run<V>() -> std::future::Ready<Result<V, Infallible>> {
    panic!("a RAM hit computed")
}

fn ram_only_node(rt: &tokio::runtime::Runtime) -> CacheNode {
    rt.block_on(CacheNode::builder().without_redis().build())
        .expect("a RAM-only node builds")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Fills the function's RAM with one call, then counts 1000 hits of it.
fn fn_hit_allocations<A, V>(
    rt: &tokio::runtime::Runtime,
    node: &CacheNode,
    f: &CachedFn<A, V>,
    args: &A,
    v: V,
) -> u64
where
    A: KeyArgs + ?Sized,
    V: Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static,
{
    let filled = rt
        .block_on(f.call(args, || ready(Ok::<_, Infallible>(v.clone()))))
        .unwrap();
    assert_eq!(filled, v);
    let _guard = rt.enter();
    allocations_per_1000_hits(node, || {
        let got = at_once(f.call(args, not_run)).unwrap();
        assert_eq!(got, v);
    })
}

#[test]
fn get_arc_hits_allocate_nothing() {
    let rt = runtime();
    let node = ram_only_node(&rt);
    rt.block_on(node.set("user:1", &String::from("ada lovelace"), Ttl::Never))
        .unwrap();
    let _guard = rt.enter();
    let n = allocations_per_1000_hits(&node, || {
        let v = at_once(node.get_arc::<String>("user:1")).unwrap();
        assert_eq!(v.as_deref().map(String::as_str), Some("ada lovelace"));
    });
    assert_eq!(n, 0, "allocations in 1000 get_arc hits");
}

#[test]
fn fn_hits_with_one_u64_allocate_only_the_value_clone() {
    let rt = runtime();
    let node = ram_only_node(&rt);
    let f = node
        .func::<(u64,), String>("alloc.one_u64")
        .build()
        .unwrap();
    let n = fn_hit_allocations(&rt, &node, &f, &(42u64,), String::from("ada lovelace"));
    assert_eq!(n, HITS, "allocations in 1000 hits returning a String");

    let f = node
        .func::<(u64,), u64>("alloc.one_u64_to_u64")
        .build()
        .unwrap();
    let n = fn_hit_allocations(&rt, &node, &f, &(42u64,), 7u64);
    assert_eq!(n, 0, "allocations in 1000 hits returning a u64");
}

#[test]
fn fn_hits_with_three_args_allocate_only_the_value_clone() {
    let rt = runtime();
    let node = ram_only_node(&rt);
    let args = (42u64, String::from("fr-FR"), true);
    let f = node
        .func::<(u64, String, bool), String>("alloc.three")
        .build()
        .unwrap();
    let n = fn_hit_allocations(&rt, &node, &f, &args, String::from("ada lovelace"));
    assert_eq!(n, HITS, "allocations in 1000 hits returning a String");

    let f = node
        .func::<(u64, String, bool), u64>("alloc.three_to_u64")
        .build()
        .unwrap();
    let n = fn_hit_allocations(&rt, &node, &f, &args, 7u64);
    assert_eq!(n, 0, "allocations in 1000 hits returning a u64");
}

/// On a node with Redis and a bus, a hit is served under the lease the
/// bus renews: the same figures. (A multi-threaded runtime, so that the
/// listener keeps renewing the lease on its worker while the test thread
/// counts.)
#[test]
fn hits_on_a_node_with_redis_and_a_bus_allocate_the_same() {
    let redis = TestRedis::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let node = rt.block_on(node(&redis));
    let f = node
        .func::<(u64, String, bool), u64>("alloc.redis")
        .build()
        .unwrap();
    let args = (42u64, String::from("fr-FR"), true);
    rt.block_on(f.call(&args, || ready(Ok::<_, Infallible>(7u64))))
        .unwrap();
    // RAM is served once the listener's first deletion check renewed the
    // lease: a RAM-only probe of the same function answers then.
    let probe = node
        .func::<(u64, String, bool), u64>("alloc.redis")
        .layers(Layers::Ram)
        .build()
        .unwrap();
    let served = rt.block_on(support::eventually(Duration::from_secs(10), || async {
        probe.call(&args, || ready(Err("computed"))).await.is_ok()
    }));
    assert!(served, "RAM not served");
    let n = fn_hit_allocations(&rt, &node, &f, &args, 7u64);
    assert_eq!(n, 0, "allocations in 1000 cached-function hits");

    rt.block_on(node.set("user:1", &7u64, Ttl::Never)).unwrap();
    let _guard = rt.enter();
    let n = allocations_per_1000_hits(&node, || {
        let v = at_once(node.get_arc::<u64>("user:1")).unwrap();
        assert_eq!(v.as_deref(), Some(&7));
    });
    assert_eq!(n, 0, "allocations in 1000 get_arc hits");
}

/// A method cached with the attribute macro, on an explicit node.
struct Repo {
    node: CacheNode,
}

impl Repo {
    #[cached(ignore_self, node = self.node, name = "alloc.macro")]
    async fn lookup(&self, id: u64, lang: &str, exact: bool) -> Result<u64, Infallible> {
        Ok(id + lang.len() as u64 + u64::from(exact))
    }
}

#[test]
fn macro_hits_allocate_nothing() {
    let rt = runtime();
    let repo = Repo {
        node: ram_only_node(&rt),
    };
    assert_eq!(rt.block_on(repo.lookup(42, "fr-FR", true)), Ok(48));
    let _guard = rt.enter();
    let n = allocations_per_1000_hits(&repo.node, || {
        assert_eq!(at_once(repo.lookup(42, "fr-FR", true)), Ok(48));
    });
    assert_eq!(n, 0, "allocations in 1000 hits of a #[cached] method");
}
