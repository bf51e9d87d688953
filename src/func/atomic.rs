//! Atomic writes across instances: a Redis lock per key for at-most-once
//! computation, and versioned writes for at-least-once.
//!
//! Keys written together by one script share a slot in Redis Cluster: the
//! lock of value key `K` is `{K}:lock` and its version `{K}:ver`, whose hash
//! tag is `K` itself (value keys contain no braces), so they hash like `K`.
//!
//! * **At most once.** The first instance to `SET {K}:lock <token> NX PX`
//!   computes; a keep-alive task extends the lock while it runs. Its value is
//!   written by a script that checks the lock still holds its token: a
//!   writer whose lock expired (it stalled, or was cut off) cannot overwrite
//!   what a later holder wrote. The lock is released by compare-and-delete.
//! * **At least once.** Every instance may compute; each write carries the
//!   time its computation started, read from the Redis server that holds
//!   the value (never from the instance's own clock, which may be off), and
//!   a script refuses it when a value from a later computation is already
//!   stored, so a stored value never goes back in time. The start time of
//!   the stored value lives in `{K}:ver`, which expires with the value and
//!   is deleted with it.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::keys::{lock_key, version_key};
use crate::shared::{ttl_millis, SharedLayer};
use crate::Result;

/// How a cached function's computation is coordinated across instances
/// ([`FuncBuilder::atomic_writes`](crate::FuncBuilder::atomic_writes)); without
/// it, each instance computes a missing value on its own (once per
/// process) and the last write wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicWrites {
    /// Across all instances, the function runs at most once per key and
    /// expiry period; other callers wait (bounded) for the value. If the
    /// holder dies mid-computation, another instance computes once its lock
    /// expires (the lock TTL after its last keep-alive). A Redis restart
    /// loses locks: a computation running then may be repeated once.
    AtMostOnce,
    /// At least one instance computes; several may, and the stored value is
    /// never older (by computation start) than one already stored. Starts
    /// are ordered by the Redis server's clock, so instances whose clocks
    /// disagree still agree on which computation started last.
    AtLeastOnce,
}

/// Default lock TTL; the holder extends it every third of it.
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(10);

/// Default bound on how long a caller waits for another instance's value.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

const EXTEND: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// `KEYS`: lock, value[, generation]. `ARGV`: token, bytes, ttl ms (0:
/// none)[, generation seen]. Returns 0 when the lock is lost, [`CLEARED`]
/// when the generation changed, 1 when written.
const WRITE_IF_HELD: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if KEYS[3] then
  local g = redis.pcall('GET', KEYS[3])
  if type(g) == 'table' or (g or '') ~= ARGV[4] then
    return -1
  end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"#;

/// `KEYS`: value (only routes the call to the server that holds it).
/// Returns the server's time in µs.
const START: &str = r#"
local t = redis.call('TIME')
return tonumber(t[1]) * 1000000 + tonumber(t[2])
"#;

/// `KEYS`: value, version[, generation]. `ARGV`: bytes, ttl ms (0: none),
/// version[, generation seen]. Returns 0 when refused, [`CLEARED`] when the
/// generation changed, 1 when written, 2 when it replaced a value (which
/// other instances may hold in RAM). The version of a value that is gone
/// (deleted some way that left its version behind) refuses nothing.
const WRITE_IF_NEWER: &str = r#"
if KEYS[3] then
  local g = redis.pcall('GET', KEYS[3])
  if type(g) == 'table' or (g or '') ~= ARGV[4] then
    return -1
  end
end
local replaced = redis.call('EXISTS', KEYS[1]) == 1
if replaced then
  local cur = redis.call('GET', KEYS[2])
  if cur and tonumber(cur) > tonumber(ARGV[3]) then
    return 0
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[3])
end
if replaced then
  return 2
end
return 1
"#;

/// The reply of a write from [`add_write_if_newer`] that replaced a value.
pub(crate) const REPLACED: i64 = 2;

/// The reply of a write refused because its function was cleared since the
/// computation started (its clear generation changed; see
/// [`keysets`](crate::keysets)).
pub(crate) const CLEARED: i64 = -1;

/// `KEYS`: value, generation. `ARGV`: bytes, ttl ms (0: none), generation
/// seen, `XX` to write only over a stored value (else empty). Returns
/// [`CLEARED`] when the generation changed, 0 when no value was there to
/// write over, 1 when written.
const WRITE_IF_GENERATION: &str = r#"
local g = redis.pcall('GET', KEYS[2])
if type(g) == 'table' or (g or '') ~= ARGV[3] then
  return -1
end
if ARGV[4] == 'XX' and redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"#;

/// A write's condition on its function's clear generation: done only while
/// the generation key holds `seen` (empty: while there is none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GenerationCheck<'a> {
    /// The generation key.
    pub(crate) key: &'a str,
    /// What the computation read there before it started.
    pub(crate) seen: &'a [u8],
}

/// Appends to `pipe` the write of `bytes` to `value_key`, done only while
/// `check` holds (and, with `only_over`, only over a stored value). Its
/// reply is 1 when written, 0 when `only_over` found nothing, or
/// [`CLEARED`].
pub(crate) fn add_write_if_generation(
    pipe: &mut redis::Pipeline,
    value_key: &str,
    bytes: &[u8],
    ttl: Option<Duration>,
    check: GenerationCheck<'_>,
    only_over: bool,
) {
    pipe.cmd("EVAL")
        .arg(WRITE_IF_GENERATION)
        .arg(2)
        .arg(value_key)
        .arg(check.key)
        .arg(bytes)
        .arg(ttl.map_or(0, ttl_millis))
        .arg(check.seen)
        .arg(if only_over { "XX" } else { "" });
}

