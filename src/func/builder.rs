//! Configuring a cached function: [`FuncBuilder`], every option with its
//! default, the checks [`build`](FuncBuilder::build)
//! makes (a bad combination is refused there, with a clear error), and the
//! registration of a build function for async compute, refresh and warm-up.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::atomic::AtomicWrites;
use super::key::{self, ArgsInKey, KeyArgs};
use super::{CachedFn, FnInner};
use crate::clock::unix_millis;
use crate::codec;
use crate::core::{Core, Layers};
use crate::keysets::KeySets;
use crate::singleflight::Flights;
use crate::{Error, Result, Ttl};

/// What [`FuncBuilder::on_computed`] decides for a computed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Computed<V> {
    /// Cache the value as computed.
    Keep,
    /// Cache (and return) this value instead.
    Replace(V),
    /// Return the value without caching it.
    DontCache,
}

pub(crate) type Unless<A> = Arc<dyn Fn(&A) -> bool + Send + Sync>;
pub(crate) type PrefixFn<A> = Arc<dyn Fn(&A) -> String + Send + Sync>;
pub(crate) type OnComputed<V> = Arc<dyn Fn(&str, &V) -> Computed<V> + Send + Sync>;

pub(crate) enum Prefix<A: ?Sized> {
    Static(String),
    Dynamic(PrefixFn<A>),
    Computed(Arc<dyn Fn() -> String + Send + Sync>),
}

/// The options of a cached function, as its builder set them.
pub(crate) struct Options<A: ?Sized, V> {
    pub(crate) ttl: Ttl,
    pub(crate) unless: Option<Unless<A>>,
    pub(crate) layers: Layers,
    pub(crate) prefix: Prefix<A>,
    pub(crate) args_mode: ArgsInKey,
    pub(crate) ignore: Vec<String>,
    /// The arguments the keys hold, when known (a tuple's, or those the
    /// macro declares), for checking partial-deletion filters.
    pub(crate) declared: Option<Vec<key::DeclaredArg>>,
    pub(crate) cache_none: bool,
    pub(crate) on_computed: Option<OnComputed<V>>,
    pub(crate) with_request_path: bool,
    pub(crate) with_query_string: bool,
    pub(crate) atomic: Option<AtomicWrites>,
    pub(crate) lock_ttl: Duration,
    pub(crate) wait_timeout: Duration,
    /// The job timeout, when values are built asynchronously.
    pub(crate) async_compute: Option<Duration>,
    /// The registered build function, for async compute, refresh, warm-up.
    pub(crate) rebuild: Option<RebuildSpec<A>>,
    pub(crate) refresh_every: Option<Duration>,
    pub(crate) warmup: Vec<Vec<u8>>,
    pub(crate) warmup_decode: Option<WarmupDecode<A>>,
    pub(crate) warm_up_timeout: Duration,
    /// How far this handle's reads of the host clock are shifted, in ms
    /// (tests only: a host whose clock is off).
    pub(crate) clock_skew_ms: i64,
}

pub(crate) type EncodeArgs<A> = Arc<dyn Fn(&A) -> Option<Vec<u8>> + Send + Sync>;
pub(crate) type WarmupDecode<A> = Arc<dyn Fn(&[u8]) -> Option<Box<A>> + Send + Sync>;

/// A function registered to build values from encoded arguments.
pub(crate) struct RebuildSpec<A: ?Sized> {
    pub(crate) encode: EncodeArgs<A>,
    pub(crate) build: crate::registry::JobFn,
}

/// Configures a cached function; made by [`CacheNode::func`](crate::CacheNode::func).
#[must_use = "a builder does nothing until .build()"]
pub struct FuncBuilder<A: ?Sized, V> {
    node: Core,
    name: String,
    opts: Options<A, V>,
}

impl<A: KeyArgs + ?Sized, V> FuncBuilder<A, V> {
    /// A cached function named `name` on `node`, every option at its
    /// default; see [`CacheNode::func`](crate::CacheNode::func).
    pub(crate) fn new(node: Core, name: &str) -> Self {
        FuncBuilder {
            node,
            name: name.to_owned(),
            opts: Options {
                ttl: Ttl::Default,
                unless: None,
                layers: Layers::Both,
                prefix: Prefix::Static(String::new()),
                args_mode: ArgsInKey::Hashed,
                ignore: Vec::new(),
                declared: key::tuple_args::<A>(),
                cache_none: false,
                on_computed: None,
                with_request_path: false,
                with_query_string: false,
                atomic: None,
                lock_ttl: crate::DEFAULT_LOCK_TTL,
                wait_timeout: crate::DEFAULT_WAIT_TIMEOUT,
                async_compute: None,
                rebuild: None,
                refresh_every: None,
                warmup: Vec::new(),
                warmup_decode: None,
                warm_up_timeout: crate::DEFAULT_WARMUP_TIMEOUT,
                clock_skew_ms: 0,
            },
        }
    }
}

