//! Nodes on a test server, and what they hold in RAM.
//!
//! A test file says once how its nodes are built (a [`Nodes`]: namespace,
//! bound on each Redis call, and, for the bus tests, the deletion-check
//! period); most use [`node`], namespace `t` with a 500 ms bound.

use std::future::ready;
use std::time::Duration;

use cachenode::{BusHealth, CacheNode, CacheNodeBuilder, CachedFn, KeyArgs, Layers};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{eventually, TestRedis};

/// How long a listener may take to subscribe on a slow machine.
const SUBSCRIBE: Duration = Duration::from_secs(15);

/// How a test file builds its nodes.
#[derive(Debug, Clone, Copy)]
pub struct Nodes {
    ns: &'static str,
    op_timeout: Duration,
    connect_timeout: Option<Duration>,
    check_every: Option<Duration>,
}

/// The nodes most tests use: namespace `t`, 500 ms per Redis call.
pub const PLAIN: Nodes = Nodes::new("t", Duration::from_millis(500));

impl Nodes {
    /// Nodes in namespace `ns`, each Redis call bounded by `op_timeout`,
    /// with the default deletion-check period.
    pub const fn new(ns: &'static str, op_timeout: Duration) -> Self {
        Nodes {
            ns,
            op_timeout,
            connect_timeout: None,
            check_every: None,
        }
    }

    /// The same nodes, giving up connecting after `d` (default 2 s).
    pub const fn connect_timeout(self, d: Duration) -> Self {
        Nodes {
            connect_timeout: Some(d),
            ..self
        }
    }

    /// The same nodes, checking the bus log every `every`.
    pub const fn checking_every(self, every: Duration) -> Self {
        Nodes {
            check_every: Some(every),
            ..self
        }
    }

    /// The same nodes in namespace `ns`.
    pub const fn in_namespace(self, ns: &'static str) -> Self {
        Nodes { ns, ..self }
    }

    /// A builder of one of these nodes on `url` (a server's or a proxy's),
    /// for options on top.
    pub fn builder(&self, url: &str) -> CacheNodeBuilder {
        let mut b = CacheNode::builder()
            .redis_url(url)
            .namespace(self.ns)
            .op_timeout(self.op_timeout);
        if let Some(d) = self.connect_timeout {
            b = b.connect_timeout(d);
        }
        if let Some(every) = self.check_every {
            b = b.deletion_check_period(every);
        }
        b
    }

    /// One of these nodes on `url`.
    pub async fn node(&self, url: &str) -> CacheNode {
        connect(self.builder(url)).await
    }

    /// One of these nodes with the builder role: it consumes build jobs and
    /// refreshes, with refresh periods down to 1 s looked at every 100 ms.
    pub async fn builder_node(&self, url: &str) -> CacheNode {
        connect(
            self.builder(url)
                .builder_role(true)
                .min_refresh_period(Duration::from_secs(1))
                .refresh_granularity(Duration::from_millis(100)),
        )
        .await
    }
}

/// Builds `builder`'s node; the test fails if it does not connect.
pub async fn connect(builder: CacheNodeBuilder) -> CacheNode {
    builder.build().await.expect("node connects")
}

/// A [`PLAIN`] node on `redis`.
pub async fn node(redis: &TestRedis) -> CacheNode {
    PLAIN.node(&redis.url()).await
}

/// A [`PLAIN`] node on `redis` in namespace `ns`.
pub async fn node_in(redis: &TestRedis, ns: &'static str) -> CacheNode {
    PLAIN.in_namespace(ns).node(&redis.url()).await
}

/// The state of `node`'s bus listener.
pub fn health(node: &CacheNode) -> BusHealth {
    node.bus_health().expect("node has a bus")
}

/// Waits until the bus listener of every one of `nodes` is subscribed.
pub async fn subscribed<'a>(nodes: impl IntoIterator<Item = &'a CacheNode>) {
    let nodes: Vec<&CacheNode> = nodes.into_iter().collect();
    let ok = eventually(SUBSCRIBE, || async {
        nodes.iter().all(|n| health(n).connected)
    })
    .await;
    assert!(
        ok,
        "listeners did not subscribe: {:?}",
        nodes.iter().map(|n| health(n)).collect::<Vec<_>>()
    );
}

/// What `node` holds in its own RAM under the plain key `key`.
pub async fn in_ram<T>(node: &CacheNode, key: &str) -> Option<T>
where
    T: DeserializeOwned + Clone + Send + Sync + 'static,
{
    node.with_layers(Layers::Ram)
        .get::<T>(key)
        .await
        .expect("RAM read")
}

/// The value `probe` finds in its node's RAM for `args`, without side
/// effects. A probe is a RAM-only handle on a cached function (same name and
/// key options) whose computation fails: it answers from RAM or returns the
/// error, and never stores anything (errors are not cached).
pub async fn ram_value<A, V>(probe: &CachedFn<A, V>, args: &A) -> Option<V>
where
    A: KeyArgs + ?Sized,
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    probe.call(args, || ready(Err::<V, ()>(()))).await.ok()
}
