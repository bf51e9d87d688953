//! The invalidation bus against real redis-server processes.
//!
//! Every test starts its own server (never the one on 6379). Nodes that must
//! be cut off from Redis while the others keep writing reach it through a
//! [`Proxy`]. Waits are generous (a slow two-core CI machine), but every
//! assertion about the staleness bound measures the time it took.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachenode::Layers;
use cachenode::{CacheNode, Error, Ttl};
use futures::future::BoxFuture;
use redis::{AsyncCommands, Commands};
use support::{
    bus_seq, caught_up, clients, dropped_within_a_hop, eventually, fill, health, in_ram,
    last_logged_body, log_key, log_without_publishing, publish, seq_key, subscribed, time_until,
    ChildTest, Nodes, Proxy, TestRedis, HOP,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, Notify};

const NS: &str = "t";
/// A deletion check period so long that, after the one at start-up, no
/// periodic check runs during a test: what reaches other nodes quickly then
/// came through pub/sub.
const NO_CHECK: Duration = Duration::from_secs(60);
/// Slack on top of the stated staleness bound (`deletion_check_period`
/// plus one round trip, well under a millisecond on loopback): the 5 ms
/// polling of `time_until` and the test task's own scheduling on a loaded
/// 2-core machine. The worst measured on such a machine, with the whole
/// suite running, stays well below it (RELIABILITY.md).
const MARGIN: Duration = Duration::from_millis(100);
/// For what has no tight bound (reconnecting, catching up after a restart).
const LONG: Duration = Duration::from_secs(15);

/// Every node here: namespace [`NS`], 1 s per Redis call; each test sets
/// the check period.
const NODES: Nodes = Nodes::new(NS, Duration::from_secs(1));

/// `n` nodes on `redis`, all subscribed.
async fn nodes(redis: &TestRedis, n: usize, every: Duration) -> Vec<CacheNode> {
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(NODES.checking_every(every).node(&redis.url()).await);
    }
    subscribed(&all).await;
    all
}

/// The sequence number of the oldest entry the log still holds.
fn first_logged_seq(redis: &TestRedis) -> Option<u64> {
    let reply: redis::streams::StreamRangeReply = redis
        .conn()
        .xrange_count(log_key(NS), "-", "+", 1)
        .expect("XRANGE");
    reply
        .ids
        .first()
        .map(|e| e.id.split('-').next().unwrap().parse().unwrap())
}

fn kill_pubsub_clients(redis: &TestRedis) -> u64 {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut redis.conn())
        .expect("CLIENT KILL")
}

// ---------------------------------------------------------------------------
// 1. Every kind of write and invalidation reaches the other nodes' RAM.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn set_on_one_node_drops_the_old_value_from_the_ram_of_every_other_node() {
    let redis = TestRedis::start();
    let all = nodes(&redis, 4, NO_CHECK).await;
    let (a, others) = all.split_first().unwrap();
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    a.set("untouched", &7u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, others, "k", 1).await;
    fill(&redis, NS, others, "untouched", 7).await;
    let before: Vec<u64> = others.iter().map(|n| health(n).applied).collect();

    a.set("k", &2u32, Ttl::Default).await.unwrap();

    dropped_within_a_hop(others, "k").await;
    caught_up(others, bus_seq(&redis, NS)).await;
    for (n, before) in others.iter().zip(before) {
        assert_eq!(health(n).applied, before + 1);
        assert_eq!(in_ram::<u32>(n, "untouched").await, Some(7), "only k");
        assert_eq!(n.get::<u32>("k").await.unwrap(), Some(2));
    }
    assert_eq!(
        in_ram::<u32>(a, "k").await,
        Some(2),
        "the writer keeps its value"
    );
}

#[tokio::test]
async fn delete_and_delete_many_on_one_node_drop_the_entries_from_every_other_node() {
    let redis = TestRedis::start();
    let all = nodes(&redis, 4, NO_CHECK).await;
    let (a, others) = all.split_first().unwrap();
    for (i, key) in ["k1", "k2", "k3", "kept"].iter().enumerate() {
        a.set(key, &(i as u32), Ttl::Default).await.unwrap();
        fill(&redis, NS, others, key, i as u32).await;
    }

    assert!(a.delete("k1").await.unwrap());
    dropped_within_a_hop(others, "k1").await;
    assert_eq!(a.delete_many(&["k2", "k3"]).await.unwrap(), ["k2", "k3"]);
    dropped_within_a_hop(others, "k2").await;
    dropped_within_a_hop(others, "k3").await;

    for n in others {
        assert_eq!(in_ram::<u32>(n, "kept").await, Some(3));
        for key in ["k1", "k2", "k3"] {
            assert_eq!(n.get::<u32>(key).await.unwrap(), None, "{key} deleted");
        }
    }
}

#[tokio::test]
async fn invalidate_keys_drops_ram_copies_everywhere_and_leaves_redis_alone() {
    let redis = TestRedis::start();
    let all = nodes(&redis, 4, NO_CHECK).await;
    let (a, others) = all.split_first().unwrap();
    for (i, key) in ["k1", "k2", "kept"].iter().enumerate() {
        a.set(key, &(i as u32), Ttl::Default).await.unwrap();
        fill(&redis, NS, others, key, i as u32).await;
    }

    a.invalidate_many(&["k1", "k2"]).await.unwrap();

    assert_eq!(in_ram::<u32>(a, "k1").await, None, "and on the caller");
    dropped_within_a_hop(others, "k1").await;
    dropped_within_a_hop(others, "k2").await;
    for n in others {
        assert_eq!(in_ram::<u32>(n, "kept").await, Some(2));
        // Redis still has the value: the next read fills RAM again.
        assert_eq!(n.get::<u32>("k1").await.unwrap(), Some(0));
        assert_eq!(in_ram::<u32>(n, "k1").await, Some(0));
    }
}

#[tokio::test]
async fn invalidate_one_key_drops_it_from_every_ram_and_redis_keeps_it() {
    let redis = TestRedis::start();
    let all = nodes(&redis, 2, NO_CHECK).await;
    let (a, b) = (&all[0], &all[1]);
    for (i, key) in ["k", "kept"].iter().enumerate() {
        a.set(key, &(i as u32), Ttl::Default).await.unwrap();
        fill(&redis, NS, [b], key, i as u32).await;
    }
    assert_eq!(in_ram::<u32>(a, "k").await, Some(0), "the writer holds it");

    a.invalidate("k").await.unwrap();

    assert_eq!(in_ram::<u32>(a, "k").await, None, "dropped on the caller");
    dropped_within_a_hop([b], "k").await;
    for n in [a, b] {
        assert_eq!(in_ram::<u32>(n, "kept").await, Some(1), "other keys stay");
    }
    assert!(redis.exists("t:k:k"), "Redis keeps the value");
    assert_eq!(b.get::<u32>("k").await.unwrap(), Some(0));
    assert_eq!(in_ram::<u32>(b, "k").await, Some(0), "refilled from Redis");
}

