//! Functions memoized per request: [`RequestCached`], so that one request
//! computes a value once however often it asks. The memo lives in the request scope (see `scope`) and
//! is dropped with the request; outside a scope every call computes.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::func::key::{self, ArgsInKey, KeyArgs};
use crate::scope::current;
use crate::Result;

/// The longest a request memo serves a value, 30 s: a request that runs
/// longer computes it again.
pub const REQUEST_CACHE_MAX_AGE: Duration = Duration::from_secs(30);

/// A function memoized per request: RAM only,
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
            key::suffix("", None, ArgsInKey::Hashed, &encoded, &[])
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{with_request, RequestContext};
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
}
