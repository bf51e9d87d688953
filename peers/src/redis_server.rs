//! The redis-server every system talks to: started by the harness itself on a
//! free loopback port (through the `redis-test` crate, snapshots off, in a
//! temporary directory) and killed when dropped, even on a panic. Never the
//! server on the default port.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use redis::ConnectionAddr;
use redis_test::server::RedisServer;

/// The default Redis port, which the harness never uses: a server there
/// belongs to someone else.
const DEFAULT_PORT: u16 = 6379;

/// How long a fresh server gets to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A redis-server owned by the harness.
pub struct Server {
    // Kept for its `Drop`, which kills the process.
    _server: RedisServer,
    url: String,
}

impl Server {
    /// Starts a server on a free port other than 6379 and waits until it
    /// answers.
    pub fn start() -> anyhow::Result<Self> {
        for _ in 0..5 {
            let server = RedisServer::new();
            let port = match server.client_addr() {
                ConnectionAddr::Tcp(_, port) => *port,
                other => bail!("unexpected redis-server address {other:?}"),
            };
            if port == DEFAULT_PORT {
                continue;
            }
            let url = format!("redis://127.0.0.1:{port}/");
            wait_ready(&url).with_context(|| {
                format!(
                    "redis-server on port {port} did not answer: {}",
                    server.log_file_contents().unwrap_or_default()
                )
            })?;
            return Ok(Server {
                _server: server,
                url,
            });
        }
        bail!("no free port found for redis-server")
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Deletes every key of every database: the state between workloads.
    pub async fn flushall(&self) -> anyhow::Result<()> {
        let mut conn = self.conn().await?;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await?;
        Ok(())
    }

    /// The server's `redis_version`.
    pub async fn version(&self) -> anyhow::Result<String> {
        let mut conn = self.conn().await?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_owned())
            .context("INFO server has no redis_version")
    }

    /// An administrative connection without a response timeout: a
    /// `FLUSHALL` of millions of keys takes seconds.
    async fn conn(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url.as_str())?;
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        Ok(client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }
}

/// `redis-test` returns before the server listens: poll until `PING` works.
fn wait_ready(url: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
            if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("no answer to PING within {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
