//! What one RAM hit costs, measured two ways that other load on the
//! machine moves less than criterion's means (the `layers` bench):
//!
//! * **time, minimum over interleaved batches**: each round times a batch
//!   of `BATCH` hits of every operation in turn; the figure is the fastest
//!   batch of each over `ROUNDS` rounds. A batch that another process
//!   interrupted is slower, never faster, and interleaving exposes every
//!   operation to the same moments of load.
//! * **instructions, counted by callgrind**: each operation runs `HITS`
//!   times inside one `#[inline(never)]` loop function, in a child process
//!   of this binary run under `valgrind --tool=callgrind
//!   --toggle-collect=<that function>`, so only the loop's instructions
//!   (all it calls included) are counted; the figure is the total divided
//!   by `HITS` (moka's maintenance, which a read runs every 64 reads,
//!   included). Skipped, with a note, when `valgrind` is not installed.
//!
//! Operations, on a RAM-only node, all returning the same small struct:
//!
//! * `bare_moka_get`: a moka `get` of the `Arc`'d struct;
//! * `get_arc`, `get_arc_clone`: `CacheNode::get_arc`, then also a clone;
//! * `cached_fn_u64`, `cached_fn_u64_string_bool`: `CachedFn::call` hits
//!   with one `u64` argument and with `(u64, String, bool)`.
//!
//! Run: `cargo bench --bench hit_cost`.

use std::convert::Infallible;
use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachenode::{CacheNode, CachedFn, Ttl};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

/// Hits per operation under callgrind (after the fill call that put the
/// value in RAM, so all are hits in the steady state).
const HITS: u64 = 20_000;
/// Hits per timed batch, and rounds of batches.
const BATCH: u32 = 2_000;
const ROUNDS: u32 = 300;

const OPS: &[&str] = &[
    "bare_moka_get",
    "get_arc",
    "get_arc_clone",
    "cached_fn_u64",
    "cached_fn_u64_string_bool",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Small {
    id: u64,
    name: String,
    score: f64,
}

fn small() -> Small {
    Small {
        id: 42,
        name: "ada lovelace".into(),
        score: 0.5,
    }
}

fn not_computed() -> std::future::Ready<Result<Small, Infallible>> {
    panic!("a RAM hit computed")
}

fn at_once<T>(f: impl std::future::Future<Output = T>) -> T {
    f.now_or_never().expect("a RAM hit completes at once")
}

/// A RAM-only node holding the struct under a plain key and as the value
/// of both functions, and a bare moka cache holding it too.
struct Setup {
    rt: tokio::runtime::Runtime,
    node: CacheNode,
    one: CachedFn<(u64,), Small>,
    three: CachedFn<(u64, String, bool), Small>,
    three_args: (u64, String, bool),
    bare: moka::sync::Cache<String, Arc<Small>>,
}

impl Setup {
    fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let node = rt
            .block_on(CacheNode::builder().without_redis().build())
            .unwrap();
        rt.block_on(node.set("small", &small(), Ttl::Never))
            .unwrap();
        let one = node.func("bench.one_u64").build().unwrap();
        let three = node.func("bench.three_args").build().unwrap();
        let three_args = (42u64, String::from("fr-FR"), true);
        rt.block_on(async {
            let fill = || async { Ok::<_, Infallible>(small()) };
            one.call(&(42,), fill).await.unwrap();
            three.call(&three_args, fill).await.unwrap();
        });
        let bare = moka::sync::Cache::new(10_000);
        bare.insert("small".into(), Arc::new(small()));
        // Settle moka's deferred bookkeeping of the inserts.
        let _ = node.stats();
        bare.run_pending_tasks();
        Setup {
            rt,
            node,
            one,
            three,
            three_args,
            bare,
        }
    }

    /// Runs `f` with a batch runner for operation `op`: `f` gets a
    /// function running `n` hits of it.
    fn with_op<R>(&self, op: &str, f: impl FnOnce(&mut dyn FnMut(u64)) -> R) -> R {
        let _guard = self.rt.enter();
        match op {
            "bare_moka_get" => f(&mut |n| {
                hits(n, || {
                    black_box(self.bare.get("small").expect("present"));
                })
            }),
            "get_arc" => f(&mut |n| {
                hits(n, || {
                    black_box(at_once(self.node.get_arc::<Small>("small")).unwrap());
                })
            }),
            "get_arc_clone" => f(&mut |n| {
                hits(n, || {
                    let v = at_once(self.node.get_arc::<Small>("small"))
                        .unwrap()
                        .unwrap();
                    black_box(Small::clone(&v));
                })
            }),
            "cached_fn_u64" => f(&mut |n| {
                hits(n, || {
                    black_box(at_once(self.one.call(black_box(&(42,)), not_computed)).unwrap());
                })
            }),
            "cached_fn_u64_string_bool" => f(&mut |n| {
                hits(n, || {
                    let args = black_box(&self.three_args);
                    black_box(at_once(self.three.call(args, not_computed)).unwrap());
                })
            }),
            other => panic!("unknown operation {other}"),
        }
    }
}

