//! Periodic refresh and warm-up of cached functions
//! ([`FuncBuilder::refresh_every`](crate::FuncBuilder::refresh_every),
//! [`FuncBuilder::warm_up_with`](crate::FuncBuilder::warm_up_with)).
//!
//! Both run a function's registered build function (see
//! [`FuncBuilder::computed_by`](crate::FuncBuilder::computed_by)) and write
//! the value like any write: Redis value, key-set entry, the call's encoded
//! arguments (in the hash `{ns}:args:{func}`, so the value can be rebuilt
//! later), and a bus invalidation so no instance keeps the old value in RAM.
//!
//! * **Refresh.** On nodes with the builder role, a task wakes every
//!   *granularity* ([`CacheNodeBuilder::refresh_granularity`](crate::CacheNodeBuilder::refresh_granularity)) and, for each
//!   function due (its last run, kept in Redis in `{ns}:refresh:last`, is
//!   older than its period), takes the function's refresh lock so one
//!   instance per period rebuilds the function's *live* values: those whose
//!   arguments are recorded and whose value is still in Redis. Readers keep
//!   the old value until the new one is written (stale-while-revalidate).
//!   A value that expired, was evicted or was deleted stays gone until a
//!   caller asks for it again: the pass does not build it, writes only over
//!   an existing value (`SET … XX`, so one that goes while it is being
//!   built is not brought back), and forgets its recorded arguments and
//!   key-set entry (see [`KeySets::forget`]).
//! * **Warm-up.** [`CacheNode::warm_up`](crate::CacheNode::warm_up) computes the values marked for
//!   warm-up, each function bounded by its timeout; it never hangs past
//!   the timeouts and reports what did not finish.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::bus::Invalidation;
use crate::clock::{unix_millis, Periodic};
use crate::core::{Core, WeakCore};
use crate::keysets::KeySets;
use crate::registry::Rebuild;
use crate::shared::ttl_millis;
use crate::{Error, Result};

/// Default period between two looks at which functions are due.
pub const DEFAULT_REFRESH_GRANULARITY: Duration = Duration::from_secs(60);

/// Default smallest refresh period accepted: a function built with a
/// shorter `refresh_every` is refused.
pub const DEFAULT_MIN_REFRESH_PERIOD: Duration = Duration::from_secs(300);

/// Default bound on one function's warm-up: a warm-up that runs longer is
/// abandoned and reported in the [`WarmupReport`]; the values it did not
/// fill are computed when called.
pub const DEFAULT_WARMUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Recorded calls read per `HSCAN` step of a refresh pass.
const REFRESH_PAGE: usize = 100;

/// Builds the value of one call and writes it everywhere (warm-up: a
/// value is wanted whether or not one is stored).
pub(crate) async fn rebuild(
    node: &Core,
    r: &Rebuild,
    redis_key: &str,
    args: Vec<u8>,
) -> Result<()> {
    let shared = node
        .redis("rebuild")?
        .ok_or(Error::NoSharedLayer { op: "rebuild" })?;
    // Read before building: the value is written only if no clear_all of
    // the function begins meanwhile (see `keysets`).
    let keysets = KeySets::new(&node.config().keys);
    let seen = keysets.read_generation(shared, &r.func).await?;
    let sealed = (r.build)(args.clone(), r.ttl.map_or(0, ttl_millis))
        .await
        .map_err(Error::Encode)?;
    // First the key's entry in the key set and its arguments, then the
    // value with its invalidation. Two round trips: `write_and_announce`
    // tells the writes' replies from the publication's by counting
    // commands, and the key-set commands are ignored ones (no reply).
    let mut record = redis::pipe();
    keysets.add_to_pipeline(&mut record, &r.func, redis_key);
    keysets.add_args_record(&mut record, &r.func, redis_key, &args);
    let mut conn = shared.conn();
    shared
        .run("rebuild", record.query_async::<()>(&mut conn))
        .await?;
    write_value(node, shared, r, redis_key, &sealed, &seen, false).await?;
    Ok(())
}