#[tokio::test]
async fn invalidate_func_is_published_and_applied_by_every_other_node() {
    let redis = TestRedis::start();
    let all = nodes(&redis, 4, NO_CHECK).await;
    let (a, others) = all.split_first().unwrap();
    a.set("plain", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, others, "plain", 1).await;
    let seq = bus_seq(&redis, NS);
    caught_up(&all, seq).await;
    let before: Vec<u64> = others.iter().map(|n| health(n).applied).collect();

    a.invalidate_function("get_user").await.unwrap();

    assert_eq!(bus_seq(&redis, NS), seq + 1, "one message published");
    let body = last_logged_body(&redis, NS);
    assert!(
        body.windows(8).any(|w| w == b"get_user"),
        "the message names the function"
    );
    caught_up(&all, seq + 1).await;
    for (n, before) in others.iter().zip(before) {
        assert_eq!(health(n).applied, before + 1);
        assert_eq!(in_ram::<u32>(n, "plain").await, Some(1), "plain keys stay");
    }
    assert_eq!(health(a).applied, 0);
}

#[tokio::test]
async fn invalidate_all_and_clear_all_flush_the_ram_of_every_other_node() {
    let redis = TestRedis::start();
    let all = nodes(&redis, 4, NO_CHECK).await;
    let (a, others) = all.split_first().unwrap();
    for (i, key) in ["k1", "k2"].iter().enumerate() {
        a.set(key, &(i as u32), Ttl::Default).await.unwrap();
        fill(&redis, NS, others, key, i as u32).await;
    }

    a.invalidate_all().await.unwrap();
    assert_eq!(in_ram::<u32>(a, "k1").await, None);
    dropped_within_a_hop(others, "k1").await;
    dropped_within_a_hop(others, "k2").await;
    // Redis kept the values.
    fill(&redis, NS, others, "k1", 0).await;
    fill(&redis, NS, others, "k2", 1).await;

    assert_eq!(a.delete_all().await.unwrap(), 2);
    dropped_within_a_hop(others, "k1").await;
    dropped_within_a_hop(others, "k2").await;
    for n in others {
        assert_eq!(n.get::<u32>("k1").await.unwrap(), None);
    }
}

#[tokio::test]
async fn publisher_ignores_its_own_messages() {
    let redis = TestRedis::start();
    let all = nodes(&redis, 2, NO_CHECK).await;
    let (a, b) = (&all[0], &all[1]);
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, &all[1..], "k", 1).await;
    caught_up([a, b], bus_seq(&redis, NS)).await;
    let b_before = health(b).applied;

    a.set("k", &2u32, Ttl::Default).await.unwrap();
    a.set("other", &3u32, Ttl::Default).await.unwrap();
    a.invalidate_many(&["x"]).await.unwrap();
    a.invalidate_function("f").await.unwrap();
    a.delete("gone").await.unwrap();
    let seq = bus_seq(&redis, NS);
    caught_up([a, b], seq).await;

    let (ha, hb) = (health(a), health(b));
    assert_eq!(ha.applied, 0, "a applied its own messages: {ha:?}");
    assert_eq!(ha.last_applied_seq, seq, "they are skipped, in order");
    assert_eq!(ha.lag, 0);
    assert_eq!(hb.applied, b_before + 5, "{hb:?}");
    // Had a applied its own set, its fresh value would be gone from RAM.
    assert_eq!(in_ram::<u32>(a, "k").await, Some(2));
    assert_eq!(in_ram::<u32>(a, "other").await, Some(3));
}

#[tokio::test]
async fn long_key_lists_are_split_into_several_messages_and_all_are_applied() {
    let redis = TestRedis::start();
    let all = nodes(&redis, 2, NO_CHECK).await;
    let (a, b) = (&all[0], &all[1]);
    let keys: Vec<String> = (0..2500).map(|i| format!("key{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    for key in &keys {
        b.with_layers(Layers::Ram)
            .set(key, &1u8, Ttl::Default)
            .await
            .unwrap();
    }
    let seq = bus_seq(&redis, NS);

    a.invalidate_many(&keys).await.unwrap();

    assert_eq!(bus_seq(&redis, NS), seq + 3, "1000 keys per message");
    caught_up([b], seq + 3).await;
    for key in &keys {
        assert_eq!(in_ram::<u8>(b, key).await, None, "{key}");
    }
    assert_eq!(b.stats().ram_entries, 0);
}

// ---------------------------------------------------------------------------
// 2. Lost pub/sub messages are made up for within the bound.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalidation_missed_because_pubsub_was_killed_is_applied_within_the_bound() {
    let redis = TestRedis::start();
    let every = Duration::from_secs(1);
    let all = nodes(&redis, 3, every).await;
    let (a, others) = all.split_first().unwrap();
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, others, "k", 1).await;

    assert_eq!(kill_pubsub_clients(&redis), 3);
    a.set("k", &2u32, Ttl::Default).await.unwrap();
    let acked = Instant::now();

    for (i, n) in others.iter().enumerate() {
        let left = (every + MARGIN).saturating_sub(acked.elapsed());
        let took = time_until(left, || async { in_ram::<u32>(n, "k").await.is_none() }).await;
        assert!(
            took.is_some(),
            "node {i} still served the old value {:?} after the write: {:?}",
            acked.elapsed(),
            health(n)
        );
        assert_eq!(n.get::<u32>("k").await.unwrap(), Some(2));
    }
    // And the listeners subscribed again.
    subscribed(&all).await;
    assert!(eventually(LONG, || async { clients(&redis, "pubsub") == 3 }).await);
}

#[tokio::test]
async fn invalidation_logged_but_never_published_is_applied_by_the_periodic_check() {
    let redis = TestRedis::start();
    let every = Duration::from_secs(1);
    let all = nodes(&redis, 2, every).await;
    let (a, b) = (&all[0], &all[1]);
    // A real message from a, invalidating "k": captured from the log.
    a.invalidate_many(&["k"]).await.unwrap();
    let body = last_logged_body(&redis, NS);
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, &all[1..], "k", 1).await;
    caught_up([a, b], bus_seq(&redis, NS)).await;
    let before = health(b).applied;

    let seq = log_without_publishing(&redis, NS, "m", &body);
    let appended = Instant::now();

    let took = time_until(every + MARGIN, || async {
        in_ram::<u32>(b, "k").await.is_none()
    })
    .await;
    assert!(
        took.is_some(),
        "b still holds k {:?} after the message was logged: {:?}",
        appended.elapsed(),
        health(b)
    );
    caught_up([a, b], seq).await;
    assert_eq!(health(b).applied, before + 1);
    assert_eq!(health(b).gap_flushes, 0, "applied, not flushed");
    assert_eq!(health(a).applied, 0, "a's own message, replayed");
    assert_eq!(in_ram::<u32>(a, "k").await, Some(1));
}

