//! Funcname key sets: every Redis key a cached function writes is recorded
//! in that function's key set, so "delete everything of function F" (or of
//! F with some argument values) walks F's own keys and never scans the
//! keyspace.
//!
//! One concern, a function's key set and what keeps it true (recording,
//! the deletion walk, pruning, forgetting, the sweep, the clear generation),
//! in one file although it passes 600 lines: the rules below hold only
//! together, in the order they are written.
//!
//! * Sets are sharded: key `K` of function `F` goes to
//!   `{ns}:ks:{F}:{xxh3(K) % SHARDS}`, so a hot function never builds one
//!   giant set. The names of functions that have key sets are kept in the
//!   registry set `{ns}:ks`.
//! * The `SADD` travels in the same pipeline as the value's `SET` (they
//!   live in different cluster slots, so not in one `MULTI`).
//! * Deletion walks each shard with `SSCAN`, and for each page sends one
//!   pipeline: `UNLINK` of every member, then `SREM` of the page. A member
//!   is removed from its set only after its key, so a deletion cut short
//!   leaves nothing unreachable; members whose key had already expired are
//!   pruned on the way, and by [`KeySets::prune`].
//! * A key's recorded arguments (`{ns}:args:{F}`, kept for refresh) go
//!   with its key-set entry: when the key is deleted through the set, and
//!   when it is found gone (see [`KeySets::forget`]).
//! * Every member a deletion removes is handed back for the RAM of every
//!   instance, whether or not Redis still had its key: an instance may hold
//!   a value in RAM whose Redis copy expired, was evicted or was deleted by
//!   hand. The walk keeps them (`Walk::pending`) until they are announced,
//!   so a step whose announcement failed loses none.
//! * A key set is input from Redis like any other: a member that is not a
//!   value key of its function (not UTF-8, another function's or another
//!   namespace's key, a bus key, …: planted or corrupt) is removed from the
//!   set, counted in [`Progress::foreign`] and logged, and the key it names
//!   is never deleted.
//!
//! # Clearing a function while it computes
//!
//! A walk deletes what is in Redis when it passes; a computation that
//! started before `clear_all` and writes its value after the walk passed
//! its shard (or after `clear_all` returned: a slow computation, a node
//! without RAM, a node the function fence reaches late) would put a value
//! built before the clear back, for every node to read. So each function
//! has a *clear generation* in Redis, `{ns}:gen:{funcname}`, and:
//!
//! 1. a cached call reads the generation together with its Redis lookup
//!    (one pipeline, no extra round trip), before it starts computing; so
//!    do a builder before it runs a build job and a refresh before it
//!    rebuilds a value;
//! 2. it writes its value with a script that writes only while the
//!    generation is still the one it read (a write refused so is not kept
//!    in RAM either); its key-set entry goes first in the same pipeline, so
//!    a value the script wrote is recorded before any later walk starts;
//! 3. `clear_all` first sets a new generation (a random token, so a
//!    corrupt value is simply replaced), then walks the key set, then
//!    publishes the function fence.
//!
//! Once `clear_all` returns `Ok`: every value written before step 3 began
//! was recorded before the walk and is deleted; every later write by a
//! computation that started before `clear_all` read the old generation and
//! is refused; RAM copies filled before the fence (from Redis, during the
//! walk, or computed) are dropped by it on every node within the bus's
//! bound, and fills started before it are refused. A computation that
//! started after the new generation was set is stored as usual. A call that
//! could not read the generation (Redis failing, or a foreign value of
//! another type there, which the next `clear_all` replaces) does not store
//! its value in Redis. The write script reads a key of another cluster slot
//! than the value's: the one place where keys one script touches do not
//! share a slot.

use redis::Value;
use xxhash_rust::xxh3::xxh3_64;

use crate::clock::Periodic;
use crate::keys::{func_ram_prefix, version_key, Keys};
use crate::shared::SharedLayer;
use crate::{Error, Result};

/// Number of shards of each function's key set.
pub const SHARDS: u64 = 16;

/// Members read per `SSCAN` step.
pub(crate) const PAGE: usize = 1000;

