//! The node's builder: every setting with its default, the environment
//! variables it reads ([`CacheNodeBuilder::with_env`]), and the checks that
//! turn them into a [`Config`] (a bad setting is refused at build, with a
//! clear error).

use std::sync::Arc;
use std::time::Duration;

use crate::codec::{Codec, NodeCodec};
use crate::config::{
    Config, FillHook, Hook, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DELETION_CHECK_PERIOD,
    DEFAULT_MAX_VALUE_BYTES, DEFAULT_NAMESPACE, DEFAULT_OP_TIMEOUT, DEFAULT_RAM_CAPACITY_BYTES,
    DEFAULT_TTL,
};
use crate::keys::Keys;
use crate::node::CacheNode;
use crate::shared::SharedConfig;
use crate::{Error, Result, Ttl};

/// Builds a [`CacheNode`] with non-default settings.
///
/// ```no_run
/// # async fn f() -> cachenode::Result<()> {
/// use std::time::Duration;
/// use cachenode::{CacheNode, Ttl};
/// let node = CacheNode::builder()
///     .redis_url("redis://127.0.0.1:6379")
///     .namespace("myapp")
///     .ram_capacity_bytes(64 << 20)
///     .default_ttl(Duration::from_secs(300))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build().await"]
pub struct CacheNodeBuilder {
    redis_url: Option<String>,
    namespace: String,
    ram: bool,
    ram_capacity_bytes: u64,
    default_ttl: Ttl,
    ram_max_ttl: Option<Duration>,
    op_timeout: Duration,
    connect_timeout: Duration,
    max_value_bytes: usize,
    codec: NodeCodec,
    disabled: bool,
    deletion_check_period: Duration,
    bus: bool,
    bus_log_len: usize,
    watch_keyspace: bool,
    /// Redacted in `Debug`.
    bus_secret: Option<crate::bus::BusSecret>,
    sweep_every: Option<Duration>,
    builder: bool,
    refresh_granularity: Duration,
    min_refresh_period: Duration,
    serve_metrics: Option<std::net::SocketAddr>,
    before_fill: Option<Hook>,
}

impl Default for CacheNodeBuilder {
    fn default() -> Self {
        CacheNodeBuilder {
            redis_url: None,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            ram: true,
            ram_capacity_bytes: DEFAULT_RAM_CAPACITY_BYTES,
            default_ttl: Ttl::After(DEFAULT_TTL),
            ram_max_ttl: None,
            op_timeout: DEFAULT_OP_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            codec: NodeCodec::default(),
            disabled: false,
            deletion_check_period: DEFAULT_DELETION_CHECK_PERIOD,
            bus: true,
            bus_log_len: crate::DEFAULT_LOG_LEN,
            watch_keyspace: false,
            bus_secret: None,
            sweep_every: Some(crate::DEFAULT_SWEEP_EVERY),
            builder: false,
            refresh_granularity: crate::DEFAULT_REFRESH_GRANULARITY,
            min_refresh_period: crate::DEFAULT_MIN_REFRESH_PERIOD,
            serve_metrics: None,
            before_fill: None,
        }
    }
}

impl CacheNodeBuilder {
    /// A builder with every default: RAM only until [`redis_url`](Self::redis_url) is set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared Redis layer at `url` (`redis://`, `rediss://` for TLS,
    /// `redis+unix://`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// No Redis at all: a RAM-only node (the default until a URL is given).
    pub fn without_redis(mut self) -> Self {
        self.redis_url = None;
        self.ram = true;
        self
    }

    /// No RAM layer: every read goes to Redis (also set by
    /// `LOCALCACHE_TYPE=null`, see [`with_env`](Self::with_env)).
    pub fn without_ram(mut self) -> Self {
        self.ram = false;
        self
    }