// ---------------------------------------------------------------------------
// 3. Redis restarted empty.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redis_restarted_empty_makes_every_node_drop_its_ram_even_after_a_writer_came_back_first() {
    let mut redis = TestRedis::start();
    let every = Duration::from_millis(500);
    let a = NODES.checking_every(every).node(&redis.url()).await;
    let (pb, pc) = (Proxy::start(redis.port()), Proxy::start(redis.port()));
    let b = NODES.checking_every(every).node(&pb.url()).await;
    let c = NODES.checking_every(every).node(&pc.url()).await;
    subscribed([&a, &b, &c]).await;
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    a.set("other", &10u32, Ttl::Default).await.unwrap();
    for n in [&b, &c] {
        fill(&redis, NS, [n], "k", 1).await;
        fill(&redis, NS, [n], "other", 10).await;
    }
    a.invalidate_many(&["x"]).await.unwrap();
    let old_seq = bus_seq(&redis, NS);
    caught_up([&a, &b, &c], old_seq).await;

    // b and c stay away until a has written on the new, empty server, and
    // published more than they had seen: the new log reaches past their
    // old position, so only the epoch tells them Redis lost its state.
    pb.cut();
    pc.cut();
    redis.restart();
    let back = eventually(LONG, || async {
        a.set("k", &2u32, Ttl::Default).await.is_ok()
    })
    .await;
    assert!(back, "a writes again once Redis is back");
    for i in 0..old_seq + 3 {
        a.invalidate_many(&[&format!("unrelated{i}")])
            .await
            .unwrap();
    }
    let new_seq = bus_seq(&redis, NS);
    assert!(new_seq > old_seq + 1, "{new_seq} vs {old_seq}");
    pb.restore();
    pc.restore();

    for (name, n) in [("a", &a), ("b", &b), ("c", &c)] {
        let ok = eventually(LONG, || async {
            let h = health(n);
            h.connected && !h.suspended && h.gap_flushes >= 1 && h.last_applied_seq >= new_seq
        })
        .await;
        assert!(ok, "{name} did not notice the restart: {:?}", health(n));
        assert_ne!(
            in_ram::<u32>(n, "k").await,
            Some(1),
            "{name} serves stale k"
        );
        assert_eq!(
            in_ram::<u32>(n, "other").await,
            None,
            "{name} kept an entry of the lost server"
        );
        assert_eq!(n.get::<u32>("k").await.unwrap(), Some(2), "{name}");
        assert_eq!(n.get::<u32>("other").await.unwrap(), None, "{name}");
    }
}

// ---------------------------------------------------------------------------
// 4. Gaps the log cannot fill; partitions.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn node_that_missed_more_messages_than_the_log_keeps_drops_its_whole_ram() {
    let redis = TestRedis::start();
    let every = Duration::from_millis(500);
    // The publisher's setting trims the log (MAXLEN ~: whole stream nodes
    // of 100 entries at a time).
    let a = NODES
        .checking_every(every)
        .builder(&redis.url())
        .bus_log_len(5)
        .build()
        .await
        .unwrap();
    let pb = Proxy::start(redis.port());
    let b = NODES.checking_every(every).node(&pb.url()).await;
    subscribed([&a, &b]).await;
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    a.set("other", &2u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, [&b], "k", 1).await;
    fill(&redis, NS, [&b], "other", 2).await;
    caught_up([&b], bus_seq(&redis, NS)).await;
    let position = health(&b).last_applied_seq;

    pb.cut();
    a.set("k", &3u32, Ttl::Default).await.unwrap();
    for i in 0..200 {
        a.invalidate_many(&[&format!("unrelated{i}")])
            .await
            .unwrap();
    }
    let first = first_logged_seq(&redis).expect("log not empty");
    assert!(
        first > position + 2,
        "the log was not trimmed: starts at {first}"
    );
    pb.restore();

    let seq = bus_seq(&redis, NS);
    let ok = eventually(LONG, || async {
        let h = health(&b);
        h.connected && !h.suspended && h.gap_flushes >= 1 && h.last_applied_seq >= seq
    })
    .await;
    assert!(ok, "b did not flush: {:?}", health(&b));
    assert_eq!(in_ram::<u32>(&b, "k").await, None);
    assert_eq!(in_ram::<u32>(&b, "other").await, None, "the whole RAM");
    assert_eq!(b.get::<u32>("k").await.unwrap(), Some(3));
    assert_eq!(b.get::<u32>("other").await.unwrap(), Some(2));
}

#[tokio::test]
async fn node_behind_an_emptied_log_drops_its_whole_ram() {
    let redis = TestRedis::start();
    let every = Duration::from_millis(500);
    let all = nodes(&redis, 2, every).await;
    let (a, b) = (&all[0], &all[1]);
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, &all[1..], "k", 1).await;
    caught_up([b], bus_seq(&redis, NS)).await;

    // Three messages b never heard of (not published), then the log emptied.
    let _: () = redis::pipe()
        .atomic()
        .incr(seq_key(NS), 3)
        .ignore()
        .cmd("XTRIM")
        .arg(log_key(NS))
        .arg("MAXLEN")
        .arg(0)
        .ignore()
        .query(&mut redis.conn())
        .unwrap();

    let took = time_until(every + MARGIN, || async {
        in_ram::<u32>(b, "k").await.is_none()
    })
    .await;
    assert!(took.is_some(), "b kept its RAM: {:?}", health(b));
    assert!(health(b).gap_flushes >= 1);
    assert_eq!(b.get::<u32>("k").await.unwrap(), Some(1));
}

#[tokio::test]
async fn node_cut_off_withholds_old_entries_within_the_bound_then_catches_up_without_flushing() {
    let redis = TestRedis::start();
    let every = Duration::from_millis(500);
    let a = NODES.checking_every(every).node(&redis.url()).await;
    let pb = Proxy::start(redis.port());
    let b = NODES.checking_every(every).node(&pb.url()).await;
    subscribed([&a, &b]).await;
    for key in ["kept", "changed"] {
        a.set(key, &1u32, Ttl::Default).await.unwrap();
        fill(&redis, NS, [&b], key, 1).await;
    }

    pb.cut();
    let cut = Instant::now();
    a.set("changed", &2u32, Ttl::Default).await.unwrap();
    // The last check that succeeded started at most half a period before
    // the cut; one more period (and a check timing out) later, b stops
    // serving what it filled before.
    // The lease b renewed last ran from a check that started before the
    // cut: it runs out within one period of it, whatever b's tasks do.
    let bound = every + MARGIN;
    let took = time_until(bound, || async {
        in_ram::<u32>(&b, "kept").await.is_none() && in_ram::<u32>(&b, "changed").await.is_none()
    })
    .await;
    assert!(
        took.is_some(),
        "b still served old entries {:?} after losing Redis: {:?}",
        cut.elapsed(),
        health(&b)
    );
    assert!(health(&b).suspended);
    // A value written to b's RAM alone has no other copy: it is served
    // outside the lease. (Values b fills from Redis while its checks fail
    // are not: tests/staleness.rs.)
    b.with_layers(Layers::Ram)
        .set("fresh", &5u32, Ttl::Default)
        .await
        .unwrap();
    assert_eq!(in_ram::<u32>(&b, "fresh").await, Some(5));

    pb.restore();
    let seq = bus_seq(&redis, NS);
    let ok = eventually(LONG, || async {
        let h = health(&b);
        h.connected && !h.suspended && h.last_applied_seq >= seq
    })
    .await;
    assert!(ok, "b did not catch up: {:?}", health(&b));
    let h = health(&b);
    assert_eq!(h.gap_flushes, 0, "the log held what b missed: {h:?}");
    assert_eq!(in_ram::<u32>(&b, "kept").await, Some(1), "served again");
    assert_eq!(in_ram::<u32>(&b, "fresh").await, Some(5), "served again");
    assert_eq!(
        in_ram::<u32>(&b, "changed").await,
        None,
        "invalidated from the log"
    );
    assert_eq!(b.get::<u32>("changed").await.unwrap(), Some(2));
}

