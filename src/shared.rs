//! The shared layer: one Redis for all instances.
//!
//! Owns the connection (a `redis` [`ConnectionManager`], which reconnects by
//! itself after Redis is lost) and runs every command under the node's
//! operation timeout, so no call can hang on a paused or unreachable server.
//! Errors carry the operation name; the URL is only ever shown redacted.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client};

use crate::error::redact_url;
use crate::{Error, Result};

/// How many keys one `UNLINK` or `SCAN` step handles.
pub(crate) const BATCH: usize = 1000;

/// Connection settings of the shared layer.
#[derive(Debug, Clone)]
pub(crate) struct SharedConfig {
    pub(crate) url: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) op_timeout: Duration,
}

/// The Redis layer of a node.
#[derive(Clone)]
pub(crate) struct SharedLayer {
    client: Client,
    conn: ConnectionManager,
    url: String,
    op_timeout: Duration,
}

impl std::fmt::Debug for SharedLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLayer")
            .field("url", &self.url)
            .finish()
    }
}

impl SharedLayer {
    /// Connects and checks the server answers.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that does not parse, a server older than
    /// 7.0, a node of a Redis Cluster or a Sentinel; [`Error::Connect`]
    /// naming the (redacted) URL when Redis cannot be reached or does not
    /// answer in time.
    pub(crate) async fn connect(config: &SharedConfig) -> Result<Self> {
        let url = redact_url(&config.url);
        let connect_err = |source: redis::RedisError| Error::Connect {
            url: url.clone(),
            source: if source.kind() == redis::ErrorKind::Parse {
                // Something answered, not in Redis's protocol.
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "the server there does not speak the Redis protocol (is it a Redis \
                         server, and the right port?): {}",
                        source.to_string().replace('\n', " ")
                    ),
                ))
            } else {
                source
            },
        };
        // A URL the client refuses is the caller's to fix, not Redis's.
        let client = Client::open(config.url.as_str()).map_err(|e| {
            let tls = if config.url.starts_with("rediss://") && !cfg!(feature = "tls") {
                " (a rediss:// URL needs cachenode's `tls` feature)"
            } else {
                ""
            };
            Error::Config(format!(
                "invalid Redis URL {url:?}: {e}{tls}; expected \
                 redis://[user:password@]host[:port][/db] or rediss://… for TLS"
            ))
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.op_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let connecting = ConnectionManager::new_with_config(client.clone(), manager_config);
        // The manager retries a few times; bound the whole attempt.
        let attempt = config.connect_timeout * 4;
        let mut conn = match tokio::time::timeout(attempt, connecting).await {
            Ok(conn) => conn.map_err(connect_err)?,
            Err(_) => {
                return Err(connect_err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no connection within {attempt:?} (connect_timeout {:?}, with retries)",
                        config.connect_timeout
                    ),
                ))))
            }
        };
        let pong: Result<String, _> =
            tokio::time::timeout(config.op_timeout, redis::cmd("PING").query_async(&mut conn))
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "PING timed out",
                    )))
                });
        pong.map_err(connect_err)?;
        check_version(&mut conn, &url, config.op_timeout).await?;
        check_not_a_cluster(&mut conn, &url, config.op_timeout).await?;
        tracing::info!(url = %url, "connected to Redis");
        Ok(SharedLayer {
            client,
            conn,
            url,
            op_timeout: config.op_timeout,
        })
    }

    /// The Redis URL, password masked.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The client, for connections of their own (the bus's subscription).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// A handle on the shared, multiplexed connection.
    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The timeout applied to every command.
    pub(crate) fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// The database number selected by the URL.
    pub(crate) fn db(&self) -> i64 {
        self.client.get_connection_info().redis_settings().db()
    }

    /// Runs `fut` (one Redis exchange named `op`) under the operation timeout.
    pub(crate) async fn run<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        self.run_within(op, self.op_timeout, fut).await
    }

    /// Runs `fut` (named `op`) under `timeout`.
    pub(crate) async fn run_within<T>(
        &self,
        op: &'static str,
        timeout: Duration,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => {
                crate::metrics::redis_operation(started.elapsed());
                return Ok(v);
            }
            Ok(Err(e)) if e.is_timeout() => Err(Error::Timeout { op, after: timeout }),
            Ok(Err(source)) => Err(Error::Redis { op, source }),
            Err(_) => Err(Error::Timeout { op, after: timeout }),
        };
        crate::metrics::redis_error(op);
        result
    }

    /// `SET key <fresh token> NX PX ttl`: takes a lock that expires by
    /// itself, the one lock primitive of the crate (a value's at-most-once
    /// lock, a function's refresh lock, the key-set sweep lock). Returns the
    /// token when this call took the lock, `None` when someone holds it.
    pub(crate) async fn take_lock(
        &self,
        op: &'static str,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<String>> {
        let token = uuid::Uuid::new_v4().to_string();
        let mut conn = self.conn();
        let took: Option<String> = self
            .run(
                op,
                redis::cmd("SET")
                    .arg(key)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_millis(ttl))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(took.map(|_| token))
    }

    /// `GET key`.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut conn = self.conn();
        self.run("get", conn.get(key)).await
    }

    /// `MGET keys` (nothing sent for an empty list).
    pub(crate) async fn mget(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        // Through `cmd`, since a one-key MGET must still answer a list.
        self.run("mget", redis::cmd("MGET").arg(keys).query_async(&mut conn))
            .await
    }

    /// `EXISTS key`.
    pub(crate) async fn exists(&self, key: &str) -> Result<bool> {
        let mut conn = self.conn();
        self.run("exists", conn.exists(key)).await
    }

    /// `UNLINK` of each key, pipelined in batches (one command per key, so
    /// keys may live in different cluster slots); whether each existed.
    pub(crate) async fn unlink_each(&self, keys: &[String]) -> Result<Vec<bool>> {
        let mut existed = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("UNLINK").arg(key);
            }
            let mut conn = self.conn();
            let counts: Vec<u64> = self.run("unlink", pipe.query_async(&mut conn)).await?;
            existed.extend(counts.into_iter().map(|n| n > 0));
        }
        Ok(existed)
    }

    /// Deletes every key matching `pattern` that `keep` accepts, with `SCAN`
    /// and batched `UNLINK` (never `KEYS`, never one unbounded `DEL`).
    /// Returns how many keys were removed.
    pub(crate) async fn scan_unlink(
        &self,
        pattern: &str,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<u64> {
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let mut conn = self.conn();
            let (next, keys): (u64, Vec<String>) = self
                .run(
                    "scan",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(BATCH)
                        .query_async(&mut conn),
                )
                .await?;
            let keys: Vec<String> = keys.into_iter().filter(|k| wanted(k)).collect();
            if !keys.is_empty() {
                removed += self
                    .unlink_each(&keys)
                    .await?
                    .into_iter()
                    .filter(|e| *e)
                    .count() as u64;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

/// The oldest server version the node works with: the bus and the
/// at-most-once lock use `SET ... NX GET` and the job stream the three-part
/// `XAUTOCLAIM` reply, both new in Redis 7.0.
const MIN_VERSION: (u32, u32) = (7, 0);

/// Refuses a server older than [`MIN_VERSION`]. Asked through a script
/// (`redis.REDIS_VERSION`, which Redis added in 7.0: older servers answer
/// nothing), since a user restricted to its namespace may not run `INFO`.
async fn check_version(conn: &mut ConnectionManager, url: &str, timeout: Duration) -> Result<()> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg("return redis.REDIS_VERSION").arg(0);
    let asked = cmd.query_async::<Option<String>>(conn);
    let version = match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(version)) => version,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the server's version; not checked");
            return Ok(());
        }
        Err(_) => return Err(probe_timed_out(url, "the version check")),
    };
    match version.as_deref().map(parse_version) {
        Some(Some(v)) if v >= MIN_VERSION => Ok(()),
        Some(None) => Ok(()),
        _ => Err(Error::Config(format!(
            "the Redis at {url} is version {}; cachenode needs {}.{} or later",
            version.as_deref().unwrap_or("6 or older"),
            MIN_VERSION.0,
            MIN_VERSION.1
        ))),
    }
}

