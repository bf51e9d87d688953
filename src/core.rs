//! The core: the parts of a node that every feature shares (the RAM
//! layer, the Redis layer, the bus, the codec, the metrics, the settings, the
//! registries, the node's tasks) and the primitives features build on.
//!
//! A [`Core`] is a cheap `Clone` handle on those parts, with the [`Layers`]
//! its calls use. Features (function caching, memory functions, refresh,
//! build jobs, operator tools) hold a `Core`, never the public
//! [`CacheNode`](crate::CacheNode) above them, which delegates to them: so
//! nothing below the handle depends on it, and the handle stays thin.
//!
//! The primitives are what every feature does the same way:
//! choosing the layers of a call ([`Core::ram`], [`Core::redis`],
//! [`Core::own_ram`]), decoding a value read from Redis and removing one
//! that does not decode ([`Core::decode`]), and writing with the bus
//! announcement in the same round trip ([`Core::write_and_announce`],
//! [`Core::announce`]). Reads try RAM, then Redis, and fill RAM from a Redis
//! hit; writes and deletes go to Redis first and then to RAM, so a
//! concurrent read never re-fills RAM with the value being replaced (see
//! [`local`](crate::local)).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bus::{Bus, BusHealth, Invalidation};
use crate::codec::{self, NodeCodec};
use crate::config::Config;
use crate::local::LocalLayer;
use crate::metrics::{self, Layer};
use crate::registry::{JobRegistry, RefreshRegistry};
use crate::shared::SharedLayer;
use crate::{Error, Result};

/// Which layers a call uses: the one way to choose them, on a node
/// ([`CacheNode::with_layers`](crate::CacheNode::with_layers)) and on a
/// cached function ([`FuncBuilder::layers`](crate::FuncBuilder::layers)).
/// RAM-only writes and deletes stay on this instance: other instances are
/// not told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layers {
    /// RAM first, then Redis (the default).
    #[default]
    Both,
    /// This process's RAM only.
    Ram,
    /// Redis only; RAM is neither read nor filled.
    Redis,
}

/// A point-in-time view of a node's counters, for health checks and tests.
///
/// The read counters cover the reads of plain keys (`get`, `get_arc`,
/// `get_many`, one per key) and the calls of cached functions (and
/// `get_or_build`) on every handle of the node, whatever layers the handle
/// uses: each such read is counted once, as [`ram_hits`](Self::ram_hits),
/// [`redis_hits`](Self::redis_hits) or [`misses`](Self::misses). Reads
/// that are not cached at all (a disabled node, an `unless` that holds)
/// and callers that waited for another caller's computation of the same
/// key are not counted; neither are [`MemoryFn`](crate::MemoryFn) and the
/// other process-local memos. The Prometheus counters
/// ([`metrics::HITS_TOTAL`](crate::metrics::HITS_TOTAL), …) count the same
/// hits, and misses per layer. Serializes with serde (a JSON stats endpoint:
/// `serde_json::to_string(&node.stats())`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct NodeStats {
    /// Reads answered from this node's RAM.
    pub ram_hits: u64,
    /// Reads answered from Redis (RAM, when used, had missed).
    pub redis_hits: u64,
    /// Reads no layer answered: a missing key (`None`), or a function call
    /// that ran the function. A value that does not decode is a miss too,
    /// also counted in [`decode_failures`](Self::decode_failures).
    pub misses: u64,
    /// Entries in the RAM layer (including invalidated ones not yet reclaimed).
    pub ram_entries: u64,
    /// Weight of the RAM layer in bytes.
    pub ram_bytes: u64,
    /// The RAM layer's byte budget (0 without a RAM layer).
    pub ram_capacity_bytes: u64,
    /// Values read from Redis that did not decode, each a miss: read as
    /// another type than written or written with another codec than this
    /// node's (both kept), or undecodable (removed).
    pub decode_failures: u64,
}

