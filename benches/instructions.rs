//! Instructions per RAM hit, counted by callgrind: a figure that, unlike
//! time, does not move with the machine's load.
//!
//! Each operation runs `HITS` times inside one `#[inline(never)]` loop
//! function, in a child process of this binary run under
//! `valgrind --tool=callgrind --toggle-collect=<that function>`, so only
//! the loop's instructions (all it calls included) are counted; the figure
//! is the total divided by `HITS`. Operations, on a RAM-only node, all
//! returning the same small struct:
//!
//! * `bare_moka_get`: a moka `get` of the `Arc`'d struct;
//! * `get_arc`, `get_arc_clone`: `CacheNode::get_arc`, then also a clone;
//! * `cached_fn_u64`, `cached_fn_u64_string_bool`: `CachedFn::call` hits
//!   with one `u64` argument and with `(u64, String, bool)`.
//!
//! Run: `cargo bench --bench instructions` (prints a note and exits when
//! `valgrind` is not installed).

use std::convert::Infallible;
use std::hint::black_box;
use std::process::Command;
use std::sync::Arc;

use cachenode::{CacheNode, CachedFn, Ttl};
use futures::FutureExt;
use serde::{Deserialize, Serialize};

const HITS: u64 = 20_000;

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

/// The measured loop: the only function callgrind counts in.
#[inline(never)]
fn measured_loop(mut hit: impl FnMut()) {
    for _ in 0..HITS {
        hit();
    }
}

/// Runs `op` in this process (the child under callgrind).
fn run(op: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let node = rt
        .block_on(CacheNode::builder().without_redis().build())
        .unwrap();
    rt.block_on(node.set("small", &small(), Ttl::Never))
        .unwrap();
    let one: CachedFn<(u64,), Small> = node.func("bench.one_u64").build().unwrap();
    let three: CachedFn<(u64, String, bool), Small> =
        node.func("bench.three_args").build().unwrap();
    let three_args = (42u64, String::from("fr-FR"), true);
    rt.block_on(async {
        let fill = || async { Ok::<_, Infallible>(small()) };
        one.call(&(42,), fill).await.unwrap();
        three.call(&three_args, fill).await.unwrap();
    });
    let bare: moka::sync::Cache<String, Arc<Small>> = moka::sync::Cache::new(10_000);
    bare.insert("small".into(), Arc::new(small()));
    // Settle moka's deferred bookkeeping of the inserts, and warm up.
    let _ = node.stats();
    bare.run_pending_tasks();
    let _guard = rt.enter();
    let mut hit: Box<dyn FnMut()> = match op {
        "bare_moka_get" => Box::new(|| {
            black_box(bare.get("small").expect("present"));
        }),
        "get_arc" => Box::new(|| {
            black_box(at_once(node.get_arc::<Small>("small")).unwrap());
        }),
        "get_arc_clone" => Box::new(|| {
            let v = at_once(node.get_arc::<Small>("small")).unwrap().unwrap();
            black_box(Small::clone(&v));
        }),
        "cached_fn_u64" => Box::new(|| {
            black_box(at_once(one.call(black_box(&(42,)), not_computed)).unwrap());
        }),
        "cached_fn_u64_string_bool" => Box::new(|| {
            black_box(at_once(three.call(black_box(&three_args), not_computed)).unwrap());
        }),
        other => panic!("unknown operation {other}"),
    };
    for _ in 0..100 {
        hit();
    }
    measured_loop(&mut hit);
}

fn main() {
    if let Ok(op) = std::env::var("CACHENODE_INSTRUCTIONS_OP") {
        run(&op);
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind is not installed: no instruction counts");
        return;
    }
    let me = std::env::current_exe().unwrap();
    println!("instructions per RAM hit (callgrind, {HITS} hits per operation)");
    let mut per_hit = Vec::new();
    for op in OPS {
        let out = Command::new("valgrind")
            .args([
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                "--toggle-collect=*measured_loop*",
            ])
            .arg(&me)
            .env("CACHENODE_INSTRUCTIONS_OP", op)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{op} failed:\n{stderr}");
        let collected: u64 = stderr
            .lines()
            .find_map(|l| l.split("Collected :").nth(1))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no instruction count for {op}:\n{stderr}"));
        let n = collected as f64 / HITS as f64;
        per_hit.push(n);
        println!("{op:>28}: {n:8.1}");
    }
    let get_arc_clone = per_hit[2];
    for (op, n) in OPS.iter().zip(&per_hit).skip(3) {
        println!("{op:>28} / get_arc_clone: {:.2}x", n / get_arc_clone);
    }
}