/// Rebuilds the value of one call for a refresh pass: writes it only over
/// a stored value. Returns whether it was written (`false`: the value had
/// gone by then, and stays gone).
async fn refresh_value(node: &Core, r: &Rebuild, redis_key: &str, args: Vec<u8>) -> Result<bool> {
    let shared = node
        .redis("refresh")?
        .ok_or(Error::NoSharedLayer { op: "refresh" })?;
    // Read before building: the value is written only if no clear_all of
    // the function begins meanwhile (see `keysets`).
    let seen = KeySets::new(&node.config().keys)
        .read_generation(shared, &r.func)
        .await?;
    let sealed = (r.build)(args, r.ttl.map_or(0, ttl_millis))
        .await
        .map_err(Error::Encode)?;
    write_value(node, shared, r, redis_key, &sealed, &seen, true).await
}

/// Writes a rebuilt value (only over an existing one when `only_over`, and
/// only while the function's clear generation is still `seen`) with the
/// invalidation of its RAM copies. Returns whether it was written.
async fn write_value(
    node: &Core,
    shared: &crate::shared::SharedLayer,
    r: &Rebuild,
    redis_key: &str,
    sealed: &[u8],
    seen: &[u8],
    only_over: bool,
) -> Result<bool> {
    let mut pipe = redis::pipe();
    let generation_key = KeySets::new(&node.config().keys).generation(&r.func);
    let check = crate::func::atomic::GenerationCheck {
        key: &generation_key,
        seen,
    };
    crate::func::atomic::add_write_if_generation(
        &mut pipe, redis_key, sealed, r.ttl, check, only_over,
    );
    let ram_key = redis_key
        .strip_prefix(&r.redis_prefix)
        .map(|suffix| format!("{}{suffix}", r.ram_prefix));
    // Announced even when `XX` refuses: RAM copies of a value gone from
    // Redis are dropped too, once (its record is forgotten just after).
    let replies = node
        .write_and_announce(shared, "rebuild", pipe, || {
            Invalidation::Keys(ram_key.into_iter().collect())
        })
        .await?;
    // Our own RAM copy is stale too.
    if let (Some(local), Some(k)) = (node.ram(), redis_key.strip_prefix(&r.redis_prefix)) {
        local.remove(&format!("{}{k}", r.ram_prefix));
    }
    Ok(matches!(replies.first(), Some(redis::Value::Int(1))))
}

/// What [`CacheNode::warm_up`](crate::CacheNode::warm_up) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmupReport {
    /// Values computed and stored.
    pub warmed: usize,
    /// Functions whose warm-up did not finish in its timeout or failed,
    /// with the reason.
    pub unfinished: Vec<(String, String)>,
}

/// The refresh task of a builder node. Holds the node weakly: it ends when
/// the node is dropped or shut down.
pub(crate) fn refresh_task(
    node: WeakCore,
    granularity: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let mut ticks = Periodic::new(granularity, stop);
        while ticks.next().await {
            let Some(node) = node.upgrade() else {
                return;
            };
            for (period, r) in node.refresh().due() {
                if let Err(e) = refresh_function(&node, period, &r).await {
                    tracing::warn!(func = %r.func, error = %e, "refresh failed");
                }
            }
        }
    })
}

