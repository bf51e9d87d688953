//! What function handles register on their node: the build functions of
//! async-compute functions, by name (read by the builder task), and the
//! functions to refresh and warm up (read by the refresh task and
//! [`warm_up`](crate::CacheNode::warm_up)).
//!
//! Plain data below the core: the core holds one of each for the node's
//! life, so a registered function lives as long as any handle on the node,
//! and the rooms that fill and read them (`func`, its `jobs` and `refresh`)
//! depend on this module rather than on each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

/// Builds a value from encoded arguments; returns the sealed value for a
/// TTL in ms (0: never), or why it failed.
pub(crate) type JobFn = Arc<
    dyn Fn(Vec<u8>, u64) -> BoxFuture<'static, std::result::Result<Vec<u8>, String>> + Send + Sync,
>;

/// The build functions a node knows, by name.
#[derive(Default)]
pub(crate) struct JobRegistry {
    fns: Mutex<HashMap<String, JobFn>>,
}

impl JobRegistry {
    pub(crate) fn register(&self, name: &str, f: JobFn) {
        self.fns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), f);
    }

    pub(crate) fn get(&self, name: &str) -> Option<JobFn> {
        self.fns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

/// A function's build function and how its values are written.
#[derive(Clone)]
pub(crate) struct Rebuild {
    pub(crate) func: String,
    pub(crate) build: JobFn,
    pub(crate) ttl: Option<Duration>,
    /// The RAM key prefix `\0f{func}:` and the Redis one `{ns}:f:{func}:`.
    pub(crate) ram_prefix: String,
    pub(crate) redis_prefix: String,
}

/// What a node refreshes and warms up.
#[derive(Default)]
pub(crate) struct RefreshRegistry {
    refresh: Mutex<HashMap<String, (Duration, Rebuild)>>,
    warmups: Mutex<Vec<Warmup>>,
}

/// One function's warm-up: its calls' encoded arguments and keys.
pub(crate) struct Warmup {
    pub(crate) rebuild: Rebuild,
    pub(crate) calls: Vec<(String, Vec<u8>)>,
    pub(crate) timeout: Duration,
}

impl RefreshRegistry {
    pub(crate) fn add_refresh(&self, period: Duration, rebuild: Rebuild) {
        self.refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rebuild.func.clone(), (period, rebuild));
    }

    pub(crate) fn add_warmup(&self, warmup: Warmup) {
        self.warmups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(warmup);
    }

    /// Every function to refresh, with its period.
    pub(crate) fn due(&self) -> Vec<(Duration, Rebuild)> {
        self.refresh
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The warm-ups registered so far, taken (each runs once).
    pub(crate) fn take_warmups(&self) -> Vec<Warmup> {
        std::mem::take(&mut *self.warmups.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
