//! Fault injection under a steady mixed workload, checked by a staleness
//! checker.
//!
//! Four nodes share one real redis-server (one of them, in some tests,
//! through a proxy that can cut it off or slow it down). Tasks on every node
//! read, write and invalidate a small set of keys while a fault is injected.
//! Every operation is recorded with its start and end; afterwards the
//! checker verifies that **no read that started later than the staleness
//! bound after an acknowledged write returned an older version**, and that
//! every call returned within its timeout. It prints the worst staleness it
//! observed next to the bound.
//!
//! Writes to one key are serialized across nodes (a per-key lock in the
//! test), so "the newest acknowledged write" is well defined; versions only
//! grow. A read that finds nothing is never stale: Redis may have lost the
//! value (a restart), and RAM holding *no* value is always safe. Writes that
//! Redis itself lost (acknowledged after the snapshot a server restarts
//! from, or after replication to a replica that is then promoted was cut)
//! are left out of the check: the promise is about RAM agreeing with Redis,
//! and no cache can serve what its store forgot.
//!
//! The bound asserted is the stated one, `deletion_check_period` plus one
//! round trip, plus [`SLACK`].

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachenode::{CacheNode, Ttl};
use support::{Nodes, Proxy, TestRedis};

/// The nodes' deletion-check period: the staleness bound, before slack.
const CHECK: Duration = Duration::from_millis(500);
/// The nodes' operation timeout.
const OP_TIMEOUT: Duration = Duration::from_millis(700);
/// Scheduling on a loaded 2-core machine (the test's tasks share the
/// runtime with the nodes' own), on top of the stated bound. The worst
/// staleness measured stays below `CHECK` in every scenario
/// (RELIABILITY.md).
const SLACK: Duration = Duration::from_millis(100);
const KEYS: u64 = 40;

#[derive(Debug, Clone)]
enum Op {
    Write {
        key: u64,
        version: u64,
        end: Instant,
    },
    Read {
        node: usize,
        key: u64,
        start: Instant,
        /// When the read returned (for a spinning reader, no earlier than
        /// that).
        end: Instant,
        version: Option<u64>,
    },
}

/// A failover to a promoted replica, as the checker needs it.
struct Failover {
    /// Just before the first node was sent to the replica.
    began: Instant,
    /// Per key, the newest version the promoted replica held before any
    /// node was sent to it.
    replica: HashMap<u64, u64>,
    /// Per key, the newest version the old primary held once no node could
    /// reach it any more.
    old_primary: HashMap<u64, u64>,
}

/// Everything the workload did.
#[derive(Default)]
struct History {
    ops: Mutex<Vec<Op>>,
    slowest_call: Mutex<Duration>,
    failed_calls: AtomicU64,
    /// Windows whose acknowledged writes Redis lost.
    lost: Mutex<Vec<(Instant, Instant)>>,
    /// A failover to a replica that lacks some acknowledged writes: those
    /// the old primary holds and the replica does not (`replica[k] < v <=
    /// old_primary[k]`: writes to a key are serialized, so each server
    /// holds a prefix of its versions). Such a write still binds every read
    /// that returned before the failover began (the nodes' Redis held it
    /// then), and no read after.
    failover: Mutex<Option<Failover>>,
    /// Reads done by spinning readers (which record only the last read of
    /// each version they see).
    spun: AtomicU64,
}

