//! The invalidation bus as a test sees it on the server: the counter and
//! the log of namespace `ns` (`{ns}:{bus}:seq`, `{ns}:{bus}:log`, channel
//! `{ns}:bus`), forged traffic, and waits for nodes to apply it.

use std::time::Duration;

use cachenode::CacheNode;
use redis::Commands;

use super::{eventually, health, in_ram, time_until, TestRedis};

/// How long one pub/sub hop may take on a slow machine.
pub const HOP: Duration = Duration::from_secs(2);
/// How long catching up may take (after a reconnection, a restart).
const CATCH_UP: Duration = Duration::from_secs(15);

/// The bus counter's key in namespace `ns`.
pub fn seq_key(ns: &str) -> String {
    format!("{ns}:{{bus}}:seq")
}

/// The bus log's key in namespace `ns`.
pub fn log_key(ns: &str) -> String {
    format!("{ns}:{{bus}}:log")
}

/// The bus counter of namespace `ns`: the number of the last invalidation
/// published (0 before the first).
pub fn bus_seq(redis: &TestRedis, ns: &str) -> u64 {
    let seq: Option<u64> = redis.conn().get(seq_key(ns)).expect("GET seq");
    seq.unwrap_or(0)
}

/// The last message body logged in namespace `ns`, as its publisher wrote it.
pub fn last_logged_body(redis: &TestRedis, ns: &str) -> Vec<u8> {
    let reply: redis::streams::StreamRangeReply = redis
        .conn()
        .xrevrange_count(log_key(ns), "+", "-", 1)
        .expect("XREVRANGE");
    let entry = reply.ids.into_iter().next().expect("a logged message");
    entry.get::<Vec<u8>>("m").expect("field m")
}

/// Appends `field` = `value` to the log of namespace `ns` under the next
/// sequence number, as the publish script does, but publishes nothing (a
/// message pub/sub lost, or a forgery). Returns its sequence number.
pub fn log_without_publishing(redis: &TestRedis, ns: &str, field: &str, value: &[u8]) -> u64 {
    redis::Script::new(
        "local seq = redis.call('INCR', KEYS[1])
         redis.call('XADD', KEYS[2], seq .. '-0', ARGV[1], ARGV[2])
         return seq",
    )
    .key(seq_key(ns))
    .key(log_key(ns))
    .arg(field)
    .arg(value)
    .invoke(&mut redis.conn())
    .expect("append to the log")
}

/// Publishes `payload` on the bus channel of namespace `ns`, and nothing
/// else (no log entry, no counter).
pub fn publish(redis: &TestRedis, ns: &str, payload: &[u8]) {
    let _: u64 = redis
        .conn()
        .publish(format!("{ns}:bus"), payload)
        .expect("PUBLISH");
}

/// Waits until every one of `nodes` has applied (or skipped) everything up
/// to `seq`.
pub async fn caught_up<'a>(nodes: impl IntoIterator<Item = &'a CacheNode>, seq: u64) {
    let nodes: Vec<&CacheNode> = nodes.into_iter().collect();
    let ok = eventually(CATCH_UP, || async {
        nodes.iter().all(|n| health(n).last_applied_seq >= seq)
    })
    .await;
    assert!(
        ok,
        "nodes did not reach seq {seq}: {:?}",
        nodes.iter().map(|n| health(n)).collect::<Vec<_>>()
    );
}

/// Fills `key` (a `u32` holding `expected`) into the RAM of each of `nodes`
/// and checks it is there. Waits first until they have applied every
/// message of namespace `ns` so far: a fill that races the invalidation of
/// the write it reads is (rightly) not kept.
pub async fn fill<'a>(
    redis: &TestRedis,
    ns: &str,
    nodes: impl IntoIterator<Item = &'a CacheNode>,
    key: &str,
    expected: u32,
) {
    let nodes: Vec<&CacheNode> = nodes.into_iter().collect();
    caught_up(nodes.iter().copied(), bus_seq(redis, ns)).await;
    for n in nodes {
        assert_eq!(n.get::<u32>(key).await.unwrap(), Some(expected), "{key}");
        assert_eq!(in_ram::<u32>(n, key).await, Some(expected), "{key} in RAM");
    }
}

/// Asserts that `key` (a `u32`) leaves the RAM of every one of `nodes`
/// within one pub/sub [`HOP`].
pub async fn dropped_within_a_hop<'a>(nodes: impl IntoIterator<Item = &'a CacheNode>, key: &str) {
    for (i, n) in nodes.into_iter().enumerate() {
        let took = time_until(HOP, || async { in_ram::<u32>(n, key).await.is_none() }).await;
        assert!(
            took.is_some(),
            "node {i} still holds {key:?} after {HOP:?}: {:?}",
            health(n)
        );
    }
}
