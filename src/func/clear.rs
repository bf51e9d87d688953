//! Deleting a cached function's values: one call's value
//! ([`CachedFn::delete`]), all of them through the function's key set
//! ([`CachedFn::delete_all`], in the order that keeps a computation begun
//! before the call from storing after it), some of them by argument
//! ([`DeleteSome`]), several functions in the background
//! ([`BackgroundDelete`]), and the node-wide key-set admin (listing and
//! pruning every function's key set).

use std::future::Future;

use tokio::sync::watch;

use super::key::{self, ArgsInKey, KeyArgs};
use super::{CachedFn, CallKey};
use crate::bus::Invalidation;
use crate::core::Core;
use crate::keysets::{KeySets, Progress, Walk};
use crate::{Error, Result};

impl<A: KeyArgs + ?Sized, V> CachedFn<A, V> {
    /// Deletes the value of the call with `args` from Redis, its key set and
    /// the RAM of every instance. Returns whether it existed (in Redis or
    /// this node's RAM). To drop it from RAM only,
    /// [`invalidate`](Self::invalidate) it.
    ///
    /// The key is built from `args` when this is called, so the future
    /// borrows only the handle, not `args`: it is `Send`, and `'static` for
    /// a `'static` handle (spawn it, or await it after `args` is gone).
    ///
    /// # Errors
    /// When Redis fails or an argument cannot be encoded.
    pub fn delete(&self, args: &A) -> impl Future<Output = Result<bool>> + Send + '_ {
        self.delete_key(self.key(args))
    }

    /// [`delete`](Self::delete) of a key built beforehand.
    pub(super) async fn delete_key(&self, key: Result<CallKey>) -> Result<bool> {
        self.inner.node.check_open()?;
        self.clear_key(key?).await
    }

    pub(super) async fn clear_key(&self, key: CallKey) -> Result<bool> {
        let node = &self.inner.node;
        let mut existed = node.ram().is_some_and(|l| l.remove(&key.ram));
        if let Some(shared) = node.redis("clear")? {
            let redis_key = self.redis_key(&key);
            let mut pipe = redis::pipe();
            pipe.cmd("UNLINK").arg(&redis_key);
            pipe.cmd("SREM")
                .arg(self.inner.keysets.shard_of(&self.inner.name, &redis_key))
                .arg(&redis_key);
            pipe.cmd("HDEL")
                .arg(node.config().keys.func_args(&self.inner.name))
                .arg(&redis_key);
            crate::keysets::add_forget_version(&mut pipe, &redis_key);
            let replies = node
                .write_and_announce(shared, "clear", pipe, || {
                    Invalidation::Keys(vec![key.ram.clone()])
                })
                .await?;
            existed |= matches!(replies.first(), Some(redis::Value::Int(n)) if *n > 0);
        } else {
            node.announce(Invalidation::Keys(vec![key.ram.clone()]))
                .await?;
        }
        Ok(existed)
    }

    /// Drops the value of the call with `args` from the RAM of every
    /// instance (this one at once, the others through the bus); the Redis
    /// copy stays, so the next call on any instance reads it from there.
    /// Returns once the invalidation is durable in Redis. To remove the
    /// value everywhere, [`delete`](Self::delete) it. Like `delete`, the
    /// key is built when this is called: the future does not borrow `args`.
    ///
    /// # Errors
    /// When an argument cannot be encoded, or the invalidation cannot be
    /// published.
    pub fn invalidate(&self, args: &A) -> impl Future<Output = Result<()>> + Send + '_ {
        self.invalidate_key(self.key(args))
    }

    /// [`invalidate`](Self::invalidate) of a key built beforehand.
    pub(super) async fn invalidate_key(&self, key: Result<CallKey>) -> Result<()> {
        self.inner.node.check_open()?;
        let key = key?;
        self.inner.node.invalidate_ram_keys(&[&key.ram]).await
    }

    /// Drops every value of the function from the RAM of every instance;
    /// the Redis copies stay. Returns once durable in Redis. To remove the
    /// values everywhere, [`delete_all`](Self::delete_all).
    ///
    /// # Errors
    /// When the invalidation cannot be published.
    pub async fn invalidate_all(&self) -> Result<()> {
        self.inner.node.invalidate_function(&self.inner.name).await
    }

    /// Deletes every value of the function: walks its key set, unlinking in
    /// batches (never a keyspace scan), then drops the function from the RAM
    /// of every instance. Returns how many Redis keys were deleted:
    /// the values Redis still held (every value leaves every RAM, also one
    /// whose Redis copy had expired or been evicted). Key-set members that
    /// are no value of the function are removed from the set, never deleted
    /// (see [`Progress::foreign`]).
    ///
    /// # Errors
    /// When Redis fails; what was deleted stays deleted, and calling again
    /// finishes the job.
    pub async fn delete_all(&self) -> Result<u64> {
        self.delete_all_with(|_| {}).await
    }

    /// [`delete_all`](Self::delete_all), reporting progress after each batch.
    ///
    /// # Errors
    /// As [`delete_all`](Self::delete_all).
    pub async fn delete_all_with(&self, progress: impl FnMut(Progress)) -> Result<u64> {
        self.inner.node.check_open()?;
        clear_function(&self.inner.node, &self.inner.name, progress).await
    }

    /// Starts deleting the values whose arguments match `filter` (named
    /// arguments, every one of which must match). Needs
    /// [`key_args(ArgsInKey::Each)`](crate::FuncBuilder::key_args).
    /// Each [`DeleteSome::step`] deletes one batch and says how far it got;
    /// every matching value the key set records leaves the RAM of every
    /// instance, and [`Progress::deleted`] counts those Redis still held.
    /// Unlike [`delete_all`](Self::delete_all) it does not change the clear
    /// generation: a matching value whose computation was running is
    /// refused by the computing node if the invalidation reached it first,
    /// and otherwise stored (the usual cache-aside race, as for
    /// [`delete`](Self::delete)).
    ///
    /// # Errors
    /// [`Error::Config`] when the function does not use full-args keys, or
    /// when the filter could match no key: it names an argument the
    /// function leaves out of its keys (`ignore_args`), or, when the
    /// function's arguments are known (a tuple, named `0`, `1`, …, or a
    /// function of the macros, named after its parameters), an argument it
    /// does not have, or gives a value of another type than the argument's
    /// (`1i32` for a `u64`). Types that serde writes alike match: a `&str`
    /// or a `String` for a `String` argument, a slice for a `Vec`. An empty
    /// filter is refused too: it would match every value
    /// ([`delete_all`](Self::delete_all) deletes them all, and also keeps
    /// out the values of computations running meanwhile).
    pub fn delete_some(&self, filter: &key::Args) -> Result<DeleteSome> {
        let opts = &self.inner.opts;
        if opts.args_mode != ArgsInKey::Each {
            return Err(Error::Config(format!(
                "delete_some on {:?} needs keys built with key_args(ArgsInKey::Each) \
                 (`key_args = Each` in the macros)",
                self.inner.name
            )));
        }
        key::check_filter(
            &self.inner.name,
            opts.declared.as_deref(),
            &opts.ignore,
            filter,
        )?;
        let encoded = key::encode_args(filter)?;
        let parts = encoded
            .parts()
            .iter()
            .map(|(n, b)| key::arg_part(n, b))
            .collect();
        Ok(DeleteSome {
            node: self.inner.node.clone(),
            walk: Walk::new(&self.inner.name, parts),
        })
    }

    /// How many keys the function's key set records (expired ones included
    /// until pruned).
    ///
    /// # Errors
    /// When Redis fails.
    pub async fn key_set_size(&self) -> Result<u64> {
        match self.inner.node.redis("key_set_size")? {
            Some(shared) => self.inner.keysets.size(shared, &self.inner.name).await,
            None => Ok(0),
        }
    }
}