/// How far a deletion has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// Redis keys deleted so far: the matching values Redis still held. A
    /// value whose Redis copy had already gone (expired, evicted, deleted
    /// out of band) is dropped from the RAM of every instance all the same,
    /// but not counted.
    pub deleted: u64,
    /// Key-set members met so far that were no value key of the function
    /// (planted or corrupt): removed from the key set, never deleted, logged.
    pub foreign: u64,
    /// Whether every shard has been walked and every value deleted has been
    /// announced to the other instances.
    pub finished: bool,
}

/// What a computation saw of its function's clear generation (see the
/// module docs) before it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Generation {
    /// The generation key's bytes; empty when there is none (no `clear_all`
    /// yet).
    Seen(Vec<u8>),
    /// It could not be read: the computed value is not written to Redis.
    Unknown,
}

/// Key-set names and operations of one namespace.
#[derive(Debug, Clone)]
pub(crate) struct KeySets {
    keys: Keys,
}

impl KeySets {
    pub(crate) fn new(keys: &Keys) -> Self {
        KeySets { keys: keys.clone() }
    }

    /// The namespace's key names.
    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The clear generation key of `funcname`.
    pub(crate) fn generation(&self, funcname: &str) -> String {
        self.keys.func_generation(funcname)
    }

    /// Gives `funcname` a new clear generation: writes already refused to a
    /// computation that read the previous one (see the module docs).
    pub(crate) async fn new_generation(&self, shared: &SharedLayer, funcname: &str) -> Result<()> {
        let mut conn = shared.conn();
        shared
            .run(
                "clear_generation",
                redis::cmd("SET")
                    .arg(self.generation(funcname))
                    .arg(uuid::Uuid::new_v4().to_string())
                    .query_async::<()>(&mut conn),
            )
            .await
    }

    /// Gives every function of the namespace a new clear generation (a
    /// namespace `clear_all`): those in the registry and those that have a
    /// generation already. Returns how many.
    pub(crate) async fn new_generations(&self, shared: &SharedLayer) -> Result<usize> {
        let mut names: std::collections::BTreeSet<String> =
            self.functions(shared).await?.into_iter().collect();
        let prefix = self.keys.func_generation("");
        let mut cursor = 0u64;
        loop {
            let mut conn = shared.conn();
            let (next, keys): (u64, Vec<String>) = shared
                .run(
                    "clear_generation",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{prefix}*"))
                        .arg("COUNT")
                        .arg(PAGE)
                        .query_async(&mut conn),
                )
                .await?;
            names.extend(
                keys.iter()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .map(str::to_owned),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        for name in &names {
            self.new_generation(shared, name).await?;
        }
        Ok(names.len())
    }

    /// `funcname`'s clear generation, for a computation about to start
    /// (empty: none yet).
    ///
    /// # Errors
    /// When Redis fails, or a foreign value of another type is there.
    pub(crate) async fn read_generation(
        &self,
        shared: &SharedLayer,
        funcname: &str,
    ) -> Result<Vec<u8>> {
        let mut conn = shared.conn();
        let seen: Option<Vec<u8>> = shared
            .run(
                "clear_generation",
                redis::cmd("GET")
                    .arg(self.generation(funcname))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(seen.unwrap_or_default())
    }

    /// `GET redis_key` and `funcname`'s clear generation, in one round trip.
    /// A failure to read the value is an error; one to read the generation
    /// (a foreign value of another type there) makes it
    /// [`Generation::Unknown`], logged and counted.
    pub(crate) async fn get_with_generation(
        &self,
        shared: &SharedLayer,
        funcname: &str,
        redis_key: &str,
    ) -> (Result<Option<Vec<u8>>>, Generation) {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("GET").arg(redis_key);
        pipe.cmd("GET").arg(self.generation(funcname));
        let mut conn = shared.conn();
        let replies: Vec<redis::RedisResult<Value>> =
            match shared.run("get", pipe.query_async(&mut conn)).await {
                Ok(replies) => replies,
                Err(e) => return (Err(e), Generation::Unknown),
            };
        let mut replies = replies.into_iter();
        let parse =
            |reply: Option<redis::RedisResult<Value>>| -> redis::RedisResult<Option<Vec<u8>>> {
                let value = reply.unwrap_or_else(|| {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "missing pipeline reply",
                    )))
                })?;
                Ok(redis::from_redis_value(value)?)
            };
        let value = parse(replies.next()).map_err(|source| {
            crate::metrics::redis_error("get");
            Error::Redis { op: "get", source }
        });
        let generation = match parse(replies.next()) {
            Ok(seen) => Generation::Seen(seen.unwrap_or_default()),
            Err(e) => {
                crate::metrics::redis_error("clear_generation");
                tracing::warn!(
                    func = %funcname,
                    error = %e,
                    "cannot read the function's clear generation; values computed now are not stored in Redis"
                );
                Generation::Unknown
            }
        };
        (value, generation)
    }

