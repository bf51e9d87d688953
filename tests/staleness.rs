//! The staleness promise in the regimes that used to break it: readers that
//! never yield, a Redis slow enough to fail checks but not reads, a server
//! replaced by an older copy of itself, a publication that fails after its
//! write landed, writes through a Redis-only handle.
//!
//! The promise: once an invalidation call returns `Ok`, no node serves the
//! old value from RAM later than `deletion_check_period` plus one round
//! trip. Each test asserts that bound plus [`MARGIN`], measured from the
//! writer's `Ok`.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachenode::Layers;
use cachenode::{CacheNode, Error, Ttl};
use redis::Commands;
use support::{bus_seq, caught_up, eventually, in_ram, Nodes, Proxy, TestRedis};

const NS: &str = "st";
/// Slack on top of the stated bound: the polling of the checks below and
/// the scheduling of the test's own threads on a loaded 2-core machine
/// (RELIABILITY.md gives the worst measured).
const MARGIN: Duration = Duration::from_millis(100);
/// For what has no tight bound (reconnecting after a restart).
const LONG: Duration = Duration::from_secs(15);

/// Every node here: 2 s per Redis call; each test sets the check period.
const NODES: Nodes = Nodes::new(NS, Duration::from_secs(2));

/// A writer node on a runtime of its own, on its own thread: it keeps
/// working whatever the test's runtime is doing.
struct Writer {
    jobs: std::sync::mpsc::Sender<(u64, std::sync::mpsc::Sender<Instant>)>,
}

impl Writer {
    fn start(url: String, every: Duration) -> Writer {
        let (jobs, rx) = std::sync::mpsc::channel::<(u64, std::sync::mpsc::Sender<Instant>)>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let w = NODES.checking_every(every).node(&url).await;
                ready_tx.send(()).unwrap();
                while let Ok((value, done)) = rx.recv() {
                    w.set("k", &value, Ttl::Default).await.unwrap();
                    let _ = done.send(Instant::now());
                }
                w.shutdown().await;
            });
        });
        ready_rx.recv_timeout(LONG).expect("writer connects");
        Writer { jobs }
    }

    /// Writes `value` under `k`; returns when the write returned `Ok`.
    fn set(&self, value: u64) -> Instant {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs.send((value, tx)).unwrap();
        rx.recv_timeout(LONG).expect("write acknowledged")
    }
}

/// Reads `k` through `reader` in a loop that never yields to the runtime
/// while reads are RAM hits, until it sees `fresh` or `give_up` has passed
/// since `acked()` was set. Returns how long after the acknowledgement the
/// old value was last served, or `None` if it still was at `give_up`.
async fn spin_until_fresh(
    reader: &CacheNode,
    fresh: u64,
    acked: &Mutex<Option<Instant>>,
    give_up: Duration,
) -> Option<Duration> {
    let mut last_old: Option<Instant> = None;
    loop {
        let value = reader.get::<u64>("k").await.unwrap();
        let now = Instant::now();
        let Some(acked) = *acked.lock().unwrap() else {
            continue;
        };
        if value == Some(fresh) {
            return Some(last_old.map_or(Duration::ZERO, |t| t.saturating_duration_since(acked)));
        }
        if now > acked {
            last_old = Some(now);
        }
        if now.duration_since(acked) > give_up {
            return None;
        }
    }
}

/// On a `current_thread` runtime, a reader whose every read is a RAM hit
/// never lets the listener run. The lease runs out all the same, the read
/// goes to Redis, and the new value is served within the bound.
#[tokio::test]
async fn reader_that_never_yields_on_current_thread_sees_a_write_within_the_bound() {
    let redis = TestRedis::start();
    let every = Duration::from_millis(500);
    let writer = Writer::start(redis.url(), every);
    writer.set(1);
    let reader = NODES.checking_every(every).node(&redis.url()).await;
    assert_eq!(reader.get::<u64>("k").await.unwrap(), Some(1));
    assert_eq!(in_ram::<u64>(&reader, "k").await, Some(1));

    let acked = Arc::new(Mutex::new(None));
    let a = acked.clone();
    // The write happens on another thread while this one spins.
    let w = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        let at = writer.set(2);
        *a.lock().unwrap() = Some(at);
        writer
    });
    let stale_for = spin_until_fresh(&reader, 2, &acked, every + MARGIN * 10).await;
    let _writer = w.join().unwrap();
    let stale_for = stale_for.expect("the reader served the old value past 10x the margin");
    assert!(
        stale_for <= every + MARGIN,
        "old value served {stale_for:?} after the write (bound {every:?} + {MARGIN:?})"
    );
}

