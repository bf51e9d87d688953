//! Function caching: the seed's `@cached` / `@cached_for`, as handles.
//!
//! ```no_run
//! # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct User;
//! # #[derive(Debug)] struct AppError;
//! # async fn fetch_user(id: u64) -> Result<User, AppError> { Ok(User) }
//! # async fn f(node: cachenode::CacheNode) -> cachenode::Result<()> {
//! use std::time::Duration;
//! let get_user = node
//!     .func::<(u64,), User>("get_user")
//!     .expire_in(Duration::from_secs(1800))
//!     .build()?;
//! let user_id = 42;
//! let user = get_user.call(&(user_id,), || fetch_user(user_id)).await;
//! get_user.clear(&(user_id,)).await?; // this call's value, everywhere
//! get_user.clear_all().await?;        // every value of get_user, everywhere
//! # Ok(()) }
//! ```
//!
//! A call builds its key from the function name and its arguments
//! ([`key`]), then reads RAM, then Redis; on a miss it runs the function
//! once per process however many callers wait (single-flight), writes the
//! value to Redis together with its entry in the function's key set
//! ([`keysets`](crate::keysets)), and fills RAM. Errors of the function are
//! returned and never cached. When Redis fails, the call still answers by
//! computing: cache errors are logged and counted, never returned.

pub mod key;

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::bus::Invalidation;
use crate::codec;
use crate::keysets::{KeySets, Progress, Walk};
use crate::local::{Entry, FillTicket, Group, LocalLayer};
use crate::metrics::Layer;
use crate::node::{unix_millis, CacheNode, Layers};
use crate::singleflight::{Flights, Role};
use crate::{Error, Result, Ttl};
use key::{ArgsMode, KeyArgs};

/// What [`FuncBuilder::on_cache_computed`] decides for a computed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Computed<V> {
    /// Cache the value as computed.
    Keep,
    /// Cache (and return) this value instead.
    Replace(V),
    /// Return the value without caching it.
    DontCache,
}

type Unless<A> = Arc<dyn Fn(&A) -> bool + Send + Sync>;
type PrefixFn<A> = Arc<dyn Fn(&A) -> String + Send + Sync>;
type OnComputed<V> = Arc<dyn Fn(&str, &V) -> Computed<V> + Send + Sync>;

enum Prefix<A: ?Sized> {
    Static(String),
    Dynamic(PrefixFn<A>),
    Computed(Arc<dyn Fn() -> String + Send + Sync>),
}

/// The options of a cached function: every option of the seed's `cached`.
struct Options<A: ?Sized, V> {
    expire_in: Option<Duration>,
    unless: Option<Unless<A>>,
    layers: Layers,
    prefix: Prefix<A>,
    args_mode: ArgsMode,
    ignore: Vec<String>,
    cache_none_values: bool,
    on_cache_computed: Option<OnComputed<V>>,
    with_request_path: bool,
    with_query_string: bool,
}

/// Configures a cached function; made by [`CacheNode::func`].
#[must_use = "a builder does nothing until .build()"]
pub struct FuncBuilder<A: ?Sized, V> {
    node: CacheNode,
    name: String,
    full_args: bool,
    with_func_args: bool,
    opts: Options<A, V>,
}

impl CacheNode {
    /// Starts a cached function named `name` (unique per namespace: it names
    /// the function's keys and key set), whose calls take arguments `A` and
    /// return `V`.
    pub fn func<A: KeyArgs + ?Sized, V>(&self, name: &str) -> FuncBuilder<A, V> {
        FuncBuilder {
            node: self.clone(),
            name: name.to_owned(),
            full_args: false,
            with_func_args: true,
            opts: Options {
                expire_in: None,
                unless: None,
                layers: Layers::Both,
                prefix: Prefix::Static(String::new()),
                args_mode: ArgsMode::Hashed,
                ignore: Vec::new(),
                cache_none_values: false,
                on_cache_computed: None,
                with_request_path: false,
                with_query_string: false,
            },
        }
    }
}

