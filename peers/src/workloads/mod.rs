//! The workloads, one module each, and what they share: the per-system
//! outcome, the environment each system's nodes get, a group of nodes that
//! is always shut down, and the guard that turns a failing, panicking or
//! hanging system into a table cell instead of an aborted run.

pub mod clear;
pub mod hit;
pub mod memory;
pub mod propagation;
pub mod redis_hit;
pub mod zipf;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::system::{Env, Kind, Node, System};

/// RAM budget given to every RAM layer: large enough to hold every entry a
/// workload writes (the memory workload's included), so no workload
/// measures eviction.
pub const RAM_CAPACITY_BYTES: u64 = 1 << 30;

/// Time to live of every written entry: longer than any workload.
pub const TTL: Duration = Duration::from_secs(1800);

/// What one system did in one workload.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "status", content = "value", rename_all = "snake_case")]
pub enum Outcome<T> {
    /// Measured.
    Ok(T),
    /// The system failed (error, panic or time limit); the message says how.
    Failed(String),
    /// The system cannot do this workload; the reason says why.
    Skipped(String),
}

impl<T> Outcome<T> {
    /// The measurement, if there is one.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Outcome::Ok(v) => Some(v),
            _ => None,
        }
    }
}

/// One system's row of a workload.
#[derive(Clone, Debug, Serialize)]
pub struct Row<T> {
    pub system: String,
    pub kind: &'static str,
    pub outcome: Outcome<T>,
}

/// A short label of a [`Kind`] for the tables.
pub fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::TwoLayer => "RAM + Redis",
        Kind::RedisOnly => "Redis only",
        Kind::RamOnly => "RAM only",
    }
}

/// What every workload needs to know about the run.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub redis_url: String,
    /// Unique to this run, so that namespaces never meet older keys.
    pub run_id: String,
    pub quick: bool,
    /// Workload 4: pollers wait for a tick of this length between passes
    /// instead of yielding.
    pub poll_tick: Option<Duration>,
}

impl Ctx {
    /// The environment of `system`'s nodes in `workload`, with a namespace
    /// unique to both (and to `tag`, for workloads with several rounds).
    pub fn env(&self, workload: &str, system: &str, tag: &str) -> Env {
        Env {
            redis_url: self.redis_url.clone(),
            namespace: format!("pb{}-{workload}-{}{tag}", self.run_id, slug(system)),
            ram_capacity_bytes: RAM_CAPACITY_BYTES,
            ttl: TTL,
        }
    }
}

/// `name` in lower case with every run of other characters than letters
/// and digits turned into one `-`: how a system is named in namespaces and
/// may be named on the command line (`cached AsyncRedisCache` →
/// `cached-asyncrediscache`).
pub fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

/// Nodes of one system built for one workload. Call
/// [`shutdown`](Fleet::shutdown) when done, whatever the workload's result,
/// so that background tasks never pile up across runs.
pub struct Fleet {
    pub nodes: Vec<Arc<dyn Node>>,
}

impl Fleet {
    /// `n` separate nodes of `system`. On an error the nodes already built
    /// are shut down.
    pub async fn build(system: &dyn System, env: &Env, n: usize) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet { nodes: Vec::new() };
        for _ in 0..n {
            match system.node(env).await {
                Ok(node) => fleet.nodes.push(node),
                Err(e) => {
                    fleet.shutdown().await;
                    return Err(e.context(format!("building a {} node", system.name())));
                }
            }
        }
        Ok(fleet)
    }

    /// Stops every node's background tasks.
    pub async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}

/// Runs `work` as its own task, so that a panic or a hang in one system
/// becomes a [`Outcome::Failed`] cell rather than the end of the run. A task
/// over `limit` is aborted (dropping its nodes).
pub async fn guarded<T, F>(limit: Duration, work: F) -> Outcome<T>
where
    T: Send + 'static,
    F: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let task = tokio::spawn(work);
    let abort = task.abort_handle();
    match tokio::time::timeout(limit, task).await {
        Ok(Ok(Ok(v))) => Outcome::Ok(v),
        Ok(Ok(Err(e))) => Outcome::Failed(format!("{e:#}")),
        Ok(Err(join)) => Outcome::Failed(match join.try_into_panic() {
            Ok(p) => format!("panicked: {}", panic_message(p.as_ref())),
            Err(e) => format!("task failed: {e}"),
        }),
        Err(_) => {
            abort.abort();
            Outcome::Failed(format!("did not finish within {} s", limit.as_secs()))
        }
    }
}

/// Runs `work` on a current-thread tokio runtime of its own, on a blocking
/// thread. Every task the work spawns (connection drivers, bus listeners)
/// shares that thread with it, so a latency measured there holds no wake-up
/// of another worker thread, whose cost depends on where the scheduler put
/// each task. Tasks left behind end with the runtime.
pub async fn on_own_thread<T, F, Fut>(work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(work())
    })
    .await?
}

/// Like [`guarded`], for a future that cannot move to another task (not
/// `Send`): it runs in place, so a hang is cut at `limit` the same way, and
/// a panic is caught as it unwinds.
pub async fn guarded_in_place<T, F>(limit: Duration, work: F) -> Outcome<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    use futures::FutureExt;
    let work = std::panic::AssertUnwindSafe(work).catch_unwind();
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(Ok(v))) => Outcome::Ok(v),
        Ok(Ok(Err(e))) => Outcome::Failed(format!("{e:#}")),
        Ok(Err(p)) => Outcome::Failed(format!("panicked: {}", panic_message(p.as_ref()))),
        Err(_) => Outcome::Failed(format!("did not finish within {} s", limit.as_secs())),
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Progress on stderr, prefixed by the workload.
pub fn progress(workload: &str, msg: impl std::fmt::Display) {
    eprintln!("[{workload}] {msg}");
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs() {
        assert_eq!(
            super::slug("cached AsyncRedisCache"),
            "cached-asyncrediscache"
        );
        assert_eq!(super::slug("bare PUBLISH"), "bare-publish");
        assert_eq!(super::slug("redis-cache-aio"), "redis-cache-aio");
    }
}