/// Every worker of a multi-thread runtime runs a reader that never yields
/// on RAM hits: the listener task cannot be scheduled. Each reader still
/// sees the write within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_on_every_worker_that_never_yield_see_a_write_within_the_bound() {
    let redis = TestRedis::start();
    let every = Duration::from_millis(500);
    let writer = Writer::start(redis.url(), every);
    writer.set(1);
    let reader = NODES.checking_every(every).node(&redis.url()).await;
    assert_eq!(reader.get::<u64>("k").await.unwrap(), Some(1));

    let acked = Arc::new(Mutex::new(None));
    let spinning = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (reader, acked, spinning) = (reader.clone(), acked.clone(), spinning.clone());
        readers.push(tokio::spawn(async move {
            spinning.fetch_add(1, Ordering::SeqCst);
            spin_until_fresh(&reader, 2, &acked, every + MARGIN * 10).await
        }));
    }
    // Both workers are taken before the write.
    while spinning.load(Ordering::SeqCst) < 2 {
        std::thread::yield_now();
    }
    std::thread::sleep(Duration::from_millis(50));
    let at = writer.set(2);
    *acked.lock().unwrap() = Some(at);
    for r in readers {
        let stale_for = r
            .await
            .unwrap()
            .expect("a reader served the old value past 10x the margin");
        assert!(
            stale_for <= every + MARGIN,
            "old value served {stale_for:?} after the write (bound {every:?} + {MARGIN:?})"
        );
    }
}

/// A write through a Redis-only handle must drop the writer's own RAM copy:
/// its own bus message never reaches it.
#[tokio::test]
async fn redis_only_writes_and_deletes_drop_the_writers_own_ram_copy() {
    let redis = TestRedis::start();
    let n = NODES
        .checking_every(Duration::from_millis(500))
        .node(&redis.url())
        .await;
    n.set("k", &1u64, Ttl::Default).await.unwrap();
    assert_eq!(n.get::<u64>("k").await.unwrap(), Some(1));
    n.with_layers(Layers::Redis)
        .set("k", &2u64, Ttl::Default)
        .await
        .unwrap();
    assert_eq!(n.get::<u64>("k").await.unwrap(), Some(2));

    assert_eq!(
        in_ram::<u64>(&n, "k").await,
        Some(2),
        "filled again from Redis"
    );
    assert!(n.with_layers(Layers::Redis).delete("k").await.unwrap());
    assert_eq!(n.get::<u64>("k").await.unwrap(), None);

    n.set("k", &3u64, Ttl::Default).await.unwrap();
    assert_eq!(in_ram::<u64>(&n, "k").await, Some(3));
    n.with_layers(Layers::Redis).delete_all().await.unwrap();
    assert_eq!(n.get::<u64>("k").await.unwrap(), None);
}

