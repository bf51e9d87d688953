//! The `cached` crate's `AsyncRedisCache` (4.1): the store behind
//! `#[io_cached(map_error = …, ty = "AsyncRedisCache<…>")]`, used directly.
//!
//! One node is one `AsyncRedisCache<String, Item>` on its own multiplexed
//! connection, built with `AsyncRedisCache::builder(prefix)`, the run's
//! namespace as the crate's `namespace` (its keys are
//! `{namespace}:items:{key}`, with any `:` inside the namespace or prefix
//! percent-escaped by the crate) and the run's TTL (`PSETEX`).
//!
//! * `get` is `async_cache_get` (one `GET`).
//! * `set` is `async_cache_set_ref`, the write `#[io_cached]` itself prefers
//!   (one `PSETEX`; `async_cache_set` would also `GET` the previous value).
//! * `invalidate` is `async_cache_delete` (one `DEL`).
//!
//! There is no RAM layer, so there is nothing to keep coherent across
//! instances: every read is a Redis round trip. Values are MessagePack
//! (`[value, version]`), the crate's fixed format. The crate's client-side
//! caching (RESP3 tracking, behind its `redis_async_cache` feature) is not
//! enabled: this row stands for the Redis-only store.

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use cached::{AsyncRedisCache, ConcurrentCachedAsync, SerializeCachedAsync};

use crate::system::{Env, Item, Kind, Node, System};

/// The crate's key prefix for the values of this benchmark (what
/// `#[io_cached]` users name after the function).
const PREFIX: &str = "items";

/// The `cached` crate's async Redis store.
pub struct CachedRedis;

#[async_trait]
impl System for CachedRedis {
    fn name(&self) -> &'static str {
        "cached AsyncRedisCache"
    }

    fn kind(&self) -> Kind {
        Kind::RedisOnly
    }

    async fn node(&self, env: &Env) -> anyhow::Result<Arc<dyn Node>> {
        let cache = AsyncRedisCache::<String, Item>::builder(PREFIX)
            .namespace(&env.namespace)
            .ttl(env.ttl)
            .connection_string(&env.redis_url)
            .build()
            .await
            .context("cached: AsyncRedisCache")?;
        Ok(Arc::new(CachedNode { cache }))
    }
}

/// One instance: one multiplexed connection.
struct CachedNode {
    cache: AsyncRedisCache<String, Item>,
}

#[async_trait]
impl Node for CachedNode {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Item>> {
        Ok(self.cache.async_cache_get(&key.to_owned()).await?)
    }

    async fn set(&self, key: &str, item: &Item) -> anyhow::Result<()> {
        Ok(self
            .cache
            .async_cache_set_ref(&key.to_owned(), item)
            .await?)
    }

    async fn invalidate(&self, key: &str) -> anyhow::Result<()> {
        self.cache.async_cache_delete(&key.to_owned()).await?;
        Ok(())
    }
}