    /// The registry of function names.
    pub(crate) fn registry(&self) -> String {
        self.keys.keyset_registry()
    }

    /// Shard `shard` of function `funcname`'s key set.
    pub(crate) fn shard(&self, funcname: &str, shard: u64) -> String {
        self.keys.keyset_shard(funcname, shard)
    }

    /// The shard that records `redis_key`.
    pub(crate) fn shard_of(&self, funcname: &str, redis_key: &str) -> String {
        self.shard(funcname, xxh3_64(redis_key.as_bytes()) % SHARDS)
    }

    /// Appends the recording of `redis_key` to `pipe`, with the function's
    /// entry in the registry.
    ///
    /// The registry entry goes with every write, not once per process: Redis
    /// may lose it (a restart without persistence, a namespace-wide
    /// `clear_all`) while the process lives on, and a function missing from
    /// the registry is invisible to `key_sets` and `prune_key_sets`. An
    /// `SADD` of a present member costs O(1) in the same round trip.
    pub(crate) fn add_to_pipeline(
        &self,
        pipe: &mut redis::Pipeline,
        funcname: &str,
        redis_key: &str,
    ) {
        pipe.cmd("SADD")
            .arg(self.shard_of(funcname, redis_key))
            .arg(redis_key)
            .ignore();
        pipe.cmd("SADD").arg(self.registry()).arg(funcname).ignore();
    }

    /// Appends the recording of a call's arguments to `pipe`, so that refresh
    /// can rebuild its value (the record goes with the key's key-set entry:
    /// see the module docs).
    pub(crate) fn add_args_record(
        &self,
        pipe: &mut redis::Pipeline,
        funcname: &str,
        redis_key: &str,
        args: &[u8],
    ) {
        pipe.cmd("HSET")
            .arg(self.keys.func_args(funcname))
            .arg(redis_key)
            .arg(args)
            .ignore();
    }

    /// Names of the functions that have key sets.
    pub(crate) async fn functions(&self, shared: &SharedLayer) -> Result<Vec<String>> {
        let mut conn = shared.conn();
        let mut names: Vec<String> = shared
            .run(
                "keyset_functions",
                redis::cmd("SMEMBERS")
                    .arg(self.registry())
                    .query_async(&mut conn),
            )
            .await?;
        names.sort();
        Ok(names)
    }

    /// Members recorded for `funcname` (`SCARD` of every shard, one round
    /// trip); includes keys that expired and were not pruned yet.
    pub(crate) async fn size(&self, shared: &SharedLayer, funcname: &str) -> Result<u64> {
        let mut pipe = redis::pipe();
        for shard in 0..SHARDS {
            pipe.cmd("SCARD").arg(self.shard(funcname, shard));
        }
        let mut conn = shared.conn();
        let sizes: Vec<u64> = shared
            .run("keyset_size", pipe.query_async(&mut conn))
            .await?;
        Ok(sizes.iter().sum())
    }

