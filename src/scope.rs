//! Caches with a narrower scope than the node: per request, per thread,
//! per owner value, and RAM-only function caches.
//!
//! * A **request scope** ([`with_request`], or the tower
//!   [`RequestScopeLayer`] for axum and other tower services) makes the
//!   request's path and query string available to keys
//!   ([`cache_key_with_request_path`](crate::FuncBuilder::cache_key_with_request_path))
//!   and holds the memo of [`RequestCached`] functions, dropped with the
//!   request.
//! * [`MemoryFn`]: a function cache in this process's RAM only, for values
//!   that need not be serde types (the seed's `memory_only_cache` and
//!   `no_serialization`). No Redis, and no bus messages.
//! * [`ThreadLocalFn`]: a per-thread memo (the seed's
//!   `thread_local_class_cache`).
//! * [`OwnerToken`]: entries that live as long as an owner value (the seed's
//!   `expire_when="object_is_destroyed"`).

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::func::key::{self, ArgsMode, KeyArgs};
use crate::local::{Expiry, Fence, Fill, LocalLayer};
use crate::node::CacheNode;
use crate::Result;

/// The longest a request memo serves values (the seed's 30 s).
pub const REQUEST_CACHE_MAX_AGE: Duration = Duration::from_secs(30);

/// Entries a thread-local memo holds before it starts over.
pub const THREAD_LOCAL_CAPACITY: usize = 10_000;

type Shared = Arc<dyn Any + Send + Sync>;

/// The request a task is serving.
#[derive(Debug)]
pub struct RequestContext {
    path: String,
    query: String,
    started: Instant,
    memo: Mutex<HashMap<String, Shared>>,
}

impl RequestContext {
    /// A request with this path and query string (without the `?`).
    pub fn new(path: impl Into<String>, query: impl Into<String>) -> Self {
        RequestContext {
            path: path.into(),
            query: query.into(),
            started: Instant::now(),
            memo: Mutex::new(HashMap::new()),
        }
    }

    /// The request path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string.
    pub fn query(&self) -> &str {
        &self.query
    }
}

tokio::task_local! {
    static REQUEST: Arc<RequestContext>;
}

/// Runs `fut` as the handling of `request`: cached functions called inside
/// see its path and query string, and [`RequestCached`] memoizes into it.
pub async fn with_request<F: Future>(request: RequestContext, fut: F) -> F::Output {
    REQUEST.scope(Arc::new(request), fut).await
}

/// The request the current task is serving, if any.
pub fn current() -> Option<Arc<RequestContext>> {
    REQUEST.try_with(Arc::clone).ok()
}

/// A function memoized per request (the seed's `request_cached`): RAM only,
/// `None` values included, for at most [`REQUEST_CACHE_MAX_AGE`], and only
/// inside a request scope; outside one, every call computes.
pub struct RequestCached<A: ?Sized, V> {
    name: Arc<str>,
    _types: PhantomData<fn(&A) -> V>,
}

impl<A: ?Sized, V> Clone for RequestCached<A, V> {
    fn clone(&self) -> Self {
        RequestCached {
            name: self.name.clone(),
            _types: PhantomData,
        }
    }
}

impl<A: KeyArgs + ?Sized, V: Clone + Send + Sync + 'static> RequestCached<A, V> {
    /// A request-scoped memo for function `name`.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid name.
    pub fn new(name: &str) -> Result<Self> {
        key::check_funcname(name)?;
        Ok(RequestCached {
            name: Arc::from(name),
            _types: PhantomData,
        })
    }

    /// The memoized value of the call, or `compute`'s.
    ///
    /// # Errors
    /// Only `compute`'s own errors (never memoized).
    pub async fn call<F, Fut, E>(&self, args: &A, compute: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let Some(ctx) = current().filter(|c| c.started.elapsed() < REQUEST_CACHE_MAX_AGE) else {
            return compute().await;
        };
        let Ok(encoded) = key::encode_args(args) else {
            return compute().await;
        };
        let k = format!(
            "{}:{}",
            self.name,
            key::suffix("", None, ArgsMode::Hashed, &encoded, &[])
        );
        let hit = ctx
            .memo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&k)
            .and_then(|v| v.clone().downcast::<V>().ok());
        if let Some(v) = hit {
            return Ok(V::clone(&v));
        }
        let v = compute().await?;
        ctx.memo
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k, Arc::new(v.clone()));
        Ok(v)
    }
}

