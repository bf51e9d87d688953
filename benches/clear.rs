//! Deleting every value of one function: cachenode's key sets beside a
//! keyspace `SCAN MATCH` + `UNLINK`, in one run on one redis-server.
//!
//! Loads `--total` keys (default 5,000,000), of which `--func` (default
//! 1,000,000) belong to function `target` and are recorded in its key set
//! as cachenode records them; the rest belong to function `other`. Then:
//! 1. `CachedFn::clear_all` of `target` (key-set walk + batched UNLINK);
//! 2. reload `target`, and delete its keys with `SCAN MATCH` + `UNLINK`.
//!
//! Run: `cargo bench --bench clear` (`-- --quick` for a small smoke run).

use std::time::{Duration, Instant};

use cachenode::CacheNode;
use xxhash_rust::xxh3::xxh3_64;

const NS: &str = "bench";
const PIPE: usize = 10_000;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `count` values of `func`, with their key-set entries, as
/// cachenode's function cache writes them.
async fn load(conn: &mut redis::aio::MultiplexedConnection, func: &str, count: usize) {
    let value = vec![0xCBu8; 40];
    for start in (0..count).step_by(PIPE) {
        let mut pipe = redis::pipe();
        for i in start..(start + PIPE).min(count) {
            let key = format!("{NS}:f:{func}:|{i:032x}");
            let shard = xxh3_64(key.as_bytes()) % cachenode::SHARDS;
            pipe.cmd("SET").arg(&key).arg(&value).ignore();
            pipe.cmd("SADD")
                .arg(format!("{NS}:ks:{func}:{shard}"))
                .arg(&key)
                .ignore();
        }
        let () = pipe.query_async(conn).await.expect("load");
    }
    let () = redis::cmd("SADD")
        .arg(format!("{NS}:ks"))
        .arg(func)
        .query_async(conn)
        .await
        .expect("register");
}

async fn count(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("DBSIZE")
        .query_async(conn)
        .await
        .expect("dbsize")
}

/// Walks the keys matching `pattern` with `SCAN`; unlinks them in batches
/// when `unlink`. Returns how many it found (or removed).
async fn scan(conn: &mut redis::aio::MultiplexedConnection, pattern: &str, unlink: bool) -> u64 {
    let mut cursor = 0u64;
    let mut n = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("scan");
        if unlink && !keys.is_empty() {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("UNLINK").arg(k);
            }
            let removed: Vec<u64> = pipe.query_async(conn).await.expect("unlink");
            n += removed.iter().sum::<u64>();
        } else if !unlink {
            n += keys.len() as u64;
        }
        if next == 0 {
            return n;
        }
        cursor = next;
    }
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let total = arg("--total", if quick { 50_000 } else { 5_000_000 });
    let func = arg("--func", if quick { 10_000 } else { 1_000_000 });
    assert!(func <= total, "--func must not exceed --total");

    let server = redis_test::server::RedisServer::new();
    let url = match server.client_addr() {
        redis::ConnectionAddr::Tcp(h, p) => format!("redis://{h}:{p}"),
        other => panic!("unexpected address {other:?}"),
    };
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = loop {
        match client.get_multiplexed_async_connection().await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };

    let started = Instant::now();
    load(&mut conn, "other", total - func).await;
    load(&mut conn, "target", func).await;
    println!(
        "loaded {total} keys ({func} of `target`) in {:.1?}; DBSIZE {}",
        started.elapsed(),
        count(&mut conn).await
    );

    let node = CacheNode::builder()
        .redis_url(&url)
        .namespace(NS)
        .op_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let target = node.func::<(u64,), u8>("target").build().unwrap();
    let t = Instant::now();
    let deleted = target.delete_all().await.unwrap();
    let keysets = t.elapsed();
    assert_eq!(
        deleted as usize, func,
        "clear_all deletes exactly the function's keys"
    );
    let other_left = scan(&mut conn, &format!("{NS}:f:other:*"), false).await;
    assert_eq!(other_left as usize, total - func, "other keys untouched");

    load(&mut conn, "target", func).await;
    let t = Instant::now();
    let removed = scan(&mut conn, &format!("{NS}:f:target:*"), true).await;
    let scan = t.elapsed();
    assert_eq!(removed as usize, func);

    println!();
    println!("| method | time | ratio to cachenode |");
    println!("|---|---|---|");
    println!(
        "| cachenode `clear_all` (key sets) | {:.2?} | 1.00x |",
        keysets
    );
    println!(
        "| `SCAN MATCH` + `UNLINK` | {:.2?} | {:.2}x |",
        scan,
        scan.as_secs_f64() / keysets.as_secs_f64()
    );
    node.shutdown().await;
    drop(server);
}
