//! Per-thread memos: [`ThreadLocalFn`]: synchronous, no serde, nothing shared between
//! threads. It needs no node: a memo lives in the thread that computed it.

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::func::key::{self, ArgsInKey, KeyArgs};
use crate::Result;

/// Entries a thread-local memo holds before it starts over.
pub const THREAD_LOCAL_CAPACITY: usize = 10_000;

/// A thread's memo: key -> (expiry, value).
type ThreadMemo = HashMap<String, (Option<Instant>, Box<dyn Any>)>;

thread_local! {
    static THREAD_MEMO: RefCell<ThreadMemo> = RefCell::new(HashMap::new());
}

/// A function memoized per thread: synchronous, no serde, no sharing
/// between threads.
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
    /// [`Error::Config`](crate::Error::Config) for an invalid name.
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
            key::suffix("", None, ArgsInKey::Hashed, &encoded, &[])
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
}
