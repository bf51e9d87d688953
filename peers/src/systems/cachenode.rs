//! cachenode itself: a RAM layer (moka, bounded in bytes) in front of Redis,
//! with the invalidation bus keeping the RAM of every node coherent.

use std::sync::Arc;

use async_trait::async_trait;
use cachenode::{CacheNode, Ttl};

use crate::system::{Env, Item, Kind, Node, System};

/// cachenode with its defaults, except the namespace, RAM budget and TTL
/// taken from the [`Env`].
pub struct Cachenode;

/// One cachenode node: the handle a service process would hold.
struct CachenodeNode {
    node: CacheNode,
    ttl: Ttl,
}

#[async_trait]
impl System for Cachenode {
    fn name(&self) -> &'static str {
        "cachenode"
    }

    fn kind(&self) -> Kind {
        Kind::TwoLayer
    }

    async fn node(&self, env: &Env) -> anyhow::Result<Arc<dyn Node>> {
        let node = CacheNode::builder()
            .redis_url(env.redis_url.as_str())
            .namespace(env.namespace.as_str())
            .ram_capacity_bytes(env.ram_capacity_bytes)
            .default_ttl(env.ttl)
            .build()
            .await?;
        Ok(Arc::new(CachenodeNode {
            node,
            ttl: Ttl::from(env.ttl),
        }))
    }
}

#[async_trait]
impl Node for CachenodeNode {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Item>> {
        Ok(self.node.get::<Item>(key).await?)
    }

    async fn set(&self, key: &str, item: &Item) -> anyhow::Result<()> {
        Ok(self.node.set(key, item, self.ttl).await?)
    }

    async fn fill(&self, key: &str, item: &Item) -> anyhow::Result<()> {
        // SET NX, no bus message: an absent key is in no node's RAM.
        self.node.fill(key, item, self.ttl).await?;
        Ok(())
    }

    async fn invalidate(&self, key: &str) -> anyhow::Result<()> {
        // Redis first, then this node's RAM; the bus tells the other nodes.
        self.node.delete(key).await?;
        Ok(())
    }

    async fn settle(&self) {
        // `stats` runs moka's pending maintenance before counting.
        let _ = self.node.stats();
    }

    async fn shutdown(&self) {
        self.node.shutdown().await;
    }
}
