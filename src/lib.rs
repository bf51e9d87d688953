//! # cachenode
//!
//! A two-layer cache for every process of a service: a fast **RAM layer** in
//! the process in front of a **Redis layer** that all instances share, kept
//! coherent across instances by an **invalidation bus**, with **function
//! caching** on top (as handles and attribute macros).
//!
//! ## Components
//! * **The node**, [`CacheNode`]: the handle a service holds (cheap to
//!   clone, `Send + Sync`), built with [`CacheNode::connect`] or
//!   [`CacheNode::builder`] ([`CacheNodeBuilder`]: every setting, its
//!   `DEFAULT_*` constant, the environment variables it reads). Its plain-key
//!   API reads RAM, then Redis, and fills RAM from a Redis hit; writes and
//!   deletes go to Redis first, then RAM. It owns its background tasks: the
//!   last handle's drop, or [`CacheNode::shutdown`], stops them.
//! * **The RAM layer**: a moka cache of decoded values, bounded in bytes,
//!   with fenced fills, so that a read racing an invalidation never puts the
//!   old value back ([`Layers`] chooses the layers of a handle's calls).
//! * **The Redis layer**: one server for all instances; every command runs
//!   under a timeout, the connection comes back by itself. Values are any
//!   serde type, encoded by the node's [`Codec`] ([`Bincode`] by default,
//!   `MsgPack` with the `msgpack` feature, or one of your own, chosen with
//!   [`CacheNodeBuilder::codec`]) in a small versioned envelope that records
//!   the codec and the type: a value written with another codec or read as
//!   another type is a counted miss, never a misread; one that does not
//!   decode is a miss, removed and counted, never a panic.
//! * **The bus**: every write or delete announces itself (a counter, a
//!   capped log and pub/sub, in one atomic step); each node's listener
//!   applies the announcements to its RAM, catches up from the log after a
//!   gap, and serves RAM only under a lease its checks renew. Once an
//!   invalidation returns `Ok`, no node serves the old value from RAM later
//!   than [`deletion_check_period`](CacheNodeBuilder::deletion_check_period)
//!   plus one round trip ([`BusHealth`] reports its state; optional HMAC
//!   signatures with [`bus_secret`](CacheNodeBuilder::bus_secret)).
//! * **Function caching**, [`CachedFn`] from [`CacheNode::func`]
//!   ([`FuncBuilder`]: every option of a cached function), or the
//!   [`cached`] / [`cached_for`] macros on a process-wide node
//!   ([`CacheNode::install_global`]): a call's key is a stable hash of its
//!   arguments ([`KeyArgs`], [`Args`]); a miss computes once per process,
//!   optionally once across instances ([`AtomicWrites`]), in the background
//!   ([`Lookup`]), refreshed periodically or warmed up at start
//!   ([`WarmupReport`]).
//! * **Key sets**: every key a function writes is recorded in its sharded
//!   key set in Redis, so deleting a function's values walks its own keys, never the
//!   keyspace ([`CachedFn::delete_all`], [`DeleteSome`] by argument,
//!   [`BackgroundDelete`], [`Progress`]); a sweep prunes expired members.
//! * **Narrower caches**: the **request scope** ([`with_request`], or the
//!   tower `RequestScopeLayer`) puts a request's path and query string in
//!   keys and holds [`RequestCached`] memos; [`MemoryFn`] caches in this
//!   process's RAM alone (no serde needed), [`OwnerToken`] ties entries to
//!   an owner value, [`ThreadLocalFn`] memoizes per thread.
//! * **Metrics** ([`metrics`]): every metric name, recorded through the
//!   `metrics` facade (Prometheus conventions, no cache key in a label);
//!   [`serve_metrics`](CacheNodeBuilder::serve_metrics) exports them.
//! * **The CLI**, the `cachenode` binary (feature `cli`): invalidate keys or
//!   functions, list and prune key sets, tail the bus, show a namespace's
//!   counters, over the public API only ([`CacheNode::tail_bus`],
//!   [`CacheNode::namespace_stats`], [`redact_url`]).
//!
//! ARCHITECTURE.md in the repository draws the modules and follows a cached
//! call and an invalidation through them; MIGRATING.md maps every method
//! and option of the Python AlanCache to its cachenode name.
//!
//! ## Example
//! ```no_run
//! use std::time::Duration;
//! use cachenode::{CacheNode, Layers, Ttl};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! struct User {
//!     name: String,
//! }
//!
//! async fn load_user(id: u64) -> Result<User, std::io::Error> {
//!     Ok(User { name: format!("user {id}") }) // the source of truth
//! }
//!
//! #[tokio::main]
//! async fn main() -> cachenode::Result<()> {
//!     // RAM in front of the Redis every instance shares.
//!     let node = CacheNode::builder()
//!         .redis_url("redis://127.0.0.1:6379")
//!         .namespace("myapp")
//!         .build()
//!         .await?;
//!
//!     // Plain keys: Redis first, then RAM; deletes reach every instance.
//!     let ada = User { name: "ada".into() };
//!     node.set("user:1", &ada, Ttl::After(Duration::from_secs(1800))).await?;
//!     let cached: Option<User> = node.get("user:1").await?;
//!     assert!(cached.is_some());
//!     node.delete("user:1").await?;
//!
//!     // A cached function: RAM, then Redis, then one computation.
//!     let get_user = node
//!         .func::<(u64,), User>("get_user")
//!         .ttl(Duration::from_secs(600))
//!         .build()?;
//!     let user = get_user.call(&(7,), || load_user(7)).await;
//!     println!("{user:?}");
//!     get_user.delete(&(7,)).await?; // this call's value, on every instance
//!     get_user.delete_all().await?; // every value of the function
//!
//!     // One layer per handle, and no Redis at all for a program without one.
//!     node.with_layers(Layers::Ram).set("session", &ada, Duration::from_secs(60)).await?;
//!     let _ram = CacheNode::builder().without_redis().build().await?;
//!
//!     println!("bus: {:?}", node.bus_health());
//!     node.shutdown().await;
//!     Ok(())
//! }
//! ```
#![deny(missing_docs)]

