//! Workload 1: the hit of a small struct on one node, the cost every cached
//! read pays. For systems with a RAM layer it is a RAM hit; systems without
//! one answer from Redis, and the row says so.
//!
//! Latency is the median, over [`BATCHES`] batches on one thread, of a
//! batch's time divided by its reads (each batch sized to last about
//! `batch`); throughput is reads per second of one and of two OS threads,
//! each reading in a loop for `window`. Every thread drives the node's
//! futures on its own current-thread tokio runtime, the same for every
//! system.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use super::{guarded, kind_label, progress, Ctx, Fleet, Outcome, Row};
use crate::stats;
use crate::system::{Item, Kind, Node, System};

/// Batches of the latency measurement.
pub const BATCHES: usize = 10;

/// Reads between two clock checks in the throughput loop.
const CLOCK_EVERY: u64 = 64;

/// One system's hit.
#[derive(Clone, Debug, Serialize)]
pub struct HitResult {
    /// What a hit is for this system.
    pub what: String,
    /// Median ns per read over the batches.
    pub ns_per_op: f64,
    /// ns per read of each batch.
    pub batches_ns: Vec<f64>,
    /// Reads per second with one thread; `None` where not measured.
    pub ops_per_s_1: Option<f64>,
    /// Reads per second with two threads; `None` where not measured.
    pub ops_per_s_2: Option<f64>,
}

/// How long each part runs.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub batch: Duration,
    pub window: Duration,
}

impl Params {
    pub fn new(quick: bool) -> Self {
        if quick {
            Params {
                batch: Duration::from_millis(20),
                window: Duration::from_millis(200),
            }
        } else {
            Params {
                batch: Duration::from_millis(50),
                window: Duration::from_millis(500),
            }
        }
    }
}

/// The hit of every system in `systems`.
pub async fn run(ctx: &Ctx, systems: &[Arc<dyn System>]) -> Vec<Row<HitResult>> {
    let params = Params::new(ctx.quick);
    let mut rows = Vec::new();
    for system in systems {
        let env = ctx.env("w1", system.name(), "");
        let sys = system.clone();
        let outcome = guarded(Duration::from_secs(60), async move {
            let fleet = Fleet::build(sys.as_ref(), &env, 1).await?;
            let result = measure(fleet.nodes[0].clone(), sys.kind(), params).await;
            fleet.shutdown().await;
            result
        })
        .await;
        match &outcome {
            Outcome::Ok(r) => progress(
                "w1",
                format!(
                    "{}: {} {:.0} ns/op, {:.0} ops/s (1 thread), {:.0} ops/s (2 threads)",
                    system.name(),
                    r.what,
                    r.ns_per_op,
                    r.ops_per_s_1.unwrap_or(f64::NAN),
                    r.ops_per_s_2.unwrap_or(f64::NAN)
                ),
            ),
            other => progress("w1", format!("{}: {other:?}", system.name())),
        }
        rows.push(Row {
            system: system.name().to_owned(),
            kind: kind_label(system.kind()),
            outcome,
        });
    }
    rows
}

/// BentoCache's RAM hit as measured by its own Node.js script (one thread;
/// no thread scaling measured).
pub fn bento_row(ram_hit_ns: f64) -> Row<HitResult> {
    Row {
        system: "bentocache".into(),
        kind: "RAM + Redis (Node.js)",
        outcome: Outcome::Ok(HitResult {
            what: "RAM hit (Node.js, measured by bento.js)".into(),
            ns_per_op: ram_hit_ns,
            batches_ns: Vec::new(),
            ops_per_s_1: None,
            ops_per_s_2: None,
        }),
    }
}

const KEY: &str = "hot";

async fn measure(node: Arc<dyn Node>, kind: Kind, p: Params) -> anyhow::Result<HitResult> {
    node.set(KEY, &Item::new(1)).await?;
    // A read after the write: a system that fills RAM on read has it now.
    if node.get(KEY).await?.is_none() {
        bail!("the value just written is not read back");
    }
    let what = match kind {
        Kind::RedisOnly => "Redis GET (no RAM layer)",
        _ => "RAM hit",
    }
    .to_owned();
    let n = node.clone();
    let batches_ns =
        tokio::task::spawn_blocking(move || on_thread(|| batches(n.as_ref(), p.batch))).await??;
    let ops_per_s_1 = throughput(node.clone(), 1, p.window).await?;
    let ops_per_s_2 = throughput(node, 2, p.window).await?;
    Ok(HitResult {
        what,
        ns_per_op: stats::median(&batches_ns),
        batches_ns,
        ops_per_s_1: Some(ops_per_s_1),
        ops_per_s_2: Some(ops_per_s_2),
    })
}

/// Runs `f` on a current-thread tokio runtime of the calling thread.
fn on_thread<T, Fut: std::future::Future<Output = anyhow::Result<T>>>(
    f: impl FnOnce() -> Fut,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f())
}

/// Reads the hot key `ops` times; the time taken.
async fn reads(node: &dyn Node, ops: u64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for _ in 0..ops {
        let v = node.get(KEY).await?;
        if std::hint::black_box(v).is_none() {
            bail!("the hot key was missed");
        }
    }
    Ok(started.elapsed())
}

/// ns per read of each of [`BATCHES`] batches of about `batch` each, after
/// a calibration that doubles as warm-up.
async fn batches(node: &dyn Node, batch: Duration) -> anyhow::Result<Vec<f64>> {
    let mut ops = 1u64;
    let per_op = loop {
        let took = reads(node, ops).await?;
        if took >= batch / 4 {
            break took.as_secs_f64() / ops as f64;
        }
        ops *= 2;
    };
    let ops = ((batch.as_secs_f64() / per_op) as u64).max(1);
    let mut out = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let took = reads(node, ops).await?;
        out.push(took.as_nanos() as f64 / ops as f64);
    }
    Ok(out)
}

/// Reads per second of `threads` OS threads reading the hot key for
/// `window` each.
async fn throughput(node: Arc<dyn Node>, threads: usize, window: Duration) -> anyhow::Result<f64> {
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let node = node.as_ref();
                    s.spawn(move || on_thread(|| read_for(node, window)))
                })
                .collect();
            let mut total = 0.0;
            for h in handles {
                let (ops, took) = h.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
                total += ops as f64 / took.as_secs_f64();
            }
            Ok(total)
        })
    })
    .await?
}

/// Reads the hot key until `window` has passed; reads done and time taken.
async fn read_for(node: &dyn Node, window: Duration) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let mut ops = 0u64;
    loop {
        reads(node, CLOCK_EVERY).await?;
        ops += CLOCK_EVERY;
        let took = started.elapsed();
        if took >= window {
            return Ok((ops, took));
        }
    }
}