#[tokio::test]
async fn node_whose_resubscribe_hangs_still_withholds_old_entries_within_the_bound() {
    let redis = TestRedis::start();
    let every = Duration::from_millis(500);
    let a = NODES.checking_every(every).node(&redis.url()).await;
    let pb = Proxy::start(redis.port());
    // A long operation timeout: reconnecting may hang that long.
    let b = NODES
        .checking_every(every)
        .builder(&pb.url())
        .op_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    subscribed([&a, &b]).await;
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, [&b], "k", 1).await;

    // b's connections are closed, and new ones hang unanswered.
    pb.blackhole();
    let cut = Instant::now();
    a.set("k", &2u32, Ttl::Default).await.unwrap();
    let bound = every + MARGIN;
    let took = time_until(bound, || async { in_ram::<u32>(&b, "k").await.is_none() }).await;
    assert!(
        took.is_some(),
        "b served the old value {:?} after losing Redis: {:?}",
        cut.elapsed(),
        health(&b)
    );

    pb.restore();
    let seq = bus_seq(&redis, NS);
    let ok = eventually(LONG, || async {
        let h = health(&b);
        h.connected && !h.suspended && h.last_applied_seq >= seq
    })
    .await;
    assert!(ok, "b did not come back: {:?}", health(&b));
    assert_eq!(b.get::<u32>("k").await.unwrap(), Some(2));
}

