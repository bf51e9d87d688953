//! Workload 5: delete everything of one function, 1,000,000 keys inside
//! 5,000,000 (quick: 50,000 inside 250,000), by each system's own means.
//!
//! The keyspace holds `total - target` background values of another
//! function, written as cachenode's function cache writes them (value and
//! its entry in the function's key set; no TTL, since they are never
//! deleted), loaded once. Each method then gets the `target` keys loaded in
//! its own system's format, with a TTL, deletes them (only the deletion is
//! timed), and is checked: target keys left (a `SCAN MATCH` walk), the other
//! keys (`DBSIZE` minus the target keys left, which must not fall below the
//! background plus the systems' own keys so far) and a sample of
//! [`BACKGROUND_SAMPLE`] background keys (`EXISTS`). Anything unexpected
//! goes into the row's note. Methods, in order:
//!
//! 1. cachenode: `CachedFn::clear_all` of a function built with the same name
//!    on a `CacheNode` at its defaults (its key-set walk: `SSCAN` + batched
//!    `UNLINK`, then the bus message that drops the function from every
//!    instance's RAM).
//! 2. `SCAN MATCH` + pipelined `UNLINK` per page: what a cache without a key
//!    index (a plain Redis cache, the `cached` crate) has to do, written well.
//! 3. the `cached` crate's own `AsyncRedisCache::async_cache_clear`, on the
//!    function's own cache (one per function, as `#[io_cached]` makes them):
//!    `SCAN MATCH COUNT 100` + one `DEL` per page.
//! 4. multi-tier-cache's `CacheManager::invalidate_pattern`: `SCAN MATCH
//!    COUNT 100` collecting every matching key, one `DEL` of all of them,
//!    then a pub/sub message on which every other instance repeats the scan.
//!    When that one `DEL` outlives the crate's response timeout (redis-rs's
//!    default 500 ms), the call fails before publishing; the row then gives
//!    the time at which Redis finished the `DEL`, and says so.
//! 5. amalgam-cache's `Cache::remove_by_tag`, on entries written with the
//!    function's name as tag: a durable marker plus a backplane message.
//!    Nothing is deleted from Redis; tagged entries older than the marker
//!    read as misses, which the check confirms by reading a sample through
//!    the deleting instance and another one.
//!
//! The workload owns logical database [`DB`] of the server it is given: it
//! empties it at the start and at the end. Bulk loads send pipelines of
//! [`PIPE`] values, [`IN_FLIGHT`] at a time. The values of the `cached` crate
//! and of amalgam are copies of one value written through the crate itself,
//! so that they are in the crate's own format.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cached::{AsyncRedisCache, ConcurrentCachedAsync, SerializeCachedAsync};
use redis::aio::MultiplexedConnection;
use serde::Serialize;

use crate::system::Item;

/// One method's deletion of the target function's keys.
#[derive(Debug, Clone, Serialize)]
pub struct ClearRow {
    /// The system, e.g. `cachenode`.
    pub system: String,
    /// The call or commands used.
    pub method: String,
    /// Target keys removed from Redis (0 for a logical deletion).
    pub keys_deleted: u64,
    /// Wall time of the deletion alone.
    pub seconds: f64,
    /// What the check found (mismatches, errors) and caveats.
    pub note: String,
}

