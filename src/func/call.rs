//! The call path of a cached function: build the key, read RAM, read Redis
//! (with the function's clear generation, one round trip), and on a miss
//! compute once per process (single-flight), under the cross-instance rule
//! the function asks for ([`AtomicWrites`]), then store: the value and its
//! key-set entry in one round trip, then RAM, fenced. Also the async-compute
//! lookup ([`CachedFn::get_or_build`]) and the entry points the attribute
//! macros call.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::atomic::AtomicWrites;
use super::key::{self, KeyArgs};
use super::{CachedFn, CallKey, Computed, Prepared, Step};
use crate::backoff::Backoff;
use crate::bus::Invalidation;
use crate::codec;
use crate::func::atomic::GenerationCheck;
use crate::keysets::Generation;
use crate::local::{Expiry, Fence, Fill, FillTicket, LocalLayer};
use crate::metrics::Layer;
use crate::singleflight::Role;
use crate::{Error, Result};

/// The answer of [`CachedFn::get_or_build`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<V> {
    /// The value.
    Ready(V),
    /// Not cached yet: a build job is queued or running. Ask again later.
    BeingBuilt,
}

impl<A, V> CachedFn<A, V>
where
    A: KeyArgs + ?Sized,
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// The value of the call with `args`: from RAM, else Redis, else
    /// `compute` (run once per process for concurrent callers of one key).
    ///
    /// # Errors
    /// Only `compute`'s own errors, which are never cached. Cache failures
    /// (Redis down, an argument that does not encode) fall back to
    /// computing, logged and counted.
    pub async fn call<F, Fut, E>(&self, args: &A, compute: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        // As `call_prepared`, without a future inside this one: a hit is
        // answered in this future's first poll with nothing moved.
        match self.prepare(args).0 {
            Step::Uncached => compute().await,
            Step::Hit(v) => Ok(V::clone(&v)),
            Step::Miss(key) => Box::pin(self.call_missed(key, compute)).await,
        }
    }

    /// The first half of [`call`](Self::call): decides, from the arguments
    /// alone, whether and under which key the call is cached, and reads
    /// RAM. Lets a caller hand its arguments to `compute` by value after
    /// the key is built.
    #[doc(hidden)]
    pub fn prepare(&self, args: &A) -> Prepared<V> {
        if self.inner.opts.unless.as_ref().is_some_and(|u| u(args)) {
            return Prepared(Step::Uncached);
        }
        if !self.caches() {
            return Prepared(Step::Uncached);
        }
        let prefix = self.dynamic_prefix(args);
        self.look_up(args, prefix.as_deref(), Some(args))
    }

    /// Whether calls are cached now (not on a disabled or shut-down node).
    fn caches(&self) -> bool {
        let node = &self.inner.node;
        !node.is_disabled() && node.check_open().is_ok()
    }

    /// Builds the call's RAM key in this thread's key buffer and reads RAM
    /// with it; only a miss builds the call's owned keys. `typed`: the
    /// arguments as `A`, recorded for refresh.
    #[inline]
    fn look_up<K: KeyArgs + ?Sized>(
        &self,
        args: &K,
        dynamic_prefix: Option<&str>,
        typed: Option<&A>,
    ) -> Prepared<V> {
        key::with_key_buf(|buf| {
            if let Err(e) = self.write_ram_key(args, dynamic_prefix, buf) {
                tracing::warn!(func = %self.inner.name, error = %e, "cannot build cache key; computing");
                return Prepared(Step::Uncached);
            }
            let node = &self.inner.node;
            if let Some(ram) = node.ram() {
                let sampled = crate::metrics::sample_ram().then(std::time::Instant::now);
                let found = ram.get_typed::<V>(&buf.key);
                if let Some(started) = sampled {
                    node.metrics().ram_operation(started.elapsed());
                }
                if let Some(v) = found {
                    node.metrics().hit(Layer::Ram);
                    self.inner.metrics.hit(Layer::Ram);
                    return Prepared(Step::Hit(v));
                }
                node.metrics().miss(Layer::Ram);
            }
            Prepared(Step::Miss(self.call_key(buf, typed)))
        })
    }

    /// The second half of [`call`](Self::call).
    ///
    /// # Errors
    /// Only `compute`'s own errors.
    #[doc(hidden)]
    pub async fn call_prepared<F, Fut, E>(&self, prepared: Prepared<V>, compute: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        match prepared.0 {
            Step::Uncached => compute().await,
            Step::Hit(v) => Ok(V::clone(&v)),
            // Boxed so that this future stays small: a hit then moves none
            // of the miss path's state, which is much larger.
            Step::Miss(key) => Box::pin(self.call_missed(key, compute)).await,
        }
    }

    /// A call that RAM did not answer: Redis, else compute and store.
    async fn call_missed<F, Fut, E>(&self, key: CallKey, compute: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let node = &self.inner.node;
        // The ticket is taken before joining: a flight whose leader took
        // its own before an invalidation of the key was applied is not
        // joined (its value may predate the invalidation).
        // The fences live in this node's RAM layer whatever layers this
        // handle uses (the bus applies invalidations there), so a flight of
        // a Redis-only function is judged by them too.
        let fences = node.own_ram();
        let flight_ticket = fences.map(LocalLayer::ticket);
        // Also what the value's store checks the fences with (and fills
        // RAM with, when this handle uses RAM).
        let mut ticket = flight_ticket;
        let group = self.inner.group.as_deref();
        let stale = |t| fences.is_some_and(|l| l.fenced_since(&key.ram, group, t));
        let leader = match self.inner.flights.join(&key.ram, flight_ticket, stale) {
            Role::Leader(l) => Some(l),
            Role::Follower(f) => match f.wait::<V>().await {
                Some(v) => return Ok(V::clone(&v)),
                None => {
                    // The leader failed: compute for ourselves, from now.
                    ticket = fences.map(LocalLayer::ticket);
                    None
                }
            },
        };
        let (found, generation) = self.read_redis(&key, &mut ticket).await;
        if let Some(v) = found {
            self.inner.metrics.hit(Layer::Redis);
            if let Some(l) = leader {
                l.finish(Some(v.clone()));
            }
            return Ok(V::clone(&v));
        }
        self.inner.metrics.miss();
        node.metrics().unanswered();
        let started = std::time::Instant::now();
        let compute = || async {
            let v = compute().await;
            self.inner.metrics.computed(started.elapsed());
            v
        };
        let value = match self.inner.opts.atomic {
            None => {
                let value = compute().await?;
                self.store(&key, value, ticket, Write::Plain, &generation)
                    .await
            }
            Some(AtomicWrites::AtLeastOnce) => {
                // Ordered by the Redis server's clock, not this host's.
                let started = match node.redis("call") {
                    Ok(Some(shared)) => {
                        crate::func::atomic::start_version(shared, &self.redis_key(&key)).await
                    }
                    _ => 0,
                };
                let value = compute().await?;
                let write = Write::IfNewer(started);
                self.store(&key, value, ticket, write, &generation).await
            }
            Some(AtomicWrites::AtMostOnce) => {
                self.at_most_once(&key, ticket, generation, compute).await?
            }
        };
        if let Some(l) = leader {
            l.finish(Some(value.clone()));
        }
        Ok(V::clone(&value))
    }

    /// The value of the call if cached; otherwise queues a build job (once
    /// per key at a time) and answers [`Lookup::BeingBuilt`] at once.
    ///
    /// # Errors
    /// [`Error::Config`] when the function was not built with
    /// [`FuncBuilder::async_compute`](crate::FuncBuilder::async_compute); [`Error::NoSharedLayer`] without
    /// Redis; Redis errors when the job cannot be queued.
    pub async fn get_or_build(&self, args: &A) -> Result<Lookup<V>>
    where
        A: Serialize + Sized,
    {
        let Some(timeout) = self.inner.opts.async_compute else {
            return Err(Error::Config(format!(
                "{:?} was not built with async_compute",
                self.inner.name
            )));
        };
        let node = &self.inner.node;
        node.check_open()?;
        let key = self.key(args)?;
        let ram = node.ram();
        if let Some(v) = ram.and_then(|l| l.get_typed::<V>(&key.ram)) {
            node.metrics().hit(Layer::Ram);
            return Ok(Lookup::Ready(V::clone(&v)));
        }
        let shared = node
            .redis("get_or_build")?
            .ok_or(Error::NoSharedLayer { op: "get_or_build" })?;
        if let (Some(v), _) = self
            .read_redis(&key, &mut ram.map(LocalLayer::ticket))
            .await
        {
            return Ok(Lookup::Ready(V::clone(&v)));
        }
        node.metrics().unanswered();
        let mut encoded = Vec::new();
        // Arguments of a build job are cachenode's own bytes: bincode,
        // whatever the node's value codec.
        crate::codec::bincode_encode_into(args, &mut encoded).map_err(Error::Encode)?;
        let job = crate::func::jobs::Job {
            func: self.inner.name.clone(),
            record_args: self.inner.opts.refresh_every.is_some(),
            args: encoded,
            redis_key: self.redis_key(&key),
            ttl_ms: self.resolved_ttl().map_or(0, crate::shared::ttl_millis),
            timeout_ms: crate::shared::ttl_millis(timeout),
        };
        crate::func::jobs::enqueue(shared, &node.config().keys, &job).await?;
        Ok(Lookup::BeingBuilt)
    }

    /// Reads and decodes the Redis copy, filling RAM; `None` on a miss or
    /// any failure (logged and counted). With it, the function's clear
    /// generation, which a computation started after this read checks when
    /// it writes (see [`keysets`](crate::keysets)).
    ///
    /// A value that does not decode is removed, and its removal fences the
    /// key in this node's RAM; `ticket` is then taken anew, so that the
    /// value computed in its place can be stored (the clear generation,
    /// read before, still refuses it if a clear began meanwhile).
    async fn read_redis(
        &self,
        key: &CallKey,
        ticket: &mut Option<FillTicket>,
    ) -> (Option<Arc<V>>, Generation) {
        let node = &self.inner.node;
        let Some(shared) = node.redis("call").ok().flatten() else {
            return (None, Generation::Unknown);
        };
        let redis_key = self.redis_key(key);
        let (read, generation) = self
            .inner
            .keysets
            .get_with_generation(shared, &self.inner.name, &redis_key)
            .await;
        let bytes = match read {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                node.metrics().miss(Layer::Redis);
                return (None, generation);
            }
            Err(e) => {
                tracing::warn!(func = %self.inner.name, error = %e, "Redis read failed; computing");
                return (None, generation);
            }
        };
        let Some((expires_at_ms, value)) =
            node.decode::<V>(shared, &redis_key, &key.ram, &bytes).await
        else {
            if ticket.is_some() {
                *ticket = node.own_ram().map(LocalLayer::ticket);
            }
            return (None, generation);
        };
        node.metrics().hit(Layer::Redis);
        let value = Arc::new(value);
        if let (Some(local), Some(ticket)) = (node.ram(), *ticket) {
            let fill = Fill {
                expiry: Expiry::At(expires_at_ms),
                cap: node.config().ram_max_ttl,
                bytes: bytes.len(),
                group: self.inner.group.clone(),
                ram_only: false,
            };
            local.fill(key.ram.clone(), value.clone(), fill, Fence::Ticket(ticket));
        }
        (Some(value), generation)
    }

    /// Computes under the key's lock, or waits for the instance that holds
    /// it (see [`AtomicWrites::AtMostOnce`]).
    async fn at_most_once<F, Fut, E>(
        &self,
        key: &CallKey,
        mut ticket: Option<FillTicket>,
        generation: Generation,
        compute: F,
    ) -> Result<Arc<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let o = &self.inner.opts;
        let Ok(Some(shared)) = self.inner.node.redis("call") else {
            let value = compute().await?;
            return Ok(self
                .store(key, value, ticket, Write::Plain, &generation)
                .await);
        };
        let redis_key = self.redis_key(key);
        // `None`: a wait timeout too long to add to now (`Duration::MAX`)
        // waits without bound.
        let deadline = tokio::time::Instant::now().checked_add(o.wait_timeout);
        let mut pause = Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
        loop {
            match crate::func::atomic::try_lock(shared, &redis_key, o.lock_ttl).await {
                Ok(Some(lock)) => {
                    // The value may have landed between our miss and the lock.
                    let (found, generation) = self.read_redis(key, &mut ticket).await;
                    if let Some(v) = found {
                        lock.release().await;
                        return Ok(v);
                    }
                    // On an error the guard drops and releases the lock.
                    let value = compute().await?;
                    let write = Write::Held(&lock);
                    let value = self.store(key, value, ticket, write, &generation).await;
                    lock.release().await;
                    return Ok(value);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(func = %self.inner.name, error = %e, "cannot take the compute lock; computing");
                    let value = compute().await?;
                    return Ok(self
                        .store(key, value, ticket, Write::Plain, &generation)
                        .await);
                }
            }
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                tracing::warn!(
                    func = %self.inner.name,
                    waited = ?o.wait_timeout,
                    "another instance's computation did not finish in time; computing without storing"
                );
                return Ok(Arc::new(compute().await?));
            }
            tokio::time::sleep(pause.next()).await;
            if let (Some(v), _) = self.read_redis(key, &mut ticket).await {
                return Ok(v);
            }
        }
    }

    /// Applies the caching rules to a computed value and stores it, in Redis
    /// only while the function's clear generation is still `generation`, the
    /// one read before the computation started.
    async fn store(
        &self,
        key: &CallKey,
        value: V,
        ticket: Option<FillTicket>,
        write: Write<'_>,
        generation: &Generation,
    ) -> Arc<V> {
        let o = &self.inner.opts;
        let (value, cache) = match o
            .on_computed
            .as_ref()
            .map(|cb| cb(&self.redis_key(key), &value))
        {
            None | Some(Computed::Keep) => (value, true),
            Some(Computed::Replace(v)) => (v, true),
            Some(Computed::DontCache) => (value, false),
        };
        let value = Arc::new(value);
        if !cache || (!o.cache_none && key::is_none(&*value)) {
            return value;
        }
        let node = &self.inner.node;
        let local = node.ram();
        // An invalidation of this key arrived while computing: the value may
        // be built on what it invalidated, so it is returned, not stored, in
        // either layer. (The fences are in this node's RAM layer whatever
        // layers this handle uses.)
        if let (Some(l), Some(t)) = (node.own_ram(), ticket) {
            if l.fenced_since(&key.ram, self.inner.group.as_deref(), t) {
                return value;
            }
        }
        let ttl = self.resolved_ttl();
        let mut size = None;
        let redis = node.redis("call");
        // A function cached in RAM only: nothing in Redis stands behind it.
        let ram_only = matches!(redis, Ok(None));
        match (redis, generation) {
            (Ok(Some(_)), Generation::Unknown) => {
                tracing::debug!(func = %self.inner.name, "computed value not stored in Redis: the clear generation could not be read");
            }
            (Ok(Some(shared)), Generation::Seen(seen)) => {
                match self
                    .write_redis(shared, key, &value, ttl, write, seen)
                    .await
                {
                    Ok(Some(len)) => size = Some(len),
                    // Refused: a newer value is stored, our lock expired and
                    // someone else may have written, or the function was
                    // cleared meanwhile. Do not keep ours in RAM.
                    Ok(None) => return value,
                    Err(e) => {
                        tracing::warn!(func = %self.inner.name, error = %e, "cannot store computed value in Redis");
                    }
                }
            }
            _ => {}
        }
        if let (Some(l), Some(t)) = (local, ticket) {
            let fill = Fill {
                expiry: Expiry::After(ttl),
                cap: node.config().ram_max_ttl,
                bytes: node.ram_weight(size, &*value),
                group: self.inner.group.clone(),
                ram_only,
            };
            if l.fill(key.ram.clone(), value.clone(), fill, Fence::Ticket(t)) {
                node.metrics().write(Layer::Ram);
            }
        }
        value
    }

    /// Writes the value and records its key in the key set, in one round
    /// trip, while the function's clear generation is still `seen`.
    /// `Ok(None)` when a conditional write was refused.
    async fn write_redis(
        &self,
        shared: &crate::shared::SharedLayer,
        key: &CallKey,
        value: &V,
        ttl: Option<Duration>,
        write: Write<'_>,
        seen: &[u8],
    ) -> Result<Option<usize>> {
        let node = &self.inner.node;
        let expires_at_ms = ttl.map_or(0, |t| {
            self.host_millis()
                .saturating_add(crate::shared::ttl_millis(t))
        });
        let bytes = codec::seal(
            node.codec(),
            value,
            expires_at_ms,
            node.config().max_value_bytes,
        )?;
        let redis_key = self.redis_key(key);
        let generation_key = self.inner.keysets.generation(&self.inner.name);
        let check = GenerationCheck {
            key: &generation_key,
            seen,
        };
        let mut pipe = redis::pipe();
        // The key-set entry first: a value the write below stores is then
        // recorded before any clear that could refuse it begins its walk.
        self.inner
            .keysets
            .add_to_pipeline(&mut pipe, &self.inner.name, &redis_key);
        match write {
            Write::Plain => crate::func::atomic::add_write_if_generation(
                &mut pipe, &redis_key, &bytes, ttl, check, false,
            ),
            Write::Held(lock) => lock.add_write(&mut pipe, &redis_key, &bytes, ttl, Some(check)),
            Write::IfNewer(version) => crate::func::atomic::add_write_if_newer(
                &mut pipe,
                &redis_key,
                &bytes,
                ttl,
                version,
                Some(check),
            ),
        }
        if let Some(args) = &key.args_record {
            self.inner
                .keysets
                .add_args_record(&mut pipe, &self.inner.name, &redis_key, args);
        }
        let mut conn = shared.conn();
        let (written,): (redis::Value,) = shared.run("set", pipe.query_async(&mut conn)).await?;
        if matches!(written, redis::Value::Int(crate::func::atomic::CLEARED)) {
            tracing::debug!(func = %self.inner.name, "function cleared while computing; value not stored");
            return Ok(None);
        }
        if matches!(written, redis::Value::Int(0)) {
            tracing::debug!(func = %self.inner.name, "conditional write refused");
            return Ok(None);
        }
        if matches!(write, Write::IfNewer(_))
            && matches!(written, redis::Value::Int(crate::func::atomic::REPLACED))
        {
            // Instances computing at once store in turn: one that stored an
            // older value keeps it in RAM unless told that a newer one
            // replaced it. Only a replacement is announced: announcing a
            // first write would fence, and so discard, the value of every
            // computation still running elsewhere, newer ones included.
            if let Err(e) = node
                .announce(Invalidation::Keys(vec![key.ram.clone()]))
                .await
            {
                tracing::warn!(func = %self.inner.name, error = %e, "cannot announce a newer value");
            }
        }
        node.metrics().write(Layer::Redis);
        Ok(Some(bytes.len()))
    }
}

/// Calls through arguments objects of any lifetime: what the attribute
/// macros generate (their handles are `CachedFn<dyn KeyArgs, V>`, whose
/// `dyn KeyArgs` is `'static`). Not a public API.
#[doc(hidden)]
impl<V> CachedFn<dyn KeyArgs, V>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    pub fn prepare_args(&self, args: &dyn KeyArgs) -> Prepared<V> {
        if !self.caches() {
            return Prepared(Step::Uncached);
        }
        self.look_up(args, None, None)
    }
}

/// How a computed value is written to Redis.
#[derive(Clone, Copy)]
enum Write<'a> {
    /// Unconditionally.
    Plain,
    /// Only while this lock is held (at most once).
    Held(&'a crate::func::atomic::LockGuard),
    /// Only if no value from a later computation (start time on the Redis
    /// server, µs) is stored (at least once).
    IfNewer(u64),
}
