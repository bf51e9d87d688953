//! The RAM layer stays within its byte budget under the full node path:
//! cached-function fills and computes over a key space far larger than the
//! budget, TTL expiries, and bus invalidations from another node, all
//! concurrent.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachenode::CacheNode;
use serde::{Deserialize, Serialize};
use support::TestRedis;

#[derive(Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

const BUDGET: u64 = 256 << 10;
const KEYS: u64 = 2_000_000;
const HOT: u64 = 20_000;
const TTL: Duration = Duration::from_millis(1500);
const RUN: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_layer_stays_within_its_byte_budget_under_load() {
    let redis = TestRedis::start();
    let node = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("bound")
        .ram_capacity_bytes(BUDGET)
        .build()
        .await
        .unwrap();
    assert_eq!(node.stats().ram_capacity_bytes, BUDGET);
    let other = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("bound")
        .build()
        .await
        .unwrap();
    let f = Arc::new(
        node.func::<(u64,), User>("bound.user")
            .ttl(TTL)
            .build()
            .unwrap(),
    );
    let g = other
        .func::<(u64,), User>("bound.user")
        .ttl(TTL)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let f = f.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Half the reads go to a hot set, half anywhere.
                let id = if i >> 63 == 0 {
                    (i >> 20) % HOT
                } else {
                    (i >> 20) % KEYS
                };
                // Values of varying size, so replaced entries change weight.
                let len = ((i >> 8) % 64) as usize;
                f.call(&(id,), || async move {
                    Ok::<_, std::convert::Infallible>(User {
                        id,
                        name: "x".repeat(len),
                    })
                })
                .await
                .unwrap();
            }
        }));
    }
    let invalidations = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 1u64;
            while !stop.load(Ordering::Relaxed) {
                i = i.wrapping_mul(6364136223846793005).wrapping_add(1);
                g.delete(&((i >> 20) % HOT,)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let start = Instant::now();
    let mut worst = 0;
    while start.elapsed() < RUN {
        tokio::time::sleep(Duration::from_millis(50)).await;
        worst = worst.max(node.stats().ram_bytes);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    invalidations.await.unwrap();
    eprintln!("RAM layer: worst {worst} bytes, budget {BUDGET}");
    assert!(
        worst <= BUDGET,
        "RAM layer held {worst} bytes, budget {BUDGET}"
    );
    // The load must have filled the layer, or the bound was never tested.
    assert!(
        worst >= BUDGET * 9 / 10,
        "the layer only reached {worst} bytes"
    );
}
