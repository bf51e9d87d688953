//! A node's settings: their defaults (the `DEFAULT_*` constants the crate
//! root re-exports) and their resolved form, [`Config`], which the
//! [builder](crate::CacheNodeBuilder) makes and the core reads.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::codec::NodeCodec;
use crate::keys::Keys;
use crate::shared::SharedConfig;
use crate::Ttl;

/// Default namespace (key prefix) in Redis.
pub const DEFAULT_NAMESPACE: &str = "cachenode";
/// Default RAM budget: 64 MiB.
pub const DEFAULT_RAM_CAPACITY_BYTES: u64 = 64 << 20;
/// Default TTL of values stored with [`Ttl::Default`]: 5 minutes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Default bound on one Redis command.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Default bound on establishing a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default largest encoded value accepted on write and read: 16 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 16 << 20;
/// Default period of the bus's deletion check: the upper bound, past one Redis round
/// trip, on how long a lost invalidation can leave a stale RAM entry.
pub const DEFAULT_DELETION_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// A hook run on a Redis hit between reading the value and putting it in
/// RAM; tests use it to drive the read/invalidate race deterministically.
#[doc(hidden)]
pub type FillHook = Arc<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Hook(pub(crate) FillHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// The resolved settings of a node.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) redis: Option<SharedConfig>,
    pub(crate) keys: Keys,
    pub(crate) ram_capacity_bytes: Option<u64>,
    pub(crate) default_ttl: Ttl,
    pub(crate) ram_max_ttl: Option<Duration>,
    pub(crate) max_value_bytes: usize,
    /// The codec of values in Redis (checked: a user's codec has a user id).
    pub(crate) codec: NodeCodec,
    pub(crate) disabled: bool,
    pub(crate) bus: Option<crate::bus::BusConfig>,
    pub(crate) before_fill: Option<Hook>,
    pub(crate) sweep_every: Option<Duration>,
    pub(crate) builder: bool,
    pub(crate) refresh_granularity: Duration,
    pub(crate) min_refresh_period: Duration,
    pub(crate) serve_metrics: Option<std::net::SocketAddr>,
}
