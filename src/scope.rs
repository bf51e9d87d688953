//! The request scope: what a task is serving, for keys and for memos that
//! live as long as the request.
//!
//! * A **request scope** ([`with_request`], or the tower
//!   [`RequestScopeLayer`] for axum and other tower services) makes the
//!   request's path and query string available to keys
//!   ([`cache_key_with_request_path`](crate::FuncBuilder::cache_key_with_request_path))
//!   and holds the memo of [`RequestCached`] functions, dropped with the
//!   request.
//!
//! Narrower caches live beside it: [`MemoryFn`](crate::MemoryFn) (RAM-only
//! functions, in `memory_fn`) and [`ThreadLocalFn`](crate::ThreadLocalFn)
//! (per-thread memos, in `thread_local`).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::func::key::{self, ArgsMode, KeyArgs};
use crate::Result;

/// The longest a request memo serves values (the seed's 30 s).
pub const REQUEST_CACHE_MAX_AGE: Duration = Duration::from_secs(30);

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
    /// [`Error::Config`](crate::Error::Config) for an invalid name.
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
    use std::sync::atomic::{AtomicU64, Ordering};

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