impl<A: KeyArgs + ?Sized, V> FuncBuilder<A, V> {
    /// How long values live (`Duration::ZERO`: never); default: the node's
    /// default TTL.
    pub fn expire_in(mut self, ttl: Duration) -> Self {
        self.opts.expire_in = Some(ttl);
        self
    }

    /// Skips caching for calls whose arguments make `predicate` true: the
    /// function runs and its value is neither read from nor written to the
    /// cache.
    pub fn unless(mut self, predicate: impl Fn(&A) -> bool + Send + Sync + 'static) -> Self {
        self.opts.unless = Some(Arc::new(predicate));
        self
    }

    /// Caches in this process's RAM only (the seed's `local_ram_cache_only`).
    pub fn local_ram_cache_only(mut self) -> Self {
        self.opts.layers = Layers::RamOnly;
        self
    }

    /// Caches in Redis only (the seed's `shared_redis_cache_only`).
    pub fn shared_redis_cache_only(mut self) -> Self {
        self.opts.layers = Layers::RedisOnly;
        self
    }

    /// A fixed prefix for the keys (after the function name). May not
    /// contain `|` or `;`.
    pub fn cache_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.opts.prefix = Prefix::Static(prefix.into());
        self
    }

    /// A prefix computed per call from the arguments (e.g. a tenant id);
    /// `|` and `;` in it are replaced by `_`.
    pub fn cache_key_prefix_fn(
        mut self,
        prefix: impl Fn(&A) -> String + Send + Sync + 'static,
    ) -> Self {
        self.opts.prefix = Prefix::Dynamic(Arc::new(prefix));
        self
    }

    /// A prefix computed per call without looking at the arguments (the
    /// seed's no-argument prefix callback); `|` and `;` become `_`.
    pub fn cache_key_prefix_with(
        mut self,
        prefix: impl Fn() -> String + Send + Sync + 'static,
    ) -> Self {
        self.opts.prefix = Prefix::Computed(Arc::new(prefix));
        self
    }

    /// Whether the arguments are part of the key (default true); when
    /// false, every call shares one value.
    pub fn cache_key_with_func_args(mut self, on: bool) -> Self {
        self.with_func_args = on;
        self
    }

    /// One hashed part per argument in the key (default false), which
    /// [`CachedFn::clear_some`] needs to find values by some arguments.
    pub fn cache_key_with_full_args(mut self, on: bool) -> Self {
        self.full_args = on;
        self
    }

    /// Arguments left out of the key, by name (tuple arguments are named
    /// `0`, `1`, …; [`Args`](key::Args) and the macro use real names).
    pub fn args_to_ignore<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.opts.ignore.extend(names.into_iter().map(Into::into));
        self
    }

    /// Leaves an argument named `self` out of the key.
    pub fn ignore_self(self) -> Self {
        self.args_to_ignore(["self"])
    }

    /// Leaves an argument named `cls` out of the key.
    pub fn ignore_cls(self) -> Self {
        self.args_to_ignore(["cls"])
    }

    /// Whether a `None` (or `()`) value is cached (default false: the
    /// function runs again next time).
    pub fn cache_none_values(mut self, on: bool) -> Self {
        self.opts.cache_none_values = on;
        self
    }

    /// Called with the call's Redis key (as [`CachedFn::cache_key`] gives
    /// it) and each freshly computed value before it is
    /// cached: it may keep it, replace it or veto caching.
    pub fn on_cache_computed(
        mut self,
        callback: impl Fn(&str, &V) -> Computed<V> + Send + Sync + 'static,
    ) -> Self {
        self.opts.on_cache_computed = Some(Arc::new(callback));
        self
    }

    /// Puts the current request's path in the key (see
    /// [`scope`](crate::scope)); outside a request it counts as empty.
    pub fn cache_key_with_request_path(mut self, on: bool) -> Self {
        self.opts.with_request_path = on;
        self
    }

    /// Puts the current request's query string in the key.
    pub fn cache_key_with_query_string(mut self, on: bool) -> Self {
        self.opts.with_query_string = on;
        self
    }

    /// Builds the handle.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid function name, prefix or argument
    /// name.
    pub fn build(mut self) -> Result<CachedFn<A, V>> {
        key::check_funcname(&self.name)?;
        if let Prefix::Static(p) = &self.opts.prefix {
            key::check_prefix(p)?;
        }
        self.opts.args_mode = match (self.with_func_args, self.full_args) {
            (false, _) => ArgsMode::Ignored,
            (true, true) => ArgsMode::Full,
            (true, false) => ArgsMode::Hashed,
        };
        let node = self.node.with_layers(self.opts.layers);
        let group = node.inner().local.as_ref().map(|l| l.group(&self.name));
        let keys = &node.inner().config.keys;
        Ok(CachedFn {
            inner: Arc::new(FnInner {
                redis_prefix: keys.func_prefix(&self.name),
                ram_prefix: format!("\0f{}:", self.name),
                keysets: KeySets::new(keys),
                name: self.name,
                node,
                opts: self.opts,
                group,
                flights: Flights::default(),
                _types: PhantomData,
            }),
        })
    }
}

