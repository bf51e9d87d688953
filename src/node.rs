//! The node: the handle services use.
//!
//! A [`CacheNode`] is a cheap `Clone` handle (`Arc` inside), `Send + Sync`,
//! over the node's [`Core`](crate::core): building it starts the node and its
//! tasks, dropping the last handle (or [`shutdown`](CacheNode::shutdown))
//! stops them, and every call delegates to the room that owns it: the
//! plain-key API to [`plain`] (its own file, the node's one feature of its
//! own), cached functions to [`func`](crate::func), memory functions and
//! owner tokens to [`memory_fn`](crate::memory_fn), warm-up to
//! [`refresh`](crate::func::refresh), operator views to
//! [`admin`](crate::admin). The builder is in [`builder`].

mod builder;
mod plain;

pub use builder::CacheNodeBuilder;

use std::time::Duration;

use crate::admin::{BusTail, NamespaceStats};
use crate::bus::BusHealth;
use crate::clock::Periodic;
use crate::config::Config;
use crate::core::{Core, Layers, NodeStats, WeakCore};
use crate::func::key::{Args, KeyArgs};
use crate::func::refresh::WarmupReport;
use crate::func::{BackgroundDelete, DeleteSome, FuncBuilder};
use crate::keysets::{KeySets, Progress};
use crate::memory_fn::{MemoryFn, OwnerToken};
use crate::metrics;
use crate::{Error, Result};

/// A cache node: a RAM layer (moka) in front of a shared Redis layer.
///
/// # Examples
/// ```no_run
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct User { name: String }
/// # async fn f() -> cachenode::Result<()> {
/// use std::time::Duration;
/// use cachenode::{CacheNode, Ttl};
///
/// let node = CacheNode::connect("redis://127.0.0.1:6379").await?;
/// let user = User { name: "ada".into() };
/// node.set("user:1", &user, Ttl::After(Duration::from_secs(1800))).await?;
/// let again: Option<User> = node.get("user:1").await?;
/// assert!(node.delete("user:1").await?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheNode {
    core: Core,
}

impl std::fmt::Debug for CacheNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheNode")
            .field("namespace", &self.core.config().keys.namespace())
            .field("redis", &self.core.shared().map(|s| s.url()))
            .field("ram", &self.core.local().is_some())
            .field("disabled", &self.core.config().disabled)
            .field("layers", &self.core.layers())
            .finish()
    }
}