// ---------------------------------------------------------------------------
// 5. Malformed and oversized messages.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn malformed_and_oversized_messages_are_counted_and_dropped_and_the_listener_keeps_working() {
    let redis = TestRedis::start();
    let every = Duration::from_millis(500);
    let all = nodes(&redis, 2, every).await;
    let (a, b) = (&all[0], &all[1]);
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    let real = last_logged_body(&redis, NS);
    fill(&redis, NS, &all[1..], "k", 1).await;
    let seq = bus_seq(&redis, NS);
    caught_up([a, b], seq).await;
    let applied = health(b).applied;

    let malformed = |n: u64| async move {
        let ok = eventually(LONG, || async { health(b).malformed == n }).await;
        assert!(ok, "expected {n} malformed: {:?}", health(b));
    };
    let next = format!("{}:", seq + 1).into_bytes();
    let with_seq = |tail: &[u8]| [next.as_slice(), tail].concat();

    // On the channel: no sequence number at all.
    publish(&redis, NS, b"hello, not a bus message");
    malformed(1).await;
    // The next sequence number, then garbage.
    publish(&redis, NS, &with_seq(b"\x01garbage"));
    malformed(2).await;
    // A body of an unknown version.
    publish(&redis, NS, &with_seq(&[9, 1, 2, 3]));
    malformed(3).await;
    // Oversized: over 1 MiB, with and without a sequence number.
    let huge = vec![1u8; (1 << 20) + 16];
    publish(&redis, NS, &with_seq(&huge));
    malformed(4).await;
    publish(&redis, NS, &huge);
    malformed(5).await;
    // An old message replayed: ignored, not counted, not applied.
    publish(
        &redis,
        NS,
        &[format!("{seq}:").into_bytes(), real.clone()].concat(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let h = health(b);
    assert_eq!((h.malformed, h.applied), (5, applied), "{h:?}");
    assert_eq!(h.gap_flushes, 0, "channel garbage does not flush: {h:?}");
    assert_eq!(in_ram::<u32>(b, "k").await, Some(1));

    // In the log, under the next sequence numbers: garbage, oversized, an
    // entry without the message field. What they meant to invalidate is
    // unknown, so the node drops its RAM.
    log_without_publishing(&redis, NS, "m", b"\x01not bincode");
    malformed(6).await;
    let flushed = eventually(LONG, || async { health(b).gap_flushes >= 1 }).await;
    assert!(flushed, "{:?}", health(b));
    assert_eq!(in_ram::<u32>(b, "k").await, None);
    log_without_publishing(&redis, NS, "m", &huge);
    malformed(7).await;
    let last = log_without_publishing(&redis, NS, "x", b"y");
    malformed(8).await;
    caught_up([a, b], last).await;
    assert!(health(a).malformed >= 8, "a counts them too");

    // The listener still applies real invalidations, through pub/sub.
    fill(&redis, NS, &all[1..], "k", 1).await;
    a.set("k", &2u32, Ttl::Default).await.unwrap();
    dropped_within_a_hop(&all[1..], "k").await;
    assert_eq!(b.get::<u32>("k").await.unwrap(), Some(2));
    let h = health(b);
    assert!(h.connected && h.lag == 0, "{h:?}");
    assert_eq!(h.malformed, 8, "{h:?}");
}

// ---------------------------------------------------------------------------
// 6. A fill racing an invalidation (DESIGN §5).
// ---------------------------------------------------------------------------

/// Holds the first fill of key `race` after it read Redis, until released.
struct Gate {
    armed: AtomicBool,
    read: mpsc::UnboundedSender<()>,
    release: Notify,
}

fn gate() -> (Arc<Gate>, mpsc::UnboundedReceiver<()>) {
    let (read, reads) = mpsc::unbounded_channel();
    let gate = Arc::new(Gate {
        armed: AtomicBool::new(false),
        read,
        release: Notify::new(),
    });
    (gate, reads)
}

async fn gated_node(url: &str, gate: &Arc<Gate>) -> CacheNode {
    let gate = gate.clone();
    NODES
        .checking_every(NO_CHECK)
        .builder(url)
        .before_fill_hook(Arc::new(move |key: String| -> BoxFuture<'static, ()> {
            let gate = gate.clone();
            Box::pin(async move {
                if key == "race" && gate.armed.swap(false, Ordering::SeqCst) {
                    let _ = gate.read.send(());
                    gate.release.notified().await;
                }
            })
        }))
        .build()
        .await
        .unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Racer {
    /// `set` of a new value.
    Set,
    /// `delete`.
    Delete,
    /// `clear_all` (an invalidation of everything).
    ClearAll,
    /// An invalidation of another key: the fill must be kept.
    OtherKey,
}

/// b misses RAM and reads v1 from Redis; while its fill is held, a runs
/// `racer` and b applies the invalidation; then the fill goes on. Returns
/// what b's RAM holds afterwards, and what b reads then.
async fn race(racer: Racer) -> (Option<u32>, Option<u32>) {
    let redis = TestRedis::start();
    let (gate, mut reads) = gate();
    let a = NODES.checking_every(NO_CHECK).node(&redis.url()).await;
    let b = gated_node(&redis.url(), &gate).await;
    subscribed([&a, &b]).await;
    a.set("race", &1u32, Ttl::Default).await.unwrap();
    caught_up([&b], bus_seq(&redis, NS)).await;

    gate.armed.store(true, Ordering::SeqCst);
    let reader = tokio::spawn({
        let b = b.clone();
        async move { b.get::<u32>("race").await }
    });
    tokio::time::timeout(LONG, reads.recv())
        .await
        .expect("b read Redis")
        .unwrap();
    let before = health(&b).applied;
    match racer {
        Racer::Set => a.set("race", &2u32, Ttl::Default).await.unwrap(),
        Racer::Delete => assert!(a.delete("race").await.unwrap()),
        Racer::ClearAll => assert_eq!(a.delete_all().await.unwrap(), 1),
        Racer::OtherKey => a.invalidate_many(&["unrelated"]).await.unwrap(),
    }
    caught_up([&b], bus_seq(&redis, NS)).await;
    assert_eq!(health(&b).applied, before + 1, "b applied it: {racer:?}");
    gate.release.notify_one();

    let read = tokio::time::timeout(LONG, reader)
        .await
        .expect("the read ends")
        .unwrap()
        .unwrap();
    assert_eq!(read, Some(1), "the read returns what it read: {racer:?}");
    let ram = in_ram::<u32>(&b, "race").await;
    let after = b.get::<u32>("race").await.unwrap();
    (ram, after)
}

#[tokio::test]
async fn fill_that_read_a_value_before_a_set_does_not_put_it_in_ram() {
    let (ram, after) = race(Racer::Set).await;
    assert!(ram.is_none() || ram == Some(2), "RAM holds {ram:?}");
    assert_eq!(after, Some(2));
}

#[tokio::test]
async fn fill_that_read_a_value_before_a_delete_does_not_put_it_in_ram() {
    let (ram, after) = race(Racer::Delete).await;
    assert_eq!(ram, None);
    assert_eq!(after, None);
}

#[tokio::test]
async fn fill_that_read_a_value_before_a_clear_all_does_not_put_it_in_ram() {
    let (ram, after) = race(Racer::ClearAll).await;
    assert_eq!(ram, None);
    assert_eq!(after, None);
}

#[tokio::test]
async fn fill_racing_an_invalidation_of_another_key_is_kept() {
    let (ram, after) = race(Racer::OtherKey).await;
    assert_eq!(ram, Some(1));
    assert_eq!(after, Some(1));
}

// ---------------------------------------------------------------------------
// 7. Property: no read returns a version older than the bound allows.
// ---------------------------------------------------------------------------

mod property {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

    const NODES: usize = 3;
    const KEYS: u8 = 3;
    const EVERY: Duration = Duration::from_millis(200);
    /// The guarantee's bound: the deletion check period plus a round trip,
    /// with slack for a loaded machine.
    const BOUND: Duration = Duration::from_millis(700);

    #[derive(Debug, Clone)]
    enum Op {
        Set(u8),
        Get(u8),
        /// A read of this node's RAM only.
        RamGet(u8),
        Delete(u8),
        Invalidate(u8),
        InvalidateAll,
        Pause(u64),
        /// `CLIENT KILL TYPE pubsub`: every node loses what is in flight.
        KillPubsub,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..KEYS).prop_map(Op::Set),
            6 => (0..KEYS).prop_map(Op::Get),
            3 => (0..KEYS).prop_map(Op::RamGet),
            1 => (0..KEYS).prop_map(Op::Delete),
            1 => (0..KEYS).prop_map(Op::Invalidate),
            1 => Just(Op::InvalidateAll),
            2 => (0u64..500).prop_map(Op::Pause),
            1 => Just(Op::KillPubsub),
        ]
    }

    /// What happened, in times since the start of the case.
    #[derive(Debug, Clone)]
    #[allow(dead_code)] // some fields are only read through Debug, in failure reports
    enum Event {
        /// A set (`value` = its version) or a delete (`value` = None).
        Write {
            node: usize,
            key: u8,
            id: u64,
            value: Option<u64>,
            start: Duration,
            ack: Duration,
        },
        Invalidate {
            node: usize,
            key: Option<u8>,
            ack: Duration,
        },
        Get {
            node: usize,
            key: u8,
            result: Option<u64>,
            start: Duration,
            end: Duration,
        },
        /// A read of the node's RAM alone.
        RamGet {
            node: usize,
            key: u8,
            result: Option<u64>,
            start: Duration,
        },
    }

    struct Write {
        key: u8,
        value: Option<u64>,
        start: Duration,
        ack: Duration,
    }

    async fn run_op(
        node: &CacheNode,
        i: usize,
        op: Op,
        ids: &AtomicU64,
        origin: Instant,
        admin: &mut redis::aio::MultiplexedConnection,
    ) -> Option<Event> {
        let key_name = |k: u8| format!("k{k}");
        let now = || origin.elapsed();
        Some(match op {
            Op::Set(key) => {
                let id = ids.fetch_add(1, Ordering::SeqCst) + 1;
                let start = now();
                node.set(&key_name(key), &id, Ttl::Default).await.unwrap();
                Event::Write {
                    node: i,
                    key,
                    id,
                    value: Some(id),
                    start,
                    ack: now(),
                }
            }
            Op::Delete(key) => {
                let id = ids.fetch_add(1, Ordering::SeqCst) + 1;
                let start = now();
                node.delete(&key_name(key)).await.unwrap();
                Event::Write {
                    node: i,
                    key,
                    id,
                    value: None,
                    start,
                    ack: now(),
                }
            }
            Op::Get(key) => {
                let start = now();
                let result = node.get::<u64>(&key_name(key)).await.unwrap();
                Event::Get {
                    node: i,
                    key,
                    result,
                    start,
                    end: now(),
                }
            }
            Op::RamGet(key) => {
                let start = now();
                let result = node
                    .with_layers(Layers::Ram)
                    .get::<u64>(&key_name(key))
                    .await
                    .unwrap();
                Event::RamGet {
                    node: i,
                    key,
                    result,
                    start,
                }
            }
            Op::Invalidate(key) => {
                node.invalidate_many(&[&key_name(key)]).await.unwrap();
                Event::Invalidate {
                    node: i,
                    key: Some(key),
                    ack: now(),
                }
            }
            Op::InvalidateAll => {
                node.invalidate_all().await.unwrap();
                Event::Invalidate {
                    node: i,
                    key: None,
                    ack: now(),
                }
            }
            Op::Pause(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                return None;
            }
            Op::KillPubsub => {
                let _: u64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("pubsub")
                    .query_async(admin)
                    .await
                    .unwrap();
                return None;
            }
        })
    }

    /// Checks every read against the writes; returns how many reads came
    /// after a write acknowledged at least [`BOUND`] earlier (the reads the
    /// property constrains).
    fn check(events: &[Event]) -> Result<usize, String> {
        let writes: Vec<Write> = events
            .iter()
            .filter_map(|e| match *e {
                Event::Write {
                    key,
                    value,
                    start,
                    ack,
                    ..
                } => Some(Write {
                    key,
                    value,
                    start,
                    ack,
                }),
                _ => None,
            })
            .collect();
        let mut constrained = 0;
        // RAM reads: a value RAM serves must not be stale (as any read),
        // and once an invalidation covering the key is older than the
        // bound, RAM must be empty unless this node's own get or set of the
        // key (the only ways to fill it) was still running after it.
        for e in events {
            let Event::RamGet {
                node,
                key,
                result: Some(v),
                start,
            } = *e
            else {
                continue;
            };
            let refilled_after = |t: Duration| {
                events.iter().any(|o| match *o {
                    Event::Get {
                        node: n,
                        key: k,
                        end,
                        ..
                    } => n == node && k == key && end > t,
                    Event::Write {
                        node: n,
                        key: k,
                        ack,
                        ..
                    } => n == node && k == key && ack > t,
                    _ => false,
                })
            };
            for inv in events {
                let Event::Invalidate { key: k, ack, .. } = *inv else {
                    continue;
                };
                if k.is_none_or(|k| k == key) && ack + BOUND <= start && !refilled_after(ack) {
                    return Err(format!(
                        "{e:?}: RAM served {v} though an invalidation of the key was \
                         acknowledged at {ack:?} and nothing refilled it since"
                    ));
                }
            }
        }
        for e in events {
            let (key, result, start, end) = match *e {
                Event::Get {
                    key,
                    result,
                    start,
                    end,
                    ..
                } => (key, result, start, end),
                // A RAM read is a read that may find nothing.
                Event::RamGet {
                    key,
                    result: result @ Some(_),
                    start,
                    ..
                } => (key, result, start, start),
                _ => continue,
            };
            let on_key = || writes.iter().filter(move |w| w.key == key);
            let settled: Vec<&Write> = on_key().filter(|w| w.ack + BOUND <= start).collect();
            if !settled.is_empty() {
                constrained += 1;
            }
            match result {
                Some(v) => {
                    let Some(written) = on_key().find(|w| w.value == Some(v)) else {
                        return Err(format!("{e:?}: {v} was never written to this key"));
                    };
                    if written.start > end {
                        return Err(format!("{e:?}: {v} was written after the read"));
                    }
                    // A write that began after v's was acknowledged is newer;
                    // once it is older than the bound, v must not be read.
                    if let Some(newer) = settled.iter().find(|w| w.start > written.ack) {
                        return Err(format!(
                            "stale read {e:?}: {v} was replaced by {:?} (started {:?}, \
                             acknowledged {:?}), more than {BOUND:?} before the read",
                            newer.value, newer.start, newer.ack
                        ));
                    }
                }
                None => {
                    // RAM never holds an absence: a miss comes from Redis,
                    // which must have lost the key to some delete.
                    for set in on_key().filter(|w| w.value.is_some() && w.ack < start) {
                        let deleted = on_key()
                            .any(|d| d.value.is_none() && d.ack > set.start && d.start < end);
                        if !deleted {
                            return Err(format!(
                                "{e:?}: nothing read though {:?} was acknowledged at {:?} \
                                 and never deleted",
                                set.value, set.ack
                            ));
                        }
                    }
                }
            }
        }
        Ok(constrained)
    }

    async fn run_case(
        redis: &TestRedis,
        ns: &str,
        plan: Vec<Vec<Op>>,
    ) -> Result<usize, TestCaseError> {
        let mut nodes = Vec::new();
        for _ in 0..NODES {
            let node = CacheNode::builder()
                .redis_url(redis.url())
                .namespace(ns)
                .deletion_check_period(EVERY)
                .build()
                .await
                .unwrap();
            nodes.push(node);
        }
        subscribed(&nodes).await;
        let origin = Instant::now();
        let ids = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (i, ops) in plan.into_iter().enumerate() {
            let node = nodes[i].clone();
            let ids = ids.clone();
            let client = redis.client();
            tasks.push(tokio::spawn(async move {
                let mut admin = client.get_multiplexed_async_connection().await.unwrap();
                let mut events = Vec::new();
                for op in ops {
                    events.extend(run_op(&node, i, op, &ids, origin, &mut admin).await);
                }
                events
            }));
        }
        let mut events = Vec::new();
        for t in tasks {
            events.extend(t.await.unwrap());
        }
        // Once everything has settled, every node reads every key: these
        // reads must all see the last write.
        tokio::time::sleep(BOUND).await;
        for (i, node) in nodes.iter().enumerate() {
            for key in 0..KEYS {
                let start = origin.elapsed();
                let result = node.get::<u64>(&format!("k{key}")).await.unwrap();
                events.push(Event::Get {
                    node: i,
                    key,
                    result,
                    start,
                    end: origin.elapsed(),
                });
            }
        }
        check(&events).map_err(|why| {
            TestCaseError::fail(format!("{why}\nnamespace {ns}, events:\n{events:#?}"))
        })
    }

    #[test]
    fn no_read_returns_a_version_older_than_the_bound_allows() {
        let redis = TestRedis::start();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut runner = TestRunner::new(Config {
            cases: 32,
            max_shrink_iters: 16,
            failure_persistence: None,
            ..Config::default()
        });
        let cases = AtomicUsize::new(0);
        let constrained = AtomicUsize::new(0);
        let plans = proptest::collection::vec(proptest::collection::vec(op(), 8..20), NODES);
        let result = runner.run(&plans, |plan| {
            let ns = format!("p{}", cases.fetch_add(1, Ordering::SeqCst));
            let n = rt.block_on(run_case(&redis, &ns, plan))?;
            constrained.fetch_add(n, Ordering::SeqCst);
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(TestError::Fail(why, plan)) => panic!("{why}\nminimal plan: {plan:#?}"),
            Err(e) => panic!("{e}"),
        }
        // Not vacuous: the final reads alone are constrained in every case
        // that wrote.
        assert!(
            constrained.load(Ordering::SeqCst) >= 32,
            "too few reads checked"
        );
    }

    #[test]
    fn the_checker_flags_stale_and_lost_reads() {
        let ms = Duration::from_millis;
        let write = |key, value, start, ack| Event::Write {
            node: 0,
            key,
            id: 0,
            value,
            start: ms(start),
            ack: ms(ack),
        };
        let get = |key, result, start| Event::Get {
            node: 1,
            key,
            result,
            start: ms(start),
            end: ms(start + 1),
        };
        let late = BOUND.as_millis() as u64 + 100;
        // v1 then v2, read long after v2: v1 is stale, v2 fine.
        let base = vec![write(0, Some(1), 0, 1), write(0, Some(2), 2, 3)];
        let with = |e: Event| [base.clone(), vec![e]].concat();
        assert!(check(&with(get(0, Some(1), late))).is_err());
        assert!(check(&with(get(0, Some(2), late))).is_ok());
        // Within the bound, the old value may still be served.
        assert!(check(&with(get(0, Some(1), 10))).is_ok());
        // A miss with the key set and never deleted is wrong.
        assert!(check(&with(get(0, None, 10))).is_err());
        // Overlapping writes: either order is allowed.
        let overlapping = vec![write(0, Some(1), 0, 5), write(0, Some(2), 1, 6)];
        for v in [1, 2] {
            let events = [overlapping.clone(), vec![get(0, Some(v), late)]].concat();
            assert!(check(&events).is_ok());
        }
        // RAM still holding a value long after its invalidation, with
        // nothing on that node refilling it, is wrong; a refill excuses it.
        let ram = |result, start| Event::RamGet {
            node: 1,
            key: 0,
            result,
            start: ms(start),
        };
        let invalidated = vec![
            write(0, Some(1), 0, 1),
            Event::Invalidate {
                node: 0,
                key: Some(0),
                ack: ms(5),
            },
        ];
        let with_inv = |more: Vec<Event>| [invalidated.clone(), more].concat();
        assert!(check(&with_inv(vec![ram(Some(1), late)])).is_err());
        assert!(check(&with_inv(vec![ram(None, late)])).is_ok());
        assert!(check(&with_inv(vec![ram(Some(1), 6)])).is_ok());
        assert!(check(&with_inv(vec![get(0, Some(1), 10), ram(Some(1), late)])).is_ok());
    }
}