/// A cached function: a cheap `Clone` handle.
pub struct CachedFn<A: ?Sized, V> {
    inner: Arc<FnInner<A, V>>,
}

impl<A: ?Sized, V> Clone for CachedFn<A, V> {
    fn clone(&self) -> Self {
        CachedFn {
            inner: self.inner.clone(),
        }
    }
}

impl<A: ?Sized, V> std::fmt::Debug for CachedFn<A, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedFn")
            .field("name", &self.inner.name)
            .field("expire_in", &self.inner.opts.expire_in)
            .finish()
    }
}

struct FnInner<A: ?Sized, V> {
    name: String,
    node: CacheNode,
    opts: Options<A, V>,
    group: Option<Arc<Group>>,
    redis_prefix: String,
    ram_prefix: String,
    keysets: KeySets,
    flights: Flights,
    _types: PhantomData<fn(&A) -> V>,
}

/// A call's key, built ahead of the call; `None`: not cached.
#[doc(hidden)]
#[derive(Debug)]
pub struct Prepared(Option<CallKey>);

/// The keys of one call.
#[derive(Debug)]
struct CallKey {
    /// The part after `{ns}:f:{name}:` (or `\0f{name}:` in RAM).
    suffix: String,
    ram: String,
}

impl<A: KeyArgs + ?Sized, V> CachedFn<A, V> {
    /// The function's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The configured expiry (`None`: the node's default).
    pub fn expire_in(&self) -> Option<Duration> {
        self.inner.opts.expire_in
    }

    /// The Redis key of the call with `args` (the seed's `make_cache_key`).
    ///
    /// # Errors
    /// When an argument cannot be encoded.
    pub fn cache_key(&self, args: &A) -> Result<String> {
        let key = self.key(args)?;
        Ok(self.redis_key(&key))
    }

    fn key(&self, args: &A) -> Result<CallKey> {
        let prefix = match &self.inner.opts.prefix {
            Prefix::Dynamic(f) => Some(key::sanitize_prefix(f(args))),
            _ => None,
        };
        self.key_from(args, prefix)
    }