impl CacheNode {
    /// Connects a node with default settings to the Redis at `url`.
    ///
    /// # Errors
    /// [`Error::Connect`] when Redis cannot be reached (the error names the
    /// URL, password masked).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder().redis_url(url).build().await
    }

    /// A builder for any other settings.
    pub fn builder() -> CacheNodeBuilder {
        CacheNodeBuilder::new()
    }

    /// A node configured from the environment variables
    /// (`CACHE_TYPE`, `LOCALCACHE_TYPE`, `CACHE_REDIS_URL`,
    /// `CACHE_KEY_PREFIX`, `CACHE_DISABLED`) and `CACHE_CODEC` (see
    /// [`CacheNodeBuilder::with_env`]). With none set: a RAM-only node.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid variable, [`Error::Connect`] when
    /// Redis cannot be reached.
    pub async fn from_env() -> Result<Self> {
        Self::builder().with_env()?.build().await
    }

    /// Starts the node's parts ([`Core::start`]), then the tasks of its
    /// features: the builder (with the builder role), the gauges, refresh.
    pub(crate) async fn from_config(config: Config) -> Result<Self> {
        let core = Core::start(config).await?;
        if let (Some(shared), true) = (core.shared(), core.config().builder) {
            core.spawn_task(crate::func::jobs::builder_task(
                shared.clone(),
                core.jobs().clone(),
                KeySets::new(&core.config().keys),
                core.stopped(),
            ));
        }
        core.spawn_task(gauge_task(core.downgrade(), core.stopped()));
        if core.has_redis() && core.config().builder {
            core.spawn_task(crate::func::refresh::refresh_task(
                core.downgrade(),
                core.config().refresh_granularity,
                core.stopped(),
            ));
        }
        Ok(CacheNode { core })
    }

    /// A handle on the same node whose calls use `layers`: `Layers::Ram`
    /// for this process's RAM only (writes and deletes stay on this
    /// instance, other instances are not told), `Layers::Redis` for Redis
    /// only, `Layers::Both` (the default) for both.
    pub fn with_layers(&self, layers: Layers) -> CacheNode {
        CacheNode {
            core: self.core.with_layers(layers),
        }
    }

    /// The layers this handle's calls use.
    pub fn layers(&self) -> Layers {
        self.core.layers()
    }

    /// The namespace of the node's Redis keys.
    pub fn namespace(&self) -> &str {
        self.core.namespace()
    }

    /// Whether the node was built disabled (stores nothing, always misses).
    pub fn is_disabled(&self) -> bool {
        self.core.is_disabled()
    }

    /// Whether the node has a Redis layer.
    pub fn has_redis(&self) -> bool {
        self.core.has_redis()
    }

    /// Counters and RAM occupancy, for health checks.
    pub fn stats(&self) -> NodeStats {
        self.core.stats()
    }

    /// The bus's state (connected, last applied sequence number, lag, …);
    /// `None` for a node without a bus (RAM-only, disabled, `without_bus`).
    pub fn bus_health(&self) -> Option<BusHealth> {
        self.core.bus_health()
    }

    /// Stops the node's background tasks and waits for them. Later calls on
    /// any handle of this node return [`Error::Shutdown`]. Dropping the last
    /// handle stops the tasks too, without waiting.
    pub async fn shutdown(&self) {
        self.core.shutdown().await
    }

    /// Starts a cached function named `name` (unique per namespace: it names
    /// the function's keys and key set), whose calls take arguments `A` and
    /// return `V`.
    pub fn func<A: KeyArgs + ?Sized, V>(&self, name: &str) -> FuncBuilder<A, V> {
        FuncBuilder::new(self.core.clone(), name)
    }

    /// Deletes every value of each function in `funcnames` through their key
    /// sets (never a scan of the keyspace), then drops them from the RAM of
    /// every instance. `progress` is called with
    /// the function's name after each batch. Returns the total deleted.
    ///
    /// # Errors
    /// When Redis fails or a name is invalid.
    pub async fn delete_functions(
        &self,
        funcnames: &[&str],
        progress: impl FnMut(&str, Progress),
    ) -> Result<u64> {
        crate::func::delete_functions(&self.core, funcnames, progress).await
    }

    /// [`delete_functions`](Self::delete_functions) as a background task,
    /// returning at once; the handle tells the progress and waits for the
    /// end.
    pub fn delete_functions_in_background(&self, funcnames: Vec<String>) -> BackgroundDelete {
        crate::func::delete_functions_in_background(&self.core, funcnames)
    }

    /// Names of the functions that have key sets in this namespace, with the
    /// number of keys each records.
    ///
    /// # Errors
    /// When Redis fails; [`Error::NoSharedLayer`] on a node without Redis.
    pub async fn key_sets(&self) -> Result<Vec<(String, u64)>> {
        crate::func::key_sets(&self.core).await
    }

    /// Removes from every function's key set the keys that expired in
    /// Redis. Returns how many members were removed.
    ///
    /// # Errors
    /// When Redis fails; [`Error::NoSharedLayer`] on a node without Redis.
    pub async fn prune_key_sets(&self) -> Result<u64> {
        crate::func::prune_key_sets(&self.core).await
    }

    /// Computes the values marked for warm-up
    /// ([`FuncBuilder::warm_up_with`](crate::FuncBuilder::warm_up_with))
    /// on handles built so far, all functions at once, each bounded by its
    /// warm-up timeout. Never takes longer than the largest timeout; what
    /// did not finish is logged and reported.
    pub async fn warm_up(&self) -> WarmupReport {
        crate::func::refresh::warm_up(&self.core).await
    }

    /// A RAM-only cached function named `name` whose values live `ttl`
    /// (`None`: until evicted). Values are weighed at `size_of::<V>()`; use
    /// [`MemoryFn::weigh_with`] for values that own heap memory.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid name.
    pub fn memory_fn<A: KeyArgs + ?Sized, V>(
        &self,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<MemoryFn<A, V>> {
        crate::memory_fn::memory_fn(&self.core, name, ttl)
    }

    /// A token whose drop removes the RAM entries cached for it with
    /// [`MemoryFn::call_owned`].
    pub fn owner_token(&self) -> OwnerToken {
        crate::memory_fn::owner_token(&self.core)
    }

    /// Starts deleting the values of cached function `funcname` whose
    /// arguments match `filter`, knowing only the function's name: what
    /// [`CachedFn::delete_some`](crate::CachedFn::delete_some) does from a
    /// handle. Each value is removed from Redis, the key set and the RAM of
    /// every instance.
    ///
    /// Only functions built with
    /// [`key_args(ArgsInKey::Each)`](crate::FuncBuilder::key_args)
    /// have per-argument keys; for any other function, for an argument name
    /// the function does not have or ignores, or a value that does not
    /// encode as the function's argument does (values are compared by their
    /// bincode encoding: give the argument's type; unsigned integers of the
    /// same value encode alike, signed and unsigned ones do not), nothing
    /// matches and nothing is deleted.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid function name or an empty `filter`
    /// (use [`delete_functions`](Self::delete_functions) to delete every value);
    /// [`Error::Shutdown`] after [`shutdown`](Self::shutdown).
    pub fn delete_function_some(&self, funcname: &str, filter: &Args) -> Result<DeleteSome> {
        crate::admin::delete_function_some(&self.core, funcname, filter)
    }

    /// How many keys function `funcname`'s key set records (expired ones
    /// included until pruned); 0 for a function without one.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid name; [`Error::Redis`] /
    /// [`Error::Timeout`] when Redis fails; [`Error::NoSharedLayer`] on a
    /// node without Redis.
    pub async fn func_key_set_size(&self, funcname: &str) -> Result<u64> {
        crate::admin::func_key_set_size(&self.core, funcname).await
    }

    /// Counters of this namespace in Redis: the bus's position and log, and
    /// the keys of the namespace (counted with `SCAN … COUNT 1000`, never
    /// `KEYS`; one pass over the whole keyspace, so it takes a while on a
    /// large database).
    ///
    /// # Errors
    /// [`Error::Redis`] / [`Error::Timeout`] when Redis fails;
    /// [`Error::NoSharedLayer`] on a node without Redis.
    pub async fn namespace_stats(&self) -> Result<NamespaceStats> {
        crate::admin::namespace_stats(&self.core).await
    }

    /// Subscribes to this namespace's bus channel, to watch invalidations
    /// as they are published (`cachenode tail`). Messages published before
    /// this returns are not seen.
    ///
    /// # Errors
    /// [`Error::Redis`] / [`Error::Timeout`] when the subscription fails;
    /// [`Error::NoSharedLayer`] on a node without Redis.
    pub async fn tail_bus(&self) -> Result<BusTail> {
        crate::admin::tail_bus(&self.core).await
    }

    /// Makes this node the process-wide default that the `#[cached]` and
    /// `#[cached_for]` macros use (unless given `node = ...`). Install it
    /// once, at start-up; until then, macro-cached functions run uncached.
    ///
    /// # Errors
    /// [`Error::Config`] when a default node is already installed.
    pub fn install_global(&self) -> Result<()> {
        GLOBAL
            .set(self.clone())
            .map_err(|_| Error::Config("a global cache node is already installed".into()))
    }
}

