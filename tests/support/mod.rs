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
    /// The server's working directory, where [`save_snapshot`](Self::save_snapshot)
    /// writes (`dir` cannot be changed at run time); removed on drop.
    dir: std::path::PathBuf,
}

impl TestRedis {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let port = redis_test::utils::get_random_available_port();
        let dir = std::env::temp_dir().join(format!(
            "cachenode-test-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("test redis dir");
        let mut t = TestRedis {
            server: None,
            port,
            dir,
        };
        t.spawn(|_| {});
        t.wait_ready();
        t
    }

    /// Spawns the server on `self.port`, in `self.dir`, with extra
    /// arguments added by `args`.
    fn spawn(&mut self, args: impl Fn(&mut std::process::Command)) {
        let dir = self.dir.clone();
        self.server = Some(RedisServer::new_with_addr_tls_modules_and_spawner(
            ConnectionAddr::Tcp("127.0.0.1".into(), self.port),
            None,
            None,
            false,
            None,
            &[],
            |cmd| {
                cmd.arg("--dir").arg(&dir);
                args(cmd);
                cmd.spawn().expect("spawn redis-server")
            },
        ));
    }

    /// Writes an RDB snapshot of the server's data now (`SAVE`), into a
    /// directory of this test's, for [`restart_from_snapshot`](Self::restart_from_snapshot).
    /// Waits, when a fork of the server is already writing a snapshot (a
    /// replica's full sync), until it is done.
    pub fn save_snapshot(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match redis::cmd("SAVE").query::<()>(&mut self.conn()) {
                Ok(()) => return,
                Err(e) if e.to_string().contains("in progress") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("SAVE: {e}"),
            }
        }
    }

    /// Kills the server and starts a new one on the same port that loads
    /// the last [`save_snapshot`](Self::save_snapshot): Redis restarted from
    /// persistence, with whatever was written after the snapshot lost.
    pub fn restart_from_snapshot(&mut self) {
        assert!(self.dir.join("dump.rdb").exists(), "save_snapshot first");
        self.restart_with(|_| {});
    }

    /// A new server, on a free port, replicating from this one.
    pub fn start_replica(&self) -> TestRedis {
        let replica = TestRedis::start();
        replica.replicate_from(self.port);
        replica
    }

    /// `REPLICAOF 127.0.0.1 port` (e.g. a [`Proxy`] in front of the
    /// primary, to cut replication at will).
    pub fn replicate_from(&self, port: u16) {
        let _: () = redis::cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(port)
            .query(&mut self.conn())
            .expect("REPLICAOF");
    }

    /// `REPLICAOF NO ONE`: a replica promoted to primary.
    pub fn promote(&self) {
        let _: () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query(&mut self.conn())
            .expect("REPLICAOF NO ONE");
    }

    /// Whether this replica's link to its primary is up and synced.
    pub fn replica_synced(&self) -> bool {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut self.conn())
            .expect("INFO replication");
        info.contains("master_link_status:up") && info.contains("master_sync_in_progress:0")
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
        self.restart_with(|cmd| {
            cmd.arg("--dbfilename").arg("never-saved.rdb");
        });
    }

    /// Kills the server and starts a new one on the same port, with extra
    /// arguments added by `args`.
    fn restart_with(&mut self, args: impl Fn(&mut std::process::Command)) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.spawn(&args);
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every command a node sends, as ACL rules (the README documents this list).
/// `watch_keyspace(true)` needs `+psubscribe` on top, with its channels.
pub const ACL_COMMANDS: &[&str] = &[
    "+ping",
    "+time",
    "+get",
    "+set",
    "+mget",
    "+exists",
    "+del",
    "+unlink",
    "+scan",
    "+incr",
    "+pexpire",
    "+sadd",
    "+srem",
    "+sscan",
    "+scard",
    "+smembers",
    "+hset",
    "+hget",
    "+hmget",
    "+hdel",
    "+hscan",
    "+xadd",
    "+xrange",
    "+xrevrange",
    "+xlen",
    "+xdel",
    "+xack",
    "+xgroup|create",
    "+xreadgroup",
    "+xautoclaim",
    "+evalsha",
    "+eval",
    "+script|load",
    "+publish",
    "+subscribe",
];

/// Creates user `app` (password `pw`) restricted to namespace `ns`, with
/// `extra` rules on top: the README's recipe.
pub fn create_user(redis: &TestRedis, ns: &str, extra: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg("app")
        .arg("reset")
        .arg("on")
        .arg(">pw")
        .arg(format!("~{ns}:*"))
        .arg(format!("~{{{ns}:*"))
        .arg(format!("&{ns}:*"))
        .arg("-@all");
    for rule in ACL_COMMANDS.iter().chain(extra) {
        cmd.arg(*rule);
    }
    let _: () = cmd.query(&mut redis.conn()).expect("ACL SETUSER");
}

