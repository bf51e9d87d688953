//! Metrics through the built-in Prometheus exporter, against a real
//! redis-server. One test: the exporter's recorder is process-wide.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use cachenode::{metrics, CacheNode, Ttl};
use support::{eventually, TestRedis};

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_serves_every_kind_of_metric_without_keys_in_labels() {
    let redis = TestRedis::start();
    let port = free_port();
    let a = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("m")
        .serve_metrics(([127, 0, 0, 1], port).into())
        .build()
        .await
        .unwrap();
    let b = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("m")
        .build()
        .await
        .unwrap();
    // A second exporter in the same process is refused with a clear error.
    let err = CacheNode::builder()
        .serve_metrics(([127, 0, 0, 1], free_port()).into())
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("metrics"), "{err}");

    let secret_key = "user:secret-key-42";
    a.set(secret_key, &1u32, Ttl::Default).await.unwrap();
    for _ in 0..200 {
        a.get::<u32>(secret_key).await.unwrap();
    }
    b.get::<u32>(secret_key).await.unwrap();
    b.get::<u32>("missing").await.unwrap();
    a.set(secret_key, &2u32, Ttl::Default).await.unwrap();
    let f = a.func::<(u32,), u32>("squares").build().unwrap();
    f.call(&(3,), || async { Ok::<_, ()>(9) }).await.unwrap();
    f.call(&(3,), || async { Ok::<_, ()>(9) }).await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("m:k:corrupt")
        .arg("x")
        .query(&mut redis.conn())
        .unwrap();
    a.get::<u32>("corrupt").await.unwrap();
    a.invalidate_all().await.unwrap();

    // Gauges are set every second; the applied invalidations arrive on b.
    let ready = eventually(Duration::from_secs(5), || async {
        let body = scrape(port).await;
        body.contains(metrics::KEYSET_SIZE) && body.contains(metrics::INVALIDATIONS_APPLIED_TOTAL)
    })
    .await;
    let body = scrape(port).await;
    assert!(ready, "{body}");
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
        body.contains(r#"cachenode_hits_total{layer="ram"}"#),
        "{body}"
    );
    assert!(body.contains(r#"function="squares""#), "{body}");
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