/// How often the node's gauges (RAM, bus) are updated.
const GAUGE_EVERY: Duration = Duration::from_secs(1);
/// How often, in gauge periods, key-set sizes are read (one `SCARD`
/// pipeline per function).
const KEYSET_GAUGE_EVERY: u32 = 30;

/// Keeps the node's gauges current. Holds the node weakly.
async fn gauge_task(node: WeakCore, stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = Periodic::new(GAUGE_EVERY, stop);
    let mut n: u32 = 0;
    while ticks.next().await {
        let Some(node) = node.upgrade() else {
            return;
        };
        let stats = node.stats();
        metrics::ram_gauges(stats.ram_entries, stats.ram_bytes);
        if let Some(h) = node.bus_health() {
            metrics::bus_gauges(h.connected, h.last_applied_seq, h.lag);
        }
        // First one period after start (functions have written by then),
        // then every KEYSET_GAUGE_EVERY periods.
        if n % KEYSET_GAUGE_EVERY == 1 && node.has_redis() {
            if let Ok(sets) = crate::func::key_sets(&node).await {
                for (function, size) in sets {
                    metrics::keyset_size(&function, size);
                }
            }
        }
        n = n.wrapping_add(1);
    }
}

/// The process-wide default node, used by the `#[cached]` macros.
static GLOBAL: std::sync::OnceLock<CacheNode> = std::sync::OnceLock::new();

/// The node installed with [`CacheNode::install_global`], if any.
pub fn global_node() -> Option<CacheNode> {
    GLOBAL.get().cloned()
}