mod admin;
mod backoff;
mod bus;
mod clock;
mod codec;
mod config;
mod core;
mod error;
mod func;
mod keys;
mod keysets;
mod local;
mod memory_fn;
pub mod metrics;
mod node;
mod registry;
mod request_cached;
mod scope;
mod shared;
mod singleflight;
mod thread_local;
mod ttl;

pub use crate::core::{Layers, NodeStats};
pub use admin::{redact_url, BusTail, NamespaceStats};
pub use bus::{
    decode_channel_payload, BusHealth, BusMessage, Invalidation, MalformedMessage, RamKey,
    DEFAULT_LOG_LEN,
};
#[cfg(feature = "msgpack")]
pub use codec::MsgPack;
pub use codec::{Bincode, Codec, ValueRef, ValueSlot, MAX_DECODE_DEPTH, USER_CODEC_IDS};
#[doc(hidden)]
pub use config::FillHook;
pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DELETION_CHECK_PERIOD, DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_NAMESPACE, DEFAULT_OP_TIMEOUT, DEFAULT_RAM_CAPACITY_BYTES, DEFAULT_TTL,
};
pub use error::{Error, Result};
pub use func::atomic::{AtomicWrites, DEFAULT_LOCK_TTL, DEFAULT_WAIT_TIMEOUT};
pub use func::jobs::DEFAULT_JOB_TIMEOUT;
pub use func::key::{Args, ArgsInKey, ArgsWriter, KeyArgs};
pub use func::refresh::{
    WarmupReport, DEFAULT_MIN_REFRESH_PERIOD, DEFAULT_REFRESH_GRANULARITY, DEFAULT_WARMUP_TIMEOUT,
};
pub use func::{BackgroundDelete, CachedFn, Computed, DeleteSome, FuncBuilder, Lookup};
pub use keys::MAX_NAMESPACE_LEN;
pub use keysets::{Progress, DEFAULT_SWEEP_EVERY, SHARDS};
pub use memory_fn::{MemoryFn, OwnerToken};
pub use node::{global_node, CacheNode, CacheNodeBuilder};
pub use request_cached::{RequestCached, REQUEST_CACHE_MAX_AGE};
pub use scope::{current, with_request, RequestContext};
#[cfg(feature = "tower")]
pub use scope::{RequestScope, RequestScopeLayer};
pub use thread_local::{ThreadLocalFn, THREAD_LOCAL_CAPACITY};
pub use ttl::Ttl;

#[cfg(feature = "macros")]
pub use cachenode_macros::{cached, cached_for};

/// The examples of `README.md`, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;

