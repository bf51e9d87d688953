//! RAM-only function caches: [`MemoryFn`], a function cached in this
//! process's RAM alone, for values that need not be serde types (nothing
//! is encoded), with no Redis and no bus messages; and [`OwnerToken`],
//! entries that live as long as an owner value (they are dropped when the
//! token is).
//!
//! Both live in the node's RAM layer (so its byte budget and invalidations
//! apply), which they reach through the [core](crate::core).

use crate::Layers;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::core::Core;
use crate::func::key::{self, ArgsInKey, KeyArgs};
use crate::local::{Expiry, Fence, Fill, LocalLayer};
use crate::Result;

/// A function cached in this process's RAM only: no Redis, no bus, values of
/// any `Clone` type (no serde needed). Made by [`CacheNode::memory_fn`](crate::CacheNode::memory_fn).
pub struct MemoryFn<A: ?Sized, V> {
    node: Core,
    name: Arc<str>,
    ttl: Option<Duration>,
    ignore: Vec<String>,
    weigh: fn(&V) -> usize,
    _types: PhantomData<fn(&A) -> V>,
}

impl<A: ?Sized, V> Clone for MemoryFn<A, V> {
    fn clone(&self) -> Self {
        MemoryFn {
            node: self.node.clone(),
            name: self.name.clone(),
            ttl: self.ttl,
            ignore: self.ignore.clone(),
            weigh: self.weigh,
            _types: PhantomData,
        }
    }
}

impl<A: KeyArgs + ?Sized, V: Clone + Send + Sync + 'static> MemoryFn<A, V> {
    /// Weighs values with `weigh` (bytes) against the RAM budget.
    pub fn weigh_with(mut self, weigh: fn(&V) -> usize) -> Self {
        self.weigh = weigh;
        self
    }

    /// Leaves these arguments out of the key.
    pub fn ignore_args<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.ignore.extend(names.into_iter().map(Into::into));
        self
    }

    fn ram_key(&self, owner: Option<u64>, args: &A) -> Result<String> {
        let encoded = key::encode_args(args)?;
        let prefix = owner.map(|o| format!("o{o}")).unwrap_or_default();
        Ok(format!(
            "{}{}",
            crate::keys::func_ram_prefix(&self.name),
            key::suffix(&prefix, None, ArgsInKey::Hashed, &encoded, &self.ignore)
        ))
    }

    /// The cached value of the call, or `compute`'s (stored unless it is an
    /// error).
    ///
    /// # Errors
    /// Only `compute`'s own errors.
    pub async fn call<F, Fut, E>(&self, args: &A, compute: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.call_inner(None, args, compute).await
    }

    /// Like [`call`](Self::call), for an entry that lives until `owner` is
    /// dropped (or its TTL passes).
    ///
    /// # Errors
    /// Only `compute`'s own errors.
    pub async fn call_owned<F, Fut, E>(
        &self,
        owner: &OwnerToken,
        args: &A,
        compute: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        self.call_inner(Some(owner), args, compute).await
    }

    async fn call_inner<F, Fut, E>(
        &self,
        owner: Option<&OwnerToken>,
        args: &A,
        compute: F,
    ) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let (Some(local), Ok(k)) = (self.node.ram(), self.ram_key(owner.map(|o| o.id), args))
        else {
            return compute().await;
        };
        if let Some(v) = local.get_typed::<V>(&k) {
            return Ok(V::clone(&v));
        }
        let ticket = local.ticket();
        let v = compute().await?;
        let fill = Fill {
            expiry: Expiry::After(self.ttl),
            cap: None,
            bytes: (self.weigh)(&v),
            group: Some(local.group(&self.name)),
            ram_only: true,
        };
        if local.fill(k.clone(), Arc::new(v.clone()), fill, Fence::Ticket(ticket)) {
            if let Some(o) = owner {
                o.keys.lock().unwrap_or_else(|p| p.into_inner()).push(k);
            }
        }
        Ok(v)
    }

    /// Drops every value of this function from this process's RAM.
    pub fn clear(&self) {
        if let Some(local) = self.node.ram() {
            local.remove_group(&self.name);
        }
    }
}

/// Ties RAM entries to the life of an owner value: embed it in the owner;
/// when it drops, the entries cached for it go too.
#[derive(Debug)]
pub struct OwnerToken {
    id: u64,
    local: Weak<LocalLayer>,
    keys: Mutex<Vec<String>>,
}

impl Drop for OwnerToken {
    fn drop(&mut self) {
        if let Some(local) = self.local.upgrade() {
            for key in self
                .keys
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .drain(..)
            {
                local.remove(&key);
            }
        }
    }
}

/// See [`CacheNode::memory_fn`](crate::CacheNode::memory_fn).
pub(crate) fn memory_fn<A: KeyArgs + ?Sized, V>(
    core: &Core,
    name: &str,
    ttl: Option<Duration>,
) -> Result<MemoryFn<A, V>> {
    key::check_funcname(name)?;
    Ok(MemoryFn {
        node: core.with_layers(Layers::Ram),
        name: Arc::from(name),
        ttl,
        ignore: Vec::new(),
        weigh: |_| std::mem::size_of::<V>(),
        _types: PhantomData,
    })
}

/// See [`CacheNode::owner_token`](crate::CacheNode::owner_token).
pub(crate) fn owner_token(core: &Core) -> OwnerToken {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    OwnerToken {
        id: NEXT.fetch_add(1, Ordering::Relaxed),
        local: core.local().as_ref().map_or_else(Weak::new, Arc::downgrade),
        keys: Mutex::new(Vec::new()),
    }
}