/// The logical database this workload fills and empties.
pub const DB: u8 = 9;
/// Key prefix (cachenode namespace) of every key written.
const NS: &str = "w5";
/// Values per loading pipeline.
const PIPE: usize = 10_000;
/// Loading pipelines on the wire at once.
const IN_FLIGHT: usize = 3;
/// `COUNT` of the checks' `SCAN` walks (not timed).
const CHECK_SCAN_COUNT: usize = 10_000;
/// `COUNT` of the hand-written `SCAN` + `UNLINK` method (as `benches/clear.rs`).
const SCAN_COUNT: usize = 1_000;
/// Time to live of every loaded key.
const LOAD_TTL: Duration = super::TTL;
/// Keys read through amalgam to check its logical deletion.
const SAMPLE: usize = 1_000;
/// Background keys whose presence is checked after each method.
const BACKGROUND_SAMPLE: usize = 10_000;
/// Stand-in for a cachenode function-cache value (`clear_all` never reads it).
const CACHENODE_VALUE: [u8; 40] = [0xCB; 40];
/// The function whose keys are deleted (also its amalgam tag).
const TARGET: &str = "target";
/// The background function (and amalgam's control tag).
const OTHER: &str = "other";
/// amalgam's key prefix (its L2 keys are `v2:` + prefix + key).
const AMALGAM_PREFIX: &str = "w5:am:";

/// Runs workload 5 on the server at `redis_url` (a `redis://` URL whose
/// database is replaced by [`DB`]) and returns one row per method.
///
/// # Errors
/// When Redis fails outside a timed deletion (loading, checking) or a system
/// cannot be set up. A deletion that fails is reported in its row's note.
pub async fn run(redis_url: &str, quick: bool) -> anyhow::Result<Vec<ClearRow>> {
    if quick {
        run_sized(redis_url, 250_000, 50_000).await
    } else {
        run_sized(redis_url, 5_000_000, 1_000_000).await
    }
}

/// [`run`] with `target` keys to delete among `total`.
pub(crate) async fn run_sized(
    redis_url: &str,
    total: usize,
    target: usize,
) -> anyhow::Result<Vec<ClearRow>> {
    anyhow::ensure!(
        target >= SAMPLE && target <= total,
        "workload 5 needs {SAMPLE} <= target <= total"
    );
    let url = with_db(redis_url, DB);
    let client = redis::Client::open(url.as_str())?;
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(120)))
        .set_connection_timeout(Some(Duration::from_secs(5)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("workload 5: connecting")?;
    let () = redis::cmd("FLUSHDB").query_async(&mut conn).await?;

    let mut w = Workload {
        url,
        conn: conn.clone(),
        target,
        background_values: total - target,
        background: (total - target) as u64 + BACKGROUND_SETS,
        own: 0,
    };
    let rows = w.run().await;
    // Millions of keys: not left behind, whatever happened.
    let () = redis::cmd("FLUSHDB")
        .arg("ASYNC")
        .query_async(&mut conn)
        .await?;
    rows
}

/// Key-set keys of the background function: its shards and the registry.
const BACKGROUND_SETS: u64 = cachenode::SHARDS + 1;

/// `url` with its database (and anything after it) replaced by `db`.
fn with_db(url: &str, db: u8) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = url.split_at(start);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}{authority}/{db}")
}

fn progress(msg: impl std::fmt::Display) {
    super::progress("clear", msg);
}

/// The run's connection, sizes and running key counts.
struct Workload {
    url: String,
    conn: MultiplexedConnection,
    target: usize,
    /// Values of the background function.
    background_values: usize,
    /// Keys of the background function (values, key-set shards, registry).
    background: u64,
    /// Keys the systems created for themselves so far (bus logs, markers).
    own: u64,
}

/// A timed deletion, before it becomes a row.
struct Deletion {
    seconds: f64,
    /// Keys the method itself says it deleted, when it says.
    reported: Option<u64>,
    error: Option<String>,
}

impl Deletion {
    /// Times `f`; its `Ok` value is the count the method reports, if any.
    async fn time<F>(f: F) -> Deletion
    where
        F: std::future::Future<Output = anyhow::Result<Option<u64>>>,
    {
        let t = Instant::now();
        let r = f.await;
        let seconds = t.elapsed().as_secs_f64();
        match r {
            Ok(reported) => Deletion {
                seconds,
                reported,
                error: None,
            },
            Err(e) => Deletion {
                seconds,
                reported: None,
                error: Some(format!("{e:#}")),
            },
        }
    }
}

