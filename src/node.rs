//! The node: the handle services use, over its two layers.
//!
//! A [`CacheNode`] is a cheap `Clone` handle (`Arc` inside), `Send + Sync`.
//! Reads try RAM, then Redis, and fill RAM from a Redis hit; writes and
//! deletes go to Redis first and then to RAM, so a concurrent read never
//! re-fills RAM with the value being replaced (see [`local`](crate::local)).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::bus::{Bus, BusHealth, Invalidation};
use crate::clock::unix_millis;
use crate::codec::{self, Bincode, Codec};
use crate::config::{CacheNodeBuilder, Config};
use crate::keys::plain_ram_key;
use crate::local::{Expiry, Fence, Fill, FlushReason, LocalLayer};
use crate::metrics::{self, Layer};
use crate::shared::SharedLayer;
use crate::{Error, Result, Ttl};

/// Which layers a call uses.
///
/// [`CacheNode::ram_only`] and [`CacheNode::redis_only`] give a handle whose
/// calls use one layer (the seed's `local_ram_cache_only` and
/// `shared_redis_cache_only`). RAM-only writes and deletes stay on this
/// instance: other instances are not told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layers {
    /// RAM first, then Redis (the default).
    #[default]
    Both,
    /// This process's RAM only.
    RamOnly,
    /// Redis only; RAM is neither read nor filled.
    RedisOnly,
}

/// A point-in-time view of a node's counters, for health checks and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Entries in the RAM layer (including invalidated ones not yet reclaimed).
    pub ram_entries: u64,
    /// Weight of the RAM layer in bytes.
    pub ram_bytes: u64,
    /// The RAM layer's byte budget (0 without a RAM layer).
    pub ram_capacity_bytes: u64,
    /// Values read from Redis that did not decode, each a miss: read as
    /// another type than written (kept), or undecodable (removed).
    pub decode_failures: u64,
}

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
    inner: Arc<Inner>,
    layers: Layers,
}

