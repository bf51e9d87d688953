//! Workload 3: Zipf-distributed reads and writes from several nodes at once,
//! with a check for stale reads.
//!
//! [`NODES`] nodes of one system in this process, [`TASKS_PER_NODE`] tasks
//! each, for a fixed time. Each operation picks a key among [`KEYS`] with a
//! Zipf law (s = 1.0) and is a write with probability [`WRITE_FRACTION`],
//! otherwise a read:
//!
//! * the source of truth is an array of versions, one per key; a write
//!   takes the next version there, sets it through its node, then records
//!   it as the latest *acknowledged* version of the key;
//! * a read notes the latest acknowledged version before it starts; a value
//!   older than that is a **stale read** (a write of a newer version had
//!   returned before the read began); a miss loads the current version from
//!   the source of truth and stores it with [`Node::fill`] (cache-aside:
//!   `set` unless the system has a cheaper fill primitive).
//!
//! Cache-aside has its own race, the same for every system: a miss loads
//! version v, a write stores v+1 and is acknowledged, then the loader's set
//! of v lands over it. Concurrent writers of one key race the same way. Such
//! stale values stay until the key's next write, so part of the stale count
//! is this race and not the system's invalidation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{guarded, kind_label, progress, Ctx, Fleet, Outcome, Row};
use crate::system::{Item, Node, System};

/// Distinct keys.
pub const KEYS: usize = 100_000;
/// Zipf exponent.
pub const EXPONENT: f64 = 1.0;
/// Fraction of operations that are writes.
pub const WRITE_FRACTION: f64 = 0.05;
/// Nodes of the system in the process.
pub const NODES: usize = 4;
/// Concurrent tasks per node.
pub const TASKS_PER_NODE: usize = 4;
/// Operations between two checks of the clock, which are also the points
/// where a task yields so that background tasks (bus listeners, connection
/// drivers) get their turn even when every read is a RAM hit.
const YIELD_EVERY: u64 = 16;

/// One system's run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ZipfResult {
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_s: f64,
    pub reads: u64,
    pub hits: u64,
    /// Hits / reads.
    pub hit_ratio: f64,
    pub writes: u64,
    pub stale_reads: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Seconds of each system's run.
pub fn seconds(quick: bool) -> f64 {
    if quick {
        2.0
    } else {
        8.0
    }
}

/// Seconds of load before each system's measured run (not counted).
pub fn warmup_seconds(quick: bool) -> f64 {
    if quick {
        1.0
    } else {
        3.0
    }
}

/// The Zipf law over ranks `0..n` (rank 0 the most frequent).
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(s);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    /// The rank for a uniform draw `u` in `[0, 1)`.
    pub fn sample(&self, u: f64) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let i = self.cumulative.partition_point(|&c| c <= u * total);
        i.min(self.cumulative.len().saturating_sub(1))
    }
}

/// The source of truth and the latest acknowledged version of every key.
struct Versions {
    truth: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
}

