//! The attribute macros of [cachenode](https://docs.rs/cachenode):
//! `#[cached(...)]` and `#[cached_for(...)]` over async functions and
//! methods. Use them through the `cachenode` crate, which re-exports them;
//! their documentation is here, on [`macro@cached`].
//!
//! This file holds the entry points and their documentation; `options.rs`
//! parses and checks the attribute's options, `expand.rs` generates the
//! cached function and its introspection.

use proc_macro::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{ImplItemFn, Meta, Token};

mod expand;
mod options;

use options::{Flavor, Options};

/// Caches an async function's (or method's) value in cachenode's two
/// layers: this process's RAM, then Redis, then the function itself (run
/// once per process for concurrent callers of one key).
///
/// ```no_run
/// use std::time::Duration;
/// use cachenode::{cached, CacheNode};
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] pub struct User { name: String }
/// # pub struct Db;
/// # #[derive(Debug)] pub struct AppError;
/// # impl Db { async fn load(&self, _id: u64) -> Result<User, AppError> { todo!() } }
///
/// #[cached(ttl = Duration::from_secs(1800), ignore = [db])]
/// async fn get_user(db: &Db, user_id: u64) -> Result<User, AppError> {
///     db.load(user_id).await
/// }
///
/// # async fn run(db: Db) -> cachenode::Result<()> {
/// let node = CacheNode::connect("redis://127.0.0.1:6379").await?;
/// node.install_global()?; // the node of every function without `node = ...`
/// let user = get_user(&db, 42).await; // RAM, then Redis, then the function
/// get_user::invalidate(&42).await?; // drop this call's value from every instance's RAM
/// get_user::delete(&42).await?; // remove it from Redis and every instance's RAM
/// get_user::delete_all().await?; // every value of get_user, everywhere
/// # Ok(()) }
/// # fn main() {}
/// ```
///
/// # What is cached, under which key
///
/// * **The value.** A function whose return type is a `Result` caches
///   only its `Ok` values: its errors are returned and never cached. That is
///   decided from the type, not its spelling: an alias
///   (`type AppResult<T> = Result<T, AppError>`), `std::result::Result`,
///   `io::Result` and `anyhow::Result` are all `Result`s, and a type of
///   one's own that is only *named* `Result` is a plain value. Any other
///   return type is cached as it is. `None` (and `()`) is not cached unless
///   `cache_none`. The cached type must be `Clone` (a hit returns a
///   clone), `Serialize + Deserialize` (it is stored in Redis) and
///   `Send + Sync + 'static`.
/// * **The key**: the function's cache name, then its arguments, each
///   encoded with its name, except those in `ignore` (and, for a method,
///   the receiver `self` unless `ignore_self`). Every argument in the key
///   must be `Serialize`.
/// * **The cache name** is `crate.module.function`: the module path with
///   `.` for `::` (for a method, `crate.module.method`: the type is not part
///   of it, so two types of one module with a cached method of one name
///   share a cache unless one of them has a `name`). It names the keys in
///   Redis and the `function` label of the metrics, so **moving or renaming
///   the function changes its keys** (its old values are no longer read and
///   expire) **and its metric labels**; `name = "..."` pins it.
/// * **The node.** Functions use the process-wide node
///   (`CacheNode::install_global`) unless given `node = expr`. Until a node
///   is available, calls run uncached, invalidations find nothing and
///   `cache_key` is an `Error::NoSharedLayer`. The function's handle is
///   built once, by the first call that finds a node, and kept for the
///   life of the process: with `node = self.node`, the first receiver's
///   node serves every receiver. When the handle cannot be built (an option
///   the node refuses, such as a prefix with `|`), the error is logged and
///   calls run uncached.
///
/// # Options
///
/// Flags are written `flag`, `flag = true` or `flag = false`.
///
/// | Option | Value | Effect |
/// |---|---|---|
/// | `ttl = expr` | `impl Into<cachenode::Ttl>`: a `Duration`, `Ttl::Never`, `Ttl::Default` | How long values live; default: the node's default TTL. `#[cached]` only: [`macro@cached_for`] takes units. |
/// | `name = "..."` | a string literal | The cache name, in place of `crate.module.function`. |
/// | `node = expr` | a `CacheNode` (e.g. `self.node`, `NODE.get().unwrap()`) | The node to use instead of the process-wide one; evaluated (in a method, with its `self`) until the handle is built. |
/// | `unless = closure` | `Fn(&A1, &A2, ..) -> bool` | Called before each call with **a reference to each argument**, in order (ignored ones included, `self` not); `true` runs the function without the cache (nothing read, nothing written). |
/// | `ignore = [a, b]` | argument names | Left out of the key (they need not be `Serialize`); also spelled `ignore_args`; `ignore = [self]` is `ignore_self`. |
/// | `ignore_self` | flag | Leaves a method's receiver out of the key. |
/// | `layers = ..` | `Both` (default), `Ram`, `Redis` | The layers that cache the values: `Ram` is this process's RAM only (nothing in Redis), `Redis` is Redis only (nothing in RAM). |
/// | `key_prefix = ..` | a string literal, or a `Fn() -> impl Display` called for each call | A prefix in the key, after the cache name (e.g. a tenant or a schema version). |
/// | `key_args = ..` | `Hashed` (default), `Each`, `Omitted` | How the arguments form the key: one hash of them all; one hashed part per argument, so that `handle().delete_some(..)` can find values by some of their arguments; or not at all (every call shares one value). |
/// | `cache_none` | flag | Caches `None` (and `()`) values too. |
/// | `on_computed = closure` | `Fn(&str, &V) -> Computed<V>` | Called with the Redis key and each freshly computed value: keep it, replace it, or do not cache it. |
/// | `key_with_request_path` | flag | The current request's path is part of the key (inside a request scope). |
/// | `key_with_query_string` | flag | The current request's query string is part of the key. |
///
/// An unknown option is a compile error that lists these; AlanCache's
/// names (`expire_in`, `local_ram_cache_only`, `cache_key_with_full_args`,
/// ...) are errors that name the option replacing them (see `MIGRATING.md`).
///
/// ```no_run
/// use cachenode::cached;
///
/// // `unless` sees every argument by reference, `fresh` included although
/// // it is not part of the key: `price(7, true)` skips the cache.
/// #[cached(unless = |_id: &u64, fresh: &bool| *fresh, ignore = [fresh], name = "shop.price")]
/// async fn price(id: u64, fresh: bool) -> u64 {
/// #   let _ = fresh;
///     id * 100
/// }
/// # fn main() {}
/// ```
///
/// # Generated items
///
/// A free function `f` keeps its name and signature (it now caches), and a
/// module `f` beside it (same visibility) holds:
///
/// | Item | What it does |
/// |---|---|
/// | `f::uncached(args..)` | The function's body, without the cache. |
/// | `f::handle() -> Option<&'static CachedFn<dyn KeyArgs, V>>` | The cache handle (`key_set_size`, `delete_some`, ...); `None` until a node is available. |
/// | `f::ttl() -> Ttl` | The configured TTL (`Ttl::Default`: the node's default). |
/// | `f::cache_key(&a..) -> cachenode::Result<String>` | The Redis key of the call with these arguments (the ones in the key, by reference). |
/// | `f::invalidate(&a..)` | Drops that call's value from the RAM of every instance; Redis keeps it, and the next call reads it from there. |
/// | `f::invalidate_all()` | Drops every value of the function from the RAM of every instance. |
/// | `f::delete(&a..)` | Deletes that call's value from Redis and from the RAM of every instance; resolves to whether it existed. |
/// | `f::delete_all()` | Deletes every value of the function, in Redis and the RAM of every instance; resolves to how many Redis keys were deleted. |
///
/// `invalidate*` and `delete*` return
/// `impl Future<Output = cachenode::Result<..>> + Send + 'static`: the key
/// is built before the future, which borrows nothing, so it can be awaited
/// in an axum handler or given to `tokio::spawn`. The cached function's
/// own future is `Send` when its arguments are.
///
/// A **method** has no module of its own, so the same items are associated
/// functions beside it, named after it: for `get_user`,
/// `get_user_uncached(&self, ..)`, `get_user_handle(&self)`,
/// `get_user_ttl()`, `get_user_cache_key(&self, &a..)`,
/// `get_user_invalidate(&self, &a..)`, `get_user_invalidate_all(&self)`,
/// `get_user_delete(&self, &a..)` and `get_user_delete_all(&self)`.
/// They take `&self` because the key may hold it and the node may come from
/// it.
///
/// ```no_run
/// use cachenode::{cached_for, CacheNode};
///
/// pub struct Repo {
///     node: CacheNode,
/// }
///
/// impl Repo {
///     #[cached_for(minutes = 10, ignore_self, node = self.node)]
///     pub async fn user_name(&self, id: u64) -> Result<String, std::io::Error> {
///         Ok(format!("user-{id}"))
///     }
/// }
///
/// # async fn run(repo: Repo) -> cachenode::Result<()> {
/// let name = repo.user_name(7).await;
/// let key = repo.user_name_cache_key(&7)?;
/// repo.user_name_invalidate(&7).await?;
/// repo.user_name_delete(&7).await?;
/// repo.user_name_delete_all().await?;
/// # Ok(()) }
/// # fn main() {}
/// ```
///
/// # Limits and errors
///
/// The function must be `async`, without type or const generics (its
/// handle is one static; lifetimes are fine), and name each argument
/// plainly (no patterns). Arguments in the key have ASCII names. A method
/// must be in an inherent `impl` (the generated items are associated
/// functions), not generic over types. A value type that is not `Clone`,
/// an argument in the key that is not `Serialize`, or an unknown option
/// is one compile error that says what to change.
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(args, item, Flavor::Cached)
}