    /// The namespace of every Redis key and of the bus channel this node
    /// uses (`{namespace}:k:{key}`, `{namespace}:f:…`, `{namespace}:bus`, …);
    /// default [`DEFAULT_NAMESPACE`]. Nodes that should share values use the
    /// same namespace.
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// The RAM layer's budget in bytes (keys, values and per-entry overhead);
    /// default [`DEFAULT_RAM_CAPACITY_BYTES`].
    pub fn ram_capacity_bytes(mut self, bytes: u64) -> Self {
        self.ram_capacity_bytes = bytes;
        self
    }

    /// The TTL of values stored with [`Ttl::Default`]; default [`DEFAULT_TTL`].
    /// `Duration::ZERO` means never.
    pub fn default_ttl(mut self, ttl: impl Into<Ttl>) -> Self {
        self.default_ttl = ttl.into();
        self
    }

    /// The longest a value stays in RAM, whatever its TTL; default none.
    pub fn ram_max_ttl(mut self, ttl: Duration) -> Self {
        self.ram_max_ttl = Some(ttl);
        self
    }

    /// The bound on every Redis command; default [`DEFAULT_OP_TIMEOUT`].
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// The bound on establishing a Redis connection; default
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The largest encoded value written or read; default
    /// [`DEFAULT_MAX_VALUE_BYTES`]. Larger writes fail with
    /// [`Error::ValueTooLarge`]; larger reads are counted misses.
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The codec of the values this node stores in Redis: [`Bincode`](crate::Bincode)
    /// (the default), `MsgPack` (feature `msgpack`), or
    /// your own [`Codec`], whose format id must be in
    /// [`USER_CODEC_IDS`](crate::USER_CODEC_IDS) ([`build`](Self::build)
    /// refuses it otherwise). Also `CACHE_CODEC` in
    /// [`with_env`](Self::with_env).
    ///
    /// Nodes that share a namespace should share a codec: a value written
    /// with another codec than the reader's is a counted miss (never a
    /// misread), left in Redis for the nodes of its codec. Keys and bus
    /// messages do not depend on the codec.
    ///
    /// ```no_run
    /// # async fn f() -> cachenode::Result<()> {
    /// let node = cachenode::CacheNode::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .codec(cachenode::MsgPack)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn codec(mut self, codec: impl Codec) -> Self {
        self.codec = NodeCodec::new(Arc::new(codec));
        self
    }

    /// A node that stores nothing and always misses: reads answer `None`,
    /// cached functions always run, writes and deletes do nothing. For
    /// tests of the application's own code.
    pub fn disabled(mut self) -> Self {
        self.disabled = true;
        self
    }

    /// The staleness bound of the crate's guarantee (plus one Redis round
    /// trip); default [`DEFAULT_DELETION_CHECK_PERIOD`]. The bus checks
    /// that it missed no invalidation twice per period, and RAM is served
    /// only until one period after the start of the last check that
    /// succeeded (the lease: see [`BusHealth::suspended`](crate::BusHealth::suspended)).
    ///
    /// A check must complete within the period, so the period allows Redis
    /// round trips up to about half of it for RAM to be served all the
    /// time; with slower links reads go to Redis part of the time (links
    /// slower than the period: always). A node still builds on such a link:
    /// its first position is read under [`op_timeout`](Self::op_timeout).
    pub fn deletion_check_period(mut self, every: Duration) -> Self {
        self.deletion_check_period = every;
        self
    }

    /// Runs no invalidation bus: writes and deletes on this node do not reach
    /// the RAM of other nodes, and this node does not hear theirs. Only for
    /// a node alone on its Redis, or one without RAM.
    pub fn without_bus(mut self) -> Self {
        self.bus = false;
        self
    }

    /// How many messages the bus log keeps (default
    /// [`DEFAULT_LOG_LEN`](crate::DEFAULT_LOG_LEN)). A node that misses
    /// more than this while disconnected drops its whole RAM layer.
    pub fn bus_log_len(mut self, len: usize) -> Self {
        self.bus_log_len = len;
        self
    }

    /// Authenticates the invalidation bus with a secret shared by every node
    /// of the namespace (and the `cachenode` CLI: `--bus-secret-file` or
    /// `CACHENODE_BUS_SECRET`). Each message then carries an HMAC-SHA256 over
    /// the namespace and its body, and messages that are unsigned or badly
    /// signed are dropped and counted in
    /// [`BusHealth::unauthenticated`](crate::BusHealth::unauthenticated),
    /// without flushing RAM: a client allowed to publish on the bus channel
    /// or append to its log cannot make nodes drop entries by forging
    /// messages. Replays of genuine signed messages are not detected.
    ///
    /// Every node of a namespace must have the same secret, or none: a node
    /// with a secret ignores the messages of nodes without one (and of nodes
    /// with another), so their invalidations do not reach its RAM. A node
    /// without a secret still applies signed messages (it cannot check them)
    /// and logs a warning. An empty secret is refused by
    /// [`build`](Self::build).
    pub fn bus_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.bus_secret = Some(crate::bus::BusSecret(secret.into().into()));
        self
    }

    /// Also drop RAM copies when their Redis key is deleted or expires
    /// outside cachenode (redis-cli, TTL), through keyspace notifications.
    /// Off by default. The server must send them
    /// (`notify-keyspace-events` with `K`, `g` and `x`); when it does not,
    /// [`BusHealth::keyspace_problem`](crate::BusHealth::keyspace_problem)
    /// says so and a warning is logged.
    pub fn watch_keyspace(mut self, on: bool) -> Self {
        self.watch_keyspace = on;
        self
    }

    /// How often one instance prunes every function's key set of keys that
    /// expired in Redis (default
    /// [`DEFAULT_SWEEP_EVERY`](crate::DEFAULT_SWEEP_EVERY)); `None`
    /// turns the sweep off on this node.
    pub fn key_set_sweep_every(mut self, every: Option<Duration>) -> Self {
        self.sweep_every = every;
        self
    }

    /// Gives this node the builder role: it consumes the build jobs of
    /// async-compute functions from the namespace's Redis stream (any
    /// number of nodes may have it; each job is built by one of them) and
    /// refreshes functions due for refresh.
    /// The functions must be registered on it too (by building their
    /// handles with [`FuncBuilder::async_compute`](crate::FuncBuilder::async_compute)).
    pub fn builder_role(mut self, on: bool) -> Self {
        self.builder = on;
        self
    }

    /// How often a builder node looks for functions due for refresh: a
    /// refresh runs up to this late (default
    /// [`DEFAULT_REFRESH_GRANULARITY`](crate::DEFAULT_REFRESH_GRANULARITY)).
    pub fn refresh_granularity(mut self, every: Duration) -> Self {
        self.refresh_granularity = every;
        self
    }

    /// The smallest `refresh_every` accepted (default
    /// [`DEFAULT_MIN_REFRESH_PERIOD`](crate::DEFAULT_MIN_REFRESH_PERIOD),
    /// 5 minutes; a shorter period is refused at build); lower it for tests.
    pub fn min_refresh_period(mut self, period: Duration) -> Self {
        self.min_refresh_period = period;
        self
    }

    /// Serves Prometheus metrics at `http://{addr}/metrics`, through a
    /// process-wide recorder installed when the node is built (for apps
    /// without an exporter of their own; apps that install their own
    /// `metrics` recorder just get the metrics, see [`crate::metrics`]).
    /// Fails at build if a recorder is already installed.
    pub fn serve_metrics(mut self, addr: std::net::SocketAddr) -> Self {
        self.serve_metrics = Some(addr);
        self
    }

    #[doc(hidden)]
    pub fn before_fill_hook(mut self, hook: FillHook) -> Self {
        self.before_fill = Some(Hook(hook));
        self
    }

    /// Applies the environment variables below, `CACHE_CODEC` among them, on
    /// top of this builder:
    ///
    /// | variable | effect |
    /// |---|---|
    /// | `CACHE_TYPE` | `redis` (needs `CACHE_REDIS_URL`), `ram` (no Redis) or `null` (disabled) |
    /// | `LOCALCACHE_TYPE` | `ram` (default) or `null` (no RAM layer) |
    /// | `CACHE_REDIS_URL` | the Redis URL; alone, it implies `CACHE_TYPE=redis` |
    /// | `CACHE_KEY_PREFIX` | the namespace |
    /// | `CACHE_DISABLED` | `1`/`true`/`yes` disables the cache |
    /// | `CACHE_CODEC` | the [codec](Self::codec) of values: `bincode` (default) or `msgpack` (feature `msgpack`) |
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown value or a missing URL.
    pub fn with_env(self) -> Result<Self> {
        self.with_vars(|name| std::env::var(name).ok())
    }

    pub(crate) fn with_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let url = var("CACHE_REDIS_URL").filter(|u| !u.is_empty());
        match var("CACHE_TYPE")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("") => {
                if let Some(url) = url {
                    self.redis_url = Some(url);
                }
            }
            Some("redis") => {
                self.redis_url = Some(url.ok_or_else(|| {
                    Error::Config("CACHE_TYPE=redis needs CACHE_REDIS_URL".into())
                })?);
            }
            Some("ram") => self.redis_url = None,
            Some("null") => self.disabled = true,
            Some(other) => {
                return Err(Error::Config(format!(
                    "CACHE_TYPE={other:?}: expected redis, ram or null"
                )))
            }
        }
        match var("LOCALCACHE_TYPE")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("") | Some("ram") => {}
            Some("null") => self.ram = false,
            Some(other) => {
                return Err(Error::Config(format!(
                    "LOCALCACHE_TYPE={other:?}: expected ram or null"
                )))
            }
        }
        if let Some(prefix) = var("CACHE_KEY_PREFIX").filter(|p| !p.is_empty()) {
            self.namespace = prefix;
        }
        match var("CACHE_CODEC")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("") => {}
            Some("bincode") => self = self.codec(crate::Bincode),
            #[cfg(feature = "msgpack")]
            Some("msgpack") => self = self.codec(crate::MsgPack),
            #[cfg(not(feature = "msgpack"))]
            Some("msgpack") => {
                return Err(Error::Config(
                    "CACHE_CODEC=msgpack needs cachenode's msgpack feature".into(),
                ))
            }
            Some(other) => {
                return Err(Error::Config(format!(
                    "CACHE_CODEC={other:?}: expected bincode or msgpack"
                )))
            }
        }
        match var("CACHE_DISABLED")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("") | Some("0") | Some("false") | Some("no") => {}
            Some("1") | Some("true") | Some("yes") => self.disabled = true,
            Some(other) => {
                return Err(Error::Config(format!(
                    "CACHE_DISABLED={other:?}: expected true or false"
                )))
            }
        }
        Ok(self)
    }

    pub(crate) fn into_config(self) -> Result<Config> {
        let keys = Keys::new(&self.namespace)?;
        for (name, d) in [
            ("op_timeout", self.op_timeout),
            ("connect_timeout", self.connect_timeout),
            ("deletion_check_period", self.deletion_check_period),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!("{name} must be greater than zero")));
            }
        }
        if self.refresh_granularity.is_zero() {
            return Err(Error::Config(
                "refresh_granularity must be greater than zero".into(),
            ));
        }
        if self.sweep_every.is_some_and(|d| d.is_zero()) {
            return Err(Error::Config(
                "key_set_sweep_every must be greater than zero".into(),
            ));
        }
        if self.bus_secret.as_ref().is_some_and(|s| s.0.is_empty()) {
            return Err(Error::Config("bus_secret must not be empty".into()));
        }
        if self.bus_log_len == 0 {
            return Err(Error::Config(
                "bus_log_len must be greater than zero".into(),
            ));
        }
        self.codec.check()?;
        if self.max_value_bytes == 0 {
            return Err(Error::Config(
                "max_value_bytes must be greater than zero".into(),
            ));
        }
        Ok(Config {
            redis: self.redis_url.map(|url| SharedConfig {
                url,
                connect_timeout: self.connect_timeout,
                op_timeout: self.op_timeout,
            }),
            keys,
            ram_capacity_bytes: self.ram.then_some(self.ram_capacity_bytes),
            default_ttl: self.default_ttl,
            ram_max_ttl: self.ram_max_ttl,
            max_value_bytes: self.max_value_bytes,
            codec: self.codec,
            disabled: self.disabled,
            bus: self.bus.then_some(crate::bus::BusConfig {
                deletion_check_period: self.deletion_check_period,
                log_len: self.bus_log_len,
                watch_keyspace: self.watch_keyspace,
                secret: self.bus_secret,
            }),
            before_fill: self.before_fill,
            sweep_every: self.sweep_every,
            builder: self.builder,
            refresh_granularity: self.refresh_granularity,
            min_refresh_period: self.min_refresh_period,
            serve_metrics: self.serve_metrics,
        })
    }

    /// Builds the node: connects to Redis (when a URL is set) and starts its
    /// background tasks.
    ///
    /// # Errors
    /// [`Error::Config`] for invalid settings, [`Error::Connect`] when Redis
    /// cannot be reached.
    pub async fn build(self) -> Result<CacheNode> {
        CacheNode::from_config(self.into_config()?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn env_selects_backends() {
        let c = CacheNodeBuilder::new()
            .with_vars(env(&[
                ("CACHE_TYPE", "redis"),
                ("CACHE_REDIS_URL", "redis://h:1"),
            ]))
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(c.redis.unwrap().url, "redis://h:1");
        let c = CacheNodeBuilder::new()
            .redis_url("redis://x")
            .with_vars(env(&[("CACHE_TYPE", "ram"), ("LOCALCACHE_TYPE", "null")]))
            .unwrap()
            .into_config()
            .unwrap();
        assert!(c.redis.is_none());
        assert!(c.ram_capacity_bytes.is_none());
        let c = CacheNodeBuilder::new()
            .with_vars(env(&[("CACHE_TYPE", "null"), ("CACHE_KEY_PREFIX", "svc")]))
            .unwrap()
            .into_config()
            .unwrap();
        assert!(c.disabled);
        assert_eq!(c.keys.namespace(), "svc");
        let c = CacheNodeBuilder::new()
            .with_vars(env(&[("CACHE_DISABLED", "true")]))
            .unwrap()
            .into_config()
            .unwrap();
        assert!(c.disabled);
    }

    #[test]
    fn env_chooses_the_codec() {
        let codec = |pairs: &[(&str, &str)]| {
            CacheNodeBuilder::new()
                .with_vars(env(pairs))
                .map(|b| b.into_config().unwrap().codec.format_id())
        };
        assert_eq!(codec(&[]).unwrap(), 1);
        assert_eq!(codec(&[("CACHE_CODEC", "")]).unwrap(), 1);
        assert_eq!(codec(&[("CACHE_CODEC", "BinCode")]).unwrap(), 1);
        #[cfg(feature = "msgpack")]
        assert_eq!(codec(&[("CACHE_CODEC", "msgpack")]).unwrap(), 2);
        #[cfg(not(feature = "msgpack"))]
        assert!(codec(&[("CACHE_CODEC", "msgpack")])
            .unwrap_err()
            .to_string()
            .contains("msgpack feature"));
        let e = codec(&[("CACHE_CODEC", "json")]).unwrap_err();
        assert!(
            matches!(&e, Error::Config(m) if m.contains("\"json\"") && m.contains("bincode or msgpack")),
            "{e}"
        );
    }

    #[test]
    fn env_errors_are_clear() {
        let e = CacheNodeBuilder::new()
            .with_vars(env(&[("CACHE_TYPE", "redis")]))
            .unwrap_err();
        assert!(e.to_string().contains("CACHE_REDIS_URL"), "{e}");
        let e = CacheNodeBuilder::new()
            .with_vars(env(&[("CACHE_TYPE", "memcached")]))
            .unwrap_err();
        assert!(e.to_string().contains("memcached"), "{e}");
        let e = CacheNodeBuilder::new()
            .op_timeout(Duration::ZERO)
            .into_config()
            .unwrap_err();
        assert!(e.to_string().contains("op_timeout"), "{e}");
    }
}
