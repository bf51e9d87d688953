//! A plain Redis cache as most services write one: `GET` and `SET … EX` of
//! serde_json text, no RAM layer. Every read is a Redis round trip, so there
//! is nothing to keep coherent across instances.

use std::sync::Arc;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::system::{Env, Item, Kind, Node, System};

/// `GET` / `SET EX` / `DEL` with JSON values.
pub struct PlainRedis;

struct PlainRedisNode {
    conn: ConnectionManager,
    prefix: String,
    ttl_s: u64,
}

impl PlainRedisNode {
    fn key(&self, key: &str) -> String {
        format!("{}:{key}", self.prefix)
    }
}

#[async_trait]
impl System for PlainRedis {
    fn name(&self) -> &'static str {
        "plain-redis"
    }

    fn kind(&self) -> Kind {
        Kind::RedisOnly
    }

    async fn node(&self, env: &Env) -> anyhow::Result<Arc<dyn Node>> {
        let client = redis::Client::open(env.redis_url.as_str())?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Arc::new(PlainRedisNode {
            conn,
            prefix: env.namespace.clone(),
            // `EX` takes whole seconds; a sub-second TTL still lives one.
            ttl_s: env.ttl.as_secs().max(1),
        }))
    }
}

#[async_trait]
impl Node for PlainRedisNode {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Item>> {
        let text: Option<String> = self.conn.clone().get(self.key(key)).await?;
        Ok(text.map(|t| serde_json::from_str(&t)).transpose()?)
    }

    async fn set(&self, key: &str, item: &Item) -> anyhow::Result<()> {
        let text = serde_json::to_string(item)?;
        let _: () = self
            .conn
            .clone()
            .set_ex(self.key(key), text, self.ttl_s)
            .await?;
        Ok(())
    }

    async fn invalidate(&self, key: &str) -> anyhow::Result<()> {
        let _: () = self.conn.clone().del(self.key(key)).await?;
        Ok(())
    }
}
