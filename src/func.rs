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

pub(crate) mod atomic;
pub(crate) mod jobs;
pub mod key;
pub(crate) mod refresh;

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::bus::Invalidation;
use crate::clock::unix_millis;
use crate::codec::{self, Codec};
use crate::core::{Core, Layers};
pub use crate::func::atomic::AtomicWrites;
use crate::func::atomic::GenerationCheck;
use crate::keysets::{Generation, KeySets, Progress, Walk};
use crate::local::{Expiry, Fence, Fill, FillTicket, Group, LocalLayer};
use crate::metrics::Layer;
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
    atomic: Option<AtomicWrites>,
    lock_ttl: Duration,
    wait_timeout: Duration,
    /// The job timeout, when values are built asynchronously.
    async_compute: Option<Duration>,
    /// The registered build function, for async compute, refresh, warm-up.
    rebuild: Option<RebuildSpec<A>>,
    refresh_every: Option<Duration>,
    warmup: Vec<Vec<u8>>,
    warmup_decode: Option<WarmupDecode<A>>,
    warmup_timeout: Duration,
    /// How far this handle's reads of the host clock are shifted, in ms
    /// (tests only: a host whose clock is off).
    clock_skew_ms: i64,
}

type EncodeArgs<A> = Arc<dyn Fn(&A) -> Option<Vec<u8>> + Send + Sync>;
type WarmupDecode<A> = Arc<dyn Fn(&[u8]) -> Option<Box<A>> + Send + Sync>;

/// A function registered to build values from encoded arguments.
struct RebuildSpec<A: ?Sized> {
    encode: EncodeArgs<A>,
    build: crate::registry::JobFn,
}

/// Configures a cached function; made by [`CacheNode::func`](crate::CacheNode::func).
#[must_use = "a builder does nothing until .build()"]
pub struct FuncBuilder<A: ?Sized, V> {
    node: Core,
    name: String,
    full_args: bool,
    with_func_args: bool,
    opts: Options<A, V>,
}

