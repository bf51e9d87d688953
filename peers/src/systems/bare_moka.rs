//! The bare RAM part: a moka cache alone, as the floor under every RAM layer.
//! One process only: `invalidate` is local and other nodes never hear of it.

use std::sync::Arc;

use async_trait::async_trait;
use moka::sync::Cache;

use crate::system::{Env, Item, Kind, Node, System};

/// A `moka::sync::Cache<String, Arc<Item>>` bounded in bytes with a
/// per-cache time to live: the same moka flavour cachenode's RAM layer uses.
pub struct BareMoka;

struct MokaNode {
    cache: Cache<String, Arc<Item>>,
}

/// The weight of one entry: its key, the struct and the heap bytes of its
/// name. Cheap to compute, so inserts are not charged for an encode.
fn weight(key: &str, item: &Item) -> u32 {
    let bytes = key.len() + std::mem::size_of::<Item>() + item.name.len();
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[async_trait]
impl System for BareMoka {
    fn name(&self) -> &'static str {
        "moka"
    }

    fn kind(&self) -> Kind {
        Kind::RamOnly
    }

    async fn node(&self, env: &Env) -> anyhow::Result<Arc<dyn Node>> {
        let cache = Cache::builder()
            .max_capacity(env.ram_capacity_bytes)
            .weigher(|k: &String, v: &Arc<Item>| weight(k, v))
            .time_to_live(env.ttl)
            .build();
        Ok(Arc::new(MokaNode { cache }))
    }
}

#[async_trait]
impl Node for MokaNode {
    async fn get(&self, key: &str) -> anyhow::Result<Option<Item>> {
        Ok(self.cache.get(key).map(|v| Item::clone(&v)))
    }

    async fn set(&self, key: &str, item: &Item) -> anyhow::Result<()> {
        self.cache.insert(key.to_owned(), Arc::new(item.clone()));
        Ok(())
    }

    async fn invalidate(&self, key: &str) -> anyhow::Result<()> {
        self.cache.invalidate(key);
        Ok(())
    }

    async fn settle(&self) {
        self.cache.run_pending_tasks();
    }

    async fn shutdown(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }
}
