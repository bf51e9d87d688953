//! The #[cached] / #[cached_for] macros against a real redis-server.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// An error type that is serde, as an application's error often is: a
/// macro that took `AppResult<u64>` for a plain value type would then cache
/// the error (it compiles).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DbError(String);

type AppResult<T> = Result<T, DbError>;

/// A source that fails while `down` is set, counting its calls.
struct Source {
    node: CacheNode,
    calls: AtomicUsize,
    down: AtomicBool,
}

impl Source {
    fn answer(&self, id: u64) -> Result<u64, DbError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            Err(DbError("db down".into()))
        } else {
            Ok(id * 10)
        }
    }

    #[cached_for(minutes = 10, ignore_self, node = self.node, name = "source.alias")]
    async fn through_alias(&self, id: u64) -> AppResult<u64> {
        self.answer(id)
    }

    #[cached_for(minutes = 10, ignore_self, node = self.node, name = "source.path")]
    async fn through_path(&self, id: u64) -> std::result::Result<u64, DbError> {
        self.answer(id)
    }

    #[cached_for(minutes = 10, ignore_self, node = self.node, name = "source.io")]
    async fn through_io(&self, id: u64) -> std::io::Result<u64> {
        self.answer(id).map_err(|e| std::io::Error::other(e.0))
    }

    #[cached_for(minutes = 10, ignore_self, node = self.node, name = "source.plain")]
    async fn plain(&self, id: u64) -> u64 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        id * 10
    }
}

async fn source(redis: &TestRedis) -> Source {
    let node = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("src")
        .build()
        .await
        .unwrap();
    Source {
        node,
        calls: AtomicUsize::new(0),
        down: AtomicBool::new(true),
    }
}

/// Three failing calls run the function three times and store nothing;
/// once it succeeds, its value is cached (one more run, then hits).
async fn errors_are_never_cached<F, Fut, E>(redis: &TestRedis, s: &Source, name: &str, call: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64, E>>,
    E: std::fmt::Display,
{
    for _ in 0..3 {
        let e = call().await.expect_err("the source is down");
        assert_eq!(e.to_string(), "db down", "{name}");
    }
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        3,
        "{name}: errors are not cached"
    );
    assert!(
        redis.keys(&format!("src:f:{name}:*")).is_empty(),
        "{name}: no error in Redis"
    );
    s.down.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(call().await.ok(), Some(70), "{name}");
    }
    assert_eq!(
        s.calls.load(Ordering::SeqCst),
        4,
        "{name}: the value is cached"
    );
    assert_eq!(redis.keys(&format!("src:f:{name}:*")).len(), 1, "{name}");
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[tokio::test]
async fn a_result_behind_a_type_alias_caches_only_its_values() {
    let redis = TestRedis::start();
    let s = source(&redis).await;
    errors_are_never_cached(&redis, &s, "source.alias", || s.through_alias(7)).await;
}

#[tokio::test]
async fn a_result_spelled_as_a_path_caches_only_its_values() {
    let redis = TestRedis::start();
    let s = source(&redis).await;
    errors_are_never_cached(&redis, &s, "source.path", || s.through_path(7)).await;
}

#[tokio::test]
async fn an_io_result_caches_only_its_values() {
    let redis = TestRedis::start();
    let s = source(&redis).await;
    errors_are_never_cached(&redis, &s, "source.io", || s.through_io(7)).await;
}

#[tokio::test]
async fn a_plain_value_type_is_cached_as_it_is() {
    let redis = TestRedis::start();
    let s = source(&redis).await;
    for _ in 0..3 {
        assert_eq!(s.plain(7).await, 70);
    }
    assert_eq!(s.calls.load(Ordering::SeqCst), 1);
    assert_eq!(redis.keys("src:f:source.plain:*").len(), 1);
}

/// An `anyhow::Result`-like alias: its error is no serde type at all.
type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A value type that only looks like a `Result` by its name.
mod lookalike {
    /// Not `core::result::Result`: a plain value, cached whole.
    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Result<T>(pub T);
}

struct Other {
    node: CacheNode,
    calls: AtomicUsize,
    down: AtomicBool,
}

impl Other {
    #[cached_for(minutes = 10, ignore_self, node = self.node, name = "other.boxed")]
    async fn boxed(&self, id: u64) -> BoxResult<u64> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            Err("db down".into())
        } else {
            Ok(id * 10)
        }
    }

    #[cached_for(minutes = 10, ignore_self, node = self.node, name = "other.lookalike")]
    async fn lookalike(&self, id: u64) -> lookalike::Result<u64> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        lookalike::Result(id * 10)
    }
}

async fn other(redis: &TestRedis) -> Other {
    let node = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("src")
        .build()
        .await
        .unwrap();
    Other {
        node,
        calls: AtomicUsize::new(0),
        down: AtomicBool::new(true),
    }
}

#[tokio::test]
async fn a_result_alias_with_a_non_serde_error_caches_only_its_values() {
    let redis = TestRedis::start();
    let o = other(&redis).await;
    for _ in 0..3 {
        let e = o.boxed(7).await.expect_err("the source is down");
        assert_eq!(e.to_string(), "db down");
    }
    assert_eq!(o.calls.load(Ordering::SeqCst), 3, "errors are not cached");
    assert!(redis.keys("src:f:other.boxed:*").is_empty());
    o.down.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(o.boxed(7).await.ok(), Some(70));
    }
    assert_eq!(o.calls.load(Ordering::SeqCst), 4, "the value is cached");
}

#[tokio::test]
async fn a_type_named_result_that_is_not_one_is_a_plain_value() {
    let redis = TestRedis::start();
    let o = other(&redis).await;
    for _ in 0..3 {
        assert_eq!(o.lookalike(7).await, lookalike::Result(70));
    }
    assert_eq!(o.calls.load(Ordering::SeqCst), 1);
    assert_eq!(redis.keys("src:f:other.lookalike:*").len(), 1);
}