/// Refuses a node of a Redis Cluster: the node speaks to one server (or a
/// replica set behind one address), and on a cluster every key of a slot
/// another primary serves would fail with `MOVED`. Refuses a Sentinel too
/// (it holds no data). Asked with `HELLO` (no
/// arguments: the protocol stays as it is), which every user may run, whose
/// reply has the server's `mode`.
async fn check_not_a_cluster(
    conn: &mut ConnectionManager,
    url: &str,
    timeout: Duration,
) -> Result<()> {
    let cmd = redis::cmd("HELLO");
    let asked = cmd.query_async::<redis::Value>(conn);
    match tokio::time::timeout(timeout, asked).await {
        Ok(Ok(reply)) => match server_mode(&reply).as_deref() {
            Some("cluster") => Err(Error::Config(format!(
                "the Redis at {url} is a node of a Redis Cluster, which cachenode \
                 does not support yet: give it a standalone server (or a replica \
                 set behind one address)"
            ))),
            Some("sentinel") => Err(Error::Config(format!(
                "{url} is a Redis Sentinel, which holds no data: give cachenode \
                 the primary's address (e.g. a virtual IP that follows failover)"
            ))),
            _ => Ok(()),
        },
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HELLO failed; cluster mode not checked");
            Ok(())
        }
        Err(_) => Err(probe_timed_out(url, "HELLO")),
    }
}