impl<A: KeyArgs + ?Sized, V> FuncBuilder<A, V> {
    /// How long values live: a `Duration`, [`Ttl::Never`], or
    /// [`Ttl::Default`] (the node's default TTL, the default).
    pub fn ttl(mut self, ttl: impl Into<Ttl>) -> Self {
        self.opts.ttl = ttl.into();
        self
    }

    /// Skips caching for calls whose arguments make `predicate` true: the
    /// function runs and its value is neither read from nor written to the
    /// cache.
    pub fn unless(mut self, predicate: impl Fn(&A) -> bool + Send + Sync + 'static) -> Self {
        self.opts.unless = Some(Arc::new(predicate));
        self
    }

    /// Which layers cache the values (default [`Layers::Both`]):
    /// [`Layers::Ram`] for this process's RAM only, [`Layers::Redis`] for
    /// Redis only.
    pub fn layers(mut self, layers: Layers) -> Self {
        self.opts.layers = layers;
        self
    }

    /// A fixed prefix for the keys (after the function name). May not
    /// contain `|` or `;`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.opts.prefix = Prefix::Static(prefix.into());
        self
    }

    /// A prefix computed per call from the arguments (e.g. a tenant id);
    /// `|` and `;` in it are replaced by `_`.
    pub fn key_prefix_from_args(
        mut self,
        prefix: impl Fn(&A) -> String + Send + Sync + 'static,
    ) -> Self {
        self.opts.prefix = Prefix::Dynamic(Arc::new(prefix));
        self
    }

    /// A prefix computed per call without looking at the arguments (a
    /// tenant from the request, a deployment's version); `|` and `;` become `_`.
    pub fn key_prefix_from(mut self, prefix: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.opts.prefix = Prefix::Computed(Arc::new(prefix));
        self
    }

    /// How the arguments form the key (default [`ArgsInKey::Hashed`]);
    /// [`ArgsInKey::Each`] is what [`CachedFn::delete_some`] needs to find
    /// values by some arguments.
    pub fn key_args(mut self, mode: ArgsInKey) -> Self {
        self.opts.args_mode = mode;
        self
    }

    /// Arguments left out of the key, by name (tuple arguments are named
    /// `0`, `1`, …; [`Args`](key::Args) and the macro use real names).
    pub fn ignore_args<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.opts.ignore.extend(names.into_iter().map(Into::into));
        self
    }

    /// Declares the arguments the function writes into its keys, by name,
    /// with the type of each when it can be named
    /// ([`std::any::type_name`]), so that a partial deletion whose filter
    /// names another argument or gives a value of another type is refused
    /// (what the macros call with the function's parameters).
    #[doc(hidden)]
    pub fn declared_args(mut self, args: &[(&str, Option<&'static str>)]) -> Self {
        self.opts.declared = Some(
            args.iter()
                .map(|&(name, ty)| key::DeclaredArg {
                    name: name.to_owned(),
                    ty,
                })
                .collect(),
        );
        self
    }

    /// Leaves an argument named `self` out of the key.
    pub fn ignore_self(self) -> Self {
        self.ignore_args(["self"])
    }

    /// Whether a `None` (or `()`) value is cached (default false: the
    /// function runs again next time).
    pub fn cache_none(mut self, on: bool) -> Self {
        self.opts.cache_none = on;
        self
    }

    /// Called with the call's Redis key (as [`CachedFn::cache_key`] gives
    /// it) and each freshly computed value before it is
    /// cached: it may keep it, replace it or veto caching.
    pub fn on_computed(
        mut self,
        callback: impl Fn(&str, &V) -> Computed<V> + Send + Sync + 'static,
    ) -> Self {
        self.opts.on_computed = Some(Arc::new(callback));
        self
    }

    /// Puts the current request's path in the key (see
    /// [`with_request`](crate::with_request)); outside a request it counts
    /// as empty.
    pub fn key_with_request_path(mut self, on: bool) -> Self {
        self.opts.with_request_path = on;
        self
    }

    /// Puts the current request's query string in the key.
    pub fn key_with_query_string(mut self, on: bool) -> Self {
        self.opts.with_query_string = on;
        self
    }

    /// Coordinates computation across instances: see [`AtomicWrites`].
    /// Needs Redis: ignored for
    /// RAM-only functions.
    pub fn atomic_writes(mut self, mode: AtomicWrites) -> Self {
        self.opts.atomic = Some(mode);
        self
    }

    /// TTL of the [`AtomicWrites::AtMostOnce`] lock (default
    /// [`DEFAULT_LOCK_TTL`](crate::DEFAULT_LOCK_TTL)); the holder
    /// extends it every third of it, so this is how long a dead holder
    /// delays the others.
    pub fn atomic_lock_ttl(mut self, ttl: Duration) -> Self {
        self.opts.lock_ttl = ttl;
        self
    }

    /// How long a caller waits for another instance's
    /// [`AtomicWrites::AtMostOnce`] computation (default
    /// [`DEFAULT_WAIT_TIMEOUT`](crate::DEFAULT_WAIT_TIMEOUT)); past
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
    /// with too short a period; `cache_none` with async compute).
    pub fn build(self) -> Result<CachedFn<A, V>> {
        let warmup_calls = self.opts.warmup.clone();
        let handle = self.build_handle()?;
        handle.register(warmup_calls)?;
        Ok(handle)
    }

    fn build_handle(self) -> Result<CachedFn<A, V>> {
        key::check_funcname(&self.name)?;
        if let Prefix::Static(p) = &self.opts.prefix {
            key::check_prefix(p)?;
        }
        if self.opts.async_compute.is_some() && self.opts.cache_none {
            return Err(Error::Config(format!(
                "{:?}: cache_none cannot be combined with async_compute",
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
                    "{:?}: refresh_every({period:?}) is below the node's minimum refresh period {min:?}",
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
        // The value is the node's to store: its codec. The arguments are
        // cachenode's own bytes (the job, the refresh record): bincode.
        let value_codec = self.node.codec().clone();
        let job: crate::registry::JobFn = Arc::new(move |args: Vec<u8>, ttl_ms: u64| {
            let build = build.clone();
            let value_codec = value_codec.clone();
            Box::pin(async move {
                let args: A = crate::codec::bincode_decode(&args, limit)
                    .map_err(|e| format!("arguments do not decode: {e}"))?;
                let value = build(args).await.map_err(|e| e.to_string())?;
                let expires_at_ms = if ttl_ms == 0 {
                    0
                } else {
                    unix_millis().saturating_add(ttl_ms)
                };
                codec::seal(&value_codec, &value, expires_at_ms, limit).map_err(|e| e.to_string())
            })
        });
        self.node.jobs().register(&self.name, job.clone());
        self.opts.rebuild = Some(RebuildSpec {
            encode: Arc::new(|a: &A| {
                let mut out = Vec::new();
                crate::codec::bincode_encode_into(a, &mut out).ok()?;
                Some(out)
            }),
            build: job,
        });
        self
    }

    /// Builds values in the background: a
    /// lookup of a cold key with [`CachedFn::get_or_build`] enqueues a build
    /// job and answers [`Lookup::BeingBuilt`](crate::Lookup::BeingBuilt) at once; a node with the
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
            .get_or_insert(crate::DEFAULT_JOB_TIMEOUT);
        self.computed_by(build)
    }

    /// Recomputes every value of the function in the background every
    /// `period`, on one builder instance
    /// per period; readers keep the old value until the new one is written.
    /// Needs [`computed_by`](Self::computed_by) (or `async_compute`), a
    /// period of at least the node's
    /// [`min_refresh_period`](crate::CacheNodeBuilder::min_refresh_period),
    /// and no request path or query string in keys. Values whose arguments
    /// are known are refreshed: those written by calls of this handle,
    /// build jobs and warm-up.
    pub fn refresh_every(mut self, period: Duration) -> Self {
        self.opts.refresh_every = Some(period);
        self
    }

    /// Computes the values of these calls when
    /// [`CacheNode::warm_up`](crate::CacheNode::warm_up) runs (at start, so
    /// the first callers find them). Needs
    /// [`computed_by`](Self::computed_by) and no request path or query
    /// string in keys.
    pub fn warm_up_with(mut self, calls: impl IntoIterator<Item = A>) -> Self {
        self.opts.warmup_decode = Some(Arc::new(|bytes: &[u8]| {
            crate::codec::bincode_decode::<A>(bytes, usize::MAX)
                .ok()
                .map(Box::new)
        }));
        for a in calls {
            let mut out = Vec::new();
            if crate::codec::bincode_encode_into(&a, &mut out).is_ok() {
                self.opts.warmup.push(out);
            }
        }
        self
    }

    /// Bounds this function's warm-up (default
    /// [`DEFAULT_WARMUP_TIMEOUT`](crate::DEFAULT_WARMUP_TIMEOUT)).
    pub fn warm_up_timeout(mut self, timeout: Duration) -> Self {
        self.opts.warm_up_timeout = timeout;
        self
    }

    /// How long a build job may run before another builder takes it over
    /// (default [`DEFAULT_JOB_TIMEOUT`](crate::DEFAULT_JOB_TIMEOUT)).
    pub fn async_compute_job_timeout(mut self, timeout: Duration) -> Self {
        self.opts.async_compute = Some(timeout);
        self
    }
}