    /// Builds a call's key from any arguments object; `dynamic_prefix` is
    /// the prefix computed from `A`, when the function has one.
    fn key_from<K: KeyArgs + ?Sized>(
        &self,
        args: &K,
        dynamic_prefix: Option<String>,
    ) -> Result<CallKey> {
        let o = &self.inner.opts;
        let encoded = key::encode_args(args)?;
        let prefix: Cow<'_, str> = match (&o.prefix, dynamic_prefix) {
            (Prefix::Static(p), _) => Cow::Borrowed(p),
            (Prefix::Computed(f), _) => Cow::Owned(key::sanitize_prefix(f())),
            (Prefix::Dynamic(_), Some(p)) => Cow::Owned(p),
            (Prefix::Dynamic(_), None) => {
                return Err(Error::Config(format!(
                "{:?} computes its key prefix from typed arguments, which this call does not have",
                self.inner.name
            )))
            }
        };
        let request = (o.with_request_path || o.with_query_string).then(|| {
            let ctx = crate::scope::current();
            let path = ctx
                .as_ref()
                .filter(|_| o.with_request_path)
                .map_or("", |c| c.path());
            let query = ctx
                .as_ref()
                .filter(|_| o.with_query_string)
                .map_or("", |c| c.query());
            format!("{path}?{query}")
        });
        let suffix = key::suffix(
            &prefix,
            request.as_deref(),
            o.args_mode,
            &encoded,
            &o.ignore,
        );
        let ram = format!("{}{suffix}", self.inner.ram_prefix);
        Ok(CallKey { suffix, ram })
    }

    fn redis_key(&self, key: &CallKey) -> String {
        format!("{}{}", self.inner.redis_prefix, key.suffix)
    }

    fn ttl(&self) -> Option<Duration> {
        let default = self.inner.node.inner().config.default_ttl;
        self.inner
            .opts
            .expire_in
            .map_or(default, Ttl::from)
            .resolve(default)
    }

    /// Deletes the value of the call with `args` from Redis, its key set and
    /// the RAM of every instance (the seed's `clear_cached_func`). Returns
    /// whether it existed.
    ///
    /// # Errors
    /// When Redis fails or an argument cannot be encoded.
    pub async fn clear(&self, args: &A) -> Result<bool> {
        self.inner.node.check_open()?;
        let key = self.key(args)?;
        self.clear_key(key).await
    }

    async fn clear_key(&self, key: CallKey) -> Result<bool> {
        let node = &self.inner.node;
        let mut existed = node.ram().is_some_and(|l| l.remove(&key.ram));
        if let Some(shared) = node.redis("clear")? {
            let redis_key = self.redis_key(&key);
            let mut pipe = redis::pipe();
            pipe.cmd("UNLINK").arg(&redis_key);
            pipe.cmd("SREM")
                .arg(self.inner.keysets.shard_of(&self.inner.name, &redis_key))
                .arg(&redis_key);
            let replies = node
                .write_and_announce(shared, "clear", pipe, || {
                    Invalidation::Keys(vec![key.ram.clone()])
                })
                .await?;
            existed |= matches!(replies.first(), Some(redis::Value::Int(n)) if *n > 0);
        } else {
            node.announce(Invalidation::Keys(vec![key.ram.clone()]))
                .await?;
        }
        Ok(existed)
    }

    /// Deletes every value of the function: walks its key set, unlinking in
    /// batches (never a keyspace scan), then drops the function from the RAM
    /// of every instance (the seed's `clear_cached_func_all` /
    /// `delete_from_funcname`). Returns how many Redis keys were deleted.
    ///
    /// # Errors
    /// When Redis fails; what was deleted stays deleted, and calling again
    /// finishes the job.
    pub async fn clear_all(&self) -> Result<u64> {
        self.clear_all_with(|_| {}).await
    }

    /// [`clear_all`](Self::clear_all), reporting progress after each batch.
    ///
    /// # Errors
    /// As [`clear_all`](Self::clear_all).
    pub async fn clear_all_with(&self, progress: impl FnMut(Progress)) -> Result<u64> {
        self.inner.node.check_open()?;
        clear_function(&self.inner.node, &self.inner.name, progress).await
    }

    /// Starts deleting the values whose arguments match `filter` (named
    /// arguments; the seed's `clear_cached_func_some`). Needs
    /// [`cache_key_with_full_args`](FuncBuilder::cache_key_with_full_args).
    /// Each [`ClearSome::step`] deletes one batch and says how far it got.
    ///
    /// # Errors
    /// [`Error::Config`] when the function does not use full-args keys.
    pub fn clear_some(&self, filter: &key::Args) -> Result<ClearSome> {
        if self.inner.opts.args_mode != ArgsMode::Full {
            return Err(Error::Config(format!(
                "clear_some on {:?} needs keys built with cache_key_with_full_args(true)",
                self.inner.name
            )));
        }
        let encoded = key::encode_args(filter)?;
        let parts = encoded
            .parts()
            .iter()
            .filter(|(n, _)| !self.inner.opts.ignore.contains(n))
            .map(|(n, b)| key::arg_part(n, b))
            .collect();
        Ok(ClearSome {
            node: self.inner.node.clone(),
            walk: Walk::new(&self.inner.name, parts),
        })
    }

    /// How many keys the function's key set records (expired ones included
    /// until pruned).
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn key_set_size(&self) -> Result<u64> {
        match self.inner.node.redis("key_set_size")? {
            Some(shared) => self.inner.keysets.size(shared, &self.inner.name).await,
            None => Ok(0),
        }
    }
}