/// A probe at connect that got no answer in time: a connect error naming
/// the server, as when it does not answer `PING`.
fn probe_timed_out(url: &str, what: &str) -> Error {
    Error::Connect {
        url: url.to_owned(),
        source: redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} timed out"),
        )),
    }
}

/// The `mode` field of a `HELLO` reply (a map in RESP3, a flat list of
/// pairs in RESP2).
fn server_mode(reply: &redis::Value) -> Option<String> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match reply {
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| text(k).as_deref() == Some("mode"))
            .and_then(|(_, v)| text(v)),
        Value::Array(items) => items
            .chunks(2)
            .find(|pair| text(&pair[0]).as_deref() == Some("mode"))
            .and_then(|pair| pair.get(1).and_then(text)),
        _ => None,
    }
}

/// `(major, minor)` of a version string such as `7.0.15` (Valkey reports
/// the Redis version it is compatible with).
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Appends `SET key bytes [PX ttl]` to `pipe`.
pub(crate) fn add_set(pipe: &mut redis::Pipeline, key: &str, bytes: &[u8], ttl: Option<Duration>) {
    pipe.cmd("SET").arg(key).arg(bytes);
    if let Some(ttl) = ttl {
        pipe.arg("PX").arg(ttl_millis(ttl));
    }
}

/// A TTL in whole milliseconds, at least 1 (Redis refuses `PX 0`).
pub(crate) fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_mode_is_read_off_both_forms_of_hello() {
        use redis::Value;
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![
            bulk("server"),
            bulk("redis"),
            bulk("mode"),
            bulk("cluster"),
        ]);
        assert_eq!(server_mode(&resp2).as_deref(), Some("cluster"));
        let resp3 = Value::Map(vec![
            (bulk("proto"), Value::Int(3)),
            (bulk("mode"), Value::SimpleString("standalone".into())),
        ]);
        assert_eq!(server_mode(&resp3).as_deref(), Some("standalone"));
        // A reply without the field, or cut short, is no mode (not checked).
        assert_eq!(server_mode(&Value::Array(vec![bulk("mode")])), None);
        assert_eq!(server_mode(&Value::Nil), None);
    }

    #[test]
    fn server_versions_are_parsed() {
        assert_eq!(parse_version("7.0.15"), Some((7, 0)));
        assert_eq!(parse_version("7.2.4"), Some((7, 2)));
        assert!(parse_version("6.2.14").unwrap() < MIN_VERSION);
        assert!(parse_version("10.0.0").unwrap() >= MIN_VERSION);
        assert_eq!(parse_version("x.y"), None);
    }
}