#[derive(Default)]
struct Counts {
    ops: u64,
    reads: u64,
    hits: u64,
    writes: u64,
    stale: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Counts {
    fn error(&mut self, e: anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }

    fn add(&mut self, o: Counts) {
        self.ops += o.ops;
        self.reads += o.reads;
        self.hits += o.hits;
        self.writes += o.writes;
        self.stale += o.stale;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Every system in `systems`.
pub async fn run(ctx: &Ctx, systems: &[Arc<dyn System>]) -> Vec<Row<ZipfResult>> {
    let secs = seconds(ctx.quick);
    let quick = ctx.quick;
    let zipf = Arc::new(Zipf::new(KEYS, EXPONENT));
    let limit = Duration::from_secs_f64(secs + warmup_seconds(quick) + 60.0);
    let mut rows = Vec::new();
    for system in systems {
        let env = ctx.env("w3", system.name(), "");
        let (sys, zipf) = (system.clone(), zipf.clone());
        let outcome = guarded(limit, async move {
            let fleet = Fleet::build(sys.as_ref(), &env, NODES).await?;
            let versions = Arc::new(Versions {
                truth: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
                acked: (0..KEYS).map(|_| AtomicU64::new(0)).collect(),
            });
            // Warm-up, not counted: the same load, so that the measured
            // part sees each system's steady state, not its cold start.
            let warm = Duration::from_secs_f64(warmup_seconds(quick));
            let warmed = drive(&fleet.nodes, zipf.clone(), &versions, warm).await;
            let result = match warmed {
                Ok(_) => drive(&fleet.nodes, zipf, &versions, Duration::from_secs_f64(secs)).await,
                Err(e) => Err(e),
            };
            fleet.shutdown().await;
            result
        })
        .await;
        match &outcome {
            Outcome::Ok(r) => progress(
                "w3",
                format!(
                    "{}: {:.0} ops/s, hit ratio {:.3}, {} stale reads, {} errors",
                    system.name(),
                    r.ops_per_s,
                    r.hit_ratio,
                    r.stale_reads,
                    r.errors
                ),
            ),
            other => progress("w3", format!("{}: {other:?}", system.name())),
        }
        rows.push(Row {
            system: system.name().to_owned(),
            kind: kind_label(system.kind()),
            outcome,
        });
    }
    rows
}

async fn drive(
    nodes: &[Arc<dyn Node>],
    zipf: Arc<Zipf>,
    versions: &Arc<Versions>,
    duration: Duration,
) -> anyhow::Result<ZipfResult> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for node in nodes {
        for _ in 0..TASKS_PER_NODE {
            let (node, zipf, versions) = (node.clone(), zipf.clone(), versions.clone());
            tasks.push(tokio::spawn(async move {
                worker(node.as_ref(), &zipf, &versions, deadline).await
            }));
        }
    }
    let mut total = Counts::default();
    for t in tasks {
        total.add(t.await?);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(ZipfResult {
        seconds,
        ops: total.ops,
        ops_per_s: total.ops as f64 / seconds,
        reads: total.reads,
        hits: total.hits,
        hit_ratio: total.hits as f64 / total.reads.max(1) as f64,
        writes: total.writes,
        stale_reads: total.stale,
        errors: total.errors,
        first_error: total.first_error,
    })
}

async fn worker(node: &dyn Node, zipf: &Zipf, v: &Versions, deadline: Instant) -> Counts {
    let mut c = Counts::default();
    loop {
        for _ in 0..YIELD_EVERY {
            let k = zipf.sample(fastrand::f64());
            let key = format!("z:{k}");
            if fastrand::f64() < WRITE_FRACTION {
                c.writes += 1;
                let version = v.truth[k].fetch_add(1, Ordering::SeqCst) + 1;
                match node.set(&key, &Item::new(version)).await {
                    Ok(()) => {
                        v.acked[k].fetch_max(version, Ordering::SeqCst);
                    }
                    Err(e) => c.error(e),
                }
            } else {
                c.reads += 1;
                let floor = v.acked[k].load(Ordering::SeqCst);
                match node.get(&key).await {
                    Ok(Some(item)) => {
                        c.hits += 1;
                        if item.version < floor {
                            c.stale += 1;
                        }
                    }
                    Ok(None) => {
                        let current = v.truth[k].load(Ordering::SeqCst);
                        if let Err(e) = node.fill(&key, &Item::new(current)).await {
                            c.error(e);
                        }
                    }
                    Err(e) => c.error(e),
                }
            }
            c.ops += 1;
        }
        if Instant::now() >= deadline {
            return c;
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let z = Zipf::new(1000, 1.0);
        assert_eq!(z.sample(0.0), 0);
        assert_eq!(z.sample(0.999_999_9), 999);
        let mut counts = [0u32; 2];
        for i in 0..10_000 {
            let r = z.sample(i as f64 / 10_000.0);
            if r == 0 {
                counts[0] += 1;
            } else if r == 1 {
                counts[1] += 1;
            }
        }
        // P(rank 0) = 1/H(1000) ≈ 0.134, P(rank 1) is half of it.
        assert!((1200..1500).contains(&counts[0]), "{counts:?}");
        assert!((counts[0] / counts[1]).abs_diff(2) <= 1, "{counts:?}");
    }
}