/// [`macro@cached`] with the expiry given in units: `weeks`, `days`,
/// `hours`, `minutes`, `seconds` (summed; at least one is needed), in place
/// of `ttl`.
///
/// Every other option, the generated items and the rules are those of
/// [`macro@cached`].
///
/// ```no_run
/// use cachenode::cached_for;
/// # #[derive(Clone, serde::Serialize, serde::Deserialize)] pub struct Rates;
///
/// #[cached_for(hours = 1, minutes = 30, name = "fx.rates")]
/// async fn rates(currency: String) -> Option<Rates> {
/// #   let _ = currency;
///     // ...
/// #   None
/// }
///
/// # async fn run() -> cachenode::Result<()> {
/// assert_eq!(rates::ttl(), cachenode::Ttl::After(std::time::Duration::from_secs(5400)));
/// rates::delete(&"EUR".to_string()).await?;
/// # Ok(()) }
/// # fn main() {}
/// ```
#[proc_macro_attribute]
pub fn cached_for(args: TokenStream, item: TokenStream) -> TokenStream {
    entry(args, item, Flavor::CachedFor)
}

/// Parses the options and the function, and expands them (or gives the
/// first error as a compile error).
fn entry(args: TokenStream, item: TokenStream, flavor: Flavor) -> TokenStream {
    let result = Punctuated::<Meta, Token![,]>::parse_terminated
        .parse(args)
        .and_then(|metas| Options::parse(metas, flavor))
        .and_then(|opts| {
            let func: ImplItemFn = syn::parse(item)?;
            expand::expand(opts, func)
        });
    match result {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}