// ---------------------------------------------------------------------------
// 8. A node in another OS process.
// ---------------------------------------------------------------------------

const CHILD_ENV: &str = "CACHENODE_BUS_TEST_CHILD_REDIS_URL";
const CHILD_SAYS: &str = "CHILD> ";

/// The child node: runs only when started by
/// `node_in_another_process_and_this_one_invalidate_each_others_ram`, which
/// talks to it through stdin/stdout (`get K`, `ram K`, `set K V`, `sync`,
/// `exit`).
#[tokio::test]
#[ignore = "a child process of another test"]
async fn child_node_process() {
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    let node = NODES
        .checking_every(Duration::from_secs(1))
        .node(&url)
        .await;
    subscribed([&node]).await;
    println!("{CHILD_SAYS}ready");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // Ends on `exit`, or when the parent goes away (stdin closes).
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let show = |v: Option<u64>| v.map_or("none".to_string(), |v| v.to_string());
        let reply = match words.as_slice() {
            ["get", key] => show(node.get::<u64>(key).await.unwrap()),
            ["ram", key] => show(in_ram::<u64>(&node, key).await),
            ["set", key, value] => {
                let value: u64 = value.parse().unwrap();
                node.set(key, &value, Ttl::Default).await.unwrap();
                "ok".to_string()
            }
            ["sync"] => {
                // Wait until this node has applied everything published.
                let mut conn = redis::Client::open(url.as_str())
                    .unwrap()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                let seq: Option<u64> = conn.get(seq_key(NS)).await.unwrap();
                caught_up([&node], seq.unwrap_or(0)).await;
                "ok".to_string()
            }
            ["exit"] => break,
            other => panic!("unknown command {other:?}"),
        };
        println!("{CHILD_SAYS}{reply}");
    }
    node.shutdown().await;
}

