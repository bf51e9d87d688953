//! The redis crate's own client-side caching (`cache-aio`): a RESP3
//! connection with `CLIENT TRACKING ON`, whose cache keeps the raw replies of
//! `GET` and drops a key when the server pushes an invalidation for it.
//! Values are bincode bytes, decoded on every read (hits included), since
//! the cache holds replies, not decoded values.

use std::num::NonZeroUsize;
use std::sync::Arc;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::caching::{CacheConfig, CacheMode};
use redis::AsyncCommands;

use crate::system::{Env, Item, Kind, Node, System};

/// Bytes assumed per cached reply when turning the byte budget of the
/// [`Env`] into the key count the crate's cache is bounded by: the key
/// (twice: Redis key and command), the reply and the LRU's bookkeeping. The
/// cache allocates its table for that many keys up front.
const ASSUMED_ENTRY_BYTES: u64 = 200;

/// `ConnectionManager` with a client-side cache, RESP3.
pub struct RedisCacheAio;

struct CacheAioNode {
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
}

impl CacheAioNode {
    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }
}

/// `url` with `protocol=resp3`, which client-side caching needs.
fn resp3_url(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}protocol=resp3")
}

#[async_trait]
impl System for RedisCacheAio {
    fn name(&self) -> &'static str {
        "redis-cache-aio"
    }

    fn kind(&self) -> Kind {
        Kind::TwoLayer
    }

    async fn node(&self, env: &Env) -> anyhow::Result<Arc<dyn Node>> {
        let client = redis::Client::open(resp3_url(&env.redis_url))?;
        let entries = (env.ram_capacity_bytes / ASSUMED_ENTRY_BYTES).max(1);
        let size = NonZeroUsize::new(usize::try_from(entries).unwrap_or(usize::MAX))
            .unwrap_or(NonZeroUsize::MIN);
        let cache = CacheConfig::new()
            .set_mode(CacheMode::All)
            .set_size(size)
            .set_default_client_ttl(env.ttl);
        let config = ConnectionManagerConfig::new().set_cache_config(cache);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Arc::new(CacheAioNode {
            conn,
            prefix: env.namespace.clone(),
            ttl_ms: u64::try_from(env.ttl.as_millis()).unwrap_or(u64::MAX),
        }))
    }
}

#[async_trait]
impl Node for CacheAioNode {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Item>> {
        // Answered from the client-side cache when the reply is there.
        let bytes: Option<Vec<u8>> = self.conn.clone().get(self.key(key)).await?;
        let Some(bytes) = bytes else { return Ok(None) };
        let (item, _) = bincode::serde::decode_from_slice(&bytes, bincode::config::standard())?;
        Ok(Some(item))
    }

    async fn set(&self, key: &str, item: &Item) -> anyhow::Result<()> {
        let bytes = bincode::serde::encode_to_vec(item, bincode::config::standard())?;
        let _: () = self
            .conn
            .clone()
            .pset_ex(self.key(key), bytes, self.ttl_ms)
            .await?;
        Ok(())
    }

    async fn invalidate(&self, key: &str) -> anyhow::Result<()> {
        // The server pushes the invalidation to every connection tracking
        // the key, which drops it from its cache.
        let _: () = self.conn.clone().del(self.key(key)).await?;
        Ok(())
    }
}