/// The examples of `MIGRATING.md`, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../MIGRATING.md")]
struct MigratingExamples;

/// Entry points for the fuzz targets in `fuzz/`; not a public API.
#[doc(hidden)]
pub mod __fuzz {
    use serde::{Deserialize, Serialize};

    /// A struct the envelope target decodes (its corpus seeds are envelopes
    /// of it).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub struct Shape {
        pub id: u64,
        pub name: String,
        pub tags: Vec<String>,
        pub score: Option<f64>,
    }

    /// A recursive type the envelope target decodes too, so that nesting is
    /// explored (every decode is bounded by
    /// [`MAX_DECODE_DEPTH`](crate::MAX_DECODE_DEPTH)).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[allow(missing_docs)]
    pub enum Nest {
        End,
        More(Box<Nest>),
        Many(Vec<Nest>),
        Link { next: Option<Box<Nest>> },
    }

    /// Decodes `data` as an envelope holding several value types, and as the
    /// payload of a valid envelope of each (so that the payload decoder is
    /// reached past the type fingerprint), with every built-in codec (typed,
    /// as a node runs them) and the bincode codec through the object-safe
    /// trait (as a node runs a user's codec).
    pub fn decode_envelope(data: &[u8]) {
        use std::sync::Arc;

        use crate::codec::{Codec, NodeCodec};

        fn as_envelope_of<T: serde::de::DeserializeOwned>(codec: &NodeCodec, data: &[u8]) {
            let limit = crate::config::DEFAULT_MAX_VALUE_BYTES;
            let _ = crate::codec::unseal::<T>(codec, data, limit);
            let framed = [&crate::codec::header::<T>(codec.format_id(), 0)[..], data].concat();
            let _ = crate::codec::unseal::<T>(codec, &framed, limit);
        }
        /// Bincode, through the trait.
        struct Erased;
        impl Codec for Erased {
            fn format_id(&self) -> u8 {
                crate::Bincode::FORMAT_ID
            }
            fn encode(&self, value: crate::ValueRef<'_>, out: &mut Vec<u8>) -> Result<(), String> {
                crate::Bincode.encode(value, out)
            }
            fn decode(
                &self,
                bytes: &[u8],
                limit: usize,
                slot: crate::ValueSlot<'_>,
            ) -> Result<(), String> {
                crate::Bincode.decode(bytes, limit, slot)
            }
        }
        let codecs = [
            NodeCodec::new(Arc::new(crate::Bincode)),
            NodeCodec::new(Arc::new(Erased)),
            #[cfg(feature = "msgpack")]
            NodeCodec::new(Arc::new(crate::MsgPack)),
        ];
        for codec in &codecs {
            as_envelope_of::<String>(codec, data);
            as_envelope_of::<Vec<u64>>(codec, data);
            as_envelope_of::<Shape>(codec, data);
            as_envelope_of::<Nest>(codec, data);
        }
    }

    /// `data` opened as the envelope of a `T` written with `codec`, under the
    /// default value limit: the value, or the reason it is refused (the
    /// metric label).
    ///
    /// # Errors
    /// The reason, as [`crate::metrics::DECODE_FAILURES_TOTAL`] labels it.
    pub fn unseal_with<T: serde::de::DeserializeOwned>(
        codec: impl crate::Codec,
        data: &[u8],
    ) -> Result<T, &'static str> {
        let codec = crate::codec::NodeCodec::new(std::sync::Arc::new(codec));
        let limit = crate::config::DEFAULT_MAX_VALUE_BYTES;
        crate::codec::unseal::<T>(&codec, data, limit)
            .map(|(_, value)| value)
            .map_err(|e| e.label())
    }

    /// A valid envelope of `value` encoded with `codec`, never expiring (for
    /// corpus seeds and tests).
    ///
    /// # Errors
    /// As a write of the value.
    pub fn seal_with<T: serde::Serialize>(
        codec: impl crate::Codec,
        value: &T,
    ) -> crate::Result<Vec<u8>> {
        let codec = crate::codec::NodeCodec::new(std::sync::Arc::new(codec));
        crate::codec::seal(&codec, value, 0, usize::MAX)
    }

    /// Decodes `data` as a channel payload, and as a bare message body.
    pub fn decode_bus(data: &[u8]) {
        let _ = crate::bus::decode_channel_payload(data);
        if let Some(rest) = data.get(1..) {
            let _ = crate::bus::decode_channel_payload(&[b"1:", rest].concat());
        }
    }
}

