//! The bare Redis part: `GET` and `SET … PX` of bincode bytes on one
//! `ConnectionManager`, the raw round trip cachenode's Redis layer wraps.
//! No RAM layer, no envelope, no invalidation bus.

use std::sync::Arc;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::system::{Env, Item, Kind, Node, System};

/// Raw `GET` / `SET PX` / `DEL` with bincode values.
pub struct BareRedis;

/// `GET` / `SET PX` / `DEL` of bincode bytes on one connection; also the
/// node of [`RedisCacheAio`](super::redis_cache_aio::RedisCacheAio), whose
/// connection answers `GET` from its client-side cache.
pub(super) struct BareRedisNode {
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
}

impl BareRedisNode {
    /// A node on `conn`, with the namespace and TTL of `env`.
    pub(super) fn new(conn: ConnectionManager, env: &Env) -> Self {
        BareRedisNode {
            conn,
            prefix: env.namespace.clone(),
            ttl_ms: u64::try_from(env.ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }
}

#[async_trait]
impl System for BareRedis {
    fn name(&self) -> &'static str {
        "bare-redis"
    }

    fn kind(&self) -> Kind {
        Kind::RedisOnly
    }

    async fn node(&self, env: &Env) -> anyhow::Result<Arc<dyn Node>> {
        let client = redis::Client::open(env.redis_url.as_str())?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Arc::new(BareRedisNode::new(conn, env)))
    }
}

#[async_trait]
impl Node for BareRedisNode {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Item>> {
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
        let _: () = self.conn.clone().del(self.key(key)).await?;
        Ok(())
    }
}
