//! What every system under test implements, so that one workload drives them
//! all the same way.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The value every workload reads and writes: a small struct. `version`
/// lets the workloads tell a fresh read from a stale one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub version: u64,
    pub name: String,
    pub score: f64,
}

impl Item {
    pub fn new(version: u64) -> Self {
        Item {
            version,
            name: format!("item-{:06}", version % 1_000_000),
            score: version as f64 * 0.5,
        }
    }
}

/// Where and how a system builds its nodes. Every node of every system talks
/// to the same redis-server, the one the harness started.
#[derive(Clone, Debug)]
pub struct Env {
    /// `redis://127.0.0.1:PORT/`.
    pub redis_url: String,
    /// A prefix unique to this run and system, so systems never see each
    /// other's keys or channels.
    pub namespace: String,
    /// The RAM layer's budget, where the system has one and lets it be set.
    pub ram_capacity_bytes: u64,
    /// Time to live of written entries.
    pub ttl: Duration,
}

/// What kind of cache a system is, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// RAM layer + Redis + cross-instance invalidation.
    TwoLayer,
    /// Redis only, no RAM layer.
    RedisOnly,
    /// RAM only (one process; `invalidate` is local).
    RamOnly,
}

/// One instance of a system, as one service process would hold it.
#[async_trait]
pub trait Node: Send + Sync + 'static {
    /// Reads `key`: RAM first where there is a RAM layer, then Redis.
    async fn get(&self, key: &str) -> anyhow::Result<Option<Item>>;
    /// Writes `key` to every layer, so that other instances stop serving an
    /// older value (through the system's own invalidation mechanism).
    async fn set(&self, key: &str, item: &Item) -> anyhow::Result<()>;
    /// Stores a value just loaded from the source of truth after a miss
    /// (cache-aside). Defaults to [`set`](Node::set); a system with a
    /// cheaper fill primitive (no cross-instance message) uses it.
    async fn fill(&self, key: &str, item: &Item) -> anyhow::Result<()> {
        self.set(key, item).await
    }
    /// Deletes `key` from Redis and from the RAM layer of every instance.
    async fn invalidate(&self, key: &str) -> anyhow::Result<()>;
    /// Runs pending RAM-layer maintenance (moka's `run_pending_tasks`), so
    /// that memory measurements see a settled cache. No-op by default.
    async fn settle(&self) {}
    /// Stops background tasks (bus listeners and the like). No-op by default.
    async fn shutdown(&self) {}
}

/// A system under test: a factory of nodes.
#[async_trait]
pub trait System: Send + Sync + 'static {
    /// Short name used in tables and plots, e.g. `cachenode`, `moka`.
    fn name(&self) -> &'static str;
    fn kind(&self) -> Kind;
    /// Builds one node. Each call is a separate instance with its own RAM
    /// layer and its own Redis connections.
    async fn node(&self, env: &Env) -> anyhow::Result<Arc<dyn Node>>;
}