/// Sends `command` to the child node and returns its reply.
async fn ask(child: &mut ChildTest, command: &str) -> String {
    child.send(command);
    child.line_with(CHILD_SAYS, LONG).await
}

#[tokio::test]
async fn node_in_another_process_and_this_one_invalidate_each_others_ram() {
    let redis = TestRedis::start();
    let every = Duration::from_secs(1);
    let here = NODES.checking_every(every).node(&redis.url()).await;
    let mut child = ChildTest::spawn("child_node_process", CHILD_ENV, &redis.url());
    assert_eq!(child.line_with(CHILD_SAYS, LONG).await, "ready");
    subscribed([&here]).await;
    assert!(eventually(LONG, || async { clients(&redis, "pubsub") == 2 }).await);

    // This process writes: the child's RAM copy goes.
    here.set("x", &1u64, Ttl::Default).await.unwrap();
    assert_eq!(ask(&mut child, "sync").await, "ok");
    assert_eq!(ask(&mut child, "get x").await, "1");
    assert_eq!(ask(&mut child, "ram x").await, "1");
    here.set("x", &2u64, Ttl::Default).await.unwrap();
    let acked = Instant::now();
    let mut held = String::new();
    while acked.elapsed() < every + MARGIN {
        held = ask(&mut child, "ram x").await;
        if held != "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(held == "none" || held == "2", "child still holds x={held}");
    assert_eq!(ask(&mut child, "get x").await, "2");

    // The child writes: this process's RAM copy goes.
    assert_eq!(ask(&mut child, "set y 7").await, "ok");
    caught_up([&here], bus_seq(&redis, NS)).await;
    assert_eq!(here.get::<u64>("y").await.unwrap(), Some(7));
    assert_eq!(in_ram::<u64>(&here, "y").await, Some(7));
    assert_eq!(ask(&mut child, "set y 8").await, "ok");
    let took = time_until(every + MARGIN, || async {
        in_ram::<u64>(&here, "y").await.is_none()
    })
    .await;
    assert!(took.is_some(), "still holds y: {:?}", health(&here));
    assert_eq!(here.get::<u64>("y").await.unwrap(), Some(8));
    assert!(health(&here).applied >= 2);

    child.send("exit");
    let status = child.wait(LONG).await;
    assert!(status.success(), "{status}");
}

// ---------------------------------------------------------------------------
// 9. Shutting down and dropping.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_stops_the_listener_and_every_later_call_fails() {
    let redis = TestRedis::start();
    let all = nodes(&redis, 2, Duration::from_millis(500)).await;
    let (a, b) = (&all[0], &all[1]);
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    assert_eq!(clients(&redis, "pubsub"), 2);

    tokio::time::timeout(LONG, a.shutdown())
        .await
        .expect("shutdown returns once the listener has stopped");

    assert!(!health(a).connected);
    assert!(eventually(LONG, || async { clients(&redis, "pubsub") == 1 }).await);
    for handle in [
        a.clone(),
        a.with_layers(Layers::Ram),
        a.with_layers(Layers::Redis),
    ] {
        let shut = |r: Result<(), Error>| assert!(matches!(r, Err(Error::Shutdown)), "{r:?}");
        shut(handle.get::<u32>("k").await.map(drop));
        shut(handle.get_many::<u32>(&["k"]).await.map(drop));
        shut(handle.has("k").await.map(drop));
        shut(handle.set("k", &2u32, Ttl::Default).await);
        shut(handle.delete("k").await.map(drop));
        shut(handle.delete_many(&["k"]).await.map(drop));
        shut(handle.delete_all().await.map(drop));
        shut(handle.invalidate_many(&["k"]).await);
        shut(handle.invalidate_function("f").await);
        shut(handle.invalidate_all().await);
    }
    // Nothing was published by the refused calls; the other node carries on.
    assert_eq!(bus_seq(&redis, NS), 1);
    assert_eq!(b.get::<u32>("k").await.unwrap(), Some(1));
    tokio::time::timeout(LONG, a.shutdown())
        .await
        .expect("twice is fine");
}

#[tokio::test]
async fn dropping_every_handle_of_a_node_stops_its_listener_and_closes_its_connections() {
    let redis = TestRedis::start();
    let node = NODES
        .checking_every(Duration::from_millis(500))
        .node(&redis.url())
        .await;
    let ram = node.with_layers(Layers::Ram);
    subscribed([&node]).await;
    node.set("k", &1u32, Ttl::Default).await.unwrap();
    assert_eq!(clients(&redis, "pubsub"), 1);
    assert!(clients(&redis, "normal") >= 2, "the node's and ours");

    drop(node);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(clients(&redis, "pubsub"), 1, "a handle is left");
    drop(ram);

    // Only the connection asking is left.
    let gone = eventually(LONG, || async {
        clients(&redis, "pubsub") == 0 && clients(&redis, "normal") == 1
    })
    .await;
    assert!(
        gone,
        "connections left: {} pubsub, {} normal",
        clients(&redis, "pubsub"),
        clients(&redis, "normal")
    );
}

