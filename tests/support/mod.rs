//! Test support: real `redis-server` processes on free loopback ports.
//!
//! Each [`TestRedis`] owns its server (spawned through the `redis-test`
//! crate, in a temporary directory, snapshots off) and kills it on drop, even
//! when the test panics. It never touches a server it did not start. Helpers
//! kill it with SIGKILL, restart it empty on the same port, and pause it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use redis::ConnectionAddr;
use redis_test::server::RedisServer;

/// A redis-server owned by one test.
pub struct TestRedis {
    server: Option<RedisServer>,
    port: u16,
}

impl TestRedis {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> Self {
        let server = RedisServer::new();
        let port = match server.client_addr() {
            ConnectionAddr::Tcp(_, port) => *port,
            other => panic!("unexpected test server address {other:?}"),
        };
        let t = TestRedis {
            server: Some(server),
            port,
        };
        t.wait_ready();
        t
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A plain client for raw commands (planting values, inspecting keys).
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("test redis url")
    }

    /// A synchronous connection for raw commands.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection()
            .expect("connect to test redis")
    }

    /// Kills the server with SIGKILL (its data is lost: snapshots are off).
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
    }

    /// Starts a new, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let server = RedisServer::new_with_addr_and_modules(
                ConnectionAddr::Tcp("127.0.0.1".into(), self.port),
                &[],
                false,
            );
            self.server = Some(server);
            if self.try_wait_ready(Duration::from_secs(3)) {
                return;
            }
            // The port may still be held by the killed process: try again.
            self.kill();
            assert!(
                Instant::now() < deadline,
                "could not restart redis on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `CLIENT PAUSE` every client for `d` (the server answers nothing
    /// meanwhile, as a stalled Redis would).
    pub fn pause(&self, d: Duration) {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(d.as_millis() as u64)
            .query(&mut self.conn())
            .expect("CLIENT PAUSE");
    }

    /// The names of every key on the server matching `pattern`. Uses
    /// `KEYS`, which is fine on a test server.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.conn())
            .expect("KEYS");
        keys.sort();
        keys
    }

    fn wait_ready(&self) {
        assert!(
            self.try_wait_ready(Duration::from_secs(10)),
            "test redis on port {} did not start",
            self.port
        );
    }

    fn try_wait_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(mut c) = self
                .client()
                .get_connection_with_timeout(Duration::from_millis(200))
            {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 10 ms until it is true or `within` has passed;
/// returns whether it became true.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