/// Deletions through arguments objects of any lifetime: what the attribute
/// macros generate (their handles are `CachedFn<dyn KeyArgs, V>`, whose
/// `dyn KeyArgs` is `'static`). Not a public API.
#[doc(hidden)]
impl<V> CachedFn<dyn KeyArgs, V> {
    /// [`delete`](CachedFn::delete): the key is built now, the future
    /// borrows only the handle.
    pub fn delete_args(
        &self,
        args: &dyn KeyArgs,
    ) -> impl Future<Output = Result<bool>> + Send + '_ {
        self.delete_key(self.key_from(args))
    }

    /// [`invalidate`](CachedFn::invalidate): the key is built now, the
    /// future borrows only the handle.
    pub fn invalidate_args(
        &self,
        args: &dyn KeyArgs,
    ) -> impl Future<Output = Result<()>> + Send + '_ {
        self.invalidate_key(self.key_from(args))
    }
}

/// Deletes every value of `funcname` from Redis through its key set, then
/// from the RAM of every instance (one function fence, which covers every
/// value, whether Redis still had it or not).
///
/// In this order, so that no value of a computation that started before
/// the call survives it: first a new clear generation (every later write of
/// such a computation is refused), then the walk (which deletes what they
/// wrote before), then the fence (which drops from every RAM what was read
/// or computed before it); see [`keysets`](crate::keysets).
async fn clear_function(
    node: &Core,
    funcname: &str,
    mut progress: impl FnMut(Progress),
) -> Result<u64> {
    key::check_funcname(funcname)?;
    let mut walk = Walk::new(funcname, Vec::new());
    if let Some(shared) = node.redis("clear_all")? {
        let keysets = KeySets::new(&node.config().keys);
        keysets.new_generation(shared, funcname).await?;
        while !walk.walked() {
            keysets.delete_step(shared, &mut walk).await?;
            // The function fence below announces them all at once.
            walk.pending.clear();
            progress(Progress {
                finished: false,
                ..walk.progress()
            });
        }
    }
    node.invalidate_function(funcname).await?;
    walk.finish();
    walk.pending.clear();
    progress(walk.progress());
    Ok(walk.progress().deleted)
}