impl<A, V> CachedFn<A, V>
where
    A: KeyArgs + ?Sized,
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// The value of the call with `args`: from RAM, else Redis, else
    /// `compute` (run once per process for concurrent callers of one key).
    ///
    /// # Errors
    /// Only `compute`'s own errors, which are never cached. Cache failures
    /// (Redis down, an argument that does not encode) fall back to
    /// computing, logged and counted.
    pub async fn call<F, Fut, E>(&self, args: &A, compute: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let prepared = self.prepare(args);
        self.call_prepared(prepared, compute).await
    }

    /// The first half of [`call`](Self::call): decides, from the arguments
    /// alone, whether and under which key the call is cached. Lets a caller
    /// hand its arguments to `compute` by value after the key is built.
    #[doc(hidden)]
    pub fn prepare(&self, args: &A) -> Prepared {
        if self.inner.opts.unless.as_ref().is_some_and(|u| u(args)) {
            return Prepared(None);
        }
        self.prepared(self.key(args))
    }

    fn prepared(&self, key: Result<CallKey>) -> Prepared {
        let node = &self.inner.node;
        if node.is_disabled() || node.check_open().is_err() {
            return Prepared(None);
        }
        match key {
            Ok(k) => Prepared(Some(k)),
            Err(e) => {
                tracing::warn!(func = %self.inner.name, error = %e, "cannot build cache key; computing");
                Prepared(None)
            }
        }
    }

    /// The second half of [`call`](Self::call).
    ///
    /// # Errors
    /// Only `compute`'s own errors.
    #[doc(hidden)]
    pub async fn call_prepared<F, Fut, E>(&self, prepared: Prepared, compute: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let Some(key) = prepared.0 else {
            return compute().await;
        };
        let node = &self.inner.node;
        let ram = node.ram();
        if let Some(v) = ram.and_then(|l| l.get_typed::<V>(&key.ram)) {
            node.inner().metrics.hit(Layer::Ram);
            return Ok(V::clone(&v));
        }
        if ram.is_some() {
            node.inner().metrics.miss(Layer::Ram);
        }
        let leader = match self.inner.flights.join(&key.ram) {
            Role::Leader(l) => Some(l),
            Role::Follower(f) => match f.wait::<V>().await {
                Some(v) => return Ok(V::clone(&v)),
                None => None, // the leader failed: compute for ourselves
            },
        };
        let ticket = ram.map(LocalLayer::ticket);
        if let Some(v) = self.read_redis(&key, ticket).await {
            if let Some(l) = leader {
                l.finish(Some(v.clone()));
            }
            return Ok(V::clone(&v));
        }
        let value = compute().await?;
        let value = self.store(&key, value, ticket).await;
        if let Some(l) = leader {
            l.finish(Some(value.clone()));
        }
        Ok(V::clone(&value))
    }

    /// Reads and decodes the Redis copy, filling RAM; `None` on a miss or
    /// any failure (logged and counted).
    async fn read_redis(&self, key: &CallKey, ticket: Option<FillTicket>) -> Option<Arc<V>> {
        let node = &self.inner.node;
        let shared = node.redis("call").ok().flatten()?;
        let redis_key = self.redis_key(key);
        let bytes = match shared.get(&redis_key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                node.inner().metrics.miss(Layer::Redis);
                return None;
            }
            Err(e) => {
                tracing::warn!(func = %self.inner.name, error = %e, "Redis read failed; computing");
                return None;
            }
        };
        let (expires_at_ms, value) = node.decode::<V>(shared, &redis_key, &bytes).await?;
        node.inner().metrics.hit(Layer::Redis);
        let value = Arc::new(value);
        if let (Some(local), Some(ticket)) = (node.ram(), ticket) {
            if let Some(ttl) = node.ram_ttl_from_expiry(expires_at_ms) {
                let entry = Entry::new(value.clone(), ttl, bytes.len(), self.inner.group.clone());
                local.insert(key.ram.clone(), entry, ticket);
            }
        }
        Some(value)
    }

    /// Applies the caching rules to a computed value and stores it.
    async fn store(&self, key: &CallKey, value: V, ticket: Option<FillTicket>) -> Arc<V> {
        let o = &self.inner.opts;
        let (value, cache) = match o
            .on_cache_computed
            .as_ref()
            .map(|cb| cb(&self.redis_key(key), &value))
        {
            None | Some(Computed::Keep) => (value, true),
            Some(Computed::Replace(v)) => (v, true),
            Some(Computed::DontCache) => (value, false),
        };
        let value = Arc::new(value);
        if !cache || (!o.cache_none_values && key::is_none(&*value)) {
            return value;
        }
        let node = &self.inner.node;
        let local = node.ram();
        // An invalidation of this key arrived while computing: the value may
        // be built on what it invalidated, so it is returned, not stored.
        if let (Some(l), Some(t)) = (local, ticket) {
            if l.fenced_since(&key.ram, self.inner.group.as_deref(), t) {
                return value;
            }
        }
        let ttl = self.ttl();
        let mut size = None;
        if let Ok(Some(shared)) = node.redis("call") {
            match self.write_redis(shared, key, &value, ttl).await {
                Ok(len) => size = Some(len),
                Err(e) => {
                    tracing::warn!(func = %self.inner.name, error = %e, "cannot store computed value in Redis");
                }
            }
        }
        if let (Some(l), Some(t)) = (local, ticket) {
            let size = size
                .or_else(|| node.inner().codec_len(&*value))
                .unwrap_or(std::mem::size_of::<V>());
            let ram_ttl = capped(ttl, node.inner().config.ram_max_ttl);
            let entry = Entry::new(value.clone(), ram_ttl, size, self.inner.group.clone());
            if l.insert(key.ram.clone(), entry, t) {
                node.inner().metrics.write(Layer::Ram);
            }
        }
        value
    }

    /// `SET` the value and record its key in the key set, in one round trip.
    async fn write_redis(
        &self,
        shared: &crate::shared::SharedLayer,
        key: &CallKey,
        value: &V,
        ttl: Option<Duration>,
    ) -> Result<usize> {
        let node = &self.inner.node;
        let expires_at_ms = ttl.map_or(0, |t| {
            unix_millis().saturating_add(crate::shared::ttl_millis(t))
        });
        let bytes = codec::seal(
            &node.inner().codec,
            value,
            expires_at_ms,
            node.inner().config.max_value_bytes,
        )?;
        let redis_key = self.redis_key(key);
        let mut pipe = redis::pipe();
        crate::shared::add_set(&mut pipe, &redis_key, &bytes, ttl);
        pipe.ignore();
        self.inner
            .keysets
            .add_to_pipeline(&mut pipe, &self.inner.name, &redis_key);
        let mut conn = shared.conn();
        shared.run::<()>("set", pipe.query_async(&mut conn)).await?;
        node.inner().metrics.write(Layer::Redis);
        Ok(bytes.len())
    }
}

