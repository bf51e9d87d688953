//! Real `redis-server` processes on free loopback ports, each owned by one
//! test and killed when it is dropped, or when the test process dies (see
//! `spawn`).
//!
//! `CACHENODE_TEST_SERVER` names another server binary to run instead
//! (e.g. a `valkey-server`); unset, it is `redis-server` from `PATH`.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use redis::ConnectionAddr;
use redis_test::server::RedisServer;

use super::spawn::{die_with_parent, on_spawner_thread};

/// The server binary the tests run: `CACHENODE_TEST_SERVER`, or
/// `redis-server`.
pub fn server_binary() -> std::ffi::OsString {
    std::env::var_os("CACHENODE_TEST_SERVER").unwrap_or_else(|| "redis-server".into())
}

/// The command-line client of [`server_binary`]: the `*-cli` beside it
/// (`valkey-cli` beside `valkey-server`; for a bare name, that name on
/// `PATH`), else `redis-cli`.
pub fn cli_binary() -> std::ffi::OsString {
    let server = std::path::PathBuf::from(server_binary());
    let Some(stem) = server
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix("-server"))
    else {
        return "redis-cli".into();
    };
    let cli = format!("{stem}-cli");
    if server.components().count() > 1 {
        let beside = server.with_file_name(&cli);
        if beside.is_file() {
            return beside.into_os_string();
        }
    } else if std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(&cli).is_file()))
    {
        return cli.into();
    }
    "redis-cli".into()
}

/// `cmd` (as `redis_test` builds it, for `redis-server`) run with
/// [`server_binary`] instead, killed if this process dies.
fn spawn_server(cmd: &std::process::Command) -> std::process::Child {
    let mut real = std::process::Command::new(server_binary());
    real.args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        real.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => real.env(k, v),
            None => real.env_remove(k),
        };
    }
    real.stdout(std::process::Stdio::null());
    die_with_parent(&mut real);
    real.spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", server_binary()))
}

/// A redis-server owned by one test.
pub struct TestRedis {
    server: Option<RedisServer>,
    port: u16,
    /// The server's working directory, where [`save_snapshot`](Self::save_snapshot)
    /// writes (`dir` cannot be changed at run time); removed on drop.
    dir: std::path::PathBuf,
    /// Arguments given at start, passed again to every restart.
    args: Vec<String>,
}

impl TestRedis {
    /// Starts a server on a free port and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// [`start`](Self::start), with `extra` server arguments, kept for
    /// every restart.
    pub fn start_with(extra: Vec<String>) -> Self {
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
            args: extra,
        };
        t.spawn(&[]);
        t.wait_ready();
        t
    }

    /// Spawns the server on `self.port`, in `self.dir`, with `extra`
    /// arguments, from the spawner thread (killed if this process dies).
    fn spawn(&mut self, extra: &'static [&'static str]) {
        let (dir, port, args) = (self.dir.clone(), self.port, self.args.clone());
        self.server = Some(on_spawner_thread(move || {
            RedisServer::new_with_addr_tls_modules_and_spawner(
                ConnectionAddr::Tcp("127.0.0.1".into(), port),
                None,
                None,
                false,
                None,
                &[],
                |cmd| {
                    cmd.arg("--dir").arg(&dir).args(&args).args(extra);
                    spawn_server(cmd)
                },
            )
        }));
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
        self.restart_with(&[]);
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
        self.restart_with(&["--dbfilename", "never-saved.rdb"]);
    }

    /// Kills the server and starts a new one on the same port, with `extra`
    /// arguments.
    fn restart_with(&mut self, extra: &'static [&'static str]) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.spawn(extra);
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

    /// Whether `key` exists on the server.
    pub fn exists(&self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query(&mut self.conn())
            .expect("EXISTS")
    }

    /// Every command the server runs from now on (`MONITOR`).
    pub fn monitor(&self) -> Monitor {
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("monitor connects");
        stream.write_all(b"MONITOR\r\n").expect("MONITOR");
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        reader.read_line(&mut first).expect("MONITOR reply");
        assert_eq!(first.trim_end(), "+OK");
        // Ends when the server closes the connection (it is killed) or the
        // `Monitor` is dropped (the next send fails).
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Monitor { lines }
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

/// The commands a server runs, one line each, as `MONITOR` prints them:
/// `<time> [<db> <client>] "SET" "key" "value" ...`.
pub struct Monitor {
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Monitor {
    /// Waits (20 s at most) for the next command line containing every one
    /// of `parts`, and returns it.
    pub async fn next_with(&mut self, parts: &[&str]) -> String {
        let wait = async {
            loop {
                let line = self.lines.recv().await.expect("monitor ended");
                if parts.iter().all(|p| line.contains(p)) {
                    return line;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("no command with {parts:?}"))
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("its address")
        .port()
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
        let server = on_spawner_thread(move || {
            RedisServer::new_with_addr_tls_modules_and_spawner(
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
                |cmd| spawn_server(cmd),
            )
        });
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
