//! Workload 2: the Redis hit (RAM cold) and the write of distinct keys.
//!
//! A writer node sets `keys` distinct keys one after the other, timing each
//! set; then a second, fresh node of the same system reads each key once,
//! timing each read. For a two-layer system every such read misses its
//! (empty) RAM and is answered by Redis; for a Redis-only system every read
//! is a Redis read anyway; a RAM-only system has nothing to read from.
//!
//! Each system runs on a current-thread runtime of its own (see
//! [`on_own_thread`]), as BentoCache runs on Node.js's one thread.
//!
//! For cachenode it also times a cached function (`CachedFn::call`) the same
//! way: cold calls of distinct arguments on one node (RAM miss, Redis miss,
//! compute, then the value and its key-set entry written in one round trip),
//! then the same calls on a fresh node (Redis hits).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use cachenode::CacheNode;
use serde::Serialize;

use super::{
    guarded, kind_label, on_own_thread, progress, Ctx, Fleet, Outcome, Row, RAM_CAPACITY_BYTES, TTL,
};
use crate::stats::{self, Summary};
use crate::system::{Item, Kind, Node, System};

/// One system's distributions, in µs.
#[derive(Clone, Debug, Serialize)]
pub struct RedisHitResult {
    pub keys: usize,
    /// What a set is for this system.
    pub set_what: String,
    pub set_us: Summary,
    /// `None` where the system has no shared layer to read from.
    pub hit_us: Option<Summary>,
    /// Why there is no hit distribution, when there is none.
    pub hit_note: Option<String>,
    /// Every read's latency, for the CDF plot.
    #[serde(skip)]
    pub hit_samples: Vec<f64>,
}

/// Distinct keys written and read per system.
pub fn keys(quick: bool) -> usize {
    if quick {
        1_000
    } else {
        5_000
    }
}

/// Every system in `systems`, plus cachenode's cached-function row right
/// after cachenode when cachenode is among them.
pub async fn run(ctx: &Ctx, systems: &[Arc<dyn System>]) -> Vec<Row<RedisHitResult>> {
    let keys = keys(ctx.quick);
    let limit = Duration::from_secs(120);
    let mut rows = Vec::new();
    for system in systems {
        let env = ctx.env("w2", system.name(), "");
        let sys = system.clone();
        let outcome = guarded(
            limit,
            on_own_thread(move || async move {
                let writer = Fleet::build(sys.as_ref(), &env, 1).await?;
                let result = measure(sys.as_ref(), &env, writer.nodes[0].as_ref(), keys).await;
                writer.shutdown().await;
                result
            }),
        )
        .await;
        report_progress(system.name(), &outcome);
        rows.push(Row {
            system: system.name().to_owned(),
            kind: kind_label(system.kind()),
            outcome,
        });
        if system.name() == "cachenode" {
            let env = ctx.env("w2", "cachenode-fn", "");
            let outcome = guarded(
                limit,
                on_own_thread(move || async move {
                    cached_fn(&env.redis_url, &env.namespace, keys).await
                }),
            )
            .await;
            report_progress("cachenode fn", &outcome);
            rows.push(Row {
                system: "cachenode fn".into(),
                kind: kind_label(Kind::TwoLayer),
                outcome,
            });
        }
    }
    rows
}

/// BentoCache's row from the samples its Node.js script measured.
pub fn bento_row(redis_hit_us: &[f64], set_us: &[f64]) -> Row<RedisHitResult> {
    Row {
        system: "bentocache".into(),
        kind: "RAM + Redis (Node.js)",
        outcome: Outcome::Ok(RedisHitResult {
            keys: redis_hit_us.len(),
            set_what: "set (Node.js, measured by bento.js)".into(),
            set_us: stats::summarize(set_us),
            hit_us: Some(stats::summarize(redis_hit_us)),
            hit_note: None,
            hit_samples: redis_hit_us.to_vec(),
        }),
    }
}

