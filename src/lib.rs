//! # cachenode
//!
//! A two-layer cache for every process of a service: a fast **RAM layer** in
//! the process (moka, bounded in bytes, holding decoded values) in front of a
//! **shared layer** in Redis that all instances see.
//!
//! * Reads try RAM, then Redis; a Redis hit fills RAM for no longer than the
//!   value's remaining Redis TTL.
//! * Writes go to Redis and then RAM; deletes to both.
//! * Values are any serde type, stored in Redis in a small versioned envelope
//!   that records their type ([`codec`]); a value read as another type is a
//!   counted miss, never a misread, and a value that does not decode is a
//!   miss, removed and counted, never a panic.
//! * Every Redis call has a timeout; a node reconnects by itself when Redis
//!   comes back.
//!
//! ```no_run
//! # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct User { name: String }
//! # async fn f() -> cachenode::Result<()> {
//! use std::time::Duration;
//! use cachenode::{CacheNode, Ttl};
//!
//! let node = CacheNode::connect("redis://127.0.0.1:6379").await?;
//! let user = User { name: "ada".into() };
//! node.set("user:1", &user, Ttl::After(Duration::from_secs(1800))).await?;
//! let u: Option<User> = node.get("user:1").await?;
//! node.has("user:1").await?;
//! node.delete("user:1").await?;
//! let both: Vec<Option<User>> = node.get_many(&["a", "b"]).await?;
//! node.delete_many(&["a", "b"]).await?;
//! node.clear_all().await?; // this namespace only
//!
//! // One layer per call: the seed's local_ram_cache_only / shared_redis_cache_only.
//! node.ram_only().set("session", &user, Duration::from_secs(60)).await?;
//!
//! // No Redis at all, for a program that runs without a server:
//! let ram = CacheNode::builder().ram_only().build().await?;
//! # Ok(()) }
//! ```
//!
//! ## Modules
//! * [`node`]: the [`CacheNode`] handle and its public API.
//! * `local`: the RAM layer, with fenced fills so a read racing an
//!   invalidation never re-inserts the old value.
//! * `shared`: the Redis layer (connection, timeouts, batched commands).
//! * [`codec`]: the value envelope and the [`Codec`] trait.
//! * [`metrics`]: every metric name.
//! * [`config`]: the builder and the environment variables.
#![deny(missing_docs)]

pub mod admin;
mod backoff;
pub mod bus;
mod clock;
pub mod codec;
pub mod config;
mod core;
mod error;
pub mod func;
mod keys;
pub mod keysets;
mod local;
mod memory_fn;
pub mod metrics;
pub mod node;
mod registry;
pub mod scope;
mod shared;
mod singleflight;
mod thread_local;
mod ttl;

pub use crate::core::{Layers, NodeStats};
pub use admin::{BusTail, NamespaceStats};
pub use bus::{BusHealth, Invalidation};
pub use codec::{Bincode, Codec};
pub use error::{Error, Result};
pub use func::atomic::AtomicWrites;
pub use func::key::{Args, ArgsWriter, KeyArgs};
pub use func::refresh::WarmupReport;
pub use func::{BackgroundClear, CachedFn, ClearSome, Computed, FuncBuilder, Lookup};
pub use keysets::Progress;
pub use memory_fn::{MemoryFn, OwnerToken};
pub use node::CacheNodeBuilder;
pub use node::{global_node, CacheNode};
pub use scope::{RequestCached, RequestContext};
pub use thread_local::ThreadLocalFn;
pub use ttl::Ttl;

#[cfg(feature = "macros")]
pub use cachenode_macros::{cached, cached_for};

/// Entry points for the fuzz targets in `fuzz/`; not a public API.
#[doc(hidden)]
pub mod __fuzz {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Shape {
        id: u64,
        name: String,
        tags: Vec<String>,
        score: Option<f64>,
    }

    /// Decodes `data` as an envelope holding several value types, and as the
    /// payload of a valid envelope of each (so that the payload decoder is
    /// reached past the type fingerprint).
    pub fn decode_envelope(data: &[u8]) {
        fn as_envelope_of<T: serde::de::DeserializeOwned>(data: &[u8]) {
            let limit = crate::config::DEFAULT_MAX_VALUE_BYTES;
            let _ = crate::codec::unseal::<_, T>(&crate::Bincode, data, limit);
            let framed = [&crate::codec::header::<crate::Bincode, T>(0)[..], data].concat();
            let _ = crate::codec::unseal::<_, T>(&crate::Bincode, &framed, limit);
        }
        as_envelope_of::<String>(data);
        as_envelope_of::<Vec<u64>>(data);
        as_envelope_of::<Shape>(data);
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
    use crate::{ArgsWriter, KeyArgs, Result};

    /// Arguments written by a closure (what the macros generate).
    pub struct FnArgs<F>(pub F);

    impl<F: Fn(&mut ArgsWriter) -> Result<()>> KeyArgs for FnArgs<F> {
        fn write_args(&self, out: &mut ArgsWriter) -> Result<()> {
            (self.0)(out)
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
