//! The #[cached] / #[cached_for] macros against a real redis-server.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cachenode::{cached, cached_for, CacheNode};
use serde::{Deserialize, Serialize};
use support::TestRedis;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[derive(Debug, PartialEq)]
struct AppError(&'static str);

/// Stands for a database handle: not serde, so it must be ignored.
struct Db {
    calls: AtomicUsize,
}

/// The functions without `node = ...` use the process-wide node, which can
/// be installed once and keeps its server's URL for the life of the test
/// binary. So one test owns that server and runs every scenario on the
/// global node in turn; its `TestRedis` is dropped (and the server killed)
/// when it ends, even on a panic. Every other test has its own server.
#[tokio::test]
async fn functions_on_the_global_node() {
    let redis = TestRedis::start();
    let node = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("macros")
        .build()
        .await
        .unwrap();
    node.install_global().unwrap();
    cached_for_caches_and_exposes_introspection(&redis).await;
    infallible_functions_and_ram_only_option(&redis).await;
    unless_and_none_values().await;
}

#[cached_for(minutes = 30, ignore = [db])]
async fn get_user(db: &Db, user_id: u64) -> Result<User, AppError> {
    db.calls.fetch_add(1, Ordering::SeqCst);
    if user_id == 0 {
        return Err(AppError("no user 0"));
    }
    Ok(User {
        id: user_id,
        name: format!("user-{user_id}"),
    })
}

async fn cached_for_caches_and_exposes_introspection(redis: &TestRedis) {
    let db = Db {
        calls: AtomicUsize::new(0),
    };
    let u = get_user(&db, 7).await.unwrap();
    assert_eq!(u.name, "user-7");
    assert_eq!(get_user(&db, 7).await.unwrap(), u);
    assert_eq!(db.calls.load(Ordering::SeqCst), 1, "second call is a hit");

    assert_eq!(get_user::expire_in(), Some(Duration::from_secs(1800)));
    let key = get_user::cache_key(&7).unwrap();
    assert!(key.starts_with("macros:f:macros.get_user:"), "{key}");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query(&mut redis.conn())
        .unwrap();
    assert!(pttl > 1_790_000 && pttl <= 1_800_000, "{pttl}");

    // The uncached body runs every time.
    get_user::uncached(&db, 7).await.unwrap();
    assert_eq!(db.calls.load(Ordering::SeqCst), 2);

    assert!(get_user::invalidate(&7).await.unwrap());
    get_user(&db, 7).await.unwrap();
    assert_eq!(
        db.calls.load(Ordering::SeqCst),
        3,
        "recomputed after invalidate"
    );

    // Errors are returned, never cached.
    assert_eq!(get_user(&db, 0).await, Err(AppError("no user 0")));
    assert_eq!(get_user(&db, 0).await, Err(AppError("no user 0")));
    assert_eq!(db.calls.load(Ordering::SeqCst), 5);

    assert!(get_user::invalidate_all().await.unwrap() >= 1);
    assert!(get_user::handle().unwrap().key_set_size().await.unwrap() == 0);
}

static SQUARES: AtomicUsize = AtomicUsize::new(0);

#[cached(expire_in = Duration::from_secs(60), local_ram_cache_only, name = "square")]
async fn square(x: u32) -> u32 {
    SQUARES.fetch_add(1, Ordering::SeqCst);
    x * x
}

async fn infallible_functions_and_ram_only_option(redis: &TestRedis) {
    assert_eq!(square(4).await, 16);
    assert_eq!(square(4).await, 16);
    assert_eq!(SQUARES.load(Ordering::SeqCst), 1);
    assert!(
        redis.keys("macros:f:square:*").is_empty(),
        "RAM only: nothing in Redis"
    );
}

static MAYBE: AtomicUsize = AtomicUsize::new(0);

#[cached(unless = |id: &u64| *id > 100)]
async fn maybe_user(id: u64) -> Option<u64> {
    MAYBE.fetch_add(1, Ordering::SeqCst);
    id.is_multiple_of(2).then_some(id)
}

async fn unless_and_none_values() {
    maybe_user(2).await;
    maybe_user(2).await;
    assert_eq!(MAYBE.load(Ordering::SeqCst), 1);
    // None is not cached by default.
    maybe_user(3).await;
    maybe_user(3).await;
    assert_eq!(MAYBE.load(Ordering::SeqCst), 3);
    // `unless` skips the cache.
    maybe_user(200).await;
    maybe_user(200).await;
    assert_eq!(MAYBE.load(Ordering::SeqCst), 5);
}

struct Repo {
    node: CacheNode,
    hits: AtomicUsize,
}

impl Repo {
    #[cached(ignore_self, node = self.node, name = "repo.lookup")]
    async fn lookup(&self, id: u64) -> Result<String, AppError> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        Ok(format!("row-{id}"))
    }
}

#[tokio::test]
async fn methods_with_an_explicit_node() {
    let redis = TestRedis::start();
    let node = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("repo")
        .build()
        .await
        .unwrap();
    let repo = Repo {
        node: node.clone(),
        hits: AtomicUsize::new(0),
    };
    assert_eq!(repo.lookup(1).await.unwrap(), "row-1");
    assert_eq!(repo.lookup(1).await.unwrap(), "row-1");
    assert_eq!(repo.hits.load(Ordering::SeqCst), 1);
    assert_eq!(repo.lookup_uncached(1).await.unwrap(), "row-1");
    assert_eq!(repo.hits.load(Ordering::SeqCst), 2);
    assert_eq!(redis.keys("repo:f:repo.lookup:*").len(), 1);
}
