//! `amalgam-cache` 0.4 (a Rust port of .NET FusionCache): a typed L1 in each
//! process, Redis as L2, and its Redis backplane for distributed
//! invalidation.
//!
//! Each node is built as the crate's `examples/redis.rs` builds one:
//! `RedisDistributedCache` (L2, with its atomic marker store),
//! `JsonSerializer`, `RedisBackplane` and `RedisDistributedLocker`, each with
//! its own connection, plus `key_prefix("{namespace}:")` and default entry
//! options with the run's TTL. The backplane uses a channel named after the
//! namespace (`connect_with_channel`), so that runs never hear each other;
//! the node is built with `try_build_ready`, which waits for the backplane's
//! subscription to be acknowledged. (The locker only serves `get_or_set`
//! misses, which the harness does not use.)
//!
//! * `get` is `Cache::try_get` (L1, then L2 with the clear markers in the
//!   same round trip).
//! * `set` is `Cache::set`: L1, then L2 (`SET … PX`), then a backplane `Set`
//!   notification; an instance holding the key in L1 re-reads it from L2 in
//!   the background (FusionCache's passive update) and keeps serving its old
//!   value until that read lands.
//! * `invalidate` is `Cache::remove`: L1, L2 `DEL`, and a backplane `Remove`
//!   on which other instances drop the key from L1.
//!
//! What the crate does differently from cachenode, kept at its defaults:
//! * Backplane notifications are sent in the background
//!   (`allow_background_backplane_operations` defaults to true, as in
//!   FusionCache): `set` and `remove` return before the other instances are
//!   told.
//! * Under the default (best-effort) reconciliation, a notification lost
//!   during a disconnect is not recovered: the instance serves its L1 value
//!   until the entry's own deadline.
//! * L2 values are amalgam's framed snapshots (JSON value plus timestamps and
//!   tags) under `v2:{namespace}:{key}` (the wire version is prefixed by
//!   default).
//! * L1 is bounded by an entry count, not by bytes: the budget is converted
//!   with [`ASSUMED_ENTRY_BYTES`].
//! * Reads return a clone of the cached `Item`.

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;

use amalgam::provider::{
    Backplane, DistributedCache, DistributedLocker, DistributedSerializer, JsonSerializer,
    RedisBackplane, RedisDistributedCache, RedisDistributedLocker,
};
use amalgam::{Cache, EntryOptions};

use crate::system::{Env, Item, Kind, Node, System};

/// Bytes one L1 entry is assumed to take (key, decoded value, entry
/// metadata), to turn [`Env::ram_capacity_bytes`] into the entry count the
/// crate's `max_capacity` takes: about what workload 6 measures for the
/// harness's items (some 470 bytes of process memory per entry).
pub const ASSUMED_ENTRY_BYTES: u64 = 480;

/// The `amalgam-cache` crate: L1 + Redis L2 + Redis backplane.
pub struct Amalgam;

#[async_trait]
impl System for Amalgam {
    fn name(&self) -> &'static str {
        "amalgam-cache"
    }

    fn kind(&self) -> Kind {
        Kind::TwoLayer
    }

    async fn node(&self, env: &Env) -> anyhow::Result<Arc<dyn Node>> {
        let url = env.redis_url.as_str();
        let l2 = RedisDistributedCache::connect(url)
            .await
            .context("amalgam: L2 connection")?;
        let backplane =
            RedisBackplane::connect_with_channel(url, format!("{}:amalgam", env.namespace))
                .await
                .context("amalgam: backplane connection")?;
        let locker = RedisDistributedLocker::connect(url)
            .await
            .context("amalgam: locker connection")?;
        let cache = Cache::<Item>::builder()
            .key_prefix(format!("{}:", env.namespace))
            .default_options(EntryOptions::new(env.ttl))
            .max_capacity((env.ram_capacity_bytes / ASSUMED_ENTRY_BYTES).max(1))
            .distributed(Arc::new(l2) as Arc<dyn DistributedCache>)
            .serializer(Arc::new(JsonSerializer) as Arc<dyn DistributedSerializer<Item>>)
            .backplane(Arc::new(backplane) as Arc<dyn Backplane>)
            .distributed_locker(Arc::new(locker) as Arc<dyn DistributedLocker>)
            .try_build_ready()
            .await
            .context("amalgam: build")?;
        Ok(Arc::new(AmalgamNode { cache }))
    }
}

/// One instance: its own L1, L2, backplane and locker connections.
struct AmalgamNode {
    cache: Cache<Item>,
}

#[async_trait]
impl Node for AmalgamNode {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Item>> {
        Ok(self.cache.try_get(key).await?)
    }

    async fn set(&self, key: &str, item: &Item) -> anyhow::Result<()> {
        Ok(self.cache.set(key, item.clone()).await?)
    }

    async fn invalidate(&self, key: &str) -> anyhow::Result<()> {
        Ok(self.cache.remove(key).await?)
    }

    async fn settle(&self) {
        let _ = self.cache.run_pending_tasks().await;
    }

    async fn shutdown(&self) {
        let _ = self.cache.shutdown().await;
    }
}
