//! The systems under test, one module each.

mod amalgam;
mod bare_moka;
mod bare_redis;
mod cached_crate;
mod cachenode;
mod multi_tier;
mod plain_redis;
mod redis_cache_aio;

use std::sync::Arc;

use crate::system::System;

/// Every system, cachenode first.
pub fn all() -> Vec<Arc<dyn System>> {
    vec![
        Arc::new(cachenode::Cachenode),
        Arc::new(bare_moka::BareMoka),
        Arc::new(bare_redis::BareRedis),
        Arc::new(plain_redis::PlainRedis),
        Arc::new(redis_cache_aio::RedisCacheAio),
        Arc::new(cached_crate::CachedRedis),
        Arc::new(multi_tier::MultiTier),
        Arc::new(amalgam::Amalgam),
    ]
}
