//! Bus authentication (`CacheNodeBuilder::bus_secret`) against real
//! redis-server processes: nodes sharing a secret keep each other coherent;
//! whatever a client that may `PUBLISH` on the channel or `XADD` to the log
//! forges is dropped and counted, never flushes RAM, never drops an entry,
//! and never moves a node past a real message.

mod support;

use std::time::Duration;

use cachenode::{CacheNode, CacheNodeBuilder, Ttl};
use support::{
    bus_seq, caught_up, connect, dropped_within_a_hop, eventually, fill, health, in_ram,
    last_logged_body, log_without_publishing, publish, subscribed, Nodes, TestRedis,
};

const NS: &str = "t";
const SECRET: &[u8] = b"correct horse battery staple";
/// Deletion checks run often, so that forged log entries are read (and must
/// still cause no flush).
const EVERY: Duration = Duration::from_millis(500);
const LONG: Duration = Duration::from_secs(15);

/// Every node here: 1 s per Redis call, deletion checks every [`EVERY`].
const NODES: Nodes = Nodes::new(NS, Duration::from_secs(1)).checking_every(EVERY);

/// A builder of a node in namespace `ns` that signs with `secret` and
/// accepts only what it signed (`None`: signs and checks nothing).
fn secret_builder(url: &str, ns: &'static str, secret: Option<&[u8]>) -> CacheNodeBuilder {
    let b = NODES.in_namespace(ns).builder(url);
    match secret {
        Some(s) => b.bus_secret(s),
        None => b,
    }
}

/// A node in [`NS`] on `redis` with `secret`, subscribed.
async fn signed_node(redis: &TestRedis, secret: Option<&[u8]>) -> CacheNode {
    let n = connect(secret_builder(&redis.url(), NS, secret)).await;
    subscribed([&n]).await;
    n
}

/// Bodies an attacker may have: a genuine signed one of this namespace
/// (captured), a v1 body, a genuine signed body of another namespace with
/// the same secret.
struct Captured {
    signed: Vec<u8>,
    unsigned: Vec<u8>,
    other_namespace: Vec<u8>,
}

async fn capture(redis: &TestRedis, a: &CacheNode) -> Captured {
    a.set("captured", &0u32, Ttl::Default).await.unwrap();
    let signed = last_logged_body(redis, NS);
    let plain = secret_builder(&redis.url(), "plain", None)
        .without_ram()
        .build()
        .await
        .unwrap();
    plain.set("k", &0u32, Ttl::Default).await.unwrap();
    let unsigned = last_logged_body(redis, "plain");
    let other = secret_builder(&redis.url(), "other", Some(SECRET))
        .without_ram()
        .build()
        .await
        .unwrap();
    other.invalidate_all().await.unwrap();
    let other_namespace = last_logged_body(redis, "other");
    plain.shutdown().await;
    other.shutdown().await;
    assert_eq!(signed[0], 2, "signed bodies are version 2");
    assert_eq!(unsigned[0], 1, "bodies without a secret stay version 1");
    assert_eq!(other_namespace[0], 2);
    Captured {
        signed,
        unsigned,
        other_namespace,
    }
}

/// `body` with one bit of its tag flipped.
fn bad_tag(body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    b[5] ^= 0x40;
    b
}

#[tokio::test]
async fn nodes_with_the_same_secret_propagate_every_kind_of_invalidation() {
    let redis = TestRedis::start();
    let a = signed_node(&redis, Some(SECRET)).await;
    let b = signed_node(&redis, Some(SECRET)).await;

    a.set("k", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, [&b], "k", 1).await;
    a.set("k", &2u32, Ttl::Default).await.unwrap();
    dropped_within_a_hop([&b], "k").await;
    assert_eq!(b.get::<u32>("k").await.unwrap(), Some(2));

    fill(&redis, NS, [&b], "k", 2).await;
    a.delete("k").await.unwrap();
    dropped_within_a_hop([&b], "k").await;

    a.set("k", &3u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, [&b], "k", 3).await;
    a.invalidate_all().await.unwrap();
    dropped_within_a_hop([&b], "k").await;

    // And the other way round, long key lists (several signed messages).
    a.set("j", &4u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, [&a], "j", 4).await;
    let keys: Vec<String> = (0..2500).map(|i| format!("x{i}")).collect();
    let mut refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    refs.push("j");
    b.invalidate_many(&refs).await.unwrap();
    dropped_within_a_hop([&a], "j").await;

    assert_eq!(last_logged_body(&redis, NS)[0], 2);
    for n in [&a, &b] {
        let h = health(n);
        assert_eq!(
            (h.unauthenticated, h.malformed, h.gap_flushes),
            (0, 0, 0),
            "{h:?}"
        );
    }
}