/// A held lock on one value key. Dropping it stops the keep-alive and
/// releases the lock in the background; [`release`](Self::release) waits.
pub(crate) struct LockGuard {
    shared: SharedLayer,
    key: String,
    token: String,
    keepalive: Option<JoinHandle<()>>,
}

/// Tries to take the lock of `value_key` for `ttl`.
pub(crate) async fn try_lock(
    shared: &SharedLayer,
    value_key: &str,
    ttl: Duration,
) -> Result<Option<LockGuard>> {
    let key = lock_key(value_key);
    let Some(token) = shared.take_lock("lock", &key, ttl).await? else {
        return Ok(None);
    };
    let keepalive = {
        let (shared, key, token) = (shared.clone(), key.clone(), token.clone());
        tokio::spawn(async move {
            let script = redis::Script::new(EXTEND);
            loop {
                tokio::time::sleep(ttl / 3).await;
                let mut conn = shared.conn();
                let mut call = script.prepare_invoke();
                call.key(&key).arg(&token).arg(ttl_millis(ttl));
                match shared
                    .run("lock_extend", call.invoke_async::<i64>(&mut conn))
                    .await
                {
                    Ok(1) => {}
                    Ok(_) => {
                        tracing::warn!("lock lost while computing; its value will not be written");
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot extend lock"),
                }
            }
        })
    };
    Ok(Some(LockGuard {
        shared: shared.clone(),
        key,
        token,
        keepalive: Some(keepalive),
    }))
}

impl LockGuard {
    /// Appends to `pipe` the write of `bytes` to `value_key`, done only if
    /// this lock is still held (and `check`, if any, holds).
    pub(crate) fn add_write(
        &self,
        pipe: &mut redis::Pipeline,
        value_key: &str,
        bytes: &[u8],
        ttl: Option<Duration>,
        check: Option<GenerationCheck<'_>>,
    ) {
        pipe.cmd("EVAL")
            .arg(WRITE_IF_HELD)
            .arg(if check.is_some() { 3 } else { 2 })
            .arg(&self.key)
            .arg(value_key);
        if let Some(c) = check {
            pipe.arg(c.key);
        }
        pipe.arg(&self.token)
            .arg(bytes)
            .arg(ttl.map_or(0, ttl_millis));
        if let Some(c) = check {
            pipe.arg(c.seen);
        }
    }

    /// Releases the lock (if still ours) and stops the keep-alive.
    pub(crate) async fn release(mut self) {
        self.stop_keepalive();
        let _ = release(&self.shared, &self.key, &self.token).await;
        self.token.clear(); // released: Drop has nothing to do
    }

    fn stop_keepalive(&mut self) {
        if let Some(k) = self.keepalive.take() {
            k.abort();
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_keepalive();
        if self.token.is_empty() {
            return;
        }
        // Dropped mid-computation (the caller's future was cancelled): give
        // the lock back so another instance need not wait for it to expire.
        let (shared, key, token) = (self.shared.clone(), self.key.clone(), self.token.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = release(&shared, &key, &token).await;
            });
        }
    }
}

async fn release(shared: &SharedLayer, key: &str, token: &str) -> Result<()> {
    let mut conn = shared.conn();
    let script = redis::Script::new(RELEASE);
    let mut call = script.prepare_invoke();
    call.key(key).arg(token);
    shared
        .run("unlock", call.invoke_async::<i64>(&mut conn))
        .await
        .map(|_| ())
}

/// The version of a computation of `value_key` starting now: the time of
/// the Redis server that holds the key, in µs. 0 (older than any stored
/// value, so it only fills a missing one) when Redis cannot tell.
pub(crate) async fn start_version(shared: &SharedLayer, value_key: &str) -> u64 {
    let script = redis::Script::new(START);
    let mut call = script.prepare_invoke();
    call.key(value_key);
    let mut conn = shared.conn();
    match shared
        .run("start_version", call.invoke_async::<u64>(&mut conn))
        .await
    {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the Redis time; the computation counts as oldest");
            0
        }
    }
}

/// Appends to `pipe` the write of `bytes` to `value_key` unless a value from
/// a computation started after `version` (from [`start_version`]) is
/// already stored (or `check`, if any, fails). Its reply is [`REPLACED`]
/// when it overwrote a value.
pub(crate) fn add_write_if_newer(
    pipe: &mut redis::Pipeline,
    value_key: &str,
    bytes: &[u8],
    ttl: Option<Duration>,
    version: u64,
    check: Option<GenerationCheck<'_>>,
) {
    pipe.cmd("EVAL")
        .arg(WRITE_IF_NEWER)
        .arg(if check.is_some() { 3 } else { 2 })
        .arg(value_key)
        .arg(version_key(value_key));
    if let Some(c) = check {
        pipe.arg(c.key);
    }
    pipe.arg(bytes).arg(ttl.map_or(0, ttl_millis)).arg(version);
    if let Some(c) = check {
        pipe.arg(c.seen);
    }
}