impl Workload {
    /// Loads the background, then runs every method in turn.
    async fn run(&mut self) -> anyhow::Result<Vec<ClearRow>> {
        self.load_cachenode(OTHER, self.background_values, false)
            .await?;
        let size = dbsize(&mut self.conn.clone()).await?;
        let (present, sampled) = self.background_sample().await?;
        anyhow::ensure!(
            size == self.background && present == sampled,
            "workload 5: DBSIZE {size} after loading {} background keys ({present}/{sampled} sampled present)",
            self.background
        );
        Ok(vec![
            self.cachenode().await?,
            self.scan_unlink().await?,
            self.cached_clear().await?,
            self.multi_tier().await?,
            self.amalgam().await?,
        ])
    }

    /// Writes `count` values of cachenode function `func` with their key-set
    /// entries, in the same pipeline, as the function cache writes them
    /// (`SET … PX` each when `with_ttl`, else one `MSET` per pipeline).
    /// Members are spread over the [`SHARDS`](cachenode::SHARDS)
    /// shards round-robin rather than by cachenode's xxh3 of the key: as many
    /// equally full shards, which `clear_all` walks all the same.
    async fn load_cachenode(
        &self,
        func: &'static str,
        count: usize,
        with_ttl: bool,
    ) -> anyhow::Result<()> {
        let shards = cachenode::SHARDS as usize;
        let ttl = millis(LOAD_TTL);
        self.load(count, |range| {
            let mut pipe = redis::pipe();
            let mut members = vec![Vec::new(); shards];
            let mut mset = redis::cmd("MSET");
            for i in range {
                let key = cachenode_key(func, i);
                if with_ttl {
                    pipe.cmd("SET")
                        .arg(&key)
                        .arg(&CACHENODE_VALUE[..])
                        .arg("PX")
                        .arg(ttl)
                        .ignore();
                } else {
                    mset.arg(&key).arg(&CACHENODE_VALUE[..]);
                }
                members[i % shards].push(key);
            }
            if !with_ttl {
                pipe.add_command(mset).ignore();
            }
            for (shard, keys) in members.iter().enumerate() {
                if !keys.is_empty() {
                    pipe.cmd("SADD")
                        .arg(format!("{NS}:ks:{func}:{shard}"))
                        .arg(keys)
                        .ignore();
                }
            }
            pipe.cmd("SADD").arg(format!("{NS}:ks")).arg(func).ignore();
            pipe
        })
        .await
    }

    /// Writes `value` under `key(i)` for `i` in `from..to`, with the load TTL.
    async fn load_copies(
        &self,
        from: usize,
        to: usize,
        key: impl Fn(usize) -> String,
        value: &[u8],
    ) -> anyhow::Result<()> {
        let ttl = millis(LOAD_TTL);
        self.load(to - from, |range| {
            let mut pipe = redis::pipe();
            for i in range {
                pipe.cmd("SET")
                    .arg(key(from + i))
                    .arg(value)
                    .arg("PX")
                    .arg(ttl)
                    .ignore();
            }
            pipe
        })
        .await
    }