impl<A: KeyArgs + ?Sized, V> FuncBuilder<A, V> {
    /// A cached function named `name` on `node`, every option at its
    /// default; see [`CacheNode::func`](crate::CacheNode::func).
    pub(crate) fn new(node: Core, name: &str) -> Self {
        FuncBuilder {
            node,
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
                atomic: None,
                lock_ttl: crate::func::atomic::DEFAULT_LOCK_TTL,
                wait_timeout: crate::func::atomic::DEFAULT_WAIT_TIMEOUT,
                async_compute: None,
                rebuild: None,
                refresh_every: None,
                warmup: Vec::new(),
                warmup_decode: None,
                warmup_timeout: crate::func::refresh::DEFAULT_WARMUP_TIMEOUT,
                clock_skew_ms: 0,
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

    /// Coordinates computation across instances (the seed's
    /// `atomic_writes`); see [`AtomicWrites`]. Needs Redis: ignored for
    /// RAM-only functions.
    pub fn atomic_writes(mut self, mode: AtomicWrites) -> Self {
        self.opts.atomic = Some(mode);
        self
    }

    /// TTL of the [`AtomicWrites::AtMostOnce`] lock (default
    /// [`DEFAULT_LOCK_TTL`](crate::func::atomic::DEFAULT_LOCK_TTL)); the holder
    /// extends it every third of it, so this is how long a dead holder
    /// delays the others.
    pub fn atomic_lock_ttl(mut self, ttl: Duration) -> Self {
        self.opts.lock_ttl = ttl;
        self
    }

    /// How long a caller waits for another instance's
    /// [`AtomicWrites::AtMostOnce`] computation (default
    /// [`DEFAULT_WAIT_TIMEOUT`](crate::func::atomic::DEFAULT_WAIT_TIMEOUT)); past
    /// it, the caller computes for itself and does not store the value.
    pub fn atomic_wait_timeout(mut self, timeout: Duration) -> Self {
        self.opts.wait_timeout = timeout;
        self
    }

    /// Shifts this handle's reads of the host's wall clock (the expiry it
    /// writes into values) by `skew_ms`, negative for a clock behind. For
    /// tests: it simulates a host whose clock is off, to show what does not
    /// depend on hosts' clocks (the order of at-least-once writes).
    #[doc(hidden)]
    pub fn skew_host_clock_for_tests(mut self, skew_ms: i64) -> Self {
        self.opts.clock_skew_ms = skew_ms;
        self
    }

    /// Builds the handle, and registers its refresh and warm-up on the node.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid function name, prefix or option
    /// combination (refresh or warm-up without
    /// [`computed_by`](Self::computed_by), with request-dependent keys, or
    /// with too short a period; `cache_none_values` with async compute).
    pub fn build(self) -> Result<CachedFn<A, V>> {
        let warmup_calls = self.opts.warmup.clone();
        let handle = self.build_handle()?;
        handle.register(warmup_calls)?;
        Ok(handle)
    }

    fn build_handle(mut self) -> Result<CachedFn<A, V>> {
        key::check_funcname(&self.name)?;
        if let Prefix::Static(p) = &self.opts.prefix {
            key::check_prefix(p)?;
        }
        if self.opts.async_compute.is_some() && self.opts.cache_none_values {
            return Err(Error::Config(format!(
                "{:?}: cache_none_values cannot be combined with async_compute",
                self.name
            )));
        }
        let request_keys = self.opts.with_request_path || self.opts.with_query_string;
        if request_keys && (self.opts.refresh_every.is_some() || !self.opts.warmup.is_empty()) {
            return Err(Error::Config(format!(
                "{:?}: refresh and warm-up cannot rebuild keys that depend on a request path or query string",
                self.name
            )));
        }
        if let Some(period) = self.opts.refresh_every {
            let min = self.node.config().min_refresh_period;
            if period < min {
                return Err(Error::Config(format!(
                    "{:?}: async_refresh_every({period:?}) is below the node's minimum refresh period {min:?}",
                    self.name
                )));
            }
        }
        if (self.opts.refresh_every.is_some() || !self.opts.warmup.is_empty())
            && self.opts.rebuild.is_none()
        {
            return Err(Error::Config(format!(
                "{:?}: refresh and warm-up need computed_by (or async_compute)",
                self.name
            )));
        }
        if self.opts.async_compute.is_some_and(|t| t.is_zero()) {
            return Err(Error::Config(format!(
                "{:?}: async_compute_job_timeout must be greater than zero",
                self.name
            )));
        }
        if self.opts.lock_ttl.is_zero() || self.opts.wait_timeout.is_zero() {
            return Err(Error::Config(format!(
                "{:?}: atomic_lock_ttl and atomic_wait_timeout must be greater than zero",
                self.name
            )));
        }
        self.opts.args_mode = match (self.with_func_args, self.full_args) {
            (false, _) => ArgsMode::Ignored,
            (true, true) => ArgsMode::Full,
            (true, false) => ArgsMode::Hashed,
        };
        let node = self.node.with_layers(self.opts.layers);
        let group = node.local().as_ref().map(|l| l.group(&self.name));
        let keys = &node.config().keys;
        Ok(CachedFn {
            inner: Arc::new(FnInner {
                redis_prefix: keys.func_prefix(&self.name),
                ram_prefix: crate::keys::func_ram_prefix(&self.name),
                keysets: KeySets::new(keys),
                metrics: crate::metrics::FnMetrics::new(&self.name),
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

impl<A, V> FuncBuilder<A, V>
where
    A: KeyArgs + Serialize + DeserializeOwned + Send + 'static,
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Registers `build`, the function that computes a value from the
    /// call's arguments, under the function's name. Refresh, warm-up and
    /// builders of async computation run it; plain calls keep using the
    /// closure they are given.
    pub fn computed_by<F, Fut, E>(mut self, build: F) -> Self
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let build = Arc::new(build);
        let limit = self.node.config().max_value_bytes;
        let job: crate::registry::JobFn = Arc::new(move |args: Vec<u8>, ttl_ms: u64| {
            let build = build.clone();
            Box::pin(async move {
                let args: A = crate::codec::Bincode
                    .decode(&args, limit)
                    .map_err(|e| format!("arguments do not decode: {e}"))?;
                let value = build(args).await.map_err(|e| e.to_string())?;
                let expires_at_ms = if ttl_ms == 0 {
                    0
                } else {
                    unix_millis().saturating_add(ttl_ms)
                };
                codec::seal(&crate::codec::Bincode, &value, expires_at_ms, limit)
                    .map_err(|e| e.to_string())
            })
        });
        self.node.jobs().register(&self.name, job.clone());
        self.opts.rebuild = Some(RebuildSpec {
            encode: Arc::new(|a: &A| {
                let mut out = Vec::new();
                crate::codec::Bincode.encode_into(a, &mut out).ok()?;
                Some(out)
            }),
            build: job,
        });
        self
    }

    /// Builds values in the background (the seed's `async_compute`): a
    /// lookup of a cold key with [`CachedFn::get_or_build`] enqueues a build
    /// job and answers [`Lookup::BeingBuilt`] at once; a node with the
    /// [builder role](crate::CacheNodeBuilder::builder_role) runs `build`
    /// with the call's arguments and stores the value. `build` is registered
    /// on this node under the function's name: every builder node must build
    /// this handle too.
    pub fn async_compute<F, Fut, E>(mut self, build: F) -> Self
    where
        F: Fn(A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.opts
            .async_compute
            .get_or_insert(crate::func::jobs::DEFAULT_JOB_TIMEOUT);
        self.computed_by(build)
    }

    /// Recomputes every value of the function in the background every
    /// `period` (the seed's `async_refresh_every`), on one builder instance
    /// per period; readers keep the old value until the new one is written.
    /// Needs [`computed_by`](Self::computed_by) (or `async_compute`), a
    /// period of at least the node's
    /// [`min_refresh_period`](crate::CacheNodeBuilder::min_refresh_period),
    /// and no request path or query string in keys. Values whose arguments
    /// are known are refreshed: those written by calls of this handle,
    /// build jobs and warm-up.
    pub fn async_refresh_every(mut self, period: Duration) -> Self {
        self.opts.refresh_every = Some(period);
        self
    }

    /// Computes the values of these calls when
    /// [`CacheNode::warm_up`](crate::CacheNode::warm_up) runs (the seed's `warmup_on_startup`). Needs
    /// [`computed_by`](Self::computed_by) and no request path or query
    /// string in keys.
    pub fn warmup_on_startup(mut self, calls: impl IntoIterator<Item = A>) -> Self {
        self.opts.warmup_decode = Some(Arc::new(|bytes: &[u8]| {
            crate::codec::Bincode
                .decode::<A>(bytes, usize::MAX)
                .ok()
                .map(Box::new)
        }));
        for a in calls {
            let mut out = Vec::new();
            if crate::codec::Bincode.encode_into(&a, &mut out).is_ok() {
                self.opts.warmup.push(out);
            }
        }
        self
    }

    /// Bounds this function's warm-up (default
    /// [`DEFAULT_WARMUP_TIMEOUT`](crate::func::refresh::DEFAULT_WARMUP_TIMEOUT)).
    pub fn warmup_timeout(mut self, timeout: Duration) -> Self {
        self.opts.warmup_timeout = timeout;
        self
    }

    /// How long a build job may run before another builder takes it over
    /// (the seed's `async_compute_job_timeout`; default
    /// [`DEFAULT_JOB_TIMEOUT`](crate::func::jobs::DEFAULT_JOB_TIMEOUT)).
    pub fn async_compute_job_timeout(mut self, timeout: Duration) -> Self {
        self.opts.async_compute = Some(timeout);
        self
    }
}

/// The answer of [`CachedFn::get_or_build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    /// The value.
    Ready(V),
    /// Not cached yet: a build job is queued or running (the seed's
    /// `AsyncValueBeingBuiltException`). Ask again later.
    BeingBuilt,
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
    node: Core,
    opts: Options<A, V>,
    group: Option<Arc<Group>>,
    redis_prefix: String,
    ram_prefix: String,
    keysets: KeySets,
    flights: Flights,
    metrics: crate::metrics::FnMetrics,
    _types: PhantomData<fn(&A) -> V>,
}

/// A call's key, built ahead of the call; `None`: not cached.
#[doc(hidden)]
#[derive(Debug)]
pub struct Prepared(Option<CallKey>);

/// The keys of one call.
#[derive(Debug)]
struct CallKey {
    /// The call's encoded arguments, kept beside the value when the
    /// function is refreshed (so the value can be rebuilt).
    args_record: Option<Vec<u8>>,
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
        let mut key = self.key_from(args, prefix)?;
        if self.inner.opts.refresh_every.is_some() {
            key.args_record = self
                .inner
                .opts
                .rebuild
                .as_ref()
                .and_then(|r| (r.encode)(args));
        }
        Ok(key)
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
        Ok(CallKey {
            args_record: None,
            suffix,
            ram,
        })
    }

    /// Registers refresh and warm-up with the node.
    fn register(&self, warmup_calls: Vec<Vec<u8>>) -> Result<()> {
        let inner = &self.inner;
        let o = &inner.opts;
        let Some(spec) = &o.rebuild else {
            return Ok(()); // build_handle refused refresh/warm-up without it
        };
        if o.refresh_every.is_none() && warmup_calls.is_empty() {
            return Ok(());
        }
        let rebuild = crate::registry::Rebuild {
            func: inner.name.clone(),
            build: spec.build.clone(),
            ttl: self.ttl(),
            ram_prefix: inner.ram_prefix.clone(),
            redis_prefix: inner.redis_prefix.clone(),
        };
        let registry = &inner.node.refresh();
        if let Some(period) = o.refresh_every {
            registry.add_refresh(period, rebuild.clone());
        }
        if let (false, Some(decode)) = (warmup_calls.is_empty(), &o.warmup_decode) {
            let mut calls = Vec::new();
            for bytes in warmup_calls {
                let args = decode(&bytes)
                    .ok_or_else(|| Error::Encode("warm-up arguments do not decode".into()))?;
                let key = self.key(&args)?;
                calls.push((self.redis_key(&key), bytes));
            }
            registry.add_warmup(crate::registry::Warmup {
                rebuild,
                calls,
                timeout: o.warmup_timeout,
            });
        }
        Ok(())
    }

    /// The host's wall clock, Unix ms, as this handle sees it.
    fn host_millis(&self) -> u64 {
        unix_millis().saturating_add_signed(self.inner.opts.clock_skew_ms)
    }

    fn redis_key(&self, key: &CallKey) -> String {
        format!("{}{}", self.inner.redis_prefix, key.suffix)
    }

    fn ttl(&self) -> Option<Duration> {
        let default = self.inner.node.config().default_ttl;
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
            pipe.cmd("HDEL")
                .arg(node.config().keys.func_args(&self.inner.name))
                .arg(&redis_key);
            crate::keysets::add_forget_version(&mut pipe, &redis_key);
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
    /// `delete_from_funcname`). Returns how many Redis keys were deleted:
    /// the values Redis still held (every value leaves every RAM, also one
    /// whose Redis copy had expired or been evicted). Key-set members that
    /// are no value of the function are removed from the set, never deleted
    /// (see [`Progress::foreign`]).
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
    /// Each [`ClearSome::step`] deletes one batch and says how far it got;
    /// every matching value the key set records leaves the RAM of every
    /// instance, and [`Progress::deleted`] counts those Redis still held.
    /// Unlike [`clear_all`](Self::clear_all) it does not change the clear
    /// generation: a matching value whose computation was running is
    /// refused by the computing node if the invalidation reached it first,
    /// and otherwise stored (the usual cache-aside race, as for
    /// [`clear`](Self::clear)).
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
        let sampled = ram.is_some() && crate::metrics::sample_ram();
        let started = sampled.then(std::time::Instant::now);
        let found = ram.and_then(|l| l.get_typed::<V>(&key.ram));
        if let Some(started) = started {
            crate::metrics::operation(Layer::Ram, started.elapsed());
        }
        if let Some(v) = found {
            node.metrics().hit(Layer::Ram);
            self.inner.metrics.hit(Layer::Ram);
            return Ok(V::clone(&v));
        }
        if ram.is_some() {
            node.metrics().miss(Layer::Ram);
        }
        // The ticket is taken before joining: a flight whose leader took
        // its own before an invalidation of the key was applied is not
        // joined (its value may predate the invalidation).
        // The fences live in this node's RAM layer whatever layers this
        // handle uses (the bus applies invalidations there), so a flight of
        // a Redis-only function is judged by them too.
        let fences = node.own_ram();
        let flight_ticket = fences.map(LocalLayer::ticket);
        // Also what the value's store checks the fences with (and fills
        // RAM with, when this handle uses RAM).
        let mut ticket = flight_ticket;
        let group = self.inner.group.as_deref();
        let stale = |t| fences.is_some_and(|l| l.fenced_since(&key.ram, group, t));
        let leader = match self.inner.flights.join(&key.ram, flight_ticket, stale) {
            Role::Leader(l) => Some(l),
            Role::Follower(f) => match f.wait::<V>().await {
                Some(v) => return Ok(V::clone(&v)),
                None => {
                    // The leader failed: compute for ourselves, from now.
                    ticket = fences.map(LocalLayer::ticket);
                    None
                }
            },
        };
        let (found, generation) = self.read_redis(&key, &mut ticket).await;
        if let Some(v) = found {
            self.inner.metrics.hit(Layer::Redis);
            if let Some(l) = leader {
                l.finish(Some(v.clone()));
            }
            return Ok(V::clone(&v));
        }
        self.inner.metrics.miss();
        let started = std::time::Instant::now();
        let compute = || async {
            let v = compute().await;
            self.inner.metrics.computed(started.elapsed());
            v
        };
        let value = match self.inner.opts.atomic {
            None => {
                let value = compute().await?;
                self.store(&key, value, ticket, Write::Plain, &generation)
                    .await
            }
            Some(AtomicWrites::AtLeastOnce) => {
                // Ordered by the Redis server's clock, not this host's.
                let started = match node.redis("call") {
                    Ok(Some(shared)) => {
                        crate::func::atomic::start_version(shared, &self.redis_key(&key)).await
                    }
                    _ => 0,
                };
                let value = compute().await?;
                let write = Write::IfNewer(started);
                self.store(&key, value, ticket, write, &generation).await
            }
            Some(AtomicWrites::AtMostOnce) => {
                self.at_most_once(&key, ticket, generation, compute).await?
            }
        };
        if let Some(l) = leader {
            l.finish(Some(value.clone()));
        }
        Ok(V::clone(&value))
    }

    /// The value of the call if cached; otherwise queues a build job (once
    /// per key at a time) and answers [`Lookup::BeingBuilt`] at once.
    ///
    /// # Errors
    /// [`Error::Config`] when the function was not built with
    /// [`FuncBuilder::async_compute`]; [`Error::NoSharedLayer`] without
    /// Redis; Redis errors when the job cannot be queued.
    pub async fn get_or_build(&self, args: &A) -> Result<Lookup<V>>
    where
        A: Serialize + Sized,
    {
        let Some(timeout) = self.inner.opts.async_compute else {
            return Err(Error::Config(format!(
                "{:?} was not built with async_compute",
                self.inner.name
            )));
        };
        let node = &self.inner.node;
        node.check_open()?;
        let key = self.key(args)?;
        let ram = node.ram();
        if let Some(v) = ram.and_then(|l| l.get_typed::<V>(&key.ram)) {
            node.metrics().hit(Layer::Ram);
            return Ok(Lookup::Ready(V::clone(&v)));
        }
        let shared = node
            .redis("get_or_build")?
            .ok_or(Error::NoSharedLayer { op: "get_or_build" })?;
        if let (Some(v), _) = self
            .read_redis(&key, &mut ram.map(LocalLayer::ticket))
            .await
        {
            return Ok(Lookup::Ready(V::clone(&v)));
        }
        let mut encoded = Vec::new();
        crate::codec::Bincode
            .encode_into(args, &mut encoded)
            .map_err(Error::Encode)?;
        let job = crate::func::jobs::Job {
            func: self.inner.name.clone(),
            record_args: self.inner.opts.refresh_every.is_some(),
            args: encoded,
            redis_key: self.redis_key(&key),
            ttl_ms: self.ttl().map_or(0, crate::shared::ttl_millis),
            timeout_ms: crate::shared::ttl_millis(timeout),
        };
        crate::func::jobs::enqueue(shared, &node.config().keys, &job).await?;
        Ok(Lookup::BeingBuilt)
    }

    /// Reads and decodes the Redis copy, filling RAM; `None` on a miss or
    /// any failure (logged and counted). With it, the function's clear
    /// generation, which a computation started after this read checks when
    /// it writes (see [`keysets`](crate::keysets)).
    ///
    /// A value that does not decode is removed, and its removal fences the
    /// key in this node's RAM; `ticket` is then taken anew, so that the
    /// value computed in its place can be stored (the clear generation,
    /// read before, still refuses it if a clear began meanwhile).
    async fn read_redis(
        &self,
        key: &CallKey,
        ticket: &mut Option<FillTicket>,
    ) -> (Option<Arc<V>>, Generation) {
        let node = &self.inner.node;
        let Some(shared) = node.redis("call").ok().flatten() else {
            return (None, Generation::Unknown);
        };
        let redis_key = self.redis_key(key);
        let (read, generation) = self
            .inner
            .keysets
            .get_with_generation(shared, &self.inner.name, &redis_key)
            .await;
        let bytes = match read {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                node.metrics().miss(Layer::Redis);
                return (None, generation);
            }
            Err(e) => {
                tracing::warn!(func = %self.inner.name, error = %e, "Redis read failed; computing");
                return (None, generation);
            }
        };
        let Some((expires_at_ms, value)) =
            node.decode::<V>(shared, &redis_key, &key.ram, &bytes).await
        else {
            if ticket.is_some() {
                *ticket = node.own_ram().map(LocalLayer::ticket);
            }
            return (None, generation);
        };
        node.metrics().hit(Layer::Redis);
        let value = Arc::new(value);
        if let (Some(local), Some(ticket)) = (node.ram(), *ticket) {
            let fill = Fill {
                expiry: Expiry::At(expires_at_ms),
                cap: node.config().ram_max_ttl,
                bytes: bytes.len(),
                group: self.inner.group.clone(),
                ram_only: false,
            };
            local.fill(key.ram.clone(), value.clone(), fill, Fence::Ticket(ticket));
        }
        (Some(value), generation)
    }

    /// Computes under the key's lock, or waits for the instance that holds
    /// it (see [`AtomicWrites::AtMostOnce`]).
    async fn at_most_once<F, Fut, E>(
        &self,
        key: &CallKey,
        mut ticket: Option<FillTicket>,
        generation: Generation,
        compute: F,
    ) -> Result<Arc<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let o = &self.inner.opts;
        let Ok(Some(shared)) = self.inner.node.redis("call") else {
            let value = compute().await?;
            return Ok(self
                .store(key, value, ticket, Write::Plain, &generation)
                .await);
        };
        let redis_key = self.redis_key(key);
        // `None`: a wait timeout too long to add to now (`Duration::MAX`)
        // waits without bound.
        let deadline = tokio::time::Instant::now().checked_add(o.wait_timeout);
        let mut pause = Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
        loop {
            match crate::func::atomic::try_lock(shared, &redis_key, o.lock_ttl).await {
                Ok(Some(lock)) => {
                    // The value may have landed between our miss and the lock.
                    let (found, generation) = self.read_redis(key, &mut ticket).await;
                    if let Some(v) = found {
                        lock.release().await;
                        return Ok(v);
                    }
                    // On an error the guard drops and releases the lock.
                    let value = compute().await?;
                    let write = Write::Held(&lock);
                    let value = self.store(key, value, ticket, write, &generation).await;
                    lock.release().await;
                    return Ok(value);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(func = %self.inner.name, error = %e, "cannot take the compute lock; computing");
                    let value = compute().await?;
                    return Ok(self
                        .store(key, value, ticket, Write::Plain, &generation)
                        .await);
                }
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                tracing::warn!(
                    func = %self.inner.name,
                    waited = ?o.wait_timeout,
                    "another instance's computation did not finish in time; computing without storing"
                );
                return Ok(Arc::new(compute().await?));
            }
            tokio::time::sleep(pause.next()).await;
            if let (Some(v), _) = self.read_redis(key, &mut ticket).await {
                return Ok(v);
            }
        }
    }

    /// Applies the caching rules to a computed value and stores it, in Redis
    /// only while the function's clear generation is still `generation`, the
    /// one read before the computation started.
    async fn store(
        &self,
        key: &CallKey,
        value: V,
        ticket: Option<FillTicket>,
        write: Write<'_>,
        generation: &Generation,
    ) -> Arc<V> {
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
        // be built on what it invalidated, so it is returned, not stored, in
        // either layer. (The fences are in this node's RAM layer whatever
        // layers this handle uses.)
        if let (Some(l), Some(t)) = (node.own_ram(), ticket) {
            if l.fenced_since(&key.ram, self.inner.group.as_deref(), t) {
                return value;
            }
        }
        let ttl = self.ttl();
        let mut size = None;
        let redis = node.redis("call");
        // A function cached in RAM only: nothing in Redis stands behind it.
        let ram_only = matches!(redis, Ok(None));
        match (redis, generation) {
            (Ok(Some(_)), Generation::Unknown) => {
                tracing::debug!(func = %self.inner.name, "computed value not stored in Redis: the clear generation could not be read");
            }
            (Ok(Some(shared)), Generation::Seen(seen)) => {
                match self
                    .write_redis(shared, key, &value, ttl, write, seen)
                    .await
                {
                    Ok(Some(len)) => size = Some(len),
                    // Refused: a newer value is stored, our lock expired and
                    // someone else may have written, or the function was
                    // cleared meanwhile. Do not keep ours in RAM.
                    Ok(None) => return value,
                    Err(e) => {
                        tracing::warn!(func = %self.inner.name, error = %e, "cannot store computed value in Redis");
                    }
                }
            }
            _ => {}
        }
        if let (Some(l), Some(t)) = (local, ticket) {
            let fill = Fill {
                expiry: Expiry::After(ttl),
                cap: node.config().ram_max_ttl,
                bytes: node.ram_weight(size, &*value),
                group: self.inner.group.clone(),
                ram_only,
            };
            if l.fill(key.ram.clone(), value.clone(), fill, Fence::Ticket(t)) {
                node.metrics().write(Layer::Ram);
            }
        }
        value
    }

    /// Writes the value and records its key in the key set, in one round
    /// trip, while the function's clear generation is still `seen`.
    /// `Ok(None)` when a conditional write was refused.
    async fn write_redis(
        &self,
        shared: &crate::shared::SharedLayer,
        key: &CallKey,
        value: &V,
        ttl: Option<Duration>,
        write: Write<'_>,
        seen: &[u8],
    ) -> Result<Option<usize>> {
        let node = &self.inner.node;
        let expires_at_ms = ttl.map_or(0, |t| {
            self.host_millis()
                .saturating_add(crate::shared::ttl_millis(t))
        });
        let bytes = codec::seal(
            node.codec(),
            value,
            expires_at_ms,
            node.config().max_value_bytes,
        )?;
        let redis_key = self.redis_key(key);
        let generation_key = self.inner.keysets.generation(&self.inner.name);
        let check = GenerationCheck {
            key: &generation_key,
            seen,
        };
        let mut pipe = redis::pipe();
        // The key-set entry first: a value the write below stores is then
        // recorded before any clear that could refuse it begins its walk.
        self.inner
            .keysets
            .add_to_pipeline(&mut pipe, &self.inner.name, &redis_key);
        match write {
            Write::Plain => crate::func::atomic::add_write_if_generation(
                &mut pipe, &redis_key, &bytes, ttl, check, false,
            ),
            Write::Held(lock) => lock.add_write(&mut pipe, &redis_key, &bytes, ttl, Some(check)),
            Write::IfNewer(version) => crate::func::atomic::add_write_if_newer(
                &mut pipe,
                &redis_key,
                &bytes,
                ttl,
                version,
                Some(check),
            ),
        }
        if let Some(args) = &key.args_record {
            self.inner
                .keysets
                .add_args_record(&mut pipe, &self.inner.name, &redis_key, args);
        }
        let mut conn = shared.conn();
        let (written,): (redis::Value,) = shared.run("set", pipe.query_async(&mut conn)).await?;
        if matches!(written, redis::Value::Int(crate::func::atomic::CLEARED)) {
            tracing::debug!(func = %self.inner.name, "function cleared while computing; value not stored");
            return Ok(None);
        }
        if matches!(written, redis::Value::Int(0)) {
            tracing::debug!(func = %self.inner.name, "conditional write refused");
            return Ok(None);
        }
        if matches!(write, Write::IfNewer(_))
            && matches!(written, redis::Value::Int(crate::func::atomic::REPLACED))
        {
            // Instances computing at once store in turn: one that stored an
            // older value keeps it in RAM unless told that a newer one
            // replaced it. Only a replacement is announced: announcing a
            // first write would fence, and so discard, the value of every
            // computation still running elsewhere, newer ones included.
            if let Err(e) = node
                .announce(Invalidation::Keys(vec![key.ram.clone()]))
                .await
            {
                tracing::warn!(func = %self.inner.name, error = %e, "cannot announce a newer value");
            }
        }
        node.metrics().write(Layer::Redis);
        Ok(Some(bytes.len()))
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

/// How a computed value is written to Redis.
#[derive(Clone, Copy)]
enum Write<'a> {
    /// Unconditionally.
    Plain,
    /// Only while this lock is held (at most once).
    Held(&'a crate::func::atomic::LockGuard),
    /// Only if no value from a later computation (start time on the Redis
    /// server, µs) is stored (at least once).
    IfNewer(u64),
}

/// Deletes every value of `funcname` from Redis through its key set, then
/// from the RAM of every instance (one function fence, which covers every
/// value, whether Redis still had it or not).
///
/// In this order, so that no value of a computation that started before
/// the call survives it: first a new clear generation (every later write of
/// such a computation is refused), then the walk (which deletes what they
/// wrote before), then the fence (which drops from every RAM what was read
/// or computed before it); see [`keysets`](crate::keysets).
async fn clear_function(
    node: &Core,
    funcname: &str,
    mut progress: impl FnMut(Progress),
) -> Result<u64> {
    key::check_funcname(funcname)?;
    let mut walk = Walk::new(funcname, Vec::new());
    if let Some(shared) = node.redis("clear_all")? {
        let keysets = KeySets::new(&node.config().keys);
        keysets.new_generation(shared, funcname).await?;
        while !walk.walked() {
            keysets.delete_step(shared, &mut walk).await?;
            // The function fence below announces them all at once.
            walk.pending.clear();
            progress(Progress {
                finished: false,
                ..walk.progress()
            });
        }
    }
    node.invalidate_func(funcname).await?;
    walk.finish();
    walk.pending.clear();
    progress(walk.progress());
    Ok(walk.progress().deleted)
}

/// A partial deletion in progress; see [`CachedFn::clear_some`].
#[derive(Debug)]
pub struct ClearSome {
    node: Core,
    walk: Walk,
}

impl ClearSome {
    /// A partial deletion of `node`'s values that `walk` matches.
    pub(crate) fn new(node: Core, walk: Walk) -> Self {
        ClearSome { node, walk }
    }

    /// Deletes one batch of matching values (Redis, key set, and the RAM of
    /// every instance) and returns the progress so far; call again until
    /// `finished`. Every matching value is dropped from every RAM, also one
    /// whose Redis copy had already gone; [`Progress::deleted`] counts those
    /// Redis still held.
    ///
    /// # Errors
    /// When Redis fails; the next call resumes where this one stopped. A
    /// batch deleted from Redis whose announcement failed is announced first
    /// by the next call, so a failed step loses nothing.
    pub async fn step(&mut self) -> Result<Progress> {
        self.node.check_open()?;
        let Some(shared) = self.node.redis("clear_some")? else {
            // No key sets to walk: drop the whole function from RAM.
            self.node.invalidate_func(&self.walk.funcname).await?;
            self.walk.finish();
            return Ok(self.walk.progress());
        };
        announce_pending(&self.node, &mut self.walk).await?;
        if !self.walk.walked() {
            let keysets = KeySets::new(&self.node.config().keys);
            keysets.delete_step(shared, &mut self.walk).await?;
            announce_pending(&self.node, &mut self.walk).await?;
        }
        Ok(self.walk.progress())
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
        self.walk.progress()
    }
}

/// Drops the values `walk` deleted so far from the RAM of every instance;
/// they stay pending until that succeeds.
async fn announce_pending(node: &Core, walk: &mut Walk) -> Result<()> {
    let pending = &mut walk.pending;
    if pending.is_empty() {
        return Ok(());
    }
    // A page read again after a failed step adds its members again.
    pending.sort_unstable();
    pending.dedup();
    let refs: Vec<&str> = pending.iter().map(String::as_str).collect();
    node.invalidate_ram_keys(&refs).await?;
    pending.clear();
    Ok(())
}

/// A deletion of several functions' values running in the background; see
/// [`CacheNode::clear_funcs_in_background`](crate::CacheNode::clear_funcs_in_background).
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

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<CachedFn<(u64,), String>>();
    is::<CachedFn<dyn KeyArgs + Send + Sync, String>>();
}

/// See [`CacheNode::clear_funcs`](crate::CacheNode::clear_funcs).
pub(crate) async fn clear_funcs(
    core: &Core,
    funcnames: &[&str],
    mut progress: impl FnMut(&str, Progress),
) -> Result<u64> {
    core.check_open()?;
    let mut total = 0;
    for name in funcnames {
        total += clear_function(core, name, |p| progress(name, p)).await?;
    }
    Ok(total)
}

/// See [`CacheNode::clear_funcs_in_background`](crate::CacheNode::clear_funcs_in_background)(crate::CacheNode::clear_funcs_in_background).
pub(crate) fn clear_funcs_in_background(core: &Core, funcnames: Vec<String>) -> BackgroundClear {
    let (tx, rx) = watch::channel(Progress::default());
    let node = core.clone();
    let task = tokio::spawn(async move {
        let mut done = Progress::default();
        for name in &funcnames {
            let before = done;
            let mut last = Progress::default();
            clear_function(&node, name, |p| {
                last = p;
                let _ = tx.send(Progress {
                    deleted: before.deleted + p.deleted,
                    foreign: before.foreign + p.foreign,
                    finished: false,
                });
            })
            .await?;
            done.deleted += last.deleted;
            done.foreign += last.foreign;
        }
        let _ = tx.send(Progress {
            finished: true,
            ..done
        });
        Ok(done.deleted)
    });
    BackgroundClear { progress: rx, task }
}

/// See [`CacheNode::key_sets`](crate::CacheNode::key_sets).
pub(crate) async fn key_sets(core: &Core) -> Result<Vec<(String, u64)>> {
    let shared = core
        .redis("key_sets")?
        .ok_or(Error::NoSharedLayer { op: "key_sets" })?;
    let keysets = KeySets::new(&core.config().keys);
    let mut out = Vec::new();
    for name in keysets.functions(shared).await? {
        let size = keysets.size(shared, &name).await?;
        out.push((name, size));
    }
    Ok(out)
}

/// See [`CacheNode::prune_key_sets`](crate::CacheNode::prune_key_sets).
pub(crate) async fn prune_key_sets(core: &Core) -> Result<u64> {
    let shared = core.redis("prune_key_sets")?.ok_or(Error::NoSharedLayer {
        op: "prune_key_sets",
    })?;
    let keysets = KeySets::new(&core.config().keys);
    let mut pruned = 0;
    for name in keysets.functions(shared).await? {
        pruned += keysets.prune(shared, &name).await?;
    }
    Ok(pruned)
}