// ---------------------------------------------------------------------------
// 10. Keyspace notifications.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn keyspace_watching_drops_ram_copies_of_keys_deleted_or_expired_outside_cachenode() {
    let redis = TestRedis::start();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("Kgxe")
        .query(&mut redis.conn())
        .unwrap();
    let watcher = NODES
        .checking_every(NO_CHECK)
        .builder(&redis.url())
        .watch_keyspace(true)
        .build()
        .await
        .unwrap();
    let plain = NODES.checking_every(NO_CHECK).node(&redis.url()).await;
    subscribed([&watcher, &plain]).await;
    let h = health(&watcher);
    assert!(h.keyspace_watching, "{h:?}");
    assert_eq!(h.keyspace_problem, None);
    assert!(!health(&plain).keyspace_watching);
    let both = [watcher.clone(), plain.clone()];
    for key in ["deleted", "expiring", "kept"] {
        plain.set(key, &1u32, Ttl::Default).await.unwrap();
        fill(&redis, NS, &both, key, 1).await;
    }
    let seq = bus_seq(&redis, NS);

    let _: () = redis.conn().del(format!("{NS}:k:deleted")).unwrap();
    let took = time_until(HOP, || async {
        in_ram::<u32>(&watcher, "deleted").await.is_none()
    })
    .await;
    assert!(took.is_some(), "a raw DEL did not reach RAM");

    let _: () = redis
        .conn()
        .pexpire(format!("{NS}:k:expiring"), 50)
        .unwrap();
    let took = time_until(LONG, || async {
        in_ram::<u32>(&watcher, "expiring").await.is_none()
    })
    .await;
    assert!(took.is_some(), "an expiry did not reach RAM");

    assert_eq!(in_ram::<u32>(&watcher, "kept").await, Some(1));
    assert_eq!(bus_seq(&redis, NS), seq, "nothing went through the bus");
    // A node that does not watch keeps its (now stale) copies.
    assert_eq!(in_ram::<u32>(&plain, "deleted").await, Some(1));
    assert_eq!(watcher.get::<u32>("deleted").await.unwrap(), None);
}

/// Evictions are an event class of their own (`e`): a server that sends `Kgx`
/// only never tells the node about evicted keys, and the node must say so.
#[tokio::test]
async fn keyspace_watching_needs_eviction_events_and_applies_them() {
    let redis = TestRedis::start();
    let set_flags = |flags: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(flags)
            .query(&mut redis.conn())
            .unwrap();
    };
    set_flags("Kgx");
    let watcher = NODES
        .checking_every(NO_CHECK)
        .builder(&redis.url())
        .watch_keyspace(true)
        .build()
        .await
        .unwrap();
    subscribed([&watcher]).await;
    let problem = health(&watcher).keyspace_problem;
    assert!(
        problem.as_deref().is_some_and(|p| p.contains("Kgxe")),
        "Kgx sends no evictions: {problem:?}"
    );
    watcher.shutdown().await;

    set_flags("Kgxe");
    let watcher = NODES
        .checking_every(NO_CHECK)
        .builder(&redis.url())
        .watch_keyspace(true)
        .build()
        .await
        .unwrap();
    subscribed([&watcher]).await;
    assert_eq!(health(&watcher).keyspace_problem, None);
    watcher.set("victim", &1u32, Ttl::Default).await.unwrap();
    assert_eq!(in_ram::<u32>(&watcher, "victim").await, Some(1));
    // Make Redis evict everything it can: a memory limit below what it
    // uses, with an eviction policy, then one more write to trigger it.
    for (k, v) in [("maxmemory-policy", "allkeys-random"), ("maxmemory", "1")] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query(&mut redis.conn())
            .unwrap();
    }
    let _: redis::RedisResult<()> = redis.conn().set("trigger", "x");
    let evicted = eventually(LONG, || async {
        in_ram::<u32>(&watcher, "victim").await.is_none()
    })
    .await;
    let left: bool = redis.conn().exists(format!("{NS}:k:victim")).unwrap();
    assert!(!left, "Redis evicted the value");
    assert!(evicted, "the eviction reached RAM");
}

#[tokio::test]
async fn keyspace_watching_reports_a_server_that_sends_no_notifications() {
    let redis = TestRedis::start();
    let watcher = NODES
        .checking_every(NO_CHECK)
        .builder(&redis.url())
        .watch_keyspace(true)
        .build()
        .await
        .unwrap();
    let reported = eventually(LONG, || async {
        health(&watcher).keyspace_problem.is_some()
    })
    .await;
    assert!(reported, "{:?}", health(&watcher));
    let problem = health(&watcher).keyspace_problem.unwrap();
    assert!(problem.contains("notify-keyspace-events"), "{problem}");
    assert!(problem.contains("Kgxe"), "says how to fix it: {problem}");
    // Without watching, nothing is reported.
    let plain = NODES.checking_every(NO_CHECK).node(&redis.url()).await;
    subscribed([&plain]).await;
    assert_eq!(health(&plain).keyspace_problem, None);
}

// ---------------------------------------------------------------------------
// Concurrent writers of one key.
// ---------------------------------------------------------------------------

/// Two nodes set the same key at the same time. The one whose `SET` reached
/// Redis first can apply the other's invalidation before it puts its own
/// value in RAM; it must then leave RAM empty rather than serve a value Redis
/// no longer holds (`set_arc` fences the key before writing and skips its
/// RAM insert when the key was invalidated since).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sets_of_one_key_leave_every_ram_agreeing_with_redis() {
    let redis = TestRedis::start();
    let all = nodes(&redis, 2, NO_CHECK).await;
    let mut diverged = Vec::new();
    let mut filled = [0u32; 2];
    for i in 0..300u64 {
        let writers: Vec<_> = all
            .iter()
            .enumerate()
            .map(|(n, node)| {
                let node = node.clone();
                let value = i * 10 + n as u64;
                // Most rounds race exactly; some stagger the writers by a
                // millisecond or two, so that RAM is filled in some rounds
                // and the agreement below is checked on real values.
                let stagger = Duration::from_millis((i + n as u64) % 3);
                tokio::spawn(async move {
                    if !stagger.is_zero() && i % 2 == 0 {
                        tokio::time::sleep(stagger).await;
                    }
                    node.set("k", &value, Ttl::Default).await
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap().unwrap();
        }
        caught_up(&all, bus_seq(&redis, NS)).await;
        let truth = all[0]
            .with_layers(Layers::Redis)
            .get::<u64>("k")
            .await
            .unwrap();
        for (n, node) in all.iter().enumerate() {
            let ram = in_ram::<u64>(node, "k").await;
            filled[n] += u32::from(ram.is_some());
            if ram.is_some() && ram != truth {
                diverged.push((i, n, ram, truth));
            }
        }
    }
    assert!(
        diverged.is_empty(),
        "{} of 300 rounds left a node's RAM disagreeing with Redis (round, node, RAM, Redis): {:?}",
        diverged.len(),
        &diverged[..diverged.len().min(10)]
    );
    // Not vacuous: the writers' own RAM inserts did happen.
    assert!(
        filled.iter().all(|&f| f > 0),
        "RAM held a value after {filled:?} of 300 rounds per node"
    );
}