impl std::fmt::Debug for CacheNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheNode")
            .field("namespace", &self.inner.config.keys.namespace())
            .field("redis", &self.inner.shared.as_ref().map(|s| s.url()))
            .field("ram", &self.inner.local.is_some())
            .field("disabled", &self.inner.config.disabled)
            .field("layers", &self.layers)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) local: Option<Arc<LocalLayer>>,
    pub(crate) shared: Option<SharedLayer>,
    pub(crate) codec: Bincode,
    pub(crate) metrics: metrics::NodeMetrics,
    pub(crate) bus: Option<Bus>,
    /// Build functions of async-compute cached functions, by name.
    pub(crate) jobs: Arc<crate::registry::JobRegistry>,
    /// Functions to refresh and warm up.
    pub(crate) refresh: crate::registry::RefreshRegistry,
    /// Stops the node's own tasks (the key-set sweep) when sent or dropped.
    stop: tokio::sync::watch::Sender<bool>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    shut_down: AtomicBool,
    decode_failures: AtomicU64,
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

    /// A node configured from the seed's environment variables
    /// (`CACHE_TYPE`, `LOCALCACHE_TYPE`, `CACHE_REDIS_URL`,
    /// `CACHE_KEY_PREFIX`, `CACHE_DISABLED`; see
    /// [`CacheNodeBuilder::with_env`]). With none set: a RAM-only node.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid variable, [`Error::Connect`] when
    /// Redis cannot be reached.
    pub async fn from_env() -> Result<Self> {
        Self::builder().with_env()?.build().await
    }

    pub(crate) async fn from_config(config: Config) -> Result<Self> {
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
                .map(|bus| bus.deletion_check_frequency);
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
        let jobs = Arc::new(crate::registry::JobRegistry::default());
        if let (Some(shared), true) = (&shared, config.builder) {
            tasks.push(tokio::spawn(crate::jobs::builder_task(
                shared.clone(),
                jobs.clone(),
                crate::keysets::KeySets::new(&config.keys),
                stop.subscribe(),
            )));
        }
        let bus = match (&shared, &config.bus) {
            (Some(shared), Some(bus)) => {
                Some(Bus::start(shared.clone(), local.clone(), &config.keys, bus.clone()).await?)
            }
            _ => None,
        };
        let refresh_on = shared.is_some() && config.builder;
        let granularity = config.refresh_granularity;
        let node = CacheNode {
            inner: Arc::new(Inner {
                config,
                local,
                shared,
                codec: Bincode,
                metrics: metrics::NodeMetrics::new(),
                bus,
                jobs,
                refresh: crate::registry::RefreshRegistry::default(),
                stop,
                tasks: std::sync::Mutex::new(tasks),
                shut_down: AtomicBool::new(false),
                decode_failures: AtomicU64::new(0),
            }),
            layers: Layers::Both,
        };
        node.spawn_task(gauge_task(
            Arc::downgrade(&node.inner),
            node.inner.stop.subscribe(),
        ));
        if refresh_on {
            node.spawn_task(crate::refresh::refresh_task(
                Arc::downgrade(&node.inner),
                granularity,
                node.inner.stop.subscribe(),
            ));
        }
        Ok(node)
    }

    /// Runs a background task owned by the node: stopped by
    /// [`shutdown`](Self::shutdown) (which waits for it) or when the last
    /// handle is dropped (through the stop channel it must watch).
    fn spawn_task(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task);
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    /// A handle from a weak reference, while the node lives.
    pub(crate) fn from_weak(inner: &std::sync::Weak<Inner>) -> Option<CacheNode> {
        Some(CacheNode {
            inner: inner.upgrade()?,
            layers: Layers::Both,
        })
    }

    /// A handle on the same node whose calls use RAM only.
    pub fn ram_only(&self) -> CacheNode {
        self.with_layers(Layers::RamOnly)
    }

    /// A handle on the same node whose calls use Redis only.
    pub fn redis_only(&self) -> CacheNode {
        self.with_layers(Layers::RedisOnly)
    }

    /// A handle on the same node whose calls use `layers`.
    pub fn with_layers(&self, layers: Layers) -> CacheNode {
        CacheNode {
            inner: self.inner.clone(),
            layers,
        }
    }

    /// The layers this handle's calls use.
    pub fn layers(&self) -> Layers {
        self.layers
    }

    /// The namespace of the node's Redis keys.
    pub fn namespace(&self) -> &str {
        self.inner.config.keys.namespace()
    }

    /// Whether the node was built disabled (stores nothing, always misses).
    pub fn is_disabled(&self) -> bool {
        self.inner.config.disabled
    }

    /// Whether the node has a Redis layer.
    pub fn has_redis(&self) -> bool {
        self.inner.shared.is_some()
    }

    /// Counters and RAM occupancy, for health checks.
    pub fn stats(&self) -> NodeStats {
        let (ram_entries, ram_bytes, ram_capacity_bytes) =
            self.inner.local.as_ref().map_or((0, 0, 0), |l| {
                l.run_pending_tasks();
                (l.entry_count(), l.weighted_bytes(), l.capacity_bytes())
            });
        NodeStats {
            ram_entries,
            ram_bytes,
            ram_capacity_bytes,
            decode_failures: self.inner.decode_failures.load(Ordering::Relaxed),
        }
    }

    /// Err once [`shutdown`](Self::shutdown) has run.
    #[inline]
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.inner.shut_down.load(Ordering::Relaxed) {
            Err(Error::Shutdown)
        } else {
            Ok(())
        }
    }

    /// This node's RAM layer, whatever layers this handle's calls use: a
    /// write or delete through a Redis-only handle must still drop this
    /// node's own copy, which its own bus message does not reach.
    pub(crate) fn own_ram(&self) -> Option<&LocalLayer> {
        self.inner.local.as_deref()
    }

    /// The RAM layer, when this call should use it.
    #[inline]
    pub(crate) fn ram(&self) -> Option<&LocalLayer> {
        match self.layers {
            Layers::Both | Layers::RamOnly => self.inner.local.as_deref(),
            Layers::RedisOnly => None,
        }
    }

    /// The Redis layer, when this call should use it. `Ok(None)` when the
    /// node simply has none (RAM-only node, or disabled); an error when the
    /// caller asked for Redis only on a node without it.
    pub(crate) fn redis(&self, op: &'static str) -> Result<Option<&SharedLayer>> {
        match (self.layers, &self.inner.shared) {
            (Layers::RamOnly, _) => Ok(None),
            (_, Some(shared)) => Ok(Some(shared)),
            (Layers::RedisOnly, None) if !self.inner.config.disabled => {
                Err(Error::NoSharedLayer { op })
            }
            (_, None) => Ok(None),
        }
    }

    /// The value under `key`, or `None`.
    ///
    /// A RAM entry of another type than `T` is a RAM miss, answered from
    /// Redis. A Redis value written as another type than `T` (its envelope
    /// records the type, see [`codec`]) is a miss, counted in
    /// [`NodeStats::decode_failures`] and logged, never a misread; the value
    /// is kept, since the mistake is the reader's and readers of the right
    /// type still read it. A Redis value that does not decode for any other
    /// reason (corrupt or foreign bytes, another envelope version or codec,
    /// over the size limit) is a miss too: the key is removed, the removal
    /// announced on the bus (so every instance drops its RAM copy, as for a
    /// [`delete`](Self::delete)), and the event counted and logged.
    ///
    /// # Errors
    /// [`Error::Redis`] / [`Error::Timeout`] when Redis must be asked and
    /// cannot answer.
    pub async fn get<T>(&self, key: &str) -> Result<Option<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        Ok(self.get_arc::<T>(key).await?.map(|v| T::clone(&v)))
    }

    /// Like [`get`](Self::get), without cloning the value out of its `Arc`.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_arc<T>(&self, key: &str) -> Result<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.check_open()?;
        let ram = self.ram();
        if let Some(local) = ram {
            let sampled = metrics::sample_ram().then(std::time::Instant::now);
            let found = local.get_typed::<T>(&plain_ram_key(key));
            if let Some(started) = sampled {
                metrics::operation(Layer::Ram, started.elapsed());
            }
            if let Some(v) = found {
                self.inner.metrics.hit(Layer::Ram);
                return Ok(Some(v));
            }
            self.inner.metrics.miss(Layer::Ram);
        }
        // Boxed so that this future stays small: a RAM hit then costs no
        // copy of the Redis path's state, which is much larger.
        Box::pin(self.get_from_redis(key)).await
    }

    /// The Redis half of [`get_arc`](Self::get_arc): read, decode, fill RAM.
    async fn get_from_redis<T>(&self, key: &str) -> Result<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let ram = self.ram();
        let Some(shared) = self.redis("get")? else {
            return Ok(None);
        };
        let ticket = ram.map(LocalLayer::ticket);
        let redis_key = self.inner.config.keys.plain(key);
        let Some(bytes) = shared.get(&redis_key).await? else {
            self.inner.metrics.miss(Layer::Redis);
            return Ok(None);
        };
        let Some((expires_at_ms, value)) = self
            .decode::<T>(shared, &redis_key, &plain_ram_key(key), &bytes)
            .await
        else {
            return Ok(None);
        };
        self.inner.metrics.hit(Layer::Redis);
        let value = Arc::new(value);
        if let Some(hook) = &self.inner.config.before_fill {
            (hook.0)(key.to_owned()).await;
        }
        if let (Some(local), Some(ticket)) = (ram, ticket) {
            let fill = Fill {
                expiry: Expiry::At(expires_at_ms),
                cap: self.inner.config.ram_max_ttl,
                bytes: bytes.len(),
                group: None,
                ram_only: false,
            };
            let key = plain_ram_key(key).into_owned();
            local.fill(key, value.clone(), fill, Fence::Ticket(ticket));
        }
        Ok(Some(value))
    }

    /// Decodes `bytes` read from `redis_key` (`ram_key` in RAM) as a `T`;
    /// on failure counts and logs it, and returns `None` (a miss).
    ///
    /// A value written as another type is left where it is: the caller
    /// asked for the wrong type, and readers of the right type still read
    /// it. Any other failure (corrupt or foreign bytes, another envelope
    /// version or codec, over the size limit) removes the value from Redis
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
        let e = match codec::unseal::<_, T>(
            &self.inner.codec,
            bytes,
            self.inner.config.max_value_bytes,
        ) {
            Ok((header, value)) => return Some((header.expires_at_ms, value)),
            Err(e) => e,
        };
        self.inner.decode_failures.fetch_add(1, Ordering::Relaxed);
        metrics::decode_failure(e.label());
        self.inner.metrics.miss(Layer::Redis);
        if let codec::DecodeError::WrongType { .. } = e {
            tracing::warn!(
                namespace = self.namespace(),
                reason = e.label(),
                expected = std::any::type_name::<T>(),
                error = %e,
                "value in Redis was written as another type than asked for; a miss, the value is kept"
            );
            return None;
        }
        tracing::warn!(
            namespace = self.namespace(),
            reason = e.label(),
            error = %e,
            "value in Redis does not decode; removing it"
        );
        // A node does not hear its own announcements: drop this node's copy
        // here (of another type, or held by a handle using other layers).
        if let Some(local) = self.inner.local.as_deref() {
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

    /// The values under `keys`, in the same order (`None` where missing).
    /// RAM answers what it can; the rest comes from one `MGET`.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_many<T>(&self, keys: &[&str]) -> Result<Vec<Option<T>>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.check_open()?;
        let mut out: Vec<Option<T>> = vec![None; keys.len()];
        let ram = self.ram();
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match ram.and_then(|l| l.get_typed::<T>(&plain_ram_key(key))) {
                Some(v) => {
                    self.inner.metrics.hit(Layer::Ram);
                    out[i] = Some(T::clone(&v));
                }
                None => {
                    if ram.is_some() {
                        self.inner.metrics.miss(Layer::Ram);
                    }
                    missing.push(i);
                }
            }
        }
        let Some(shared) = self.redis("get_many")? else {
            return Ok(out);
        };
        if missing.is_empty() {
            return Ok(out);
        }
        let ticket = ram.map(LocalLayer::ticket);
        let redis_keys: Vec<String> = missing
            .iter()
            .map(|&i| self.inner.config.keys.plain(keys[i]))
            .collect();
        let found = shared.mget(&redis_keys).await?;
        for ((&i, redis_key), bytes) in missing.iter().zip(&redis_keys).zip(found) {
            let Some(bytes) = bytes else {
                self.inner.metrics.miss(Layer::Redis);
                continue;
            };
            let Some((expires_at_ms, value)) = self
                .decode::<T>(shared, redis_key, &plain_ram_key(keys[i]), &bytes)
                .await
            else {
                continue;
            };
            self.inner.metrics.hit(Layer::Redis);
            if let (Some(local), Some(ticket)) = (ram, ticket) {
                let fill = Fill {
                    expiry: Expiry::At(expires_at_ms),
                    cap: self.inner.config.ram_max_ttl,
                    bytes: bytes.len(),
                    group: None,
                    ram_only: false,
                };
                let key = plain_ram_key(keys[i]).into_owned();
                local.fill(key, Arc::new(value.clone()), fill, Fence::Ticket(ticket));
            }
            out[i] = Some(value);
        }
        Ok(out)
    }

    /// Stores `value` under `key` for `ttl` (a [`Ttl`] or a `Duration`, where
    /// zero means never), in Redis and then RAM.
    ///
    /// # Errors
    /// [`Error::ValueTooLarge`] / [`Error::Encode`] for a value that cannot
    /// be stored; [`Error::Redis`] / [`Error::Timeout`] when Redis fails, in
    /// which case this node's RAM copy of `key` is dropped too.
    pub async fn set<T>(&self, key: &str, value: &T, ttl: impl Into<Ttl>) -> Result<()>
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        self.set_arc(key, Arc::new(value.clone()), ttl).await
    }

    /// Like [`set`](Self::set), taking the value in an `Arc` (no clone).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub async fn set_arc<T>(&self, key: &str, value: Arc<T>, ttl: impl Into<Ttl>) -> Result<()>
    where
        T: Serialize + Send + Sync + 'static,
    {
        self.check_open()?;
        if self.inner.config.disabled {
            return Ok(());
        }
        let ttl = ttl.into().resolve(self.inner.config.default_ttl);
        let ram_key = plain_ram_key(key);
        let mut encoded_len = None;
        let begun = self.own_ram().map(|l| l.begin_own_write(&ram_key));
        if let Some(shared) = self.redis("set")? {
            let expires_at_ms = ttl.map_or(0, |t| unix_millis().saturating_add(millis(t)));
            let bytes = codec::seal(
                &self.inner.codec,
                &*value,
                expires_at_ms,
                self.inner.config.max_value_bytes,
            )?;
            let redis_key = self.inner.config.keys.plain(key);
            let mut pipe = redis::pipe();
            crate::shared::add_set(&mut pipe, &redis_key, &bytes, ttl);
            if let Err(e) = self
                .write_and_announce(shared, "set", pipe, || {
                    Invalidation::Keys(vec![ram_key.clone().into_owned()])
                })
                .await
            {
                if let Some(local) = self.own_ram() {
                    local.remove(&ram_key);
                }
                return Err(e);
            }
            self.inner.metrics.write(Layer::Redis);
            encoded_len = Some(bytes.len());
        }
        if self.ram().is_none() {
            // Redis only: this node's copy, if any, is now the old value.
            if let Some(local) = self.own_ram() {
                local.remove(&ram_key);
            }
            return Ok(());
        }
        if let Some(local) = self.ram() {
            let fill = Fill {
                expiry: Expiry::After(ttl),
                cap: self.inner.config.ram_max_ttl,
                bytes: self.inner.ram_weight(encoded_len, &*value),
                group: None,
                ram_only: encoded_len.is_none(),
            };
            let begun = begun.unwrap_or_else(|| local.begin_own_write(&ram_key));
            if local.fill(ram_key.into_owned(), value, fill, Fence::OwnWrite(begun)) {
                self.inner.metrics.write(Layer::Ram);
            }
        }
        Ok(())
    }

    /// Stores a value just loaded from the source of truth after a miss
    /// (cache-aside): in Redis only if `key` is absent there (`SET NX`),
    /// then in RAM, and **without a bus message** — an absent key is in no
    /// instance's RAM, so there is nothing to invalidate. Cheaper than
    /// [`set`](Self::set), which is for *changes* and tells every instance.
    ///
    /// Returns whether the value was stored. `false`: Redis already held a
    /// value (another instance filled or wrote the key meanwhile); this
    /// node's RAM is left alone, and the next read takes Redis's value. An
    /// invalidation of `key` that reaches this node while the fill runs
    /// keeps the value out of RAM.
    ///
    /// The usual cache-aside race remains: a value loaded before a write to
    /// the source, filled after that write's invalidation, stays until its
    /// TTL. Cached functions ([`func`](Self::func)) fill the same way.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub async fn fill<T>(&self, key: &str, value: &T, ttl: impl Into<Ttl>) -> Result<bool>
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        self.check_open()?;
        if self.inner.config.disabled {
            return Ok(false);
        }
        let ttl = ttl.into().resolve(self.inner.config.default_ttl);
        let ram_key = plain_ram_key(key);
        let ticket = self.ram().map(LocalLayer::ticket);
        let mut encoded_len = None;
        if let Some(shared) = self.redis("fill")? {
            let expires_at_ms = ttl.map_or(0, |t| unix_millis().saturating_add(millis(t)));
            let bytes = codec::seal(
                &self.inner.codec,
                value,
                expires_at_ms,
                self.inner.config.max_value_bytes,
            )?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.inner.config.keys.plain(key))
                .arg(&bytes[..])
                .arg("NX");
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(crate::shared::ttl_millis(ttl));
            }
            let mut conn = shared.conn();
            let stored: Option<String> = shared.run("fill", cmd.query_async(&mut conn)).await?;
            if stored.is_none() {
                return Ok(false);
            }
            self.inner.metrics.write(Layer::Redis);
            encoded_len = Some(bytes.len());
        }
        if let (Some(local), Some(ticket)) = (self.ram(), ticket) {
            let fill = Fill {
                expiry: Expiry::After(ttl),
                cap: self.inner.config.ram_max_ttl,
                bytes: self.inner.ram_weight(encoded_len, value),
                group: None,
                ram_only: encoded_len.is_none(),
            };
            let value = Arc::new(value.clone());
            if local.fill(ram_key.into_owned(), value, fill, Fence::Ticket(ticket)) {
                self.inner.metrics.write(Layer::Ram);
            }
        }
        Ok(true)
    }

    /// Whether `key` holds a value in any layer this call uses, without
    /// reading the value from Redis.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn has(&self, key: &str) -> Result<bool> {
        self.check_open()?;
        if self.ram().is_some_and(|l| l.contains(&plain_ram_key(key))) {
            return Ok(true);
        }
        match self.redis("has")? {
            Some(shared) => shared.exists(&self.inner.config.keys.plain(key)).await,
            None => Ok(false),
        }
    }

    /// Deletes `key` from Redis, then RAM. Returns whether it existed in at
    /// least one layer.
    ///
    /// # Errors
    /// [`Error::Redis`] / [`Error::Timeout`] when Redis fails; the RAM copy
    /// is dropped all the same.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        Ok(!self.delete_many(&[key]).await?.is_empty())
    }

    /// Deletes `keys` from Redis, then RAM. Returns the distinct keys that
    /// existed in at least one layer, in the order given.
    ///
    /// # Errors
    /// As [`delete`](Self::delete).
    pub async fn delete_many<'k>(&self, keys: &[&'k str]) -> Result<Vec<&'k str>> {
        self.check_open()?;
        let mut seen = HashSet::with_capacity(keys.len());
        let keys: Vec<&'k str> = keys.iter().copied().filter(|k| seen.insert(*k)).collect();
        let mut existed = vec![false; keys.len()];
        let redis_result = match self.redis("delete")? {
            Some(shared) if !keys.is_empty() => {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("UNLINK").arg(self.inner.config.keys.plain(key));
                }
                self.write_and_announce(shared, "delete", pipe, || {
                    Invalidation::Keys(keys.iter().map(|k| plain_ram_key(k).into_owned()).collect())
                })
                .await
                .map(|results| {
                    for (e, r) in existed.iter_mut().zip(results) {
                        *e |= matches!(r, redis::Value::Int(n) if n > 0);
                    }
                })
            }
            _ => Ok(()),
        };
        // RAM after Redis (module docs); also when Redis failed, so this
        // node at least stops serving the value; also through a Redis-only
        // handle, since this node's own bus message does not reach it.
        if let Some(local) = self.own_ram() {
            for (e, key) in existed.iter_mut().zip(&keys) {
                *e |= local.remove(&plain_ram_key(key));
            }
        }
        redis_result?;
        Ok(keys
            .into_iter()
            .zip(existed)
            .filter_map(|(k, e)| e.then_some(k))
            .collect())
    }

    /// Deletes every value of this namespace: in Redis with `SCAN` and
    /// batched `UNLINK` (never `KEYS` or `FLUSHDB`; other namespaces are not
    /// touched), then in RAM. Returns how many Redis keys were removed.
    /// The values' bookkeeping goes too (key sets, recorded arguments,
    /// refresh state, locks, versions); the bus and the build queue stay,
    /// and every function that has values gets a new clear generation, so
    /// that a computation begun before this call does not store its value
    /// after it (see [`CachedFn::clear_all`](crate::func::CachedFn::clear_all)).
    ///
    /// # Errors
    /// As [`delete`](Self::delete).
    pub async fn clear_all(&self) -> Result<u64> {
        self.check_open()?;
        let keys = &self.inner.config.keys;
        let removed = match self.redis("clear_all")? {
            Some(shared) => {
                let removed = async {
                    // First, so that no computation begun before this call
                    // stores its value after it (see `keysets`).
                    crate::keysets::KeySets::new(keys)
                        .new_generations(shared)
                        .await?;
                    let mut n = 0;
                    for pattern in keys.clear_patterns() {
                        n += shared
                            .scan_unlink(&pattern, |k| keys.is_clearable(k))
                            .await?;
                    }
                    Ok::<_, Error>(n)
                }
                .await;
                // Announced even when the walk failed part-way: whatever it
                // deleted must leave every instance's RAM too.
                match &self.inner.bus {
                    Some(bus) => match bus.publish(Invalidation::All).await {
                        Ok(()) => {
                            metrics::invalidation_published();
                            removed
                        }
                        Err(e) => Err(Error::Unannounced {
                            op: "clear_all",
                            source: Box::new(e),
                        }),
                    },
                    None => removed,
                }
            }
            None => Ok(0),
        };
        if let Some(local) = self.own_ram() {
            local.remove_all(FlushReason::InvalidateAll);
            metrics::ram_flush(FlushReason::InvalidateAll.label());
        }
        removed
    }

    /// Drops `keys` from the RAM of every instance (this one at once, the
    /// others through the bus); Redis values are left alone. Returns once the
    /// invalidation is durable in Redis.
    ///
    /// # Errors
    /// [`Error::Redis`] / [`Error::Timeout`] when it cannot be published.
    pub async fn invalidate_keys(&self, keys: &[&str]) -> Result<()> {
        self.check_open()?;
        let ram_keys: Vec<_> = keys.iter().map(|k| plain_ram_key(k)).collect();
        let refs: Vec<&str> = ram_keys.iter().map(|k| k.as_ref()).collect();
        self.invalidate_ram_keys(&refs).await
    }

    /// Drops every value of cached function `funcname` from the RAM of every
    /// instance (the RAM side of the seed's "mark RAM caches to be deleted as
    /// well on all instances"). Returns once durable in Redis.
    ///
    /// # Errors
    /// As [`invalidate_keys`](Self::invalidate_keys).
    pub async fn invalidate_func(&self, funcname: &str) -> Result<()> {
        self.check_open()?;
        if let Some(local) = self.inner.local.as_deref() {
            local.remove_group(funcname);
        }
        self.announce(Invalidation::Func(funcname.to_owned())).await
    }

    /// Drops everything from the RAM of every instance. Returns once durable
    /// in Redis.
    ///
    /// # Errors
    /// As [`invalidate_keys`](Self::invalidate_keys).
    pub async fn invalidate_all(&self) -> Result<()> {
        self.check_open()?;
        if let Some(local) = self.inner.local.as_deref() {
            local.remove_all(FlushReason::InvalidateAll);
            metrics::ram_flush(FlushReason::InvalidateAll.label());
        }
        self.announce(Invalidation::All).await
    }

    /// The bus's state (connected, last applied sequence number, lag, …);
    /// `None` for a node without a bus (RAM-only, disabled, `without_bus`).
    pub fn bus_health(&self) -> Option<BusHealth> {
        self.inner.bus.as_ref().map(Bus::health)
    }

    /// Stops the node's background tasks and waits for them. Later calls on
    /// any handle of this node return [`Error::Shutdown`]. Dropping the last
    /// handle stops the tasks too, without waiting.
    pub async fn shutdown(&self) {
        self.inner.shut_down.store(true, Ordering::SeqCst);
        if let Some(bus) = &self.inner.bus {
            bus.shutdown().await;
        }
        let _ = self.inner.stop.send(true);
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Drops RAM keys (internal form) here and on every instance.
    pub(crate) async fn invalidate_ram_keys(&self, ram_keys: &[&str]) -> Result<()> {
        if let Some(local) = self.inner.local.as_deref() {
            for key in ram_keys {
                local.remove(key);
            }
        }
        self.announce(Invalidation::Keys(
            ram_keys.iter().map(|k| k.to_string()).collect(),
        ))
        .await
    }

    /// The node's internals, for the crate's other modules.
    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Publishes `invalidation` when the node has a bus.
    pub(crate) async fn announce(&self, invalidation: Invalidation) -> Result<()> {
        match &self.inner.bus {
            Some(bus) if !self.inner.config.disabled => {
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
        let bodies = match &self.inner.bus {
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
                    if let Some(bus) = &self.inner.bus {
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
        if let Some(bus) = &self.inner.bus {
            bus.finish(&published, &bodies).await.map_err(unannounced)?;
            metrics::invalidation_published();
        }
        Ok(replies)
    }
}

/// How often the node's gauges (RAM, bus) are updated.
const GAUGE_EVERY: Duration = Duration::from_secs(1);
/// How often, in gauge periods, key-set sizes are read (one `SCARD`
/// pipeline per function).
const KEYSET_GAUGE_EVERY: u32 = 30;

/// Keeps the node's gauges current. Holds the node weakly.
async fn gauge_task(node: std::sync::Weak<Inner>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(GAUGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let Some(node) = CacheNode::from_weak(&node) else {
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
            if let Ok(sets) = node.key_sets().await {
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

impl CacheNode {
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

impl Inner {
    /// What a value put in RAM weighs: its encoded size, measured with the
    /// codec when it was not encoded (a RAM-only value), else its size.
    pub(crate) fn ram_weight<T: Serialize + ?Sized>(
        &self,
        encoded_len: Option<usize>,
        value: &T,
    ) -> usize {
        encoded_len
            .or_else(|| self.codec.encoded_len(value))
            .unwrap_or(std::mem::size_of_val(value))
    }
}

fn millis(d: Duration) -> u64 {
    crate::shared::ttl_millis(d)
}