/// Redis answers reads (300 ms round trip) but a check at half the period
/// (250 ms) never completes. The node still must not serve, past the bound,
/// a value it filled while no invalidation was being applied.
#[tokio::test]
async fn redis_slow_enough_to_fail_checks_but_not_reads_never_serves_past_the_bound() {
    let redis = TestRedis::start();
    let every = Duration::from_millis(500);
    let rtt = Duration::from_millis(300);
    let writer = NODES.checking_every(every).node(&redis.url()).await;
    writer.set("k", &1u64, Ttl::Default).await.unwrap();
    let px = Proxy::start(redis.port());
    let x = NODES.checking_every(every).node(&px.url()).await;
    px.set_delay(rtt / 2);
    // x notices that its checks do not complete in time...
    let suspended = eventually(LONG, || async { x.bus_health().unwrap().suspended }).await;
    assert!(suspended, "{:?}", x.bus_health());
    // ...and then reads k from Redis into RAM through the slow link.
    assert_eq!(x.get::<u64>("k").await.unwrap(), Some(1));

    // x's subscription is killed: the next invalidation reaches x only
    // through its checks.
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut redis.conn())
        .unwrap();
    writer.set("k", &2u64, Ttl::Default).await.unwrap();
    let acked = Instant::now();
    let bound = every + rtt + MARGIN;
    let mut last_old = None;
    while acked.elapsed() < bound + Duration::from_secs(2) {
        if in_ram::<u64>(&x, "k").await == Some(1) {
            last_old = Some(acked.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        last_old.is_none_or(|t| t <= bound),
        "x served the old value {last_old:?} after the write (bound {bound:?}): {:?}",
        x.bus_health()
    );
    assert_eq!(x.get::<u64>("k").await.unwrap(), Some(2));
}

/// Which copy of the server the nodes come back to after a cut.
enum Replaced {
    /// The same server, restarted from a snapshot older than what the node
    /// applied.
    Snapshot,
    /// A replica that missed the last writes, promoted.
    Replica,
}

/// Node `x` applied messages up to `s0 + 3`; it is cut off while the server
/// is replaced by one whose bus is at `s0` (same epoch), and a writer then
/// publishes `k`'s invalidation as `s0 + 1` and more, past `x`'s position.
/// `x` must see that the history it applied is gone.
async fn node_comes_back_to_a_server_that_lost_what_it_applied(how: Replaced) {
    let every = Duration::from_millis(500);
    let mut primary = TestRedis::start();
    // The replica follows the primary through a proxy, so replication can
    // be cut; the nodes reach "Redis" through proxies that can be cut and
    // pointed at the replica (a failover behind one address).
    let replication = Proxy::start(primary.port());
    let replica = TestRedis::start();
    replica.replicate_from(replication_port(&replication));
    let pw = Proxy::start(primary.port());
    let px = Proxy::start(primary.port());
    let w = NODES.checking_every(every).node(&pw.url()).await;
    let x = NODES.checking_every(every).node(&px.url()).await;
    w.set("k", &1u64, Ttl::Default).await.unwrap();
    caught_up([&x], bus_seq(&primary, NS)).await;
    assert_eq!(x.get::<u64>("k").await.unwrap(), Some(1));
    assert_eq!(in_ram::<u64>(&x, "k").await, Some(1));
    let s0 = bus_seq(&primary, NS);
    assert!(
        eventually(LONG, || async {
            replica.replica_synced() && bus_seq(&replica, NS) == s0
        })
        .await,
        "replica synced"
    );
    match how {
        Replaced::Snapshot => primary.save_snapshot(),
        Replaced::Replica => replication.cut(),
    }
    for other in ["a", "b", "c"] {
        w.invalidate_many(&[other]).await.unwrap();
    }
    assert!(
        eventually(LONG, || async {
            x.bus_health().unwrap().last_applied_seq == s0 + 3
        })
        .await
    );

    px.cut();
    pw.cut();
    match how {
        Replaced::Snapshot => primary.restart_from_snapshot(),
        Replaced::Replica => {
            replica.promote();
            pw.retarget(replica.port());
            px.retarget(replica.port());
        }
    }
    let server = match how {
        Replaced::Snapshot => &primary,
        Replaced::Replica => &replica,
    };
    assert_eq!(bus_seq(server, NS), s0, "the new server's bus is at s0");
    pw.restore();
    // The writer's first calls may meet its old connection.
    assert!(
        eventually(LONG, || async {
            w.set("k", &2u64, Ttl::Default).await.is_ok()
        })
        .await,
        "writer reconnects"
    );
    for other in ["d", "e", "f", "g"] {
        w.invalidate_many(&[other]).await.unwrap();
    }
    let target = bus_seq(server, NS);
    assert!(target > s0 + 3, "the new history passed x's position");

    px.restore();
    let back = eventually(LONG, || async {
        let h = x.bus_health().unwrap();
        h.connected && !h.suspended && h.last_applied_seq >= target
    })
    .await;
    assert!(back, "x came back: {:?}", x.bus_health());
    assert_eq!(
        in_ram::<u64>(&x, "k").await,
        None,
        "x serves the value invalidated as s0 + 1 of the new history: {:?}",
        x.bus_health()
    );
    assert_eq!(x.get::<u64>("k").await.unwrap(), Some(2));
    assert!(x.bus_health().unwrap().gap_flushes >= 1);
}

fn replication_port(proxy: &Proxy) -> u16 {
    proxy
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("proxy port")
}

#[tokio::test]
async fn node_cut_off_while_redis_restarts_from_an_older_snapshot_drops_what_it_cannot_know() {
    node_comes_back_to_a_server_that_lost_what_it_applied(Replaced::Snapshot).await;
}

#[tokio::test]
async fn node_cut_off_while_a_lagging_replica_is_promoted_drops_what_it_cannot_know() {
    node_comes_back_to_a_server_that_lost_what_it_applied(Replaced::Replica).await;
}

/// A client that may write the log plants an entry far ahead of the
/// counter (or replaces the log with another type). Writes still succeed
/// and still reach the other nodes.
#[tokio::test]
async fn foreign_log_entries_do_not_block_publishing() {
    let redis = TestRedis::start();
    let every = Duration::from_millis(500);
    let a = NODES.checking_every(every).node(&redis.url()).await;
    let b = NODES.checking_every(every).node(&redis.url()).await;
    let log = format!("{NS}:{{bus}}:log");
    for (round, plant) in ["entry", "type"].into_iter().enumerate() {
        let v = round as u64 * 10;
        a.set("k", &(v + 1), Ttl::Default).await.unwrap();
        caught_up([&b], bus_seq(&redis, NS)).await;
        assert_eq!(b.get::<u64>("k").await.unwrap(), Some(v + 1));
        assert_eq!(in_ram::<u64>(&b, "k").await, Some(v + 1));
        match plant {
            "entry" => {
                let _: String = redis
                    .conn()
                    .xadd(&log, "999999999999-0", &[("x", "y")])
                    .unwrap();
            }
            _ => {
                let _: () = redis.conn().set(&log, "not a stream").unwrap();
            }
        }
        a.set("k", &(v + 2), Ttl::Default)
            .await
            .unwrap_or_else(|e| panic!("set after a foreign {plant}: {e}"));
        let acked = Instant::now();
        let dropped = eventually(every + MARGIN, || async {
            in_ram::<u64>(&b, "k").await != Some(v + 1)
        })
        .await;
        assert!(
            dropped,
            "b still serves the old value {:?} after a foreign {plant}",
            acked.elapsed()
        );
        assert_eq!(b.get::<u64>("k").await.unwrap(), Some(v + 2));
    }
}

/// When the announcement cannot be made although the value landed, the
/// caller is told exactly that.
#[tokio::test]
async fn a_write_whose_announcement_fails_reports_it_with_the_value_in_redis() {
    let redis = TestRedis::start();
    let n = CacheNode::builder()
        .redis_url(redis.url())
        .namespace(NS)
        .without_ram()
        .build()
        .await
        .unwrap();
    n.set("k", &1u64, Ttl::Default).await.unwrap();
    // The counter no longer counts: every publication fails.
    let _: () = redis
        .conn()
        .set(format!("{NS}:{{bus}}:seq"), "not a number")
        .unwrap();
    let err = n.set("k", &2u64, Ttl::Default).await.unwrap_err();
    assert!(
        matches!(err, Error::Unannounced { op: "set", .. }),
        "reported as not announced: {err:?}"
    );
    assert!(err.is_transient());
    assert_eq!(
        n.get::<u64>("k").await.unwrap(),
        Some(2),
        "the value landed"
    );
    let err = n.delete("k").await.unwrap_err();
    assert!(
        matches!(err, Error::Unannounced { op: "delete", .. }),
        "{err:?}"
    );
}

/// A listener that keeps falling behind (its checks never complete) must
/// not leave `bus_health` claiming all is well, and RAM stops being served.
#[tokio::test]
async fn bus_health_reports_suspension_when_no_check_completes() {
    let redis = TestRedis::start();
    let every = Duration::from_millis(300);
    let px = Proxy::start(redis.port());
    let x = NODES.checking_every(every).node(&px.url()).await;
    x.set("k", &1u64, Ttl::Default).await.unwrap();
    assert_eq!(in_ram::<u64>(&x, "k").await, Some(1));
    assert!(!x.bus_health().unwrap().suspended);
    px.set_delay(every);
    let suspended = eventually(every * 2 + MARGIN, || async {
        x.bus_health().unwrap().suspended
    })
    .await;
    assert!(suspended, "{:?}", x.bus_health());
    assert_eq!(in_ram::<u64>(&x, "k").await, None);
    px.set_delay(Duration::ZERO);
    let back = eventually(LONG, || async { !x.bus_health().unwrap().suspended }).await;
    assert!(back);
    assert_eq!(in_ram::<u64>(&x, "k").await, Some(1));
}

/// A link slower than the period: the node still builds (its first position
/// is read under the operation timeout), answers every read from Redis, and
/// never serves RAM, since no check can complete within the period.
#[tokio::test]
async fn a_node_on_a_link_slower_than_the_period_builds_and_never_serves_ram() {
    let redis = TestRedis::start();
    let every = Duration::from_millis(500);
    let px = Proxy::start(redis.port());
    px.set_delay(Duration::from_millis(300));
    let x = NODES
        .checking_every(every)
        .builder(&px.url())
        .op_timeout(Duration::from_secs(3))
        .build()
        .await
        .expect("builds on a 600 ms round trip");
    x.set("k", &1u64, Ttl::Default).await.unwrap();
    for _ in 0..3 {
        assert_eq!(x.get::<u64>("k").await.unwrap(), Some(1));
        assert_eq!(in_ram::<u64>(&x, "k").await, None, "RAM is never served");
    }
    assert!(x.bus_health().unwrap().suspended);
}