/// Calls through arguments objects of any lifetime: what the attribute
/// macros generate (their handles are `CachedFn<dyn KeyArgs, V>`, whose
/// `dyn KeyArgs` is `'static`). Not a public API.
#[doc(hidden)]
impl<V> CachedFn<dyn KeyArgs, V>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    pub fn prepare_args(&self, args: &dyn KeyArgs) -> Prepared {
        self.prepared(self.key_from(args, None))
    }

    pub fn cache_key_args(&self, args: &dyn KeyArgs) -> Result<String> {
        Ok(self.redis_key(&self.key_from(args, None)?))
    }

    pub async fn clear_args(&self, args: &dyn KeyArgs) -> Result<bool> {
        self.inner.node.check_open()?;
        let key = self.key_from(args, None)?;
        self.clear_key(key).await
    }
}

fn capped(ttl: Option<Duration>, cap: Option<Duration>) -> Option<Duration> {
    match (ttl, cap) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// Deletes every value of `funcname` from Redis through its key set, then
/// from the RAM of every instance.
async fn clear_function(
    node: &CacheNode,
    funcname: &str,
    mut progress: impl FnMut(Progress),
) -> Result<u64> {
    key::check_funcname(funcname)?;
    let mut walk = Walk::new(funcname, Vec::new());
    if let Some(shared) = node.redis("clear_all")? {
        let keysets = KeySets::new(&node.inner().config.keys);
        while !walk.progress.finished {
            keysets.delete_step(shared, &mut walk).await?;
            progress(walk.progress);
        }
    }
    node.invalidate_func(funcname).await?;
    walk.progress.finished = true;
    progress(walk.progress);
    Ok(walk.progress.deleted)
}

/// A partial deletion in progress; see [`CachedFn::clear_some`].
#[derive(Debug)]
pub struct ClearSome {
    node: CacheNode,
    walk: Walk,
}

impl ClearSome {
    /// Deletes one batch of matching values (Redis, key set, and the RAM of
    /// every instance) and returns the progress so far; call again until
    /// `finished`.
    ///
    /// # Errors
    /// When Redis fails; the next call resumes where this one stopped.
    pub async fn step(&mut self) -> Result<Progress> {
        self.node.check_open()?;
        let Some(shared) = self.node.redis("clear_some")? else {
            // No key sets to walk: drop the whole function from RAM.
            self.node.invalidate_func(&self.walk.funcname).await?;
            self.walk.progress.finished = true;
            return Ok(self.walk.progress);
        };
        let keysets = KeySets::new(&self.node.inner().config.keys);
        let deleted = keysets.delete_step(shared, &mut self.walk).await?;
        if !deleted.is_empty() {
            let keys = &self.node.inner().config.keys;
            let ram_keys: Vec<String> = deleted
                .iter()
                .filter_map(|k| k.strip_prefix(keys.namespace()))
                .filter_map(|rest| crate::keys::ram_key_of(&rest[1..]))
                .collect();
            let refs: Vec<&str> = ram_keys.iter().map(String::as_str).collect();
            self.node.invalidate_ram_keys(&refs).await?;
        }
        Ok(self.walk.progress)
    }

    /// Runs the deletion to the end, reporting progress after each batch.
    ///
    /// # Errors
    /// As [`step`](Self::step).
    pub async fn run(mut self, mut progress: impl FnMut(Progress)) -> Result<u64> {
        loop {
            let p = self.step().await?;
            progress(p);
            if p.finished {
                return Ok(p.deleted);
            }
        }
    }

    /// Progress so far.
    pub fn progress(&self) -> Progress {
        self.walk.progress
    }
}

/// A deletion of several functions' values running in the background; see
/// [`CacheNode::clear_funcs_in_background`].
#[derive(Debug)]
pub struct BackgroundClear {
    progress: watch::Receiver<Progress>,
    task: tokio::task::JoinHandle<Result<u64>>,
}

impl BackgroundClear {
    /// How far it has got: keys deleted so far, and whether it is done.
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Waits for the end; returns how many Redis keys were deleted.
    ///
    /// # Errors
    /// The first error met; [`Error::Shutdown`] if the task was cancelled.
    pub async fn wait(self) -> Result<u64> {
        self.task.await.unwrap_or(Err(Error::Shutdown))
    }
}

impl CacheNode {
    /// Deletes every value of each function in `funcnames` through their key
    /// sets, then drops them from the RAM of every instance (the seed's
    /// `delete_shared_then_local_cache_patterns`). `progress` is called with
    /// the function's name after each batch. Returns the total deleted.
    ///
    /// # Errors
    /// When Redis fails or a name is invalid.
    pub async fn clear_funcs(
        &self,
        funcnames: &[&str],
        mut progress: impl FnMut(&str, Progress),
    ) -> Result<u64> {
        self.check_open()?;
        let mut total = 0;
        for name in funcnames {
            total += clear_function(self, name, |p| progress(name, p)).await?;
        }
        Ok(total)
    }

    /// [`clear_funcs`](Self::clear_funcs) as a background task (the seed's
    /// `delete_shared_then_local_cache_funcnames_async`); the handle tells
    /// the progress and waits for the end.
    pub fn clear_funcs_in_background(&self, funcnames: Vec<String>) -> BackgroundClear {
        let (tx, rx) = watch::channel(Progress::default());
        let node = self.clone();
        let task = tokio::spawn(async move {
            let mut done = 0;
            for name in &funcnames {
                let before = done;
                done += clear_function(&node, name, |p| {
                    let _ = tx.send(Progress {
                        deleted: before + p.deleted,
                        finished: false,
                    });
                })
                .await?;
            }
            let _ = tx.send(Progress {
                deleted: done,
                finished: true,
            });
            Ok(done)
        });
        BackgroundClear { progress: rx, task }
    }

    /// Names of the functions that have key sets in this namespace, with the
    /// number of keys each records.
    ///
    /// # Errors
    /// When Redis fails; [`Error::NoSharedLayer`] on a node without Redis.
    pub async fn key_sets(&self) -> Result<Vec<(String, u64)>> {
        let shared = self
            .redis("key_sets")?
            .ok_or(Error::NoSharedLayer { op: "key_sets" })?;
        let keysets = KeySets::new(&self.inner().config.keys);
        let mut out = Vec::new();
        for name in keysets.functions(shared).await? {
            let size = keysets.size(shared, &name).await?;
            out.push((name, size));
        }
        Ok(out)
    }

    /// Removes from every function's key set the keys that expired in
    /// Redis. Returns how many members were removed.
    ///
    /// # Errors
    /// When Redis fails; [`Error::NoSharedLayer`] on a node without Redis.
    pub async fn prune_key_sets(&self) -> Result<u64> {
        let shared = self.redis("prune_key_sets")?.ok_or(Error::NoSharedLayer {
            op: "prune_key_sets",
        })?;
        let keysets = KeySets::new(&self.inner().config.keys);
        let mut pruned = 0;
        for name in keysets.functions(shared).await? {
            pruned += keysets.prune(shared, &name).await?;
        }
        Ok(pruned)
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<CachedFn<(u64,), String>>();
    is::<CachedFn<dyn KeyArgs + Send + Sync, String>>();
}