/// The shared parts of a node, and the layers this handle's calls use.
#[derive(Clone)]
pub(crate) struct Core {
    parts: Arc<Parts>,
    layers: Layers,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("namespace", &self.namespace())
            .field("redis", &self.shared().map(|s| s.url()))
            .field("ram", &self.parts.local.is_some())
            .field("disabled", &self.parts.config.disabled)
            .field("layers", &self.layers)
            .finish()
    }
}

/// A weak [`Core`], for the node's tasks: they end when the node is gone.
#[derive(Clone)]
pub(crate) struct WeakCore(Weak<Parts>);

impl WeakCore {
    /// A core (using both layers) while the node lives.
    pub(crate) fn upgrade(&self) -> Option<Core> {
        Some(Core {
            parts: self.0.upgrade()?,
            layers: Layers::Both,
        })
    }
}

struct Parts {
    config: Config,
    local: Option<Arc<LocalLayer>>,
    shared: Option<SharedLayer>,
    metrics: metrics::NodeMetrics,
    bus: Option<Bus>,
    /// Build functions of async-compute cached functions, by name.
    jobs: Arc<JobRegistry>,
    /// Functions to refresh and warm up.
    refresh: RefreshRegistry,
    /// Stops the node's own tasks when sent or dropped.
    stop: tokio::sync::watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shut_down: AtomicBool,
    decode_failures: AtomicU64,
}