impl History {
    fn record(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    fn took(&self, d: Duration) {
        let mut s = self.slowest_call.lock().unwrap();
        *s = (*s).max(d);
    }

    /// Checks every read against the writes acknowledged more than `bound`
    /// before it started; returns the worst staleness seen (how long after
    /// a newer write's acknowledgement a read still returned an older
    /// version), or the violations.
    fn check(&self, bound: Duration) -> Result<Duration, Vec<String>> {
        let ops = self.ops.lock().unwrap();
        let lost = self.lost.lock().unwrap();
        let failover = self.failover.lock().unwrap();
        // Per key: acknowledged at, version, binds only reads that returned
        // before this instant.
        let mut writes: HashMap<u64, Vec<(Instant, u64, Option<Instant>)>> = HashMap::new();
        for op in ops.iter() {
            if let Op::Write { key, version, end } = op {
                if lost.iter().any(|(from, to)| from <= end && end <= to) {
                    continue;
                }
                let until = failover.as_ref().and_then(|f| {
                    let on_replica = f.replica.get(key).copied().unwrap_or(0);
                    let on_old = f.old_primary.get(key).copied().unwrap_or(0);
                    (*version > on_replica && *version <= on_old).then_some(f.began)
                });
                writes
                    .entry(*key)
                    .or_default()
                    .push((*end, *version, until));
            }
        }
        let mut worst = Duration::ZERO;
        let mut violations = Vec::new();
        for op in ops.iter() {
            let Op::Read {
                node,
                key,
                start,
                end,
                version: Some(v),
            } = op
            else {
                continue;
            };
            for (acked, newer, until) in writes.get(key).into_iter().flatten() {
                if until.is_some_and(|until| *end >= until) {
                    continue;
                }
                if newer > v && acked <= start {
                    let stale_for = start.duration_since(*acked);
                    worst = worst.max(stale_for);
                    if stale_for > bound {
                        violations.push(format!(
                            "node {node} read version {v} of key {key} {stale_for:?} after version {newer} was acknowledged"
                        ));
                    }
                }
            }
        }
        if violations.is_empty() {
            Ok(worst)
        } else {
            Err(violations)
        }
    }
}

/// Every node here: a call or a connection attempt that takes longer than
/// [`OP_TIMEOUT`] fails; RAM is checked against the bus every [`CHECK`].
const NODES: Nodes = Nodes::new("faults", OP_TIMEOUT)
    .connect_timeout(OP_TIMEOUT)
    .checking_every(CHECK);

/// Runs the workload on `nodes` until `stop`; writes are serialized per key.
/// With `spin`, readers never pause or yield between reads: RAM hits run
/// back to back, as in a hot loop.
async fn workload(
    nodes: Vec<CacheNode>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    seed: u64,
    spin: bool,
) {
    let versions = Arc::new(AtomicU64::new(1));
    let key_locks: Arc<Vec<tokio::sync::Mutex<()>>> =
        Arc::new((0..KEYS).map(|_| tokio::sync::Mutex::new(())).collect());
    let mut tasks = Vec::new();
    for (i, node) in nodes.into_iter().enumerate() {
        for t in 0..2u64 {
            let (node, history, stop, versions, key_locks) = (
                node.clone(),
                history.clone(),
                stop.clone(),
                versions.clone(),
                key_locks.clone(),
            );
            let mut rng = fastrand::Rng::with_seed(seed ^ ((i as u64) << 8) ^ t);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let key = rng.u64(..KEYS);
                    let name = format!("key{key}");
                    let started = Instant::now();
                    // 10% writes, 2% RAM invalidations, 88% reads: RAM
                    // entries live long enough for staleness to show.
                    // With spinning readers, the writes come from
                    // `writers_apart`: here they would starve.
                    let op = if spin { 49 } else { rng.u8(..50) };
                    match op {
                        0..=4 => {
                            let _guard = key_locks[key as usize].lock().await;
                            let version = versions.fetch_add(1, Ordering::SeqCst);
                            let started = Instant::now();
                            let r = node.set(&name, &version, Ttl::Default).await;
                            history.took(started.elapsed());
                            match r {
                                Ok(()) => history.record(Op::Write {
                                    key,
                                    version,
                                    end: Instant::now(),
                                }),
                                Err(_) => {
                                    history.failed_calls.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        5 => {
                            let r = node.invalidate_many(&[name.as_str()]).await;
                            history.took(started.elapsed());
                            if r.is_err() {
                                history.failed_calls.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ if spin => {
                            // Reads of one key back to back for up to
                            // 1.5 s, never yielding on RAM hits. Only the
                            // last read of each version is recorded: that
                            // is the one the checker needs.
                            let until = Instant::now() + Duration::from_millis(rng.u64(300..1500));
                            let mut last: Option<(Option<u64>, Instant)> = None;
                            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                                let started = Instant::now();
                                history.spun.fetch_add(1, Ordering::Relaxed);
                                match node.get::<u64>(&name).await {
                                    Ok(version) => {
                                        if let Some((seen, at)) = last {
                                            if seen != version {
                                                history.record(Op::Read {
                                                    node: i,
                                                    key,
                                                    start: at,
                                                    end: started,
                                                    version: seen,
                                                });
                                            }
                                        }
                                        last = Some((version, started));
                                    }
                                    Err(_) => {
                                        history.failed_calls.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                            }
                            if let Some((version, start)) = last {
                                history.record(Op::Read {
                                    node: i,
                                    key,
                                    start,
                                    end: Instant::now(),
                                    version,
                                });
                            }
                            continue;
                        }
                        _ => {
                            let r = node.get::<u64>(&name).await;
                            history.took(started.elapsed());
                            match r {
                                Ok(version) => history.record(Op::Read {
                                    node: i,
                                    key,
                                    start: started,
                                    end: Instant::now(),
                                    version,
                                }),
                                Err(_) => {
                                    history.failed_calls.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(rng.u64(1..6))).await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("no workload task panics");
    }
}

/// Runs the workload for `total`, calling `fault` after `warmup`; then
/// checks the history against `bound` and prints the worst staleness.
async fn under_fault<F, Fut>(
    name: &str,
    redis_url: &str,
    nodes: Vec<CacheNode>,
    bound: Duration,
    total: Duration,
    fault: F,
) -> Arc<History>
where
    F: FnOnce(Arc<History>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    run_under_fault(name, redis_url, nodes, bound, total, false, fault).await
}

/// [`under_fault`], with readers that never yield when `spin`.
async fn run_under_fault<F, Fut>(
    name: &str,
    redis_url: &str,
    nodes: Vec<CacheNode>,
    bound: Duration,
    total: Duration,
    spin: bool,
    fault: F,
) -> Arc<History>
where
    F: FnOnce(Arc<History>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn(workload(
        nodes.clone(),
        history.clone(),
        stop.clone(),
        7,
        spin,
    ));
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fault(history.clone()).await;
    tokio::time::sleep(total.saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    run.await.expect("workload");
    let slowest = *history.slowest_call.lock().unwrap();
    let ops = history.ops.lock().unwrap().len();
    let verdict = history.check(bound);
    let reads = history
        .ops
        .lock()
        .unwrap()
        .iter()
        .filter(|op| matches!(op, Op::Read { .. }))
        .count();
    println!(
        "FAULT {name}: {ops} ops ({reads} reads), {} failed calls, slowest call {slowest:?}, worst staleness {:?} (bound {bound:?})",
        history.failed_calls.load(Ordering::Relaxed),
        verdict.as_ref().ok(),
    );
    assert!(
        slowest <= OP_TIMEOUT * 3 + SLACK,
        "{name}: a call took {slowest:?}, past its timeouts"
    );
    if let Err(v) = verdict {
        panic!(
            "{name}: {} stale reads, e.g. {:?}",
            v.len(),
            &v[..v.len().min(5)]
        );
    }
    for n in &nodes {
        n.shutdown().await;
    }
    drop(nodes);
    // No task leaked: once the nodes are shut down and dropped, none of
    // their connections (the bus subscriptions, the shared connections, the
    // builders) is left on the server.
    let client = redis::Client::open(redis_url).unwrap();
    let count = |kind: &'static str| {
        let client = client.clone();
        async move {
            let mut c = client.get_multiplexed_async_connection().await.ok()?;
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg(kind)
                .query_async(&mut c)
                .await
                .ok()?;
            Some(list.lines().filter(|l| !l.trim().is_empty()).count())
        }
    };
    let clean = support::eventually(Duration::from_secs(5), || async {
        // Our own connection is the one normal client left.
        count("pubsub").await == Some(0) && count("normal").await == Some(1)
    })
    .await;
    assert!(
        clean,
        "{name}: connections left after shutdown: pubsub {:?}, normal {:?}",
        count("pubsub").await,
        count("normal").await
    );
    history
}

async fn four_nodes(url: &str) -> Vec<CacheNode> {
    let mut v = Vec::new();
    for _ in 0..4 {
        v.push(NODES.node(url).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_holds_when_redis_is_killed_and_restarted_empty() {
    let redis = Arc::new(Mutex::new(TestRedis::start()));
    let url = redis.lock().unwrap().url();
    let nodes = four_nodes(&url).await;
    let server = redis.clone();
    let restart = move |_| async move {
        server.lock().unwrap().kill();
        tokio::time::sleep(Duration::from_millis(400)).await;
        tokio::task::spawn_blocking(move || server.lock().unwrap().restart())
            .await
            .unwrap();
    };
    under_fault(
        "kill -9 + restart",
        &url,
        nodes,
        CHECK + SLACK,
        Duration::from_secs(4),
        restart,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_holds_when_subscriptions_are_killed_repeatedly() {
    let redis = TestRedis::start();
    let nodes = four_nodes(&redis.url()).await;
    let client = redis.client();
    let kill = |_| async move {
        for _ in 0..6 {
            let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut client.get_connection().unwrap());
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    };
    under_fault(
        "CLIENT KILL TYPE pubsub x6",
        &redis.url(),
        nodes,
        CHECK + SLACK,
        Duration::from_secs(4),
        kill,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_holds_when_redis_pauses_longer_than_the_call_timeout() {
    let redis = TestRedis::start();
    let nodes = four_nodes(&redis.url()).await;
    let client = redis.client();
    let pause = |_| async move {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1500)
            .query(&mut client.get_connection().unwrap())
            .unwrap();
    };
    under_fault(
        "CLIENT PAUSE 1.5 s",
        &redis.url(),
        nodes,
        CHECK + SLACK,
        Duration::from_secs(4),
        pause,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_holds_when_one_node_is_cut_off_past_the_bound_then_heals() {
    let redis = TestRedis::start();
    let proxy = Proxy::start(redis.port());
    let mut nodes = vec![NODES.node(&proxy.url()).await];
    for _ in 0..3 {
        nodes.push(NODES.node(&redis.url()).await);
    }
    let cut_node = nodes[0].clone();
    let counter = redis.client();
    let partition = |_| async move {
        proxy.cut();
        tokio::time::sleep(CHECK * 4).await;
        assert!(
            cut_node.bus_health().unwrap().suspended,
            "cut off past the bound"
        );
        proxy.restore();
        // Every message published while it was cut off reaches it from the
        // log: it catches up to the counter without dropping its RAM.
        let caught_up = support::eventually(Duration::from_secs(5), || async {
            let seq: Option<u64> = redis::cmd("GET")
                .arg("faults:{bus}:seq")
                .query(&mut counter.get_connection().unwrap())
                .unwrap();
            let h = cut_node.bus_health().unwrap();
            !h.suspended && h.last_applied_seq >= seq.unwrap_or(0)
        })
        .await;
        let h = cut_node.bus_health().unwrap();
        assert!(caught_up, "the cut-off node caught up: {h:?}");
        assert_eq!(h.gap_flushes, 0, "nothing was lost: {h:?}");
    };
    under_fault(
        "one node cut off 2 s",
        &redis.url(),
        nodes,
        CHECK + SLACK,
        Duration::from_secs(5),
        partition,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_holds_when_one_node_sees_200ms_of_latency() {
    let redis = TestRedis::start();
    let proxy = Proxy::start(redis.port());
    let mut nodes = vec![NODES.node(&proxy.url()).await];
    for _ in 0..3 {
        nodes.push(NODES.node(&redis.url()).await);
    }
    let slow_node = nodes[0].clone();
    let slow = |_| async move {
        proxy.set_delay(Duration::from_millis(200));
        // Its round trips take 400 ms, between half the period (where the
        // checks used to give up) and the period: its checks still
        // complete, and renew its lease part of the time.
        tokio::time::sleep(CHECK * 4).await;
        let h = slow_node.bus_health().unwrap();
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            - h.last_check_ok_ms;
        assert!(
            since < 2 * CHECK.as_millis() as u64,
            "checks complete: {h:?}"
        );
    };
    // Its round trips take 400 ms more (200 ms each way).
    let bound = CHECK + SLACK + Duration::from_millis(400);
    under_fault(
        "one node +200 ms",
        &redis.url(),
        nodes,
        bound,
        Duration::from_secs(4),
        slow,
    )
    .await;
}

/// Redis restarts from a snapshot taken during the run, while one node is
/// cut off: the counter goes back, the epoch survives, and the other nodes
/// publish past the cut node's old position before it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_holds_when_redis_restarts_from_an_older_snapshot() {
    let redis = Arc::new(Mutex::new(TestRedis::start()));
    let url = redis.lock().unwrap().url();
    let px = Proxy::start(redis.lock().unwrap().port());
    let mut nodes = vec![NODES.node(&px.url()).await];
    for _ in 0..3 {
        nodes.push(NODES.node(&url).await);
    }
    let server = redis.clone();
    let burster = nodes[1].clone();
    let restart = move |history: Arc<History>| async move {
        let snapshot = Instant::now();
        let s = server.clone();
        tokio::task::spawn_blocking(move || s.lock().unwrap().save_snapshot())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        px.cut();
        tokio::task::spawn_blocking(move || server.lock().unwrap().restart_from_snapshot())
            .await
            .unwrap();
        history
            .lost
            .lock()
            .unwrap()
            .push((snapshot, Instant::now()));
        // The others write, under numbers the cut node believes it has
        // applied; then a burst of invalidations of other keys takes the
        // counter past its position, and it comes back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..300 {
            let _ = burster.invalidate_many(&[&format!("burst{i}")]).await;
        }
        px.restore();
    };
    under_fault(
        "restart from an older snapshot, one node cut off",
        &url,
        nodes,
        CHECK + SLACK,
        Duration::from_secs(4),
        restart,
    )
    .await;
}

/// Replication to the replica is cut, the primary goes on acknowledging
/// writes, then the replica is promoted and every node is sent to it (one
/// address in front of both, as a DNS name or a virtual IP gives); one node
/// comes back only after the others have published past its position.
///
/// Replication is asynchronous (here it lags by 50 ms): writes
/// acknowledged just before the cut may not have reached the replica
/// either. Which ones did is read off the promoted replica before any node
/// is sent to it; the writes it does not hold that started before the
/// nodes were sent to it are the ones Redis lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_holds_when_a_lagging_replica_is_promoted() {
    let primary = TestRedis::start();
    let replica = TestRedis::start();
    let replication = Proxy::start(primary.port());
    replica.replicate_from(replication.port());
    assert!(
        support::eventually(Duration::from_secs(10), || async {
            replica.replica_synced()
        })
        .await
    );
    // The replica lags: what the primary acknowledged in the last 50 ms
    // before the cut never reaches it.
    replication.set_delay(Duration::from_millis(50));
    let front = Arc::new(Proxy::start(primary.port()));
    let late = Arc::new(Proxy::start(primary.port()));
    let mut nodes = vec![NODES.node(&late.url()).await];
    for _ in 0..3 {
        nodes.push(NODES.node(&front.url()).await);
    }
    let (f, l) = (front.clone(), late.clone());
    let replica_port = replica.port();
    let primary_port = primary.port();
    let failover = move |history: Arc<History>| async move {
        replication.cut();
        let cut = Instant::now();
        tokio::time::sleep(Duration::from_millis(600)).await;
        l.cut();
        let promote = tokio::task::spawn_blocking(move || {
            let _: () = redis::cmd("REPLICAOF")
                .arg("NO")
                .arg("ONE")
                .query(
                    &mut redis::Client::open(format!("redis://127.0.0.1:{replica_port}"))
                        .unwrap()
                        .get_connection()
                        .unwrap(),
                )
                .unwrap();
        });
        promote.await.unwrap();
        // Nothing writes to the replica until the retarget below. Read
        // through a node without RAM: no listener, so its connect runs no
        // bus script on the replica (which would load the script cache the
        // nodes then find there, and could set the bus epoch).
        let newest = |port: u16| async move {
            let reader = support::connect(
                NODES
                    .builder(&format!("redis://127.0.0.1:{port}"))
                    .without_ram()
                    .without_bus()
                    .key_set_sweep_every(None),
            )
            .await;
            let mut newest = HashMap::new();
            for key in 0..KEYS {
                if let Some(v) = reader.get::<u64>(&format!("key{key}")).await.unwrap() {
                    newest.insert(key, v);
                }
            }
            reader.shutdown().await;
            newest
        };
        let on_replica = newest(replica_port).await;
        let began = Instant::now();
        f.retarget(replica_port);
        l.retarget(replica_port);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // No node reaches the old primary any more (a connection the
        // front's accept loop opened to it while retargeting would).
        let clients_of_old = |kind: &str| {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .arg("TYPE")
                .arg(kind)
                .query(
                    &mut redis::Client::open(format!("redis://127.0.0.1:{primary_port}"))
                        .unwrap()
                        .get_connection()
                        .unwrap(),
                )
                .unwrap();
            list.lines().filter(|l| !l.trim().is_empty()).count()
        };
        assert!(
            support::eventually(Duration::from_secs(5), || async {
                clients_of_old("normal") == 1 && clients_of_old("pubsub") == 0
            })
            .await,
            "a node still talks to the old primary"
        );
        let on_old = newest(primary_port).await;
        let unreplicated = history
            .ops
            .lock()
            .unwrap()
            .iter()
            .filter(|op| {
                matches!(op, Op::Write { key, version, end, .. }
                    if *end < cut && *version > on_replica.get(key).copied().unwrap_or(0))
            })
            .count();
        println!("writes acknowledged before the cut that the replica never got: {unreplicated}");
        *history.failover.lock().unwrap() = Some(Failover {
            began,
            replica: on_replica,
            old_primary: on_old,
        });
        l.restore();
    };
    // Connections are counted on the server the nodes end on.
    under_fault(
        "lagging replica promoted, one node cut off",
        &replica.url(),
        nodes,
        CHECK + SLACK,
        Duration::from_secs(4),
        failover,
    )
    .await;
    drop((front, late));
}

/// Writes from nodes on a runtime of their own, on their own thread, so
/// that they go on whatever the readers' runtime is doing. Returns when
/// `stop` is set.
fn writers_apart(
    url: String,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let writer = NODES.node(&url).await;
            let mut rng = fastrand::Rng::with_seed(99);
            let mut version = 1_000_000u64;
            while !stop.load(Ordering::Relaxed) {
                let key = rng.u64(..KEYS);
                version += 1;
                let started = Instant::now();
                let r = writer
                    .set(&format!("key{key}"), &version, Ttl::Default)
                    .await;
                history.took(started.elapsed());
                match r {
                    Ok(()) => history.record(Op::Write {
                        key,
                        version,
                        end: Instant::now(),
                    }),
                    Err(_) => {
                        history.failed_calls.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.u64(2..8))).await;
            }
            writer.shutdown().await;
        })
    })
}

/// Readers whose reads are RAM hits back to back, never yielding between
/// them, on every worker of the runtime (or on a `current_thread` one),
/// while writers on another runtime change the values and the
/// subscriptions are killed.
async fn readers_never_yield(name: &str) {
    let redis = TestRedis::start();
    let nodes = four_nodes(&redis.url()).await;
    let client = redis.client();
    let stop = Arc::new(AtomicBool::new(false));
    let (url, s) = (redis.url(), stop.clone());
    let writes = Arc::new(std::sync::OnceLock::<Arc<History>>::new());
    let w = writes.clone();
    let kill = |history: Arc<History>| async move {
        let _ = w.set(history.clone());
        let writers = writers_apart(url, history.clone(), s.clone());
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut client.get_connection().unwrap());
        }
        s.store(true, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || writers.join().unwrap())
            .await
            .unwrap();
    };
    let history = run_under_fault(
        name,
        &redis.url(),
        nodes,
        CHECK + SLACK,
        Duration::from_secs(3),
        true,
        kill,
    )
    .await;
    // Not vacuous: the writers ran while the readers spun.
    let ops = history.ops.lock().unwrap();
    let writes = ops.iter().filter(|o| matches!(o, Op::Write { .. })).count();
    let reads = ops.iter().filter(|o| matches!(o, Op::Read { .. })).count();
    let spun = history.spun.load(Ordering::Relaxed);
    println!("{name}: {writes} writes, {spun} reads ({reads} recorded)");
    assert!(writes >= 100, "{name}: only {writes} writes");
    assert!(spun >= 10_000, "{name}: only {spun} reads");
    assert!(reads >= 20, "{name}: only {reads} reads recorded");
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_holds_when_readers_never_yield_on_a_busy_runtime() {
    readers_never_yield("readers never yield, multi-thread").await;
}

/// On a `current_thread` runtime the listener runs only when a reader's
/// read goes to Redis.
#[tokio::test]
async fn staleness_holds_when_readers_never_yield_on_current_thread() {
    readers_never_yield("readers never yield, current_thread").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_holds_over_random_fault_schedules() {
    let redis = TestRedis::start();
    let client = redis.client();
    for seed in 1..=4u64 {
        let nodes = four_nodes(&redis.url()).await;
        let client = client.clone();
        let faults = move |_| async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let end = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < end {
                let mut c = client.get_connection().unwrap();
                let _: redis::RedisResult<redis::Value> = match rng.u8(..3) {
                    0 => redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("TYPE")
                        .arg("pubsub")
                        .query(&mut c),
                    1 => redis::cmd("CLIENT")
                        .arg("PAUSE")
                        .arg(rng.u64(50..600))
                        .query(&mut c),
                    _ => redis::cmd("PING").query(&mut c),
                };
                tokio::time::sleep(Duration::from_millis(rng.u64(50..300))).await;
            }
        };
        under_fault(
            &format!("random schedule, seed {seed}"),
            &redis.url(),
            nodes,
            CHECK + SLACK,
            Duration::from_millis(2500),
            faults,
        )
        .await;
    }
}

#[test]
fn checker_flags_a_stale_read_and_accepts_a_fresh_one() {
    let h = History::default();
    let t0 = Instant::now();
    h.record(Op::Write {
        key: 1,
        version: 1,
        end: t0,
    });
    h.record(Op::Write {
        key: 1,
        version: 2,
        end: t0 + Duration::from_millis(10),
    });
    h.record(Op::Read {
        node: 0,
        key: 1,
        start: t0 + Duration::from_millis(50),
        end: t0 + Duration::from_millis(50),
        version: Some(1),
    });
    assert_eq!(
        h.check(Duration::from_millis(100)),
        Ok(Duration::from_millis(40))
    );
    h.record(Op::Read {
        node: 1,
        key: 1,
        start: t0 + Duration::from_millis(500),
        end: t0 + Duration::from_millis(500),
        version: Some(1),
    });
    assert!(h.check(Duration::from_millis(100)).is_err());
    let fresh = History::default();
    fresh.record(Op::Write {
        key: 1,
        version: 2,
        end: t0,
    });
    fresh.record(Op::Read {
        node: 0,
        key: 1,
        start: t0 + Duration::from_secs(1),
        end: t0 + Duration::from_secs(1),
        version: Some(2),
    });
    fresh.record(Op::Read {
        node: 0,
        key: 1,
        start: t0 + Duration::from_secs(1),
        end: t0 + Duration::from_secs(1),
        version: None,
    });
    assert_eq!(fresh.check(Duration::from_millis(100)), Ok(Duration::ZERO));
}

/// A write the promoted replica lacks binds the reads that returned before
/// the failover began, and no later one; a write that reached the replica,
/// whenever it started, binds every read.
#[test]
fn checker_bounds_writes_lost_at_failover_to_the_reads_before_it() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let read = |start: Duration, end: Duration, v: u64| Op::Read {
        node: 0,
        key: 1,
        start: t0 + start,
        end: t0 + end,
        version: Some(v),
    };
    let history = |reads: Vec<Op>| {
        let h = History::default();
        for (version, end) in [(1, ms(0)), (2, ms(10)), (3, ms(900))] {
            h.record(Op::Write {
                key: 1,
                version,
                end: t0 + end,
            });
        }
        for r in reads {
            h.record(r);
        }
        // The replica held version 1, the old primary 2; version 3 was
        // written to the replica after the failover began at 800 ms.
        *h.failover.lock().unwrap() = Some(Failover {
            began: t0 + ms(800),
            replica: HashMap::from([(1, 1)]),
            old_primary: HashMap::from([(1, 2)]),
        });
        h
    };
    let bound = ms(100);
    // Before the failover, the nodes' Redis held version 2.
    assert!(history(vec![read(ms(500), ms(501), 1)])
        .check(bound)
        .is_err());
    // After it, version 1 is what Redis holds.
    assert!(history(vec![read(ms(850), ms(851), 1)])
        .check(bound)
        .is_ok());
    // A read that began before and returned after may have been served by
    // the replica.
    assert!(history(vec![read(ms(799), ms(801), 1)])
        .check(bound)
        .is_ok());
    // Version 3 reached the replica: it binds every read.
    assert!(history(vec![read(ms(1100), ms(1101), 1)])
        .check(bound)
        .is_err());
}
