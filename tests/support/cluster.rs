//! A real Redis Cluster on loopback: six servers started with
//! `--cluster-enabled yes` (three primaries, one replica each), joined by
//! `redis-cli --cluster create`. Every server is a [`TestRedis`], so each is
//! killed when the cluster is dropped, or when the test process dies.

use std::time::{Duration, Instant};

use super::server::{cli_binary, free_port, TestRedis};
use super::spawn::{die_with_parent, on_spawner_thread};

/// How long `redis-cli --cluster create` may take (it waits for the
/// servers to agree, forever if they never do).
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// The arguments of a cluster server: the node file lands in the server's
/// own directory, and the cluster bus takes a free port of its own (by
/// default the server's port plus 10000, which may be taken).
fn cluster_args() -> Vec<String> {
    [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
        "--cluster-port",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([free_port().to_string()])
    .collect()
}

/// A six-server Redis Cluster owned by one test.
pub struct TestCluster {
    servers: Vec<TestRedis>,
}

impl TestCluster {
    /// Starts six servers, joins them into a cluster of three primaries
    /// with one replica each, and waits until every server reports the
    /// cluster `ok` with all 16384 slots served.
    pub fn start() -> Self {
        let servers: Vec<TestRedis> = (0..6)
            .map(|_| TestRedis::start_with(cluster_args()))
            .collect();
        let mut create = std::process::Command::new(cli_binary());
        create.arg("--cluster").arg("create");
        for s in &servers {
            create.arg(format!("127.0.0.1:{}", s.port()));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        create
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        die_with_parent(&mut create);
        let mut child =
            on_spawner_thread(move || create.spawn()).expect("run redis-cli --cluster create");
        let deadline = Instant::now() + CREATE_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for redis-cli") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().expect("redis-cli output");
        assert!(
            status.is_some_and(|s| s.success()),
            "redis-cli --cluster create {}: {}{}",
            if status.is_none() {
                "timed out"
            } else {
                "failed"
            },
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = TestCluster { servers };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.servers.iter().all(cluster_ok) {
            assert!(Instant::now() < deadline, "the cluster never reported ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// Every server of the cluster.
    pub fn servers(&self) -> &[TestRedis] {
        &self.servers
    }

    /// A URL of every server: what a client is given as its seeds.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(TestRedis::url).collect()
    }

    /// The servers that are primaries now.
    pub fn primaries(&self) -> Vec<&TestRedis> {
        self.servers
            .iter()
            .filter(|s| role(s) == "master")
            .collect()
    }
}

/// Whether `server` sees the cluster `ok` with every slot assigned.
fn cluster_ok(server: &TestRedis) -> bool {
    let info: String = match redis::cmd("CLUSTER").arg("INFO").query(&mut server.conn()) {
        Ok(info) => info,
        Err(_) => return false,
    };
    info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384")
}

/// `master` or `slave`, as `ROLE` reports it.
fn role(server: &TestRedis) -> String {
    let reply: Vec<redis::Value> = redis::cmd("ROLE").query(&mut server.conn()).expect("ROLE");
    match reply.first() {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::SimpleString(s)) => s.clone(),
        other => panic!("ROLE answered {other:?}"),
    }
}