/// A function cached in this process's RAM only: no Redis, no bus, values of
/// any `Clone` type (no serde needed). Made by [`CacheNode::memory_fn`].
pub struct MemoryFn<A: ?Sized, V> {
    node: CacheNode,
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

impl CacheNode {
    /// A RAM-only cached function named `name` whose values live `ttl`
    /// (`None`: until evicted). Values are weighed at `size_of::<V>()`; use
    /// [`MemoryFn::weigh_with`] for values that own heap memory.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid name.
    pub fn memory_fn<A: KeyArgs + ?Sized, V>(
        &self,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<MemoryFn<A, V>> {
        key::check_funcname(name)?;
        Ok(MemoryFn {
            node: self.ram_only(),
            name: Arc::from(name),
            ttl,
            ignore: Vec::new(),
            weigh: |_| std::mem::size_of::<V>(),
            _types: PhantomData,
        })
    }

    /// A token whose drop removes the RAM entries cached for it with
    /// [`MemoryFn::call_owned`].
    pub fn owner_token(&self) -> OwnerToken {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        OwnerToken {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            local: self
                .inner()
                .local
                .as_ref()
                .map_or_else(Weak::new, Arc::downgrade),
            keys: Mutex::new(Vec::new()),
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
    pub fn args_to_ignore<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.ignore.extend(names.into_iter().map(Into::into));
        self
    }

    fn ram_key(&self, owner: Option<u64>, args: &A) -> Result<String> {
        let encoded = key::encode_args(args)?;
        let prefix = owner.map(|o| format!("o{o}")).unwrap_or_default();
        Ok(format!(
            "{}{}",
            crate::keys::func_ram_prefix(&self.name),
            key::suffix(&prefix, None, ArgsMode::Hashed, &encoded, &self.ignore)
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
    pub fn clear_all(&self) {
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

/// A thread's memo: key -> (expiry, value).
type ThreadMemo = HashMap<String, (Option<Instant>, Box<dyn Any>)>;

thread_local! {
    static THREAD_MEMO: RefCell<ThreadMemo> = RefCell::new(HashMap::new());
}

/// A function memoized per thread (the seed's `thread_local_class_cache`):
/// synchronous, no serde, no sharing between threads.
#[derive(Debug, Clone)]
pub struct ThreadLocalFn<A: ?Sized, V> {
    name: Arc<str>,
    ttl: Option<Duration>,
    _types: PhantomData<fn(&A) -> V>,
}

impl<A: KeyArgs + ?Sized, V: Clone + 'static> ThreadLocalFn<A, V> {
    /// A per-thread memo for function `name`; values live `ttl` (`None`:
    /// for the thread's life, bounded by [`THREAD_LOCAL_CAPACITY`] entries).
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid name.
    pub fn new(name: &str, ttl: Option<Duration>) -> Result<Self> {
        key::check_funcname(name)?;
        Ok(ThreadLocalFn {
            name: Arc::from(name),
            ttl,
            _types: PhantomData,
        })
    }

    /// The memoized value, or `compute`'s.
    pub fn call(&self, args: &A, compute: impl FnOnce() -> V) -> V {
        let Ok(encoded) = key::encode_args(args) else {
            return compute();
        };
        let k = format!(
            "{}:{}",
            self.name,
            key::suffix("", None, ArgsMode::Hashed, &encoded, &[])
        );
        let hit = THREAD_MEMO.with(|m| {
            let m = m.borrow();
            let (expires, v) = m.get(&k)?;
            if expires.is_some_and(|e| e <= Instant::now()) {
                return None;
            }
            v.downcast_ref::<V>().cloned()
        });
        if let Some(v) = hit {
            return v;
        }
        let v = compute();
        // A TTL too long to be an instant (`Duration::MAX`) never expires.
        let expires = self.ttl.and_then(|t| Instant::now().checked_add(t));
        THREAD_MEMO.with(|m| {
            let mut m = m.borrow_mut();
            if m.len() >= THREAD_LOCAL_CAPACITY {
                m.clear();
            }
            m.insert(k, (expires, Box::new(v.clone())));
        });
        v
    }

    /// Forgets this function's values on the current thread.
    pub fn clear_thread(&self) {
        let prefix = format!("{}:", self.name);
        THREAD_MEMO.with(|m| m.borrow_mut().retain(|k, _| !k.starts_with(&prefix)));
    }
}

#[cfg(feature = "tower")]
pub use tower_support::{RequestScope, RequestScopeLayer};

#[cfg(feature = "tower")]
mod tower_support {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::{with_request, RequestContext};

    /// A tower layer that runs each HTTP request inside a request scope
    /// ([`with_request`]), for axum and other tower-based servers.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct RequestScopeLayer;

    impl<S> tower_layer::Layer<S> for RequestScopeLayer {
        type Service = RequestScope<S>;
        fn layer(&self, inner: S) -> RequestScope<S> {
            RequestScope { inner }
        }
    }

    /// The service made by [`RequestScopeLayer`].
    #[derive(Debug, Clone)]
    pub struct RequestScope<S> {
        inner: S,
    }

    impl<S, B> tower_service::Service<http::Request<B>> for RequestScope<S>
    where
        S: tower_service::Service<http::Request<B>>,
        S::Future: Send + 'static,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            let ctx = RequestContext::new(req.uri().path(), req.uri().query().unwrap_or(""));
            let fut = self.inner.call(req);
            Box::pin(with_request(ctx, fut))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_local_memo_computes_once_per_thread() {
        let f = ThreadLocalFn::<(u32,), u32>::new("tl", None).unwrap();
        let mut runs = 0;
        assert_eq!(
            f.call(&(1,), || {
                runs += 1;
                10
            }),
            10
        );
        assert_eq!(
            f.call(&(1,), || {
                runs += 1;
                11
            }),
            10
        );
        assert_eq!(runs, 1);
        let other = std::thread::spawn(move || f.call(&(1,), || 12))
            .join()
            .unwrap();
        assert_eq!(other, 12, "another thread has its own memo");
    }

    #[test]
    fn thread_local_memo_with_an_unbounded_ttl_does_not_panic() {
        let f = ThreadLocalFn::<(u32,), u32>::new("tl_max", Some(Duration::MAX)).unwrap();
        assert_eq!(f.call(&(1,), || 10), 10);
        assert_eq!(f.call(&(1,), || 11), 10, "memoized, never expiring");
    }

    #[tokio::test]
    async fn request_memo_lives_for_the_request_only() {
        let f = RequestCached::<(u32,), Option<u32>>::new("rc").unwrap();
        let runs = AtomicU64::new(0);
        let compute = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(None)
        };
        with_request(RequestContext::new("/a", ""), async {
            assert_eq!(f.call(&(1,), compute).await, Ok(None));
            assert_eq!(f.call(&(1,), compute).await, Ok(None), "None is memoized");
            assert_eq!(current().unwrap().path(), "/a");
        })
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        with_request(RequestContext::new("/a", ""), f.call(&(1,), compute))
            .await
            .unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2, "a new request starts empty");
        f.call(&(1,), compute).await.unwrap();
        f.call(&(1,), compute).await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 4, "outside a request: no memo");
        assert!(current().is_none());
    }

    #[cfg(feature = "tower")]
    #[tokio::test]
    async fn tower_layer_opens_a_request_scope() {
        use ::tower_layer::Layer;
        use ::tower_service::Service;
        use std::task::{Context, Poll};

        /// Answers with the path and query the scope saw.
        struct Echo;
        impl Service<http::Request<()>> for Echo {
            type Response = String;
            type Error = ();
            type Future = std::pin::Pin<Box<dyn Future<Output = Result<String, ()>> + Send>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: http::Request<()>) -> Self::Future {
                Box::pin(async {
                    let ctx = current().ok_or(())?;
                    Ok(format!("{}?{}", ctx.path(), ctx.query()))
                })
            }
        }

        let mut svc = RequestScopeLayer.layer(Echo);
        let req = http::Request::builder()
            .uri("http://h/users/7?lang=fr")
            .body(())
            .unwrap();
        assert_eq!(svc.call(req).await, Ok("/users/7?lang=fr".to_string()));
        assert!(current().is_none());
    }
}