/// A partial deletion in progress; see [`CachedFn::delete_some`].
#[derive(Debug)]
pub struct DeleteSome {
    node: Core,
    walk: Walk,
}

impl DeleteSome {
    /// A partial deletion of `node`'s values that `walk` matches.
    pub(crate) fn new(node: Core, walk: Walk) -> Self {
        DeleteSome { node, walk }
    }

    /// Deletes one batch of matching values (Redis, key set, and the RAM of
    /// every instance) and returns the progress so far; call again until
    /// `finished`. Every matching value is dropped from every RAM, also one
    /// whose Redis copy had already gone; [`Progress::deleted`] counts those
    /// Redis still held.
    ///
    /// # Errors
    /// When Redis fails; the next call resumes where this one stopped. A
    /// batch deleted from Redis whose announcement failed is announced first
    /// by the next call, so a failed step loses nothing.
    pub async fn step(&mut self) -> Result<Progress> {
        self.node.check_open()?;
        let Some(shared) = self.node.redis("delete_some")? else {
            // No key sets to walk: drop the whole function from RAM.
            self.node.invalidate_function(&self.walk.funcname).await?;
            self.walk.finish();
            return Ok(self.walk.progress());
        };
        announce_pending(&self.node, &mut self.walk).await?;
        if !self.walk.walked() {
            let keysets = KeySets::new(&self.node.config().keys);
            keysets.delete_step(shared, &mut self.walk).await?;
            announce_pending(&self.node, &mut self.walk).await?;
        }
        Ok(self.walk.progress())
    }

    /// Runs the deletion to the end, reporting progress after each batch.
    ///
    /// # Errors
    /// As [`step`](Self::step).
    pub async fn run(mut self, mut progress: impl FnMut(Progress)) -> Result<u64> {
        loop {
            let p = self.step().await?;
            progress(p);
            if p.finished {
                return Ok(p.deleted);
            }
        }
    }