#[tokio::test]
async fn forged_channel_messages_are_dropped_and_counted_without_flush_or_advance() {
    let redis = TestRedis::start();
    let a = signed_node(&redis, Some(SECRET)).await;
    let b = signed_node(&redis, Some(SECRET)).await;
    let c = capture(&redis, &a).await;
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, [&b], "k", 1).await;
    let seq = bus_seq(&redis, NS);
    let before = health(&b);
    assert_eq!(before.unauthenticated, 0, "{before:?}");

    let at = |s: u64, body: &[u8]| [format!("{s}:").into_bytes(), body.to_vec()].concat();
    let forged = [
        // A captured v1 body (what a client without the secret can write).
        at(seq + 1, &c.unsigned),
        // A genuine signed body with a flipped tag bit.
        at(seq + 1, &bad_tag(&c.signed)),
        // A genuine signed `invalidate_all` of another namespace.
        at(seq + 1, &c.other_namespace),
        // The same, far ahead: must not even start a catch-up that flushes.
        at(seq + 50, &c.other_namespace),
        at(seq + 2, &c.unsigned),
    ];
    for (i, payload) in forged.iter().enumerate() {
        publish(&redis, NS, payload);
        let n = before.unauthenticated + i as u64 + 1;
        let ok = eventually(LONG, || async { health(&b).unauthenticated >= n }).await;
        assert!(ok, "forgery {i} not counted: {:?}", health(&b));
    }
    // Garbage without a sequence number: malformed, not unauthenticated.
    publish(&redis, NS, b"not a bus message");
    let ok = eventually(LONG, || async { health(&b).malformed >= 1 }).await;
    assert!(ok, "{:?}", health(&b));

    // Several periodic checks later: nothing flushed, dropped or advanced.
    tokio::time::sleep(EVERY * 3).await;
    let h = health(&b);
    assert_eq!(h.gap_flushes, 0, "{h:?}");
    assert_eq!(h.applied, before.applied, "nothing forged applied: {h:?}");
    assert_eq!(h.last_applied_seq, seq, "not advanced by forgeries: {h:?}");
    assert_eq!(
        in_ram::<u32>(&b, "k").await,
        Some(1),
        "no RAM entry dropped"
    );
    assert_eq!(h.unauthenticated, 5, "{h:?}");
    assert!(health(&a).unauthenticated >= 5, "{:?}", health(&a));

    // The real message with the number the forgeries claimed still applies.
    a.set("k", &2u32, Ttl::Default).await.unwrap();
    assert_eq!(bus_seq(&redis, NS), seq + 1);
    dropped_within_a_hop([&b], "k").await;
    assert_eq!(b.get::<u32>("k").await.unwrap(), Some(2));
    let h = health(&b);
    assert!(h.connected && h.gap_flushes == 0, "{h:?}");
}

#[tokio::test]
async fn replayed_signed_messages_are_refused_and_cannot_hide_the_real_one() {
    let redis = TestRedis::start();
    let a = signed_node(&redis, Some(SECRET)).await;
    let b = signed_node(&redis, Some(SECRET)).await;
    // A genuine signed message, seen and applied by b.
    let c = capture(&redis, &a).await;
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, [&b], "k", 1).await;
    // A node started after the capture never saw it.
    let late = signed_node(&redis, Some(SECRET)).await;
    fill(&redis, NS, [&late], "k", 1).await;
    let seq = bus_seq(&redis, NS);
    let before = [health(&b), health(&late)];

    // The captured body under the next number (what the real next message
    // will carry), then far ahead.
    let at = |s: u64, body: &[u8]| [format!("{s}:").into_bytes(), body.to_vec()].concat();
    publish(&redis, NS, &at(seq + 1, &c.signed));
    publish(&redis, NS, &at(seq + 40, &c.signed));
    for (n, before) in [&b, &late].into_iter().zip(&before) {
        let ok = eventually(LONG, || async {
            health(n).unauthenticated >= before.unauthenticated + 2
        })
        .await;
        assert!(ok, "replays not refused: {:?}", health(n));
        let h = health(n);
        assert_eq!(h.last_applied_seq, seq, "a replay moved the node: {h:?}");
        assert_eq!(h.applied, before.applied, "a replay was applied: {h:?}");
        assert_eq!(h.gap_flushes, 0, "{h:?}");
    }

    // The real message with that number is applied on both.
    a.set("k", &2u32, Ttl::Default).await.unwrap();
    assert_eq!(bus_seq(&redis, NS), seq + 1);
    for n in [&b, &late] {
        dropped_within_a_hop([n], "k").await;
        assert_eq!(n.get::<u32>("k").await.unwrap(), Some(2));
    }
    // And a replay of that real message, after it, is refused as well.
    let real = last_logged_body(&redis, NS);
    let refused = health(&b).unauthenticated;
    publish(&redis, NS, &at(seq + 2, &real));
    let ok = eventually(LONG, || async { health(&b).unauthenticated > refused }).await;
    assert!(ok, "{:?}", health(&b));
    assert_eq!(health(&b).last_applied_seq, seq + 1);
}