impl Core {
    /// Builds the node's parts from `config`: the metrics exporter when
    /// asked, the Redis layer (connected), the RAM layer, the bus (started),
    /// and the key-set sweep. The tasks of the features above (the builder,
    /// refresh, gauges) are started by the node with
    /// [`spawn_task`](Self::spawn_task).
    pub(crate) async fn start(config: Config) -> Result<Core> {
        if let Some(addr) = config.serve_metrics {
            metrics::serve(addr)?;
        }
        let (local, shared) = if config.disabled {
            (None, None)
        } else {
            let shared = match &config.redis {
                Some(redis) => Some(SharedLayer::connect(redis).await?),
                None => None,
            };
            // With a bus, RAM is served under the lease its listener renews.
            let period = shared
                .as_ref()
                .and(config.bus.as_ref())
                .map(|bus| bus.deletion_check_period);
            let local = config.ram_capacity_bytes.map(|bytes| {
                Arc::new(match period {
                    Some(period) => LocalLayer::leased(bytes, period),
                    None => LocalLayer::new(bytes),
                })
            });
            (local, shared)
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        if let (Some(shared), Some(every)) = (&shared, config.sweep_every) {
            tasks.push(tokio::spawn(crate::keysets::sweep_task(
                shared.clone(),
                crate::keysets::KeySets::new(&config.keys),
                every,
                stopped,
            )));
        }
        let bus = match (&shared, &config.bus) {
            (Some(shared), Some(bus)) => {
                Some(Bus::start(shared.clone(), local.clone(), &config.keys, bus.clone()).await?)
            }
            _ => None,
        };
        Ok(Core {
            parts: Arc::new(Parts {
                config,
                local,
                shared,
                metrics: metrics::NodeMetrics::new(),
                bus,
                jobs: Arc::new(JobRegistry::default()),
                refresh: RefreshRegistry::default(),
                stop,
                tasks: std::sync::Mutex::new(tasks),
                shut_down: AtomicBool::new(false),
                decode_failures: AtomicU64::new(0),
            }),
            layers: Layers::Both,
        })
    }

    /// Runs a background task owned by the node: stopped by
    /// [`shutdown`](Self::shutdown) (which waits for it) or when the last
    /// handle is dropped (through the stop channel it must watch, from
    /// [`stopped`](Self::stopped)).
    pub(crate) fn spawn_task(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.parts
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    /// The stop channel of the node's tasks: changes at shutdown, closes
    /// when the node is gone.
    pub(crate) fn stopped(&self) -> tokio::sync::watch::Receiver<bool> {
        self.parts.stop.subscribe()
    }

    /// A weak reference, for a task that must not keep the node alive.
    pub(crate) fn downgrade(&self) -> WeakCore {
        WeakCore(Arc::downgrade(&self.parts))
    }

    /// The same node, its calls using `layers`.
    pub(crate) fn with_layers(&self, layers: Layers) -> Core {
        Core {
            parts: self.parts.clone(),
            layers,
        }
    }

    /// The layers this handle's calls use.
    pub(crate) fn layers(&self) -> Layers {
        self.layers
    }

    /// The node's resolved settings.
    pub(crate) fn config(&self) -> &Config {
        &self.parts.config
    }

    /// The hot-path counters.
    pub(crate) fn metrics(&self) -> &metrics::NodeMetrics {
        &self.parts.metrics
    }

    /// The codec of values stored in Redis.
    #[inline]
    pub(crate) fn codec(&self) -> &NodeCodec {
        &self.parts.config.codec
    }

    /// This node's RAM layer, whatever layers this handle uses.
    pub(crate) fn local(&self) -> &Option<Arc<LocalLayer>> {
        &self.parts.local
    }

    /// This node's Redis layer, whatever layers this handle uses.
    pub(crate) fn shared(&self) -> Option<&SharedLayer> {
        self.parts.shared.as_ref()
    }

    /// This node's bus, if it runs one.
    pub(crate) fn bus(&self) -> Option<&Bus> {
        self.parts.bus.as_ref()
    }

    /// The build functions registered on this node.
    pub(crate) fn jobs(&self) -> &Arc<JobRegistry> {
        &self.parts.jobs
    }

    /// The functions registered for refresh and warm-up.
    pub(crate) fn refresh(&self) -> &RefreshRegistry {
        &self.parts.refresh
    }

    /// The namespace of the node's Redis keys.
    pub(crate) fn namespace(&self) -> &str {
        self.parts.config.keys.namespace()
    }

    /// Whether the node was built disabled (stores nothing, always misses).
    #[inline]
    pub(crate) fn is_disabled(&self) -> bool {
        self.parts.config.disabled
    }

    /// Whether the node has a Redis layer.
    pub(crate) fn has_redis(&self) -> bool {
        self.parts.shared.is_some()
    }

    /// Counters and RAM occupancy.
    pub(crate) fn stats(&self) -> NodeStats {
        let (ram_entries, ram_bytes, ram_capacity_bytes) =
            self.parts.local.as_ref().map_or((0, 0, 0), |l| {
                l.run_pending_tasks();
                (l.entry_count(), l.weighted_bytes(), l.capacity_bytes())
            });
        let (ram_hits, redis_hits, misses) = self.parts.metrics.read_counts();
        NodeStats {
            ram_hits,
            redis_hits,
            misses,
            ram_entries,
            ram_bytes,
            ram_capacity_bytes,
            decode_failures: self.parts.decode_failures.load(Ordering::Relaxed),
        }
    }

    /// The bus's state; `None` for a node without a bus.
    pub(crate) fn bus_health(&self) -> Option<BusHealth> {
        self.parts.bus.as_ref().map(Bus::health)
    }

    /// Stops the node's background tasks and waits for them; later calls
    /// on any handle return [`Error::Shutdown`].
    pub(crate) async fn shutdown(&self) {
        self.parts.shut_down.store(true, Ordering::SeqCst);
        if let Some(bus) = &self.parts.bus {
            bus.shutdown().await;
        }
        let _ = self.parts.stop.send(true);
        let tasks =
            std::mem::take(&mut *self.parts.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Err once [`shutdown`](Self::shutdown) has run.
    #[inline]
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.parts.shut_down.load(Ordering::Relaxed) {
            Err(Error::Shutdown)
        } else {
            Ok(())
        }
    }

    /// This node's RAM layer, whatever layers this handle's calls use: a
    /// write or delete through a Redis-only handle must still drop this
    /// node's own copy, which its own bus message does not reach.
    pub(crate) fn own_ram(&self) -> Option<&LocalLayer> {
        self.parts.local.as_deref()
    }

    /// The RAM layer, when this call should use it.
    #[inline]
    pub(crate) fn ram(&self) -> Option<&LocalLayer> {
        match self.layers {
            Layers::Both | Layers::Ram => self.parts.local.as_deref(),
            Layers::Redis => None,
        }
    }

    /// The Redis layer, when this call should use it. `Ok(None)` when the
    /// node simply has none (RAM-only node, or disabled); an error when the
    /// caller asked for Redis only on a node without it.
    pub(crate) fn redis(&self, op: &'static str) -> Result<Option<&SharedLayer>> {
        match (self.layers, &self.parts.shared) {
            (Layers::Ram, _) => Ok(None),
            (_, Some(shared)) => Ok(Some(shared)),
            (Layers::Redis, None) if !self.parts.config.disabled => {
                Err(Error::NoSharedLayer { op })
            }
            (_, None) => Ok(None),
        }
    }

    /// Decodes `bytes` read from `redis_key` (`ram_key` in RAM) as a `T`;
    /// on failure counts and logs it, and returns `None` (a miss).
    ///
    /// A value written as another type is left where it is: the caller
    /// asked for the wrong type, and readers of the right type still read
    /// it. So is a value written with another codec: it is sound, the nodes
    /// of its codec read it, and this node's next write of the key replaces
    /// it (see [`codec`](crate::codec)). Any other failure (corrupt or foreign
    /// bytes, another envelope version, over the size limit) removes the
    /// value from Redis
    /// and announces the removal, so that no instance keeps serving a RAM
    /// copy of a value Redis no longer holds (such as the writer of a value
    /// that was damaged since, or that another release cannot read).
    pub(crate) async fn decode<T: DeserializeOwned>(
        &self,
        shared: &SharedLayer,
        redis_key: &str,
        ram_key: &str,
        bytes: &[u8],
    ) -> Option<(u64, T)> {
        let e = match codec::unseal::<T>(
            &self.parts.config.codec,
            bytes,
            self.parts.config.max_value_bytes,
        ) {
            Ok((header, value)) => return Some((header.expires_at_ms, value)),
            Err(e) => e,
        };
        self.parts.decode_failures.fetch_add(1, Ordering::Relaxed);
        metrics::decode_failure(e.label());
        self.parts.metrics.miss(Layer::Redis);
        match e {
            codec::DecodeError::WrongType { .. } => {
                tracing::warn!(
                    namespace = self.namespace(),
                    reason = e.label(),
                    expected = std::any::type_name::<T>(),
                    error = %e,
                    "value in Redis was written as another type than asked for; a miss, the value is kept"
                );
                return None;
            }
            codec::DecodeError::OtherCodec { .. } => {
                tracing::warn!(
                    namespace = self.namespace(),
                    reason = e.label(),
                    codec = self.parts.config.codec.name(),
                    error = %e,
                    "value in Redis was written with another codec than this node's; a miss, the value is kept"
                );
                return None;
            }
            _ => {}
        }
        tracing::warn!(
            namespace = self.namespace(),
            reason = e.label(),
            error = %e,
            "value in Redis does not decode; removing it"
        );
        // A node does not hear its own announcements: drop this node's copy
        // here (of another type, or held by a handle using other layers).
        if let Some(local) = self.parts.local.as_deref() {
            local.remove(ram_key);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("UNLINK").arg(redis_key);
        let removed = self
            .write_and_announce(shared, "unlink", pipe, || {
                Invalidation::Keys(vec![ram_key.to_owned()])
            })
            .await;
        if let Err(e) = removed {
            tracing::warn!(error = %e, "could not remove and announce an undecodable value");
        }
        None
    }

    /// Drops every value of cached function `funcname` from the RAM of every
    /// instance. Returns once durable in Redis.
    pub(crate) async fn invalidate_function(&self, funcname: &str) -> Result<()> {
        self.check_open()?;
        if let Some(local) = self.parts.local.as_deref() {
            local.remove_group(funcname);
        }
        self.announce(Invalidation::Func(funcname.to_owned())).await
    }

    /// Drops RAM keys (internal form) here and on every instance.
    pub(crate) async fn invalidate_ram_keys(&self, ram_keys: &[&str]) -> Result<()> {
        if let Some(local) = self.parts.local.as_deref() {
            for key in ram_keys {
                local.remove(key);
            }
        }
        self.announce(Invalidation::Keys(
            ram_keys.iter().map(|k| k.to_string()).collect(),
        ))
        .await
    }

    /// Publishes `invalidation` when the node has a bus.
    pub(crate) async fn announce(&self, invalidation: Invalidation) -> Result<()> {
        match &self.parts.bus {
            Some(bus) if !self.parts.config.disabled => {
                bus.publish(invalidation).await?;
                metrics::invalidation_published();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Runs the write commands in `pipe` and, in the same round trip, the
    /// bus publication of `invalidation` (built only when there is a bus).
    /// Returns the replies of the write commands not marked `.ignore()`.
    ///
    /// The writes come first in the pipeline, so no node can re-read the old
    /// value after hearing the invalidation. Values and bus keys live in
    /// different cluster slots, so this is a pipeline, not a `MULTI`.
    pub(crate) async fn write_and_announce(
        &self,
        shared: &SharedLayer,
        op: &'static str,
        mut pipe: redis::Pipeline,
        invalidation: impl FnOnce() -> Invalidation,
    ) -> Result<Vec<redis::Value>> {
        let bodies = match &self.parts.bus {
            Some(bus) => {
                let bodies = bus.bodies(invalidation())?;
                bus.add_to_pipeline(&mut pipe, &bodies);
                bodies
            }
            None => Vec::new(),
        };
        pipe.ignore_errors();
        let mut conn = shared.conn();
        let unannounced = |e: Error| Error::Unannounced {
            op,
            source: Box::new(e),
        };
        let mut results: Vec<redis::RedisResult<redis::Value>> =
            match shared.run(op, pipe.query_async(&mut conn)).await {
                Ok(results) => results,
                Err(e) => {
                    // Whether the writes landed is unknown (a timeout, a
                    // connection lost mid-way): announce them anyway, so the
                    // caller learns either "not announced" or an error whose
                    // every possible outcome the other instances know of.
                    if let Some(bus) = &self.parts.bus {
                        bus.republish(&bodies).await.map_err(unannounced)?;
                        metrics::invalidation_published();
                    }
                    return Err(e);
                }
            };
        // The publications come last and are never ignored: the replies
        // before them are those of the write commands that were not
        // `.ignore()`d.
        let published = results.split_off(results.len().saturating_sub(bodies.len()));
        let mut replies = Vec::with_capacity(results.len());
        for r in results {
            replies.push(r.map_err(|source| {
                metrics::redis_error(op);
                Error::Redis { op, source }
            })?);
        }
        if let Some(bus) = &self.parts.bus {
            bus.finish(&published, &bodies).await.map_err(unannounced)?;
            metrics::invalidation_published();
        }
        Ok(replies)
    }

    /// What a value put in RAM weighs: its encoded size, measured with the
    /// codec when it was not encoded (a RAM-only value), else its size.
    pub(crate) fn ram_weight<T: Serialize + ?Sized>(
        &self,
        encoded_len: Option<usize>,
        value: &T,
    ) -> usize {
        encoded_len
            .or_else(|| self.parts.config.codec.encoded_len(value))
            .unwrap_or(std::mem::size_of_val(value))
    }
}
