//! Metrics through the built-in Prometheus exporter, against a real
//! redis-server. One test: the exporter's recorder is process-wide, so every
//! figure in it is this test's alone.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use cachenode::{metrics, CacheNode, Ttl};
use support::{bus_seq, caught_up, connect, eventually, free_port, TestRedis};

const NS: &str = "m";

/// Reads `/metrics`. Blocking I/O, run off the runtime's threads so the
/// exporter (served on this runtime) can answer.
async fn scrape(port: u16) -> String {
    tokio::task::spawn_blocking(move || scrape_blocking(port))
        .await
        .unwrap()
}

fn scrape_blocking(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of the series `name` whose labels are exactly `labels` in the
/// exporter's text, or `None` when it has no such series.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want = labels.to_vec();
    want.sort();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, l) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let mut got: Vec<(&str, &str)> = l
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("label=value");
                    (k, v.trim_matches('"'))
                })
                .collect();
            got.sort();
            (got == want).then(|| value.parse().expect("a number"))
        })
}

/// One expected figure: series `name` with exactly `labels` holds `value`.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Asserts every one of `expected`, naming every series that is off.
#[track_caller]
fn assert_series(body: &str, phase: &str, expected: &[Expected]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|(name, labels, value)| {
            let got = sample(body, name, labels);
            (got != Some(*value)).then(|| format!("{name}{labels:?}: {got:?}, expected {value}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "after {phase}:\n{}\n\n{body}",
        wrong.join("\n")
    );
}

/// The sum of series `name` over all its labels.
fn total(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

const RAM: &[(&str, &str)] = &[("layer", "ram")];
const REDIS: &[(&str, &str)] = &[("layer", "redis")];
const SQUARES: &[(&str, &str)] = &[("function", "squares")];
const SQUARES_RAM: &[(&str, &str)] = &[("function", "squares"), ("layer", "ram")];
const SQUARES_REDIS: &[(&str, &str)] = &[("function", "squares"), ("layer", "redis")];

/// Counts a known sequence of operations on two nodes and reads them back
/// exactly: a counter left out of a path (or counted twice) fails here.
/// Node counters are labelled by layer only, so both nodes add to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_counts_exactly_what_the_nodes_did_without_keys_in_labels() {
    let redis = TestRedis::start();
    let port = free_port();
    let a = connect(
        CacheNode::builder()
            .redis_url(redis.url())
            .namespace(NS)
            .serve_metrics(([127, 0, 0, 1], port).into()),
    )
    .await;
    let b = connect(CacheNode::builder().redis_url(redis.url()).namespace(NS)).await;
    // A second exporter in the same process is refused with a clear error.
    let err = CacheNode::builder()
        .serve_metrics(([127, 0, 0, 1], free_port()).into())
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("metrics"), "{err}");

    // Plain keys: 2 writes, 3 RAM hits, 2 Redis hits, 1 miss in both layers.
    let secret_key = "user:secret-key-42";
    a.set(secret_key, &1u32, Ttl::Default).await.unwrap();
    a.set("other", &2u32, Ttl::Default).await.unwrap();
    for _ in 0..3 {
        assert_eq!(a.get::<u32>(secret_key).await.unwrap(), Some(1));
    }
    assert_eq!(b.get::<u32>(secret_key).await.unwrap(), Some(1));
    assert_eq!(b.get::<u32>("other").await.unwrap(), Some(2));
    assert_eq!(b.get::<u32>("missing").await.unwrap(), None);
    let body = scrape(port).await;
    assert_series(
        &body,
        "plain keys",
        &[
            (metrics::WRITES_TOTAL, REDIS, 2.0),
            (metrics::WRITES_TOTAL, RAM, 2.0),
            (metrics::HITS_TOTAL, RAM, 3.0),
            (metrics::HITS_TOTAL, REDIS, 2.0),
            // b's two Redis hits and its miss.
            (metrics::MISSES_TOTAL, RAM, 3.0),
            (metrics::MISSES_TOTAL, REDIS, 1.0),
            (metrics::INVALIDATIONS_PUBLISHED_TOTAL, &[], 2.0),
        ],
    );

    // A function: computed once on a (a miss in both layers, then stored in
    // both), a RAM hit on a, a Redis hit on b. Node counters count them too.
    let f = a.func::<(u32,), u32>("squares").build().unwrap();
    assert_eq!(f.call(&(3,), || async { Ok::<_, ()>(9) }).await, Ok(9));
    assert_eq!(f.call(&(3,), || async { Ok::<_, ()>(0) }).await, Ok(9));
    let g = b.func::<(u32,), u32>("squares").build().unwrap();
    assert_eq!(g.call(&(3,), || async { Ok::<_, ()>(0) }).await, Ok(9));
    let body = scrape(port).await;
    assert_series(
        &body,
        "function calls",
        &[
            (metrics::FUNCTION_MISSES_TOTAL, SQUARES, 1.0),
            (metrics::COMPUTATIONS_TOTAL, SQUARES, 1.0),
            (
                &format!("{}_count", metrics::COMPUTATION_SECONDS),
                SQUARES,
                1.0,
            ),
            (metrics::FUNCTION_HITS_TOTAL, SQUARES_RAM, 1.0),
            (metrics::FUNCTION_HITS_TOTAL, SQUARES_REDIS, 1.0),
            (metrics::WRITES_TOTAL, REDIS, 3.0),
            (metrics::WRITES_TOTAL, RAM, 3.0),
            (metrics::HITS_TOTAL, RAM, 4.0),
            (metrics::HITS_TOTAL, REDIS, 3.0),
            (metrics::MISSES_TOTAL, RAM, 5.0),
            (metrics::MISSES_TOTAL, REDIS, 2.0),
            (metrics::INVALIDATIONS_PUBLISHED_TOTAL, &[], 2.0),
        ],
    );

    // A value that does not decode: a miss, counted by reason, removed and
    // announced. Then a RAM flush on a, announced, and applied on b.
    let _: () = redis::cmd("SET")
        .arg(format!("{NS}:k:corrupt"))
        .arg("x")
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(a.get::<u32>("corrupt").await.unwrap(), None);
    a.invalidate_all().await.unwrap();
    caught_up([&b], bus_seq(&redis, NS)).await;
    let body = scrape(port).await;
    assert_series(
        &body,
        "a corrupt value and invalidate_all",
        &[
            (
                metrics::DECODE_FAILURES_TOTAL,
                &[("reason", "not_an_envelope")],
                1.0,
            ),
            (metrics::MISSES_TOTAL, RAM, 6.0),
            (metrics::MISSES_TOTAL, REDIS, 3.0),
            (metrics::HITS_TOTAL, RAM, 4.0),
            (metrics::HITS_TOTAL, REDIS, 3.0),
            (metrics::INVALIDATIONS_PUBLISHED_TOTAL, &[], 4.0),
            (
                metrics::RAM_FLUSHES_TOTAL,
                &[("reason", "invalidate_all")],
                2.0,
            ),
        ],
    );
    // b applied each of a's four messages once, whichever way it came
    // (pub/sub, the log); a skips its own.
    assert_eq!(
        total(&body, metrics::INVALIDATIONS_APPLIED_TOTAL),
        4.0,
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            &format!("{}_count", metrics::PROPAGATION_SECONDS),
            &[]
        ),
        Some(4.0),
        "{body}"
    );

    // Gauges are set every second.
    let ready = eventually(Duration::from_secs(5), || async {
        let body = scrape(port).await;
        sample(&body, metrics::KEYSET_SIZE, SQUARES) == Some(1.0)
            && sample(&body, metrics::BUS_CONNECTED, &[]) == Some(1.0)
    })
    .await;
    let body = scrape(port).await;
    assert!(ready, "{body}");
    // Every kind of metric these operations touch is served (Redis errors
    // and refused bus messages are counted only once one happens).
    for name in [
        metrics::HITS_TOTAL,
        metrics::MISSES_TOTAL,
        metrics::WRITES_TOTAL,
        metrics::DECODE_FAILURES_TOTAL,
        metrics::RAM_FLUSHES_TOTAL,
        metrics::INVALIDATIONS_PUBLISHED_TOTAL,
        metrics::INVALIDATIONS_APPLIED_TOTAL,
        metrics::PROPAGATION_SECONDS,
        metrics::OPERATION_SECONDS,
        metrics::FUNCTION_HITS_TOTAL,
        metrics::FUNCTION_MISSES_TOTAL,
        metrics::COMPUTATIONS_TOTAL,
        metrics::COMPUTATION_SECONDS,
        metrics::RAM_ENTRIES,
        metrics::RAM_BYTES,
        metrics::BUS_CONNECTED,
        metrics::BUS_LAST_APPLIED_SEQ,
        metrics::BUS_LAG,
        metrics::KEYSET_SIZE,
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    assert!(
        !body.contains("secret-key"),
        "a cache key leaked into a label"
    );
    for line in body.lines().filter(|l| l.starts_with("cachenode_")) {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            metrics::ALL.contains(&base) || metrics::ALL.contains(&name),
            "{name} is emitted but not listed in metrics::ALL"
        );
    }
}