/// The URL of user `app` on `redis`.
pub fn user_url(redis: &TestRedis) -> String {
    format!("redis://app:pw@127.0.0.1:{}", redis.port())
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

/// What a [`Proxy`] does with traffic.
const FORWARD: u8 = 0;
const REFUSE: u8 = 1;
const BLACKHOLE: u8 = 2;

/// A TCP proxy in front of a test server, so that one node can be cut off
/// from Redis while the others keep talking to it (a network partition).
///
/// Runs on its own threads, so it keeps forwarding whatever the test's
/// runtime is doing. Stops (and closes every connection) on drop.
pub struct Proxy {
    port: u16,
    shared: std::sync::Arc<ProxyShared>,
}

struct ProxyShared {
    mode: std::sync::atomic::AtomicU8,
    /// The port new connections are forwarded to.
    target: std::sync::atomic::AtomicU16,
    /// Added before forwarding each chunk, in microseconds.
    delay_us: std::sync::atomic::AtomicU64,
    stop: std::sync::atomic::AtomicBool,
    /// Both ends of every forwarded connection, and the connections held
    /// open without an answer while black-holed.
    conns: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl ProxyShared {
    fn close_all(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|p| p.into_inner()));
        for c in conns {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    fn keep(&self, s: &std::net::TcpStream) {
        if let Ok(c) = s.try_clone() {
            self.conns.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
    }
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:target_port`.
    pub fn start(target_port: u16) -> Self {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = std::sync::Arc::new(ProxyShared {
            mode: std::sync::atomic::AtomicU8::new(FORWARD),
            target: std::sync::atomic::AtomicU16::new(target_port),
            delay_us: std::sync::atomic::AtomicU64::new(0),
            stop: std::sync::atomic::AtomicBool::new(false),
            conns: std::sync::Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                match s.mode.load(Ordering::SeqCst) {
                    REFUSE => drop(client),
                    BLACKHOLE => s.keep(&client),
                    _ => {
                        let target = s.target.load(Ordering::SeqCst);
                        let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        s.keep(&client);
                        s.keep(&server);
                        for (from, to) in [(&client, &server), (&server, &client)] {
                            let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone())
                            else {
                                continue;
                            };
                            let s = s.clone();
                            std::thread::spawn(move || {
                                use std::io::{Read, Write};
                                let mut buf = [0u8; 16 * 1024];
                                loop {
                                    let n = match from.read(&mut buf) {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => n,
                                    };
                                    let delay = s.delay_us.load(Ordering::Relaxed);
                                    if delay > 0 {
                                        std::thread::sleep(Duration::from_micros(delay));
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                }
            }
        });
        Proxy { port, shared }
    }

    /// The URL of the server behind the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones (they are accepted and
    /// closed at once): Redis looks down to whoever uses this proxy.
    pub fn cut(&self) {
        self.set_mode(REFUSE);
    }

    /// Closes every connection; new ones are accepted but never answered
    /// (a partition that drops packets: connecting hangs, not fails).
    pub fn blackhole(&self) {
        self.set_mode(BLACKHOLE);
    }

    /// Delays every chunk forwarded in either direction by `d` (zero: none),
    /// on existing and new connections: a slow network path.
    pub fn set_delay(&self, d: Duration) {
        self.shared
            .delay_us
            .store(d.as_micros() as u64, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closes every connection and forwards new ones to `port` (a failover
    /// behind one address, as a DNS name or a virtual IP gives).
    pub fn retarget(&self, port: u16) {
        self.shared
            .target
            .store(port, std::sync::atomic::Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Forwards new connections again (black-holed ones are closed).
    pub fn restore(&self) {
        self.set_mode(FORWARD);
    }

    fn set_mode(&self, mode: u8) {
        self.shared
            .mode
            .store(mode, std::sync::atomic::Ordering::SeqCst);
        self.shared.close_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.close_all();
        // Wake the accept loop so that it sees `stop`.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// The number of clients of `kind` (`normal`, `pubsub`) connected to `redis`.
pub fn clients(redis: &TestRedis, kind: &str) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg(kind)
        .query(&mut redis.conn())
        .expect("CLIENT LIST");
    list.lines().filter(|l| !l.trim().is_empty()).count()
}

/// How long until `check` holds (polled every 5 ms), or `None` when it does
/// not within `limit`.
pub async fn time_until<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() >= limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A redis-server that only speaks TLS (`--port 0 --tls-port N`), with a CA
/// and a server certificate (SANs `localhost`, `127.0.0.1`) generated for it
/// by the `openssl` CLI. Killed on drop.
#[cfg(feature = "tls")]
pub struct TlsRedis {
    server: RedisServer,
    port: u16,
}

#[cfg(feature = "tls")]
impl TlsRedis {
    /// Starts the server on a free port and waits until it answers over TLS.
    pub fn start() -> Self {
        let port = redis_test::utils::get_random_available_port();
        let server = RedisServer::new_with_addr_tls_modules_and_spawner(
            ConnectionAddr::TcpTls {
                host: "127.0.0.1".into(),
                port,
                insecure: true,
                tls_params: None,
            },
            None,
            None,
            false,
            None,
            &[],
            |cmd| cmd.spawn().expect("spawn redis-server"),
        );
        let t = TlsRedis { server, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = t
                .client()
                .get_connection_with_timeout(Duration::from_millis(500))
            {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return t;
                }
            }
            assert!(
                Instant::now() < deadline,
                "TLS redis on port {port} did not start: {:?}",
                t.server.log_file_contents()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `rediss://` URL that skips certificate checks (`#insecure`).
    pub fn insecure_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/#insecure", self.port)
    }

    /// `rediss://` URL whose certificate is checked against the system's
    /// roots (point `SSL_CERT_FILE` at [`ca_file`](Self::ca_file)).
    pub fn verified_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The plain-text URL of the same port (which must not work).
    pub fn plain_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The CA certificate that signed the server's certificate.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.server
            .tls_paths
            .as_ref()
            .expect("TLS server has certificates")
            .ca_crt
            .clone()
    }

    /// A client for raw commands, over TLS.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.insecure_url()).expect("test rediss url")
    }

    /// A synchronous TLS connection for raw commands.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection()
            .expect("connect to TLS test redis")
    }
}
