//! Function caching: [`CachedFn`] handles, which the `#[cached]` /
//! `#[cached_for]` macros build too.
//!
//! ```no_run
//! # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct User;
//! # #[derive(Debug)] struct AppError;
//! # async fn fetch_user(id: u64) -> Result<User, AppError> { Ok(User) }
//! # async fn f(node: cachenode::CacheNode) -> cachenode::Result<()> {
//! use std::time::Duration;
//! let get_user = node
//!     .func::<(u64,), User>("get_user")
//!     .ttl(Duration::from_secs(1800))
//!     .build()?;
//! let user_id = 42;
//! let user = get_user.call(&(user_id,), || fetch_user(user_id)).await;
//! get_user.delete(&(user_id,)).await?; // this call's value, everywhere
//! get_user.delete_all().await?;        // every value of get_user, everywhere
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
//!
//! The room, one concern per file: this file holds the handle
//! ([`CachedFn`]: its name, its options, how a call's key is built, and its
//! registration for refresh and warm-up); `builder` the options and their
//! checks; `call` the call path; `clear` deletions; `key` the arguments and
//! their stable hashing; `atomic` the cross-instance computation rules
//! (locks and versioned writes); `jobs` the build queue of async compute;
//! `refresh` periodic refresh and warm-up. All of them hold the node's
//! [core](crate::core), never the public handle.

pub(crate) mod atomic;
mod builder;
mod call;
mod clear;
pub(crate) mod jobs;
pub(crate) mod key;
pub(crate) mod refresh;

pub use builder::{Computed, FuncBuilder};
pub use call::Lookup;
pub(crate) use clear::{
    delete_functions, delete_functions_in_background, key_sets, prune_key_sets,
};
pub use clear::{BackgroundDelete, DeleteSome};

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::unix_millis;
use crate::core::Core;
use crate::keysets::KeySets;
use crate::local::Group;
use crate::singleflight::Flights;
use crate::{Error, Result, Ttl};
use builder::{Options, Prefix};
use key::KeyArgs;

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
            .field("ttl", &self.inner.opts.ttl)
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

/// What [`CachedFn::prepare`] found out about a call before it runs.
#[doc(hidden)]
pub struct Prepared<V>(Step<V>);

impl<V> std::fmt::Debug for Prepared<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Step::Uncached => f.write_str("Prepared::Uncached"),
            Step::Hit(_) => f.write_str("Prepared::Hit"),
            Step::Miss(key) => f.debug_tuple("Prepared::Miss").field(key).finish(),
        }
    }
}

enum Step<V> {
    /// Not cached: compute.
    Uncached,
    /// Found in RAM.
    Hit(Arc<V>),
    /// Not in RAM: this key is read from Redis, else computed.
    Miss(CallKey),
}

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

    /// The configured TTL ([`Ttl::Default`]: the node's default).
    pub fn ttl(&self) -> Ttl {
        self.inner.opts.ttl
    }

    /// The Redis key of the call with `args`: `{namespace}:f:{name}:{suffix}`,
    /// the suffix built from the arguments as [`key_args`](crate::FuncBuilder::key_args) says.
    ///
    /// # Errors
    /// When an argument cannot be encoded.
    pub fn cache_key(&self, args: &A) -> Result<String> {
        let key = self.key(args)?;
        Ok(self.redis_key(&key))
    }

    /// The keys of the call with `args`.
    fn key(&self, args: &A) -> Result<CallKey> {
        let prefix = self.dynamic_prefix(args);
        key::with_key_buf(|buf| {
            self.write_ram_key(args, prefix.as_deref(), buf)?;
            Ok(self.call_key(buf, Some(args)))
        })
    }

    /// The key prefix computed from `args`, when the function has one.
    fn dynamic_prefix(&self, args: &A) -> Option<String> {
        match &self.inner.opts.prefix {
            Prefix::Dynamic(f) => Some(key::sanitize_prefix(f(args))),
            _ => None,
        }
    }

    /// The owned keys of a call whose RAM key is in `buf` (written by
    /// [`write_ram_key`](Self::write_ram_key)); `args`, when typed, are
    /// recorded for refresh.
    fn call_key(&self, buf: &key::KeyBuf, args: Option<&A>) -> CallKey {
        let o = &self.inner.opts;
        let args_record = match (args, o.refresh_every, &o.rebuild) {
            (Some(args), Some(_), Some(r)) => (r.encode)(args),
            _ => None,
        };
        CallKey {
            args_record,
            suffix: buf.key[self.inner.ram_prefix.len()..].to_owned(),
            ram: buf.key.clone(),
        }
    }

    /// The keys of a call from any arguments object (no dynamic prefix,
    /// no recorded arguments).
    fn key_from<K: KeyArgs + ?Sized>(&self, args: &K) -> Result<CallKey> {
        key::with_key_buf(|buf| {
            self.write_ram_key(args, None, buf)?;
            Ok(self.call_key(buf, None))
        })
    }

    /// Writes the RAM key of a call, `\0f{func}:{suffix}`, into `buf.key`,
    /// encoding its arguments into `buf.args`; `dynamic_prefix` is the
    /// prefix computed from `A`, when the function has one. Allocates
    /// nothing once `buf` has grown to the size of such keys (but for a
    /// prefix computed per call).
    #[inline]
    fn write_ram_key<K: KeyArgs + ?Sized>(
        &self,
        args: &K,
        dynamic_prefix: Option<&str>,
        buf: &mut key::KeyBuf,
    ) -> Result<()> {
        let o = &self.inner.opts;
        buf.args.keep_for(o.args_mode, &o.ignore);
        args.write_args(&mut buf.args)?;
        let computed;
        let prefix: &str = match (&o.prefix, dynamic_prefix) {
            (Prefix::Static(p), _) => p,
            (Prefix::Computed(f), _) => {
                computed = key::sanitize_prefix(f());
                &computed
            }
            (Prefix::Dynamic(_), Some(p)) => p,
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
            key::request_hash(path, query)
        });
        buf.key.push_str(&self.inner.ram_prefix);
        key::push_suffix(
            &mut buf.key,
            prefix,
            request,
            o.args_mode,
            &buf.args,
            &o.ignore,
        );
        Ok(())
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
            ttl: self.resolved_ttl(),
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
                timeout: o.warm_up_timeout,
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

    /// How long this function's values live, the node's default resolved.
    fn resolved_ttl(&self) -> Option<Duration> {
        let default = self.inner.node.config().default_ttl;
        self.inner.opts.ttl.resolve(default)
    }
}

/// Keys through arguments objects of any lifetime, for the attribute
/// macros (see [`CachedFn::delete_args`]). Not a public API.
#[doc(hidden)]
impl<V> CachedFn<dyn KeyArgs, V> {
    /// [`cache_key`](CachedFn::cache_key) of any arguments object.
    pub fn cache_key_args(&self, args: &dyn KeyArgs) -> Result<String> {
        Ok(self.redis_key(&self.key_from(args)?))
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<CachedFn<(u64,), String>>();
    is::<CachedFn<dyn KeyArgs + Send + Sync, String>>();
}
