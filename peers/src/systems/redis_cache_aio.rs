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

use super::bare_redis::BareRedisNode;
use crate::system::{Env, Kind, Node, System};

/// Bytes assumed per cached reply when turning the byte budget of the
/// [`Env`] into the key count the crate's cache is bounded by: the key
/// (twice: Redis key and command), the reply and the LRU's bookkeeping. The
/// cache allocates its table for that many keys up front.
const ASSUMED_ENTRY_BYTES: u64 = 200;

/// `ConnectionManager` with a client-side cache, RESP3.
pub struct RedisCacheAio;

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
        // GET is answered from the client-side cache when the reply is
        // there; DEL makes the server push the invalidation to every
        // connection tracking the key.
        Ok(Arc::new(BareRedisNode::new(conn, env)))
    }
}
