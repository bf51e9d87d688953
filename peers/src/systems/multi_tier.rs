//! `multi-tier-cache` 0.6: a moka L1 in each process in front of Redis, with
//! its cross-instance invalidation over Redis pub/sub turned on.
//!
//! Each node is built as the crate's README shows for a distributed
//! deployment: `CacheManager::new_with_invalidation(L1Cache, L2Cache, url,
//! InvalidationConfig)`, with the channel named after the run's namespace. That
//! constructor starts a subscriber task on its own pub/sub connection and
//! opens a publisher connection besides the L2 one.
//!
//! * `get` is `CacheManager::get_typed` (L1, then L2).
//! * `set` is `CacheManager::set_with_broadcast` (the README's
//!   "write-through: cache locally and broadcast in one call"): it writes L1
//!   and L2, then publishes an `Update` carrying the value, which every other
//!   instance writes into its own L1 **and into L2 again**.
//! * `invalidate` is `CacheManager::invalidate`: `DEL` in L2, removal from L1,
//!   and a `Remove` message on which every other instance removes the key
//!   from its L1 and deletes it from L2 again.
//!
//! What the crate does differently from cachenode, kept as it is:
//! * Invalidation is pub/sub only: a message lost while a subscriber is
//!   reconnecting (it waits 5 s between attempts) is never recovered, so that
//!   instance serves its old L1 value until the entry's TTL.
//! * Receivers replay `Update`/`Remove` on L2 too, so with N instances every
//!   write costs N-1 extra Redis writes, and a replay that arrives late can
//!   overwrite a newer value another instance wrote in between (or delete
//!   it).
//! * Messages carry no version or order: when two instances write one key at
//!   nearly the same time, their `SET`s and `PUBLISH`es can reach Redis in
//!   opposite orders, and the instances can keep different values (some the
//!   older one) until the TTL.
//! * The `Update` message carries the TTL in whole seconds: a TTL under one
//!   second makes receivers write the value with a zero TTL (gone at once in
//!   L1, and after 1 ms in L2), and fractions of a second are dropped.
//! * An L2 hit is promoted into L1 only one time in ten (the promotion
//!   frequency `new_with_invalidation` hard-codes for L2), unless other callers
//!   wait for the same key.
//! * L1 stores JSON bytes; every L1 hit decodes them (`serde_json`, the
//!   crate's default serializer, which is also the L2 format).
//! * The moka L1 is bounded by an entry count, not by bytes: the budget is
//!   converted with [`ASSUMED_ENTRY_BYTES`]. Its `time_to_idle` is set to the
//!   TTL so that idle expiry does not cut entries shorter than the TTL.
//! * Keys are not namespaced by the crate: the adapter prefixes them with
//!   `{namespace}:`.
//! * `CacheManager` has no shutdown call: the subscriber task stops when the
//!   node is dropped, and [`Node::settle`] is a no-op (the moka caches are not
//!   reachable from outside).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use multi_tier_cache::{
    CacheManager, CacheStrategy, InvalidationConfig, L1Cache, L2Cache, MokaCacheConfig,
};

use crate::system::{Env, Item, Kind, Node, System};

/// Bytes one L1 entry is assumed to take (key, JSON value, moka's own
/// bookkeeping), to turn [`Env::ram_capacity_bytes`] into the entry count the
/// crate's moka configuration takes: about what workload 6 measures for the
/// harness's items (some 630 bytes of process memory per entry).
pub const ASSUMED_ENTRY_BYTES: u64 = 640;

/// How long [`MultiTier::node`] waits for the new subscriber to be
/// registered on the channel.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// The `multi-tier-cache` crate, L1 (moka) + L2 (Redis) + pub/sub
/// invalidation.
pub struct MultiTier;

#[async_trait]
impl System for MultiTier {
    fn name(&self) -> &'static str {
        "multi-tier-cache"
    }

    fn kind(&self) -> Kind {
        Kind::TwoLayer
    }

    async fn node(&self, env: &Env) -> anyhow::Result<Arc<dyn Node>> {
        let l1 = L1Cache::new(MokaCacheConfig {
            max_capacity: (env.ram_capacity_bytes / ASSUMED_ENTRY_BYTES).max(1),
            time_to_live: env.ttl,
            time_to_idle: env.ttl,
        })
        .context("multi-tier-cache: L1")?;
        let l2 = L2Cache::with_url(&env.redis_url)
            .await
            .context("multi-tier-cache: L2 connection")?;
        let channel = format!("{}:invalidate", env.namespace);
        let config = InvalidationConfig {
            channel: channel.clone(),
            ..InvalidationConfig::default()
        };

        let client = redis::Client::open(env.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let before = subscribers(&mut conn, &channel).await?;
        let manager =
            CacheManager::new_with_invalidation(Arc::new(l1), Arc::new(l2), &env.redis_url, config)
                .await
                .context("multi-tier-cache: invalidation setup")?;
        // The subscriber connects in a task of its own: a message published
        // before it has subscribed would never reach this node.
        let deadline = Instant::now() + SUBSCRIBE_WAIT;
        while subscribers(&mut conn, &channel).await? <= before {
            anyhow::ensure!(
                Instant::now() < deadline,
                "multi-tier-cache: subscriber not on {channel} after {SUBSCRIBE_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        Ok(Arc::new(MultiTierNode {
            manager,
            prefix: format!("{}:", env.namespace),
            ttl: env.ttl,
        }))
    }
}

/// Subscribers of `channel` (`PUBSUB NUMSUB`).
async fn subscribers(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
) -> anyhow::Result<u64> {
    let (_, n): (String, u64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(conn)
        .await?;
    Ok(n)
}

/// One instance: its own L1, L2 connection, publisher and subscriber.
struct MultiTierNode {
    manager: CacheManager,
    prefix: String,
    ttl: Duration,
}

impl MultiTierNode {
    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl Node for MultiTierNode {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Item>> {
        Ok(self.manager.get_typed::<Item>(&self.key(key)).await?)
    }

    async fn set(&self, key: &str, item: &Item) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(item)?;
        self.manager
            .set_with_broadcast(
                &self.key(key),
                bytes.into(),
                CacheStrategy::Custom(self.ttl),
            )
            .await?;
        Ok(())
    }

    async fn invalidate(&self, key: &str) -> anyhow::Result<()> {
        Ok(self.manager.invalidate(&self.key(key)).await?)
    }
}