/// Support for the attribute macros; not a public API.
#[doc(hidden)]
pub mod __private {
    use std::future::Future;

    use serde::de::DeserializeOwned;
    pub use serde::Serialize;

    use crate::func::Prepared;
    use crate::{ArgsWriter, CachedFn, Error, KeyArgs, Result};

    /// Arguments written by a closure (what the macros generate).
    pub struct FnArgs<F>(pub F);

    impl<F: Fn(&mut ArgsWriter) -> Result<()>> KeyArgs for FnArgs<F> {
        fn write_args(&self, out: &mut ArgsWriter) -> Result<()> {
            (self.0)(out)
        }
    }

    /// A cached function's value must be `Clone`.
    #[diagnostic::on_unimplemented(
        message = "the value type `{Self}` of a cached function must be `Clone`",
        label = "a hit returns a clone of the cached value",
        note = "derive or implement `Clone` for `{Self}`, or return an `Arc` of it"
    )]
    pub trait CloneValue: Clone {}
    impl<T: Clone> CloneValue for T {}

    /// A cached function's value must be serde.
    #[diagnostic::on_unimplemented(
        message = "the value type `{Self}` of a cached function must be `Serialize` and `Deserialize`",
        label = "values are stored in Redis",
        note = "derive `serde::Serialize` and `serde::Deserialize` for `{Self}`"
    )]
    pub trait SerdeValue: Serialize + DeserializeOwned {}
    impl<T: Serialize + DeserializeOwned> SerdeValue for T {}

    /// A cached function's value is shared between tasks.
    #[diagnostic::on_unimplemented(
        message = "the value type `{Self}` of a cached function must be `Send + Sync + 'static`",
        label = "values are shared between tasks and threads"
    )]
    pub trait SharedValue: Send + Sync + 'static {}
    impl<T: Send + Sync + 'static> SharedValue for T {}

    /// Does nothing: the macro names it, spanned at the return type, so
    /// that a value type that cannot be cached gives one error there
    /// ([`prepare`] and [`call`], spanned there too, have the same bounds:
    /// the compiler reports the same unmet bound at the same place once).
    pub fn cacheable<V: CloneValue + SerdeValue + SharedValue>() {}

    /// The first half of a call: decides from the arguments, borrowed for
    /// this call only, whether and under which key it is cached, and reads
    /// RAM.
    pub fn prepare<V>(h: &CachedFn<dyn KeyArgs, V>, args: &dyn KeyArgs) -> Prepared<V>
    where
        V: CloneValue + SerdeValue + SharedValue,
    {
        h.prepare_args(args)
    }

    /// The second half of a call: the value, from the cache or `compute`.
    pub fn call<V, F, Fut, E>(
        h: &'static CachedFn<dyn KeyArgs, V>,
        prepared: Prepared<V>,
        compute: F,
    ) -> impl Future<Output = core::result::Result<V, E>>
    where
        V: CloneValue + SerdeValue + SharedValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = core::result::Result<V, E>>,
    {
        h.call_prepared(prepared, compute)
    }

    /// The Redis key of a call (`handle`: `None` until a node is
    /// available).
    pub fn cache_key<V>(
        handle: Option<&CachedFn<dyn KeyArgs, V>>,
        args: &dyn KeyArgs,
    ) -> Result<String> {
        let h = handle.ok_or(Error::NoSharedLayer { op: "cache_key" })?;
        h.cache_key_args(args)
    }

    /// Deletes the value of a call everywhere. The key is built from `args`
    /// now: the future borrows nothing, so it is `Send` and `'static`.
    pub fn delete<V>(
        handle: Option<&'static CachedFn<dyn KeyArgs, V>>,
        args: &dyn KeyArgs,
    ) -> impl Future<Output = Result<bool>> + Send + 'static {
        let pending = handle.map(|h| h.delete_args(args));
        async move {
            match pending {
                Some(pending) => pending.await,
                None => Ok(false),
            }
        }
    }

    /// Deletes every value of a function everywhere.
    pub async fn delete_all<V>(handle: Option<&'static CachedFn<dyn KeyArgs, V>>) -> Result<u64> {
        match handle {
            Some(h) => h.delete_all().await,
            None => Ok(0),
        }
    }

    /// Drops the value of a call from the RAM of every instance (Redis
    /// keeps it); the future borrows nothing, as [`delete`]'s.
    pub fn invalidate<V>(
        handle: Option<&'static CachedFn<dyn KeyArgs, V>>,
        args: &dyn KeyArgs,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let pending = handle.map(|h| h.invalidate_args(args));
        async move {
            match pending {
                Some(pending) => pending.await,
                None => Ok(()),
            }
        }
    }

    /// Drops every value of a function from the RAM of every instance.
    pub async fn invalidate_all<V>(
        handle: Option<&'static CachedFn<dyn KeyArgs, V>>,
    ) -> Result<()> {
        match handle {
            Some(h) => h.invalidate_all().await,
            None => Ok(()),
        }
    }

    /// The cache name of a function: its module path and name (empty when
    /// the path already ends with it), with `.` for `::` (a key segment may
    /// not contain `:`).
    pub fn funcname(module_path: &str, name: &str) -> String {
        let path = module_path.replace("::", ".");
        if name.is_empty() {
            path
        } else {
            format!("{path}.{name}")
        }
    }

    /// Logs (once per call site is enough: the handle is retried) why a
    /// macro's handle could not be built.
    pub fn report_build_error(funcname: &str, error: &crate::Error) {
        tracing::error!(func = funcname, %error, "cached function cannot be built; calls run uncached");
    }

    /// Logs, once per function, that a cached function was called before
    /// any node was installed ([`CacheNode::install_global`](crate::CacheNode::install_global), or its
    /// `node = ...` gave none): its calls run uncached, and its deletions
    /// do nothing, until one is.
    pub fn report_no_node(funcname: &str) {
        static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        if warned.iter().any(|w| w == funcname) {
            return;
        }
        warned.push(funcname.to_owned());
        tracing::warn!(
            func = funcname,
            "cached function called with no cache node (call CacheNode::install_global, \
             or give the macro `node = ...`); it runs uncached, and deleting or \
             invalidating its values does nothing, until there is one"
        );
    }

    /// Tells, from the type alone, whether a function's return type `R` is
    /// a `Result` (see [`CacheOutcome`]): `Probe::<R>::IS_RESULT` is this
    /// inherent constant when `R` is one, whatever it is spelled
    /// (an alias, `std::result::Result`, `io::Result`, `anyhow::Result`)...
    pub struct Probe<R: ?Sized>(std::marker::PhantomData<R>);

    impl<T, E> Probe<core::result::Result<T, E>> {
        /// `R` is a `Result`: only its `Ok` values are cached.
        pub const IS_RESULT: bool = true;
    }

    /// ...and otherwise this trait's constant (inherent items win over
    /// trait items, so the fallback only applies to other types).
    pub trait NotResult {
        /// `R` is a plain value: cached as it is.
        const IS_RESULT: bool = false;
    }

    impl<R: ?Sized> NotResult for Probe<R> {}

    /// The outcome shape `Probe` chose: `Shape<true>` for a `Result`,
    /// `Shape<false>` for a plain value.
    pub struct Shape<const IS_RESULT: bool>;

    /// How a function's return type `R` reaches the cache: as a
    /// `Result<Value, Error>` whose `Ok` values alone are cached.
    pub trait CacheOutcome<R> {
        /// The type of the cached values.
        type Value;
        /// The function's errors, returned and never cached.
        type Error;
        /// `R` as a `Result`.
        fn split(r: R) -> core::result::Result<Self::Value, Self::Error>;
        /// Back to `R`.
        fn join(r: core::result::Result<Self::Value, Self::Error>) -> R;
    }

    impl<R> CacheOutcome<R> for Shape<false> {
        type Value = R;
        type Error = std::convert::Infallible;
        fn split(r: R) -> core::result::Result<R, Self::Error> {
            Ok(r)
        }
        fn join(r: core::result::Result<R, Self::Error>) -> R {
            match r {
                Ok(v) => v,
                Err(never) => match never {},
            }
        }
    }

    impl<T, E> CacheOutcome<core::result::Result<T, E>> for Shape<true> {
        type Value = T;
        type Error = E;
        fn split(r: core::result::Result<T, E>) -> core::result::Result<T, E> {
            r
        }
        fn join(r: core::result::Result<T, E>) -> core::result::Result<T, E> {
            r
        }
    }
}
