//! The request scope: what a task is serving, for keys and for memos that
//! live as long as the request.
//!
//! * A **request scope** ([`with_request`], or the tower
//!   [`RequestScopeLayer`] for axum and other tower services) makes the
//!   request's path and query string available to keys
//!   ([`key_with_request_path`](crate::FuncBuilder::key_with_request_path))
//!   and holds the memo of [`RequestCached`](crate::RequestCached)
//!   functions (in `request_cached`), dropped with the request.
//!
//! A leaf among the features: function caching reads the request from
//! here, and nothing here knows functions. Narrower caches live beside it:
//! [`MemoryFn`](crate::MemoryFn) (RAM-only functions, in `memory_fn`) and
//! [`ThreadLocalFn`](crate::ThreadLocalFn) (per-thread memos, in
//! `thread_local`).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub(crate) type Shared = Arc<dyn Any + Send + Sync>;

/// The request a task is serving.
#[derive(Debug)]
pub struct RequestContext {
    path: String,
    query: String,
    pub(crate) started: Instant,
    /// The memo of [`RequestCached`](crate::RequestCached) functions.
    pub(crate) memo: Mutex<HashMap<String, Shared>>,
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
/// see its path and query string, and [`RequestCached`](crate::RequestCached) memoizes into it.
pub async fn with_request<F: Future>(request: RequestContext, fut: F) -> F::Output {
    REQUEST.scope(Arc::new(request), fut).await
}

/// The request the current task is serving, if any.
pub fn current() -> Option<Arc<RequestContext>> {
    REQUEST.try_with(Arc::clone).ok()
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