fn report_progress(name: &str, outcome: &Outcome<RedisHitResult>) {
    match outcome {
        Outcome::Ok(r) => progress(
            "w2",
            format!(
                "{name}: Redis hit p50 {:.0} µs p99 {:.0} µs; set p50 {:.0} µs p99 {:.0} µs",
                r.hit_us.as_ref().map_or(f64::NAN, |s| s.p50),
                r.hit_us.as_ref().map_or(f64::NAN, |s| s.p99),
                r.set_us.p50,
                r.set_us.p99
            ),
        ),
        other => progress("w2", format!("{name}: {other:?}")),
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn measure(
    system: &dyn System,
    env: &crate::system::Env,
    writer: &dyn Node,
    keys: usize,
) -> anyhow::Result<RedisHitResult> {
    let mut set_us = Vec::with_capacity(keys);
    for i in 0..keys {
        let item = Item::new(i as u64);
        let started = Instant::now();
        writer.set(&format!("h:{i}"), &item).await?;
        set_us.push(micros(started.elapsed()));
    }
    let set_what = match system.kind() {
        Kind::RamOnly => "RAM insert",
        _ => "set",
    }
    .to_owned();
    if system.kind() == Kind::RamOnly {
        return Ok(RedisHitResult {
            keys,
            set_what,
            set_us: stats::summarize(&set_us),
            hit_us: None,
            hit_note: Some("RAM only: a fresh node has no shared layer to read from".into()),
            hit_samples: Vec::new(),
        });
    }
    let reader = Fleet::build(system, env, 1).await?;
    let hits = read_all(reader.nodes[0].as_ref(), keys).await;
    reader.shutdown().await;
    let hit_samples = hits?;
    Ok(RedisHitResult {
        keys,
        set_what,
        set_us: stats::summarize(&set_us),
        hit_us: Some(stats::summarize(&hit_samples)),
        hit_note: None,
        hit_samples,
    })
}

/// Reads every key once, checking each value; the latency of each read.
async fn read_all(reader: &dyn Node, keys: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(keys);
    for i in 0..keys {
        let started = Instant::now();
        let got = reader.get(&format!("h:{i}")).await?;
        out.push(micros(started.elapsed()));
        match got {
            Some(item) if item.version == i as u64 => {}
            other => bail!("key h:{i} read back as {other:?}"),
        }
    }
    Ok(out)
}

/// A cachenode node configured as the `cachenode` system's adapter builds
/// it (its module is private to `systems`).
async fn cachenode_node(url: &str, namespace: &str) -> anyhow::Result<CacheNode> {
    Ok(CacheNode::builder()
        .redis_url(url)
        .namespace(namespace)
        .ram_capacity_bytes(RAM_CAPACITY_BYTES)
        .default_ttl(TTL)
        .build()
        .await?)
}

/// Cold calls of a cached function on one node, then Redis hits through
/// the same function on a fresh node.
async fn cached_fn(url: &str, namespace: &str, keys: usize) -> anyhow::Result<RedisHitResult> {
    let writer = cachenode_node(url, namespace).await?;
    let reader = cachenode_node(url, namespace).await?;
    let result = cached_fn_on(&writer, &reader, keys).await;
    writer.shutdown().await;
    reader.shutdown().await;
    result
}

async fn cached_fn_on(
    writer: &CacheNode,
    reader: &CacheNode,
    keys: usize,
) -> anyhow::Result<RedisHitResult> {
    let func = |node: &CacheNode| node.func::<(u64,), Item>("w2fn").ttl(TTL).build();
    let (wf, rf) = (func(writer)?, func(reader)?);
    let mut set_us = Vec::with_capacity(keys);
    for i in 0..keys as u64 {
        let started = Instant::now();
        let v = wf
            .call(&(i,), || async move { Ok::<_, Infallible>(Item::new(i)) })
            .await?;
        set_us.push(micros(started.elapsed()));
        if v.version != i {
            bail!("cold call {i} returned version {}", v.version);
        }
    }
    let mut hit_us = Vec::with_capacity(keys);
    for i in 0..keys as u64 {
        let started = Instant::now();
        // A compute here means the value was not found in Redis.
        let v = rf
            .call(&(i,), || async move {
                Err::<Item, _>(anyhow::anyhow!("not cached"))
            })
            .await;
        hit_us.push(micros(started.elapsed()));
        match v {
            Ok(item) if item.version == i => {}
            other => bail!("call {i} on the fresh node: {other:?}"),
        }
    }
    Ok(RedisHitResult {
        keys,
        set_what: "cold call: GET miss, compute, then SET + key-set SADD in one round trip \
                   (a first write publishes no bus message)"
            .into(),
        set_us: stats::summarize(&set_us),
        hit_us: Some(stats::summarize(&hit_us)),
        hit_note: None,
        hit_samples: hit_us,
    })
}