    /// Sends the pipelines `build` makes for `0..count` in ranges of
    /// [`PIPE`], with [`IN_FLIGHT`] of them on the wire while the next is
    /// built.
    async fn load(
        &self,
        count: usize,
        mut build: impl FnMut(Range<usize>) -> redis::Pipeline,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        let mut inflight = VecDeque::new();
        for start in (0..count).step_by(PIPE) {
            let pipe = build(start..(start + PIPE).min(count));
            let mut conn = self.conn.clone();
            inflight.push_back(tokio::spawn(async move {
                pipe.query_async::<()>(&mut conn).await
            }));
            if inflight.len() >= IN_FLIGHT {
                if let Some(task) = inflight.pop_front() {
                    task.await??;
                }
            }
        }
        for task in inflight {
            task.await??;
        }
        progress(format!(
            "{count} keys loaded in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// How many of a sample of background keys (evenly spread values, and
    /// every key-set key) exist, and how many were sampled.
    async fn background_sample(&self) -> anyhow::Result<(u64, u64)> {
        let step = (self.background_values / BACKGROUND_SAMPLE).max(1);
        let mut exists = redis::cmd("EXISTS");
        let mut sampled = 0;
        for i in (0..self.background_values).step_by(step) {
            exists.arg(cachenode_key(OTHER, i));
            sampled += 1;
        }
        exists.arg(format!("{NS}:ks"));
        for shard in 0..cachenode::SHARDS {
            exists.arg(format!("{NS}:ks:{OTHER}:{shard}"));
        }
        let present: u64 = exists.query_async(&mut self.conn.clone()).await?;
        Ok((present, sampled + BACKGROUND_SETS))
    }

    /// Notes about the keys besides the target's after a method: whether
    /// background keys are gone, and how many keys the system created for
    /// itself (counted into `own`), from `DBSIZE` and `left` target keys.
    async fn others(&mut self, left: u64, notes: &mut Vec<String>) -> anyhow::Result<()> {
        let others = dbsize(&mut self.conn.clone()).await?.saturating_sub(left);
        let (present, sampled) = self.background_sample().await?;
        if present != sampled {
            notes.push(format!(
                "{} of {sampled} sampled background keys gone",
                sampled - present
            ));
        }
        let expected = self.background + self.own;
        if others < expected {
            notes.push(format!(
                "{} keys besides the target's gone",
                expected - others
            ));
        } else if others > expected {
            notes.push(format!(
                "{} keys of its own created (bus log or markers)",
                others - expected
            ));
            self.own = others - self.background;
        }
        Ok(())
    }

    /// Checks the keyspace after a deletion of the keys matching `target`
    /// (none may be left, every background key must be there), removes any
    /// target key left and the `extra` keys, so that the next method starts
    /// from the background alone, and builds the row.
    async fn finish(
        &mut self,
        system: &str,
        method: &str,
        d: Deletion,
        target: &str,
        extra: &[String],
    ) -> anyhow::Result<ClearRow> {
        let mut conn = self.conn.clone();
        let left = scan_walk(&mut conn, target, false).await?;
        let deleted = (self.target as u64).saturating_sub(left);
        let mut notes = Vec::new();
        if let Some(e) = &d.error {
            notes.push(format!("failed: {e}"));
        }
        if left != 0 {
            notes.push(format!("{left} target keys left"));
        }
        if let Some(n) = d.reported.filter(|&n| n != deleted) {
            notes.push(format!("method reported {n} deleted"));
        }
        let mut others = Vec::new();
        self.others(left, &mut others).await?;
        if notes.is_empty() && !others.iter().any(|n| n.contains("gone")) {
            notes.push("exactly the target keys deleted".into());
        }
        notes.extend(others);
        if left != 0 {
            scan_walk(&mut conn, target, true).await?;
        }
        if !extra.is_empty() {
            let () = redis::cmd("UNLINK")
                .arg(extra)
                .query_async(&mut conn)
                .await?;
        }
        let row = ClearRow {
            system: system.into(),
            method: method.into(),
            keys_deleted: deleted,
            seconds: d.seconds,
            note: notes.join("; "),
        };
        progress(format!(
            "{system}: {} keys in {:.2} s ({})",
            row.keys_deleted, row.seconds, row.note
        ));
        Ok(row)
    }

    /// cachenode: the target function's values and key set, then
    /// `CachedFn::clear_all` of a function of that name.
    async fn cachenode(&mut self) -> anyhow::Result<ClearRow> {
        self.load_cachenode(TARGET, self.target, true).await?;
        let node = cachenode::CacheNode::builder()
            .redis_url(&self.url)
            .namespace(NS)
            .build()
            .await
            .context("cachenode: node")?;
        let func = node.func::<(u64,), u8>(TARGET).build()?;
        let d = Deletion::time(async { Ok(Some(func.delete_all().await?)) }).await;
        node.shutdown().await;
        self.finish(
            "cachenode",
            "CachedFn::clear_all (key-set walk: SSCAN + batched UNLINK)",
            d,
            &format!("{NS}:f:{TARGET}:*"),
            &(0..cachenode::SHARDS)
                .map(|shard| format!("{NS}:ks:{TARGET}:{shard}"))
                .collect::<Vec<_>>(),
        )
        .await
    }

    /// Loads the target function's keys as the `cached` crate writes them:
    /// one value written through the function's own cache, copied.
    async fn load_cached(&self) -> anyhow::Result<AsyncRedisCache<String, Item>> {
        let cache = AsyncRedisCache::<String, Item>::builder(TARGET)
            .namespace(NS)
            .ttl(LOAD_TTL)
            .connection_string(&self.url)
            .build()
            .await
            .context("cached: AsyncRedisCache")?;
        cache
            .async_cache_set_ref(&"0".to_owned(), &Item::new(0))
            .await?;
        let value = get_raw(&mut self.conn.clone(), &cached_key(0)).await?;
        self.load_copies(1, self.target, cached_key, &value).await?;
        Ok(cache)
    }

    /// `SCAN MATCH` + pipelined `UNLINK`, over keys in the `cached` crate's
    /// format.
    async fn scan_unlink(&mut self) -> anyhow::Result<ClearRow> {
        self.load_cached().await?;
        let pattern = format!("{NS}:{TARGET}:*");
        let mut conn = self.conn.clone();
        let d = Deletion::time(async {
            let mut cursor = 0u64;
            let mut removed = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(&mut conn)
                    .await?;
                if !keys.is_empty() {
                    let mut pipe = redis::pipe();
                    for k in &keys {
                        pipe.cmd("UNLINK").arg(k);
                    }
                    let n: Vec<u64> = pipe.query_async(&mut conn).await?;
                    removed += n.iter().sum::<u64>();
                }
                if next == 0 {
                    return Ok(Some(removed));
                }
                cursor = next;
            }
        })
        .await;
        self.finish(
            "SCAN + UNLINK (no key index)",
            "SCAN MATCH (COUNT 1000) + pipelined UNLINK per page",
            d,
            &pattern,
            &[],
        )
        .await
    }

    /// The `cached` crate's own `async_cache_clear`.
    async fn cached_clear(&mut self) -> anyhow::Result<ClearRow> {
        let cache = self.load_cached().await?;
        let d = Deletion::time(async {
            cache.async_cache_clear().await?;
            Ok(None)
        })
        .await;
        self.finish(
            "cached AsyncRedisCache",
            "async_cache_clear (SCAN MATCH COUNT 100 + DEL per page)",
            d,
            &format!("{NS}:{TARGET}:*"),
            &[],
        )
        .await
    }

    /// multi-tier-cache's `invalidate_pattern`, over JSON values (the
    /// crate's format) under the keys a user of the crate would choose.
    async fn multi_tier(&mut self) -> anyhow::Result<ClearRow> {
        use multi_tier_cache::{CacheManager, InvalidationConfig, L1Cache, L2Cache};

        let json = serde_json::to_vec(&Item::new(0))?;
        self.load_copies(0, self.target, multi_tier_key, &json)
            .await?;
        let manager = CacheManager::new_with_invalidation(
            Arc::new(L1Cache::new(Default::default())?),
            Arc::new(L2Cache::with_url(&self.url).await?),
            &self.url,
            InvalidationConfig {
                channel: format!("{NS}:invalidate"),
                ..InvalidationConfig::default()
            },
        )
        .await?;
        let pattern = format!("{NS}:mt:{TARGET}:*");
        let started = Instant::now();
        let mut d = Deletion::time(async {
            manager.invalidate_pattern(&pattern).await?;
            Ok(None)
        })
        .await;
        drop(manager);
        let mut caveat =
            "every other instance repeats the whole SCAN when the message arrives".into();
        if d.error.is_some() {
            // The client gave up waiting (the crate keeps redis-rs's default
            // 500 ms response timeout), and returned before publishing. The
            // DEL, one atomic command, runs on in Redis: time it to the
            // moment its keys are gone.
            let gave_up = d.seconds;
            let mut conn = self.conn.clone();
            let key = multi_tier_key(0);
            let mut finished = false;
            while !finished && started.elapsed() < Duration::from_secs(60) {
                let n: u64 = redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await?;
                finished = n == 0;
                if finished {
                    d.seconds = started.elapsed().as_secs_f64();
                } else {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            caveat = format!(
                "the call returned the error after {gave_up:.2} s, before its pub/sub message (other instances' RAM is not told){}",
                if finished {
                    "; the time given is when Redis finished the DEL"
                } else {
                    ""
                }
            );
        }
        let mut row = self
            .finish(
                "multi-tier-cache",
                "CacheManager::invalidate_pattern (SCAN COUNT 100, one DEL of every key, pub/sub)",
                d,
                &pattern,
                &[],
            )
            .await?;
        row.note.push_str("; ");
        row.note.push_str(&caveat);
        Ok(row)
    }

    /// amalgam-cache's `remove_by_tag` over entries tagged with the function
    /// (one entry of each function written through the cache, copied: the
    /// crate's framed snapshot, tags included).
    async fn amalgam(&mut self) -> anyhow::Result<ClearRow> {
        let a = self.amalgam_cache().await.context("amalgam: instance A")?;
        let b = self.amalgam_cache().await.context("amalgam: instance B")?;
        let mut conn = self.conn.clone();
        for (func, count) in [(TARGET, self.target), (OTHER, SAMPLE)] {
            a.set(format!("{func}:0"), Item::new(0))
                .tags([func])
                .await?;
            let value = get_raw(&mut conn, &amalgam_key(func, 0)).await?;
            self.load_copies(1, count, |i| amalgam_key(func, i), &value)
                .await?;
        }

        // B has the sampled target keys in its RAM before the deletion.
        let step = self.target / SAMPLE;
        let sample: Vec<usize> = (0..self.target).step_by(step).take(SAMPLE).collect();
        let others: Vec<usize> = (0..SAMPLE).collect();
        let warm = served(&b, TARGET, &sample).await?;

        let d = Deletion::time(async {
            a.remove_by_tag(TARGET).await?;
            Ok(None)
        })
        .await;

        // Give the backplane message time to reach B, then read.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after_a = served(&a, TARGET, &sample).await?;
        let after_b = served(&b, TARGET, &sample).await?;
        let kept_a = served(&a, OTHER, &others).await?;
        let kept_b = served(&b, OTHER, &others).await?;
        let _ = a.shutdown().await;
        let _ = b.shutdown().await;

        let left = scan_walk(&mut conn, &format!("v2:{AMALGAM_PREFIX}{TARGET}:*"), false).await?;
        let n = sample.len();
        let mut notes = vec![format!(
            "logical deletion: a durable tag marker; the {left} target keys stay in Redis until their TTL, and every later read of a tagged entry checks the marker"
        )];
        if let Some(e) = &d.error {
            notes.push(format!("failed: {e}"));
        }
        if warm != n {
            notes.push(format!(
                "only {warm}/{n} sampled target keys readable before"
            ));
        }
        notes.push(format!(
            "sampled target keys still served after: {after_a}/{n} by the deleting instance, {after_b}/{n} by another"
        ));
        if kept_a != SAMPLE || kept_b != SAMPLE {
            notes.push(format!(
                "other-tag keys served after: {kept_a}/{SAMPLE} and {kept_b}/{SAMPLE} (should be all)"
            ));
        }
        // The other-tag control keys are not the system's own.
        self.others(left + SAMPLE as u64, &mut notes).await?;
        let row = ClearRow {
            system: "amalgam-cache".into(),
            method: "Cache::remove_by_tag (marker + backplane; no key deleted)".into(),
            keys_deleted: (self.target as u64).saturating_sub(left),
            seconds: d.seconds,
            note: notes.join("; "),
        };
        progress(format!(
            "amalgam-cache: {:.3} s ({})",
            row.seconds, row.note
        ));
        Ok(row)
    }

    /// One amalgam instance, set up as `systems::amalgam` sets one up, with
    /// `remove_by_tag` removing (rather than expiring) what it matches.
    async fn amalgam_cache(&self) -> anyhow::Result<amalgam::Cache<Item>> {
        use amalgam::provider::{
            Backplane, DistributedCache, DistributedLocker, DistributedSerializer, JsonSerializer,
            RedisBackplane, RedisDistributedCache, RedisDistributedLocker,
        };
        use amalgam::{Cache, EntryOptions, RemoveByTagBehavior};

        let url = self.url.as_str();
        let l2 = RedisDistributedCache::connect(url).await?;
        let backplane = RedisBackplane::connect_with_channel(url, format!("{NS}:amalgam")).await?;
        let locker = RedisDistributedLocker::connect(url).await?;
        Ok(Cache::<Item>::builder()
            .key_prefix(AMALGAM_PREFIX)
            .default_options(EntryOptions::new(LOAD_TTL))
            .remove_by_tag_behavior(RemoveByTagBehavior::Remove)
            .distributed(Arc::new(l2) as Arc<dyn DistributedCache>)
            .serializer(Arc::new(JsonSerializer) as Arc<dyn DistributedSerializer<Item>>)
            .backplane(Arc::new(backplane) as Arc<dyn Backplane>)
            .distributed_locker(Arc::new(locker) as Arc<dyn DistributedLocker>)
            .try_build_ready()
            .await?)
    }
}

/// How many of the keys `func:{i}`, `i` in `ids`, `cache` serves (read
/// [`READS_IN_FLIGHT`] at a time).
async fn served(cache: &amalgam::Cache<Item>, func: &str, ids: &[usize]) -> anyhow::Result<usize> {
    use futures::{StreamExt, TryStreamExt};

    futures::stream::iter(ids.iter().copied())
        .map(|i| async move { cache.try_get(format!("{func}:{i}")).await })
        .buffer_unordered(READS_IN_FLIGHT)
        .try_fold(0, |n, v| async move { Ok(n + usize::from(v.is_some())) })
        .await
        .map_err(Into::into)
}

/// Concurrent reads when checking amalgam's logical deletion.
const READS_IN_FLIGHT: usize = 32;

fn cachenode_key(func: &str, i: usize) -> String {
    format!("{NS}:f:{func}:|{i:032x}")
}

fn cached_key(i: usize) -> String {
    format!("{NS}:{TARGET}:{i}")
}

fn multi_tier_key(i: usize) -> String {
    format!("{NS}:mt:{TARGET}:{i}")
}

fn amalgam_key(func: &str, i: usize) -> String {
    format!("v2:{AMALGAM_PREFIX}{func}:{i}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn dbsize(conn: &mut MultiplexedConnection) -> anyhow::Result<u64> {
    Ok(redis::cmd("DBSIZE").query_async(conn).await?)
}

/// The raw value under `key`, which a system has just written.
async fn get_raw(conn: &mut MultiplexedConnection, key: &str) -> anyhow::Result<Vec<u8>> {
    let value: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await?;
    value.with_context(|| format!("no value under {key:?} after writing it"))
}

/// Counts the keys matching `pattern` with one `SCAN` walk, unlinking them
/// when `unlink` (untimed, between methods).
async fn scan_walk(
    conn: &mut MultiplexedConnection,
    pattern: &str,
    unlink: bool,
) -> anyhow::Result<u64> {
    let mut cursor = 0u64;
    let mut n = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(CHECK_SCAN_COUNT)
            .query_async(conn)
            .await?;
        n += keys.len() as u64;
        if unlink && !keys.is_empty() {
            let () = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
        }
        if next == 0 {
            return Ok(n);
        }
        cursor = next;
    }
}
