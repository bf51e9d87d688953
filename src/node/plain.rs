//! The plain-key API of a node: `get`, `set`, `fill`, `has`, `delete`,
//! their batch forms, `clear_all` and the RAM invalidations, over the core's
//! primitives (layers, decoding, writing with the announcement).
//!
//! Reads try RAM, then Redis, and fill RAM from a Redis hit; writes and
//! deletes go to Redis first and then to RAM, so a concurrent read never
//! re-fills RAM with the value being replaced (see [`local`](crate::local)).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::CacheNode;
use crate::bus::Invalidation;
use crate::clock::unix_millis;
use crate::codec;
use crate::keys::plain_ram_key;
use crate::local::{Expiry, Fence, Fill, FlushReason, LocalLayer};
use crate::metrics::{self, Layer};
use crate::{Error, Result, Ttl};

impl CacheNode {
    /// The value under `key`, or `None`.
    ///
    /// A RAM entry of another type than `T` is a RAM miss, answered from
    /// Redis. A Redis value written as another type than `T` (its envelope
    /// records the type, see the [crate docs](crate)) is a miss, counted in
    /// [`NodeStats::decode_failures`](crate::NodeStats::decode_failures) and logged, never a misread; the value
    /// is kept, since the mistake is the reader's and readers of the right
    /// type still read it. So is a value written with another
    /// [codec](crate::CacheNodeBuilder::codec) than this node's: a counted
    /// miss, kept for the nodes of its codec. A Redis value that does not
    /// decode for any other reason (corrupt or foreign bytes, another
    /// envelope version, over the size limit) is a miss too: the key is removed, the removal
    /// announced on the bus (so every instance drops its RAM copy, as for a
    /// [`delete`](Self::delete)), and the event counted and logged.
    ///
    /// # Errors
    /// [`Error::Redis`] / [`Error::Timeout`] when Redis must be asked and
    /// cannot answer.
    pub async fn get<T>(&self, key: &str) -> Result<Option<T>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        Ok(self.get_arc::<T>(key).await?.map(|v| T::clone(&v)))
    }

    /// Like [`get`](Self::get), without cloning the value out of its `Arc`.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_arc<T>(&self, key: &str) -> Result<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        self.core.check_open()?;
        let ram = self.core.ram();
        if let Some(local) = ram {
            let sampled = metrics::sample_ram().then(std::time::Instant::now);
            let found = local.get_typed::<T>(&plain_ram_key(key));
            if let Some(started) = sampled {
                self.core.metrics().ram_operation(started.elapsed());
            }
            if let Some(v) = found {
                self.core.metrics().hit(Layer::Ram);
                return Ok(Some(v));
            }
            self.core.metrics().miss(Layer::Ram);
        }
        // Boxed so that this future stays small: a RAM hit then costs no
        // copy of the Redis path's state, which is much larger.
        Box::pin(self.get_from_redis(key)).await
    }

    /// The Redis half of [`get_arc`](Self::get_arc): read, decode, fill RAM.
    async fn get_from_redis<T>(&self, key: &str) -> Result<Option<Arc<T>>>
    where
        T: DeserializeOwned + Send + Sync + 'static,
    {
        let ram = self.core.ram();
        let Some(shared) = self.core.redis("get")? else {
            if ram.is_some() {
                self.core.metrics().unanswered();
            }
            return Ok(None);
        };
        let ticket = ram.map(LocalLayer::ticket);
        let redis_key = self.core.config().keys.plain(key);
        let Some(bytes) = shared.get(&redis_key).await? else {
            self.core.metrics().miss(Layer::Redis);
            self.core.metrics().unanswered();
            return Ok(None);
        };
        let Some((expires_at_ms, value)) = self
            .core
            .decode::<T>(shared, &redis_key, &plain_ram_key(key), &bytes)
            .await
        else {
            self.core.metrics().unanswered();
            return Ok(None);
        };
        self.core.metrics().hit(Layer::Redis);
        let value = Arc::new(value);
        if let Some(hook) = &self.core.config().before_fill {
            (hook.0)(key.to_owned()).await;
        }
        if let (Some(local), Some(ticket)) = (ram, ticket) {
            let fill = Fill {
                expiry: Expiry::At(expires_at_ms),
                cap: self.core.config().ram_max_ttl,
                bytes: bytes.len(),
                group: None,
                ram_only: false,
            };
            let key = plain_ram_key(key).into_owned();
            local.fill(key, value.clone(), fill, Fence::Ticket(ticket));
        }
        Ok(Some(value))
    }

    /// The values under `keys`, in the same order (`None` where missing).
    /// RAM answers what it can; the rest comes from one `MGET`.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn get_many<T>(&self, keys: &[&str]) -> Result<Vec<Option<T>>>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        self.core.check_open()?;
        let mut out: Vec<Option<T>> = vec![None; keys.len()];
        let ram = self.core.ram();
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match ram.and_then(|l| l.get_typed::<T>(&plain_ram_key(key))) {
                Some(v) => {
                    self.core.metrics().hit(Layer::Ram);
                    out[i] = Some(T::clone(&v));
                }
                None => {
                    if ram.is_some() {
                        self.core.metrics().miss(Layer::Ram);
                    }
                    missing.push(i);
                }
            }
        }
        let Some(shared) = self.core.redis("get_many")? else {
            if ram.is_some() {
                self.core.metrics().unanswered_n(missing.len() as u64);
            }
            return Ok(out);
        };
        if missing.is_empty() {
            return Ok(out);
        }
        let ticket = ram.map(LocalLayer::ticket);
        let redis_keys: Vec<String> = missing
            .iter()
            .map(|&i| self.core.config().keys.plain(keys[i]))
            .collect();
        let found = shared.mget(&redis_keys).await?;
        for ((&i, redis_key), bytes) in missing.iter().zip(&redis_keys).zip(found) {
            let Some(bytes) = bytes else {
                self.core.metrics().miss(Layer::Redis);
                self.core.metrics().unanswered();
                continue;
            };
            let Some((expires_at_ms, value)) = self
                .core
                .decode::<T>(shared, redis_key, &plain_ram_key(keys[i]), &bytes)
                .await
            else {
                self.core.metrics().unanswered();
                continue;
            };
            self.core.metrics().hit(Layer::Redis);
            if let (Some(local), Some(ticket)) = (ram, ticket) {
                let fill = Fill {
                    expiry: Expiry::At(expires_at_ms),
                    cap: self.core.config().ram_max_ttl,
                    bytes: bytes.len(),
                    group: None,
                    ram_only: false,
                };
                let key = plain_ram_key(keys[i]).into_owned();
                local.fill(key, Arc::new(value.clone()), fill, Fence::Ticket(ticket));
            }
            out[i] = Some(value);
        }
        Ok(out)
    }

    /// Stores `value` under `key` for `ttl` (a [`Ttl`] or a `Duration`, where
    /// zero means never), in Redis and then RAM.
    ///
    /// # Errors
    /// [`Error::ValueTooLarge`] / [`Error::Encode`] for a value that cannot
    /// be stored; [`Error::Redis`] / [`Error::Timeout`] when Redis fails, in
    /// which case this node's RAM copy of `key` is dropped too.
    pub async fn set<T>(&self, key: &str, value: &T, ttl: impl Into<Ttl>) -> Result<()>
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        self.set_arc(key, Arc::new(value.clone()), ttl).await
    }

    /// Like [`set`](Self::set), taking the value in an `Arc` (no clone).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub async fn set_arc<T>(&self, key: &str, value: Arc<T>, ttl: impl Into<Ttl>) -> Result<()>
    where
        T: Serialize + Send + Sync + 'static,
    {
        self.core.check_open()?;
        if self.core.config().disabled {
            return Ok(());
        }
        let ttl = ttl.into().resolve(self.core.config().default_ttl);
        let ram_key = plain_ram_key(key);
        let mut encoded_len = None;
        let begun = self.core.own_ram().map(|l| l.begin_own_write(&ram_key));
        if let Some(shared) = self.core.redis("set")? {
            let expires_at_ms = ttl.map_or(0, |t| unix_millis().saturating_add(millis(t)));
            let bytes = codec::seal(
                self.core.codec(),
                &*value,
                expires_at_ms,
                self.core.config().max_value_bytes,
            )?;
            let redis_key = self.core.config().keys.plain(key);
            let mut pipe = redis::pipe();
            crate::shared::add_set(&mut pipe, &redis_key, &bytes, ttl);
            if let Err(e) = self
                .core
                .write_and_announce(shared, "set", pipe, || {
                    Invalidation::Keys(vec![ram_key.clone().into_owned()])
                })
                .await
            {
                if let Some(local) = self.core.own_ram() {
                    local.remove(&ram_key);
                }
                return Err(e);
            }
            self.core.metrics().write(Layer::Redis);
            encoded_len = Some(bytes.len());
        }
        if self.core.ram().is_none() {
            // Redis only: this node's copy, if any, is now the old value.
            if let Some(local) = self.core.own_ram() {
                local.remove(&ram_key);
            }
            return Ok(());
        }
        if let Some(local) = self.core.ram() {
            let fill = Fill {
                expiry: Expiry::After(ttl),
                cap: self.core.config().ram_max_ttl,
                bytes: self.core.ram_weight(encoded_len, &*value),
                group: None,
                ram_only: encoded_len.is_none(),
            };
            let begun = begun.unwrap_or_else(|| local.begin_own_write(&ram_key));
            if local.fill(ram_key.into_owned(), value, fill, Fence::OwnWrite(begun)) {
                self.core.metrics().write(Layer::Ram);
            }
        }
        Ok(())
    }

    /// Stores a value just loaded from the source of truth after a miss
    /// (cache-aside): in Redis only if `key` is absent there (`SET NX`),
    /// then in RAM, and **without a bus message** — an absent key is in no
    /// instance's RAM, so there is nothing to invalidate. Cheaper than
    /// [`set`](Self::set), which is for *changes* and tells every instance.
    ///
    /// Returns whether the value was stored. `false`: Redis already held a
    /// value (another instance filled or wrote the key meanwhile); this
    /// node's RAM is left alone, and the next read takes Redis's value. An
    /// invalidation of `key` that reaches this node while the fill runs
    /// keeps the value out of RAM.
    ///
    /// The usual cache-aside race remains: a value loaded before a write to
    /// the source, filled after that write's invalidation, stays until its
    /// TTL. Cached functions ([`func`](Self::func)) fill the same way.
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub async fn fill<T>(&self, key: &str, value: &T, ttl: impl Into<Ttl>) -> Result<bool>
    where
        T: Serialize + Clone + Send + Sync + 'static,
    {
        self.core.check_open()?;
        if self.core.config().disabled {
            return Ok(false);
        }
        let ttl = ttl.into().resolve(self.core.config().default_ttl);
        let ram_key = plain_ram_key(key);
        let ticket = self.core.ram().map(LocalLayer::ticket);
        let mut encoded_len = None;
        if let Some(shared) = self.core.redis("fill")? {
            let expires_at_ms = ttl.map_or(0, |t| unix_millis().saturating_add(millis(t)));
            let bytes = codec::seal(
                self.core.codec(),
                value,
                expires_at_ms,
                self.core.config().max_value_bytes,
            )?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.core.config().keys.plain(key))
                .arg(&bytes[..])
                .arg("NX");
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(crate::shared::ttl_millis(ttl));
            }
            let mut conn = shared.conn();
            let stored: Option<String> = shared.run("fill", cmd.query_async(&mut conn)).await?;
            if stored.is_none() {
                return Ok(false);
            }
            self.core.metrics().write(Layer::Redis);
            encoded_len = Some(bytes.len());
        }
        if let (Some(local), Some(ticket)) = (self.core.ram(), ticket) {
            let fill = Fill {
                expiry: Expiry::After(ttl),
                cap: self.core.config().ram_max_ttl,
                bytes: self.core.ram_weight(encoded_len, value),
                group: None,
                ram_only: encoded_len.is_none(),
            };
            let value = Arc::new(value.clone());
            if local.fill(ram_key.into_owned(), value, fill, Fence::Ticket(ticket)) {
                self.core.metrics().write(Layer::Ram);
            }
        }
        Ok(true)
    }

    /// Whether `key` holds a value in any layer this call uses, without
    /// reading the value from Redis.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub async fn has(&self, key: &str) -> Result<bool> {
        self.core.check_open()?;
        if self
            .core
            .ram()
            .is_some_and(|l| l.contains(&plain_ram_key(key)))
        {
            return Ok(true);
        }
        match self.core.redis("has")? {
            Some(shared) => shared.exists(&self.core.config().keys.plain(key)).await,
            None => Ok(false),
        }
    }

    /// Deletes `key` from Redis, then RAM. Returns whether it existed in at
    /// least one layer.
    ///
    /// # Errors
    /// [`Error::Redis`] / [`Error::Timeout`] when Redis fails; the RAM copy
    /// is dropped all the same.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        Ok(!self.delete_many(&[key]).await?.is_empty())
    }

    /// Deletes `keys` from Redis, then RAM. Returns the distinct keys that
    /// existed in at least one layer, in the order given.
    ///
    /// # Errors
    /// As [`delete`](Self::delete).
    pub async fn delete_many<'k>(&self, keys: &[&'k str]) -> Result<Vec<&'k str>> {
        self.core.check_open()?;
        let mut seen = HashSet::with_capacity(keys.len());
        let keys: Vec<&'k str> = keys.iter().copied().filter(|k| seen.insert(*k)).collect();
        let mut existed = vec![false; keys.len()];
        let redis_result = match self.core.redis("delete")? {
            Some(shared) if !keys.is_empty() => {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("UNLINK").arg(self.core.config().keys.plain(key));
                }
                self.core
                    .write_and_announce(shared, "delete", pipe, || {
                        Invalidation::Keys(
                            keys.iter().map(|k| plain_ram_key(k).into_owned()).collect(),
                        )
                    })
                    .await
                    .map(|results| {
                        for (e, r) in existed.iter_mut().zip(results) {
                            *e |= matches!(r, redis::Value::Int(n) if n > 0);
                        }
                    })
            }
            _ => Ok(()),
        };
        // RAM after Redis (module docs); also when Redis failed, so this
        // node at least stops serving the value; also through a Redis-only
        // handle, since this node's own bus message does not reach it.
        if let Some(local) = self.core.own_ram() {
            for (e, key) in existed.iter_mut().zip(&keys) {
                *e |= local.remove(&plain_ram_key(key));
            }
        }
        redis_result?;
        Ok(keys
            .into_iter()
            .zip(existed)
            .filter_map(|(k, e)| e.then_some(k))
            .collect())
    }

    /// Deletes every value of this namespace: in Redis with `SCAN` and
    /// batched `UNLINK` (never `KEYS` or `FLUSHDB`; other namespaces are not
    /// touched), then in RAM. Returns how many Redis keys were removed.
    /// The values' bookkeeping goes too (key sets, recorded arguments,
    /// refresh state, locks, versions); the bus and the build queue stay,
    /// and every function that has values gets a new clear generation, so
    /// that a computation begun before this call does not store its value
    /// after it (see [`CachedFn::delete_all`](crate::CachedFn::delete_all)).
    ///
    /// # Errors
    /// As [`delete`](Self::delete).
    pub async fn delete_all(&self) -> Result<u64> {
        self.core.check_open()?;
        let keys = &self.core.config().keys;
        let removed = match self.core.redis("clear_all")? {
            Some(shared) => {
                let removed = async {
                    // First, so that no computation begun before this call
                    // stores its value after it (see `keysets`).
                    crate::keysets::KeySets::new(keys)
                        .new_generations(shared)
                        .await?;
                    let mut n = 0;
                    for pattern in keys.clear_patterns() {
                        n += shared
                            .scan_unlink(&pattern, |k| keys.is_clearable(k))
                            .await?;
                    }
                    Ok::<_, Error>(n)
                }
                .await;
                // Announced even when the walk failed part-way: whatever it
                // deleted must leave every instance's RAM too.
                match self.core.bus() {
                    Some(bus) => match bus.publish(Invalidation::All).await {
                        Ok(()) => {
                            metrics::invalidation_published();
                            removed
                        }
                        Err(e) => Err(Error::Unannounced {
                            op: "clear_all",
                            source: Box::new(e),
                        }),
                    },
                    None => removed,
                }
            }
            None => Ok(0),
        };
        if let Some(local) = self.core.own_ram() {
            local.remove_all(FlushReason::InvalidateAll);
            metrics::ram_flush(FlushReason::InvalidateAll.label());
        }
        removed
    }

    /// Drops `key` from the RAM of every instance (this one at once, the
    /// others through the bus); the Redis value is left alone, so the next
    /// read on any instance refills from it. Returns once the invalidation
    /// is durable in Redis.
    ///
    /// # Errors
    /// [`Error::Redis`] / [`Error::Timeout`] when it cannot be published.
    pub async fn invalidate(&self, key: &str) -> Result<()> {
        self.invalidate_many(&[key]).await
    }

    /// Drops `keys` from the RAM of every instance (this one at once, the
    /// others through the bus); Redis values are left alone. Returns once the
    /// invalidation is durable in Redis.
    ///
    /// # Errors
    /// [`Error::Redis`] / [`Error::Timeout`] when it cannot be published.
    pub async fn invalidate_many(&self, keys: &[&str]) -> Result<()> {
        self.core.check_open()?;
        let ram_keys: Vec<_> = keys.iter().map(|k| plain_ram_key(k)).collect();
        let refs: Vec<&str> = ram_keys.iter().map(|k| k.as_ref()).collect();
        self.core.invalidate_ram_keys(&refs).await
    }

    /// Drops every value of cached function `funcname` from the RAM of every
    /// instance (this one at once, the others through the bus); its Redis
    /// values stay, so the next call on any instance reads them from there.
    /// Returns once durable in Redis.
    ///
    /// # Errors
    /// [`Error::Config`] for a name no function can have; else as
    /// [`invalidate_many`](Self::invalidate_many).
    pub async fn invalidate_function(&self, funcname: &str) -> Result<()> {
        crate::func::key::check_funcname(funcname)?;
        self.core.invalidate_function(funcname).await
    }

    /// Drops everything from the RAM of every instance. Returns once durable
    /// in Redis.
    ///
    /// # Errors
    /// As [`invalidate_many`](Self::invalidate_many).
    pub async fn invalidate_all(&self) -> Result<()> {
        self.core.check_open()?;
        if let Some(local) = self.core.local().as_deref() {
            local.remove_all(FlushReason::InvalidateAll);
            metrics::ram_flush(FlushReason::InvalidateAll.label());
        }
        self.core.announce(Invalidation::All).await
    }
}

fn millis(d: Duration) -> u64 {
    crate::shared::ttl_millis(d)
}