#[tokio::test]
async fn forged_log_entries_are_skipped_without_flushing_and_the_listener_keeps_working() {
    let redis = TestRedis::start();
    let a = signed_node(&redis, Some(SECRET)).await;
    let b = signed_node(&redis, Some(SECRET)).await;
    let c = capture(&redis, &a).await;
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, [&b], "k", 1).await;
    let before = health(&b);

    // Appended under the next sequence numbers, never published: the
    // periodic check reads them from the log. Without a secret, an entry
    // that does not decode flushes RAM; these must not.
    let huge = vec![2u8; (1 << 20) + 16];
    let entries: [(&str, &[u8]); 6] = [
        ("m", &c.unsigned),
        ("m", &bad_tag(&c.signed)),
        ("m", &c.other_namespace),
        ("m", b"\x02short"),
        ("m", &huge),
        ("x", b"no message field"),
    ];
    let mut last = 0;
    for (field, value) in entries {
        last = log_without_publishing(&redis, NS, field, value);
    }
    caught_up([&b], last).await;
    caught_up([&a], last).await;
    let h = health(&b);
    assert_eq!(h.gap_flushes, 0, "forged log entries flush nothing: {h:?}");
    assert_eq!(h.applied, before.applied, "{h:?}");
    assert_eq!(
        h.unauthenticated + h.malformed - before.unauthenticated - before.malformed,
        6,
        "{h:?}"
    );
    assert_eq!(h.unauthenticated - before.unauthenticated, 5, "{h:?}");
    assert_eq!(
        in_ram::<u32>(&b, "k").await,
        Some(1),
        "no RAM entry dropped"
    );
    assert_eq!(health(&a).gap_flushes, 0);

    // A genuine signed body appended to the log again would apply: the log
    // is authoritative, and such an entry takes a number of its own, so no
    // real message is skipped (and appending needs write access to the bus
    // keys, which is not covered).

    // Real invalidations still flow, over pub/sub and through the log.
    a.set("k", &2u32, Ttl::Default).await.unwrap();
    dropped_within_a_hop([&b], "k").await;
    assert_eq!(b.get::<u32>("k").await.unwrap(), Some(2));
    let h = health(&b);
    assert!(h.connected && h.lag == 0 && h.gap_flushes == 0, "{h:?}");
}

#[tokio::test]
async fn a_node_with_another_secret_applies_nothing_from_the_others_and_vice_versa() {
    let redis = TestRedis::start();
    let a = signed_node(&redis, Some(SECRET)).await;
    let b = signed_node(&redis, Some(SECRET)).await;
    let stranger = signed_node(&redis, Some(b"another secret")).await;

    a.set("k", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, [&b], "k", 1).await;
    fill(&redis, NS, [&stranger], "k", 1).await;

    a.set("k", &2u32, Ttl::Default).await.unwrap();
    a.invalidate_all().await.unwrap();
    dropped_within_a_hop([&b], "k").await;
    // The stranger reads both messages (pub/sub, then the log) and drops
    // them: its stale copy stays, nothing is flushed.
    caught_up([&stranger], bus_seq(&redis, NS)).await;
    let h = health(&stranger);
    assert_eq!(in_ram::<u32>(&stranger, "k").await, Some(1), "{h:?}");
    assert!(h.unauthenticated >= 2, "{h:?}");
    assert_eq!((h.applied, h.gap_flushes), (0, 0), "{h:?}");

    // Its own invalidations reach nobody.
    fill(&redis, NS, [&b], "k", 2).await;
    stranger.delete("j").await.unwrap();
    stranger.invalidate_all().await.unwrap();
    caught_up([&b], bus_seq(&redis, NS)).await;
    assert_eq!(in_ram::<u32>(&b, "k").await, Some(2));
    let h = health(&b);
    assert!(h.unauthenticated >= 2 && h.gap_flushes == 0, "{h:?}");
}