/// Refreshes every value of one function if it is due and this instance
/// takes its lock.
async fn refresh_function(node: &Core, period: Duration, r: &Rebuild) -> Result<()> {
    let shared = node
        .redis("refresh")?
        .ok_or(Error::NoSharedLayer { op: "refresh" })?
        .clone();
    let keys = &node.config().keys;
    let last_key = keys.refresh_last();
    let mut conn = shared.conn();
    let last: Option<u64> = shared
        .run(
            "refresh",
            redis::cmd("HGET")
                .arg(&last_key)
                .arg(&r.func)
                .query_async(&mut conn),
        )
        .await?;
    let now = unix_millis();
    if last.is_some_and(|l| now.saturating_sub(l) < ttl_millis(period)) {
        return Ok(());
    }
    let took = shared
        .take_lock("refresh", &keys.refresh_lock(&r.func), period)
        .await?;
    if took.is_none() {
        return Ok(());
    }
    let keysets = KeySets::new(&node.config().keys);
    let args_key = keys.func_args(&r.func);
    let (mut rebuilt, mut forgotten) = (0u64, 0u64);
    // The recorded calls, not the key set: every value refresh can rebuild
    // has its arguments there, and so every record is looked at (those
    // of values cleared, or written by a build that lost its lock, too).
    let mut cursor = 0u64;
    loop {
        let (next, flat): (u64, Vec<Vec<u8>>) = shared
            .run(
                "refresh",
                redis::cmd("HSCAN")
                    .arg(&args_key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(REFRESH_PAGE)
                    .query_async(&mut conn),
            )
            .await?;
        let mut page = Vec::with_capacity(flat.len() / 2);
        let mut foreign = Vec::new();
        let mut flat = flat.into_iter();
        while let (Some(field), Some(args)) = (flat.next(), flat.next()) {
            match String::from_utf8(field) {
                Ok(key) if key.starts_with(&r.redis_prefix) => page.push((key, args)),
                // Not a key of this function: never written over.
                Ok(key) => foreign.push(key.into_bytes()),
                Err(e) => foreign.push(e.into_bytes()),
            }
        }
        if !foreign.is_empty() {
            tracing::warn!(func = %r.func, count = foreign.len(), "recorded arguments of keys outside the function dropped");
            let _: () = shared
                .run(
                    "refresh",
                    redis::cmd("HDEL")
                        .arg(&args_key)
                        .arg(&foreign)
                        .query_async(&mut conn),
                )
                .await?;
        }
        // Which values are still stored, in one round trip: gone ones are
        // not built at all.
        let live: Vec<bool> = if page.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            for (key, _) in &page {
                pipe.cmd("EXISTS").arg(key);
            }
            shared.run("refresh", pipe.query_async(&mut conn)).await?
        };
        let mut gone = Vec::new();
        for ((key, args), live) in page.into_iter().zip(live) {
            if !live {
                gone.push((key, Some(args)));
                continue;
            }
            match refresh_value(node, r, &key, args.clone()).await {
                Ok(true) => rebuilt += 1,
                // It went while being built.
                Ok(false) => gone.push((key, Some(args))),
                Err(e) => {
                    tracing::warn!(func = %r.func, error = %e, "cannot refresh a value")
                }
            }
        }
        forgotten += keysets.forget(&shared, &r.func, &gone).await?;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let _: () = shared
        .run(
            "refresh",
            redis::cmd("HSET")
                .arg(&last_key)
                .arg(&r.func)
                .arg(unix_millis())
                .query_async(&mut conn),
        )
        .await?;
    tracing::debug!(func = %r.func, rebuilt, forgotten, "refresh done");
    Ok(())
}

/// See [`CacheNode::warm_up`](crate::CacheNode::warm_up).
pub(crate) async fn warm_up(core: &Core) -> WarmupReport {
    let warmups = core.refresh().take_warmups();
    let runs = warmups.into_iter().map(|w| {
        let node = core.clone();
        async move {
            let func = w.rebuild.func.clone();
            let work = async {
                let mut n = 0;
                for (key, args) in w.calls {
                    rebuild(&node, &w.rebuild, &key, args).await?;
                    n += 1;
                }
                Ok::<_, Error>(n)
            };
            match tokio::time::timeout(w.timeout, work).await {
                Ok(Ok(n)) => Ok(n),
                Ok(Err(e)) => Err((func, e.to_string())),
                Err(_) => Err((func, format!("did not finish within {:?}", w.timeout))),
            }
        }
    });
    let mut report = WarmupReport::default();
    for result in futures::future::join_all(runs).await {
        match result {
            Ok(n) => report.warmed += n,
            Err((func, why)) => {
                tracing::warn!(func = %func, reason = %why, "warm-up unfinished");
                report.unfinished.push((func, why));
            }
        }
    }
    report
}