    /// Progress so far.
    pub fn progress(&self) -> Progress {
        self.walk.progress()
    }
}

/// Drops the values `walk` deleted so far from the RAM of every instance;
/// they stay pending until that succeeds.
async fn announce_pending(node: &Core, walk: &mut Walk) -> Result<()> {
    let pending = &mut walk.pending;
    if pending.is_empty() {
        return Ok(());
    }
    // A page read again after a failed step adds its members again.
    pending.sort_unstable();
    pending.dedup();
    let refs: Vec<&str> = pending.iter().map(String::as_str).collect();
    node.invalidate_ram_keys(&refs).await?;
    pending.clear();
    Ok(())
}

/// A deletion of several functions' values running in the background; see
/// [`CacheNode::delete_functions_in_background`](crate::CacheNode::delete_functions_in_background).
#[derive(Debug)]
pub struct BackgroundDelete {
    progress: watch::Receiver<Progress>,
    task: tokio::task::JoinHandle<Result<u64>>,
}

impl BackgroundDelete {
    /// How far it has got: keys deleted so far, and whether it is done.
    pub fn progress(&self) -> Progress {
        *self.progress.borrow()
    }

    /// Waits for the end; returns how many Redis keys were deleted.
    ///
    /// # Errors
    /// The first error met; [`Error::Shutdown`] if the task was cancelled.
    pub async fn wait(self) -> Result<u64> {
        self.task.await.unwrap_or(Err(Error::Shutdown))
    }
}

/// See [`CacheNode::delete_functions`](crate::CacheNode::delete_functions).
pub(crate) async fn delete_functions(
    core: &Core,
    funcnames: &[&str],
    mut progress: impl FnMut(&str, Progress),
) -> Result<u64> {
    core.check_open()?;
    let mut total = 0;
    for name in funcnames {
        total += clear_function(core, name, |p| progress(name, p)).await?;
    }
    Ok(total)
}

/// See [`CacheNode::delete_functions_in_background`](crate::CacheNode::delete_functions_in_background).
pub(crate) fn delete_functions_in_background(
    core: &Core,
    funcnames: Vec<String>,
) -> BackgroundDelete {
    let (tx, rx) = watch::channel(Progress::default());
    let node = core.clone();
    let task = tokio::spawn(async move {
        let mut done = Progress::default();
        for name in &funcnames {
            let before = done;
            let mut last = Progress::default();
            clear_function(&node, name, |p| {
                last = p;
                let _ = tx.send(Progress {
                    deleted: before.deleted + p.deleted,
                    foreign: before.foreign + p.foreign,
                    finished: false,
                });
            })
            .await?;
            done.deleted += last.deleted;
            done.foreign += last.foreign;
        }
        let _ = tx.send(Progress {
            finished: true,
            ..done
        });
        Ok(done.deleted)
    });
    BackgroundDelete { progress: rx, task }
}

/// See [`CacheNode::key_sets`](crate::CacheNode::key_sets).
pub(crate) async fn key_sets(core: &Core) -> Result<Vec<(String, u64)>> {
    let shared = core
        .redis("key_sets")?
        .ok_or(Error::NoSharedLayer { op: "key_sets" })?;
    let keysets = KeySets::new(&core.config().keys);
    let mut out = Vec::new();
    for name in keysets.functions(shared).await? {
        let size = keysets.size(shared, &name).await?;
        out.push((name, size));
    }
    Ok(out)
}

/// See [`CacheNode::prune_key_sets`](crate::CacheNode::prune_key_sets).
pub(crate) async fn prune_key_sets(core: &Core) -> Result<u64> {
    let shared = core.redis("prune_key_sets")?.ok_or(Error::NoSharedLayer {
        op: "prune_key_sets",
    })?;
    let keysets = KeySets::new(&core.config().keys);
    let mut pruned = 0;
    for name in keysets.functions(shared).await? {
        pruned += keysets.prune(shared, &name).await?;
    }
    Ok(pruned)
}