/// The measured loop: the only function callgrind counts in.
#[inline(never)]
fn hits(n: u64, mut hit: impl FnMut()) {
    for _ in 0..n {
        hit();
    }
}

/// The fastest batch of each operation, ns per hit.
fn min_times(s: &Setup) -> Vec<f64> {
    for op in OPS {
        s.with_op(op, |run| run(u64::from(BATCH)));
    }
    let mut best = vec![Duration::MAX; OPS.len()];
    for _ in 0..ROUNDS {
        for (op, best) in OPS.iter().zip(&mut best) {
            let took = s.with_op(op, |run| {
                let started = Instant::now();
                run(u64::from(BATCH));
                started.elapsed()
            });
            *best = (*best).min(took);
        }
    }
    best.iter()
        .map(|d| d.as_secs_f64() * 1e9 / f64::from(BATCH))
        .collect()
}

/// Instructions per hit of each operation, or `None` without valgrind.
fn instructions() -> Option<Vec<f64>> {
    Command::new("valgrind").arg("--version").output().ok()?;
    let me = std::env::current_exe().unwrap();
    let counts = OPS
        .iter()
        .map(|op| {
            let out = Command::new("valgrind")
                .args([
                    "--tool=callgrind",
                    "--callgrind-out-file=/dev/null",
                    "--toggle-collect=*hit_cost::hits*",
                ])
                .arg(&me)
                .env("CACHENODE_HIT_COST_OP", op)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{op} failed:\n{stderr}");
            let collected: u64 = stderr
                .lines()
                .find_map(|l| l.split("Collected :").nth(1))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("no instruction count for {op}:\n{stderr}"));
            collected as f64 / HITS as f64
        })
        .collect();
    Some(counts)
}

fn print(title: &str, unit: &str, figures: &[f64]) {
    println!("{title}");
    for (op, n) in OPS.iter().zip(figures) {
        println!("  {op:>26}: {n:8.1} {unit}");
    }
    let get_arc_clone = figures[2];
    for (op, n) in OPS.iter().zip(figures).skip(3) {
        println!("  {op:>26} / get_arc_clone: {:.2}x", n / get_arc_clone);
    }
}

fn main() {
    if let Ok(op) = std::env::var("CACHENODE_HIT_COST_OP") {
        // The child under callgrind: the counted loop.
        let s = Setup::new();
        s.with_op(&op, |run| run(HITS));
        return;
    }
    let s = Setup::new();
    let times = min_times(&s);
    print(
        &format!("time per RAM hit, fastest of {ROUNDS} interleaved batches of {BATCH} hits"),
        "ns",
        &times,
    );
    match instructions() {
        Some(counts) => print(
            &format!("instructions per RAM hit (callgrind, {HITS} hits per operation)"),
            "",
            &counts,
        ),
        None => println!("valgrind is not installed: no instruction counts"),
    }
}