#[tokio::test]
async fn a_node_without_a_secret_still_applies_signed_messages() {
    // Documented choice: it trusts every message anyway, so reading signed
    // ones unchecked keeps it coherent and weakens nothing (it logs an
    // error about the mixed configuration).
    let redis = TestRedis::start();
    let a = signed_node(&redis, Some(SECRET)).await;
    let open = signed_node(&redis, None).await;
    a.set("k", &1u32, Ttl::Default).await.unwrap();
    fill(&redis, NS, [&open], "k", 1).await;
    a.set("k", &2u32, Ttl::Default).await.unwrap();
    dropped_within_a_hop([&open], "k").await;
    let h = health(&open);
    assert_eq!(
        (h.unauthenticated, h.malformed, h.gap_flushes),
        (0, 0, 0),
        "{h:?}"
    );
    // …while the node with a secret ignores the open node's messages.
    fill(&redis, NS, [&a], "k", 2).await;
    open.invalidate_all().await.unwrap();
    caught_up([&a], bus_seq(&redis, NS)).await;
    assert_eq!(in_ram::<u32>(&a, "k").await, Some(2));
    assert!(health(&a).unauthenticated >= 1);
}

#[tokio::test]
async fn an_empty_secret_is_refused() {
    let redis = TestRedis::start();
    let err = secret_builder(&redis.url(), NS, Some(b""))
        .build()
        .await
        .expect_err("empty secret");
    assert!(err.to_string().contains("bus_secret"), "{err}");
    // And the builder's Debug does not show a secret.
    let shown = format!("{:?}", secret_builder(&redis.url(), NS, Some(SECRET)));
    assert!(!shown.contains("horse"), "{shown}");
}

#[cfg(feature = "cli")]
mod cli {
    use super::*;
    use std::process::Stdio;
    use support::cli::command;

    async fn run(
        redis: &TestRedis,
        args: &[&str],
        env_secret: Option<&str>,
    ) -> std::process::Output {
        let url = redis.url();
        let mut cmd = command(&["--redis-url", url.as_str(), "--namespace", NS]);
        cmd.args(args);
        if let Some(s) = env_secret {
            cmd.env("CACHENODE_BUS_SECRET", s);
        }
        tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .expect("cachenode ends")
            .expect("run cachenode")
    }

    #[tokio::test]
    async fn the_cli_signs_with_a_secret_file_or_variable_and_is_ignored_without() {
        let redis = TestRedis::start();
        let a = signed_node(&redis, Some(SECRET)).await;
        let secret = std::str::from_utf8(SECRET).unwrap();
        let dir = std::env::temp_dir().join(format!("bus-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        let file = file.to_str().unwrap();

        // Without the secret: published, but ignored by the node.
        a.set("k", &1u32, Ttl::Default).await.unwrap();
        fill(&redis, NS, [&a], "k", 1).await;
        let out = run(&redis, &["invalidate", "--key", "k"], None).await;
        assert!(out.status.success(), "{out:?}");
        caught_up([&a], bus_seq(&redis, NS)).await;
        assert_eq!(in_ram::<u32>(&a, "k").await, Some(1));
        assert!(health(&a).unauthenticated >= 1);

        // With the file (trailing newline ignored), then the variable.
        let out = run(
            &redis,
            &["--bus-secret-file", file, "invalidate", "--key", "k"],
            None,
        )
        .await;
        assert!(out.status.success(), "{out:?}");
        dropped_within_a_hop([&a], "k").await;
        fill(&redis, NS, [&a], "k", 1).await;
        let out = run(&redis, &["invalidate", "--key", "k"], Some(secret)).await;
        assert!(out.status.success(), "{out:?}");
        dropped_within_a_hop([&a], "k").await;
        assert_eq!(health(&a).gap_flushes, 0);

        // A missing file is a usage error.
        let out = run(
            &redis,
            &["--bus-secret-file", "/nonexistent/secret", "stats"],
            None,
        )
        .await;
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn tail_with_the_secret_verifies_messages() {
        let redis = TestRedis::start();
        let a = signed_node(&redis, Some(SECRET)).await;
        let secret = std::str::from_utf8(SECRET).unwrap();
        let url = redis.url();
        let child = command(&[
            "--redis-url",
            url.as_str(),
            "--namespace",
            NS,
            "--json",
            "tail",
            "--count",
            "2",
        ])
        .env("CACHENODE_BUS_SECRET", secret)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        // Let it subscribe (tail sees nothing published before).
        let subscribed = eventually(LONG, || async {
            let n: Vec<(String, u64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(format!("{NS}:bus"))
                .query(&mut redis.conn())
                .unwrap();
            n.first().map(|(_, c)| *c).unwrap_or(0) >= 2
        })
        .await;
        assert!(subscribed, "tail did not subscribe");
        a.invalidate_many(&["real"]).await.unwrap();
        let signed = last_logged_body(&redis, NS);
        publish(&redis, NS, &[b"99:".to_vec(), bad_tag(&signed)].concat());
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("real"), "{text}");
        assert!(lines[1].contains("bad_signature"), "{text}");
    }
}