    /// One step of a deletion: one `SSCAN` page of the current shard, its
    /// matching members unlinked and removed from the set, its foreign
    /// members (see the module docs) removed from the set only. The RAM keys
    /// of the members unlinked join [`Walk::pending`], to be announced by the
    /// caller.
    ///
    /// # Errors
    /// When Redis fails. The walk stays where it was, so the next step reads
    /// the page again; members whose `UNLINK` may have run are pending all
    /// the same.
    pub(crate) async fn delete_step(&self, shared: &SharedLayer, walk: &mut Walk) -> Result<()> {
        if walk.shard >= SHARDS {
            return Ok(());
        }
        let set = self.shard(&walk.funcname, walk.shard);
        let mut conn = shared.conn();
        let mut scan = redis::cmd("SSCAN");
        scan.arg(&set).arg(walk.cursor);
        if let Some(first) = walk.parts.first() {
            scan.arg("MATCH").arg(format!("*{first}*"));
        }
        scan.arg("COUNT").arg(PAGE);
        let (next, members): (u64, Vec<Vec<u8>>) = shared
            .run("keyset_scan", scan.query_async(&mut conn))
            .await?;
        let prefix = self.keys.func_prefix(&walk.funcname);
        let ram_prefix = func_ram_prefix(&walk.funcname);
        let mut keys = Vec::new();
        let mut foreign = Vec::new();
        for member in members {
            match String::from_utf8(member) {
                Ok(key) => match key.strip_prefix(&prefix) {
                    Some(suffix) => {
                        if walk.parts.iter().all(|p| suffix.contains(p.as_str())) {
                            walk.pending.push(format!("{ram_prefix}{suffix}"));
                            keys.push(key);
                        }
                    }
                    None => foreign.push(key.into_bytes()),
                },
                Err(e) => foreign.push(e.into_bytes()),
            }
        }
        if !keys.is_empty() || !foreign.is_empty() {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("UNLINK").arg(key);
                add_forget_version(&mut pipe, key);
            }
            if !keys.is_empty() {
                pipe.cmd("SREM").arg(&set).arg(&keys).ignore();
                pipe.cmd("HDEL")
                    .arg(self.keys.func_args(&walk.funcname))
                    .arg(&keys)
                    .ignore();
            }
            if !foreign.is_empty() {
                pipe.cmd("SREM").arg(&set).arg(&foreign).ignore();
            }
            let unlinked: Vec<Value> = shared
                .run("keyset_delete", pipe.query_async(&mut conn))
                .await?;
            walk.progress.deleted += unlinked
                .iter()
                .filter(|r| matches!(r, Value::Int(n) if *n > 0))
                .count() as u64;
        }
        if !foreign.is_empty() {
            walk.progress.foreign += foreign.len() as u64;
            tracing::warn!(
                func = %walk.funcname,
                key_set = %set,
                count = foreign.len(),
                "key-set members that are no value of the function: removed from the set, not deleted"
            );
        }
        if next == 0 {
            walk.shard += 1;
            walk.cursor = 0;
        } else {
            walk.cursor = next;
        }
        Ok(())
    }

    /// Removes from `funcname`'s key set the members whose key no longer
    /// exists (expired in Redis), with their recorded arguments, and
    /// members that are not UTF-8 (no key of cachenode's). Returns how many
    /// were removed.
    pub(crate) async fn prune(&self, shared: &SharedLayer, funcname: &str) -> Result<u64> {
        let mut pruned = 0;
        for shard in 0..SHARDS {
            let set = self.shard(funcname, shard);
            let mut cursor = 0u64;
            loop {
                let mut conn = shared.conn();
                let (next, members) = scan_page(shared, &set, cursor).await?;
                let mut names = Vec::new();
                let mut garbage = Vec::new();
                for m in members {
                    match String::from_utf8(m) {
                        Ok(name) => names.push(name),
                        Err(e) => garbage.push(e.into_bytes()),
                    }
                }
                if !garbage.is_empty() {
                    let removed: u64 = shared
                        .run(
                            "keyset_prune",
                            redis::cmd("SREM")
                                .arg(&set)
                                .arg(&garbage)
                                .query_async(&mut conn),
                        )
                        .await?;
                    pruned += removed;
                }
                // A member in another shard than its own (planted or
                // corrupt) leaves this one; one whose key exists goes to its
                // own shard, where deletions and `forget` look for it.
                let (names, misplaced): (Vec<String>, Vec<String>) = names
                    .into_iter()
                    .partition(|m| self.shard_of(funcname, m) == set);
                if !misplaced.is_empty() {
                    let mut pipe = redis::pipe();
                    pipe.cmd("SREM").arg(&set).arg(&misplaced).ignore();
                    for m in &misplaced {
                        pipe.cmd("EXISTS").arg(m);
                    }
                    let exists: Vec<u64> = shared
                        .run("keyset_prune", pipe.query_async(&mut conn))
                        .await?;
                    let mut moved = redis::pipe();
                    let mut moving = false;
                    for (m, e) in misplaced.iter().zip(exists) {
                        if e > 0 {
                            self.add_to_pipeline(&mut moved, funcname, m);
                            moving = true;
                        } else {
                            pruned += 1;
                        }
                    }
                    if moving {
                        shared
                            .run("keyset_prune", moved.query_async::<()>(&mut conn))
                            .await?;
                    }
                }
                if !names.is_empty() {
                    let mut pipe = redis::pipe();
                    for m in &names {
                        pipe.cmd("EXISTS").arg(m);
                    }
                    let exists: Vec<u8> = shared
                        .run("keyset_prune", pipe.query_async(&mut conn))
                        .await?;
                    let gone: Vec<&String> = names
                        .iter()
                        .zip(exists)
                        .filter_map(|(m, e)| (e == 0).then_some(m))
                        .collect();
                    if !gone.is_empty() {
                        // Their arguments, to put back should one be
                        // written again meanwhile.
                        let args: Vec<Option<Vec<u8>>> = shared
                            .run(
                                "keyset_prune",
                                redis::cmd("HMGET")
                                    .arg(self.keys.func_args(funcname))
                                    .arg(&gone)
                                    .query_async(&mut conn),
                            )
                            .await?;
                        let gone: Vec<(String, Option<Vec<u8>>)> =
                            gone.into_iter().cloned().zip(args).collect();
                        pruned += self.forget(shared, funcname, &gone).await?;
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(pruned)
    }
}

impl KeySets {
    /// Forgets keys of `funcname` found gone from Redis: their key-set
    /// entries and recorded arguments (given with each key when it has
    /// some). Returns how many key-set entries were removed.
    ///
    /// The absence was seen before this call, so a key may have been written
    /// again since (a caller computing it anew). Each key is looked at again
    /// and forgotten only if still absent, in one script: an entry is never
    /// taken out and put back, so a concurrent function `clear_all` walking
    /// the key set cannot miss a live value in between.
    pub(crate) async fn forget(
        &self,
        shared: &SharedLayer,
        funcname: &str,
        gone: &[(String, Option<Vec<u8>>)],
    ) -> Result<u64> {
        if gone.is_empty() {
            return Ok(0);
        }
        let args_key = self.keys.func_args(funcname);
        let script = redis::Script::new(FORGET_SCRIPT);
        let mut forgotten = 0;
        for chunk in gone.chunks(PAGE) {
            let mut invocation = script.prepare_invoke();
            invocation.key(&args_key);
            for (key, args) in chunk {
                invocation
                    .key(self.shard_of(funcname, key))
                    .key(key)
                    .arg(u8::from(args.is_some()));
            }
            let mut conn = shared.conn();
            let n: u64 = shared
                .run("keyset_forget", invocation.invoke_async(&mut conn))
                .await?;
            forgotten += n;
        }
        Ok(forgotten)
    }
}

/// `KEYS`: the recorded-arguments hash, then a (key-set shard, value key)
/// pair per key. `ARGV`: per key, `1` when it has recorded arguments.
/// Forgets each key that does not exist, atomically with the look.
const FORGET_SCRIPT: &str = r#"
local forgotten = 0
for i = 1, (#KEYS - 1) / 2 do
  local shard, key = KEYS[2 * i], KEYS[2 * i + 1]
  if redis.call('EXISTS', key) == 0 then
    forgotten = forgotten + redis.call('SREM', shard, key)
    if ARGV[i] == '1' then
      redis.call('HDEL', KEYS[1], key)
    end
  end
end
return forgotten
"#;

/// Appends to `pipe` the deletion of `value_key`'s at-least-once version
/// (ignored reply; see [`atomic`](crate::func::atomic)), for every deletion
/// of the value itself.
pub(crate) fn add_forget_version(pipe: &mut redis::Pipeline, value_key: &str) {
    pipe.cmd("UNLINK").arg(version_key(value_key)).ignore();
}

/// One `SSCAN` page (of [`PAGE`] members) of key-set shard `set`: the
/// next cursor (0 at the end) and the members, as bytes (a member that is
/// not UTF-8 is no key cachenode wrote; [`KeySets::prune`] removes it).
async fn scan_page(shared: &SharedLayer, set: &str, cursor: u64) -> Result<(u64, Vec<Vec<u8>>)> {
    let mut conn = shared.conn();
    shared
        .run(
            "keyset_scan",
            redis::cmd("SSCAN")
                .arg(set)
                .arg(cursor)
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn),
        )
        .await
}

/// A deletion in progress over one function's key set: the position of the
/// walk, what it matches, and what it deleted but has not announced yet.
/// Steps are made with [`KeySets::delete_step`].
#[derive(Debug, Clone)]
pub(crate) struct Walk {
    pub(crate) funcname: String,
    /// Full-args parts (`;name=hash`) a member must all contain; empty: all.
    pub(crate) parts: Vec<String>,
    shard: u64,
    cursor: u64,
    /// RAM keys of the members unlinked (or maybe unlinked: the reply was
    /// lost) and not announced yet. The walk moves on before they are
    /// announced, so they are kept here until an announcement succeeds.
    pub(crate) pending: Vec<String>,
    progress: Progress,
}

impl Walk {
    pub(crate) fn new(funcname: &str, parts: Vec<String>) -> Self {
        Walk {
            funcname: funcname.to_owned(),
            parts,
            shard: 0,
            cursor: 0,
            pending: Vec::new(),
            progress: Progress::default(),
        }
    }

    /// Whether every shard has been walked (announcements aside).
    pub(crate) fn walked(&self) -> bool {
        self.shard >= SHARDS
    }

    /// How far it has got: finished once walked with nothing pending.
    pub(crate) fn progress(&self) -> Progress {
        Progress {
            finished: self.walked() && self.pending.is_empty(),
            ..self.progress
        }
    }

    /// Ends the walk without walking (nothing to walk: no Redis).
    pub(crate) fn finish(&mut self) {
        self.shard = SHARDS;
    }
}

/// Default period of the key-set sweep.
pub const DEFAULT_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// The background sweep: every period, one instance of the namespace (the
/// one that takes the sweep lock) prunes every function's key set of the
/// keys that expired in Redis, so sets do not grow forever.
pub(crate) async fn sweep_task(
    shared: SharedLayer,
    keysets: KeySets,
    every: std::time::Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let lock = keysets.keys.sweep_lock();
    let mut ticks = Periodic::after_one_period(every, stop);
    while ticks.next().await {
        // Held for most of the period, so one instance sweeps per period.
        let took = shared
            .take_lock("sweep_lock", &lock, every.mul_f64(0.9))
            .await;
        if !matches!(took, Ok(Some(_))) {
            continue;
        }
        let mut pruned = 0;
        match keysets.functions(&shared).await {
            Ok(names) => {
                for name in names {
                    match keysets.prune(&shared, &name).await {
                        Ok(n) => pruned += n,
                        Err(e) => tracing::warn!(func = %name, error = %e, "key-set sweep failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "key-set sweep cannot list functions"),
        }
        tracing::debug!(pruned, "key-set sweep done");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        let ks = KeySets::new(&Keys::new("app").unwrap());
        assert_eq!(ks.shard("f", 3), "app:ks:f:3");
        assert_eq!(ks.registry(), "app:ks");
        let a = ks.shard_of("f", "app:f:f:|abc");
        assert_eq!(a, ks.shard_of("f", "app:f:f:|abc"));
        let used: std::collections::HashSet<String> = (0..1000)
            .map(|i| ks.shard_of("f", &format!("app:f:f:|{i}")))
            .collect();
        assert_eq!(used.len() as u64, SHARDS);
    }
}
