//! The #[cached] / #[cached_for] macros against a real redis-server.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use cachenode::{cached, cached_for, Args, CacheNode, Ttl};
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

    assert_eq!(get_user::ttl(), Ttl::After(Duration::from_secs(1800)));
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

    // invalidate drops RAM only: Redis keeps the value, the next call
    // reads it from there without computing.
    get_user::invalidate(&7).await.unwrap();
    assert!(redis.exists(&key), "invalidate keeps the Redis value");
    get_user(&db, 7).await.unwrap();
    assert_eq!(db.calls.load(Ordering::SeqCst), 2, "served from Redis");

    assert!(get_user::delete(&7).await.unwrap());
    assert!(!redis.exists(&key), "delete removes the Redis value");
    get_user(&db, 7).await.unwrap();
    assert_eq!(
        db.calls.load(Ordering::SeqCst),
        3,
        "recomputed after delete"
    );

    // Errors are returned, never cached.
    assert_eq!(get_user(&db, 0).await, Err(AppError("no user 0")));
    assert_eq!(get_user(&db, 0).await, Err(AppError("no user 0")));
    assert_eq!(db.calls.load(Ordering::SeqCst), 5);

    assert!(get_user::delete_all().await.unwrap() >= 1);
    assert!(get_user::handle().unwrap().key_set_size().await.unwrap() == 0);
}

static SQUARES: AtomicUsize = AtomicUsize::new(0);

#[cached(ttl = Duration::from_secs(60), layers = Ram, name = "square")]
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

/// A value keyed by its receiver: the key holds `self` (a tenant), and the
/// node comes from a static (not from `self`).
static TENANT_NODE: std::sync::OnceLock<CacheNode> = std::sync::OnceLock::new();
static QUOTA_CALLS: AtomicUsize = AtomicUsize::new(0);

#[derive(Serialize)]
struct Tenant {
    id: u64,
}

impl Tenant {
    #[cached(node = TENANT_NODE.get().expect("set by the test"), name = "tenant.quota")]
    async fn quota(&self, plan: String) -> u64 {
        QUOTA_CALLS.fetch_add(1, Ordering::SeqCst);
        self.id * 100 + plan.len() as u64
    }
}

/// A method's value is invalidated through the functions generated beside
/// it (`quota_delete`, ...): a method has no module of its own.
#[tokio::test]
async fn a_method_keyed_by_self_is_invalidated_per_receiver() {
    let redis = TestRedis::start();
    let node = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("tenant")
        .build()
        .await
        .unwrap();
    assert!(TENANT_NODE.set(node).is_ok(), "one test owns TENANT_NODE");
    let (a, b) = (Tenant { id: 1 }, Tenant { id: 2 });
    let pro = "pro".to_string();
    assert_eq!(a.quota(pro.clone()).await, 103);
    assert_eq!(b.quota(pro.clone()).await, 203);
    assert_eq!(a.quota(pro.clone()).await, 103);
    assert_eq!(
        QUOTA_CALLS.load(Ordering::SeqCst),
        2,
        "one computation per tenant"
    );

    let (key_a, key_b) = (
        a.quota_cache_key(&pro).unwrap(),
        b.quota_cache_key(&pro).unwrap(),
    );
    assert_ne!(key_a, key_b, "self is part of the key");
    let mut stored = redis.keys("tenant:f:tenant.quota:*");
    stored.sort();
    let mut expected = vec![key_a.clone(), key_b.clone()];
    expected.sort();
    assert_eq!(stored, expected);
    assert_eq!(Tenant::quota_ttl(), Ttl::Default);
    assert_eq!(a.quota_handle().unwrap().name(), "tenant.quota");

    assert!(a.quota_delete(&pro).await.unwrap(), "a's value existed");
    assert!(!a.quota_delete(&pro).await.unwrap(), "and is gone");
    assert_eq!(redis.keys("tenant:f:tenant.quota:*"), vec![key_b]);
    assert_eq!(a.quota(pro.clone()).await, 103);
    assert_eq!(b.quota(pro.clone()).await, 203);
    assert_eq!(
        QUOTA_CALLS.load(Ordering::SeqCst),
        3,
        "only a's was recomputed"
    );

    assert_eq!(b.quota_delete_all().await.unwrap(), 2);
    assert!(redis.keys("tenant:f:tenant.quota:*").is_empty());
}

/// `ignore_self` with `node = self.node`: the receiver gives the node, not
/// the key.
struct Ledger {
    node: CacheNode,
    calls: AtomicUsize,
}

impl Ledger {
    #[cached_for(minutes = 5, ignore_self, node = self.node, name = "ledger.balance")]
    async fn balance(&self, account: u64) -> Result<i64, AppError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(-(account as i64))
    }
}

#[tokio::test]
async fn a_method_with_an_explicit_node_is_invalidated_through_its_receiver() {
    let redis = TestRedis::start();
    let node = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("ledger")
        .build()
        .await
        .unwrap();
    let ledger = Ledger {
        node,
        calls: AtomicUsize::new(0),
    };
    assert_eq!(ledger.balance(4).await, Ok(-4));
    assert_eq!(ledger.balance(4).await, Ok(-4));
    assert_eq!(ledger.balance(5).await, Ok(-5));
    assert_eq!(ledger.calls.load(Ordering::SeqCst), 2);
    assert_eq!(Ledger::balance_ttl(), Ttl::After(Duration::from_secs(300)));
    let key = ledger.balance_cache_key(&4).unwrap();
    assert!(key.starts_with("ledger:f:ledger.balance:"), "{key}");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query(&mut redis.conn())
        .unwrap();
    assert!(pttl > 290_000 && pttl <= 300_000, "{pttl}");

    assert!(ledger.balance_delete(&4).await.unwrap());
    assert_eq!(
        redis.keys("ledger:f:ledger.balance:*").len(),
        1,
        "5's value stays"
    );
    assert_eq!(ledger.balance(4).await, Ok(-4));
    assert_eq!(ledger.calls.load(Ordering::SeqCst), 3, "4 recomputed");
    assert_eq!(ledger.balance_delete_all().await.unwrap(), 2);
    assert!(redis.keys("ledger:f:ledger.balance:*").is_empty());
    // The uncached body runs every time.
    assert_eq!(ledger.balance_uncached(4).await, Ok(-4));
    assert_eq!(ledger.calls.load(Ordering::SeqCst), 4);
}

/// A full-args method, for partial deletes by its parameter names.
struct Profiles {
    node: CacheNode,
}

impl Profiles {
    #[cached(key_args = Each, ignore_self, ignore = [verbose], node = self.node, name = "profiles.get")]
    async fn get(&self, user_id: u64, lang: &str, verbose: bool) -> String {
        let _ = verbose;
        format!("{lang}-{user_id}")
    }
}

/// A partial delete names the function's parameters; a filter no key can
/// match (an unknown or ignored name, a value of another type) is refused
/// with the parameter's name and type, and deletes nothing.
#[tokio::test]
async fn delete_some_on_a_macro_function_checks_the_filter_against_its_parameters() {
    let redis = TestRedis::start();
    let node = CacheNode::builder()
        .redis_url(redis.url())
        .namespace("profiles")
        .build()
        .await
        .unwrap();
    let p = Profiles { node };
    for user_id in 0..3u64 {
        for lang in ["fr", "en"] {
            assert_eq!(
                p.get(user_id, lang, false).await,
                format!("{lang}-{user_id}")
            );
        }
    }
    let stored = || redis.keys("profiles:f:profiles.get:*").len();
    assert_eq!(stored(), 6);
    let h = p.get_handle().unwrap();
    let refused = |filter: Args| match h.delete_some(&filter) {
        Err(cachenode::Error::Config(text)) => text,
        other => panic!("not refused: {other:?}"),
    };
    assert_eq!(
        refused(Args::new().arg("user", &1u64).unwrap()),
        r#"delete_some on "profiles.get": no argument "user" (its keys hold user_id, lang)"#
    );
    assert_eq!(
        refused(Args::new().arg("user_id", &1i32).unwrap()),
        r#"delete_some on "profiles.get": argument "user_id" is u64, the filter gives i32"#
    );
    assert_eq!(
        refused(Args::new().arg("lang", &7u8).unwrap()),
        r#"delete_some on "profiles.get": argument "lang" is &str, the filter gives u8"#
    );
    for ignored in ["verbose", "self"] {
        assert_eq!(
            refused(Args::new().arg(ignored, &true).unwrap()),
            format!(
                r#"delete_some on "profiles.get": argument "{ignored}" is ignored, so no key holds it"#
            )
        );
    }
    assert_eq!(stored(), 6, "nothing deleted");

    let fr = Args::new().arg("lang", &"fr".to_string()).unwrap();
    assert_eq!(h.delete_some(&fr).unwrap().run(|_| {}).await.unwrap(), 3);
    let en_1 = Args::new()
        .arg("user_id", &1u64)
        .unwrap()
        .arg("lang", "en")
        .unwrap();
    assert_eq!(h.delete_some(&en_1).unwrap().run(|_| {}).await.unwrap(), 1);
    assert_eq!(stored(), 2);
}

/// A function whose argument type names a lifetime of its own (the
/// generated items, the declared argument types among them, take it too).
#[cached(key_args = Each)]
async fn greeting<'a>(name: &'a str) -> String {
    format!("hello {name}")
}

/// Whether `F` can be awaited in an axum handler or given to `tokio::spawn`.
fn assert_send<F: std::future::Future + Send>(f: F) -> F {
    f
}

/// Every future the macros generate is `Send`: the cached function itself,
/// its uncached body, `invalidate`, `invalidate_all`, and those generated
/// for methods. (A future holding a `&dyn KeyArgs` across an await is not:
/// this fails to compile.) Checked by the compiler; the futures are built,
/// never polled.
fn generated_futures_are_send(db: &Db, repo: &Repo, tenant: &Tenant, ledger: &Ledger) {
    drop(assert_send(get_user(db, 7)));
    drop(assert_send(get_user::uncached(db, 7)));
    drop(assert_send(get_user::delete(&7)));
    drop(assert_send(get_user::delete_all()));
    drop(assert_send(get_user::invalidate(&7)));
    drop(assert_send(get_user::invalidate_all()));
    drop(assert_send(square(4)));
    drop(assert_send(square::delete(&4)));
    drop(assert_send(maybe_user(2)));
    drop(assert_send(maybe_user::delete(&2)));
    drop(assert_send(repo.lookup(1)));
    drop(assert_send(repo.lookup_delete(&1)));
    drop(assert_send(repo.lookup_delete_all()));
    drop(assert_send(repo.lookup_invalidate(&1)));
    drop(assert_send(repo.lookup_invalidate_all()));
    drop(assert_send(tenant.quota("pro".into())));
    drop(assert_send(tenant.quota_delete(&"pro".into())));
    drop(assert_send(tenant.quota_delete_all()));
    drop(assert_send(ledger.balance(1)));
    drop(assert_send(ledger.balance_uncached(1)));
    drop(assert_send(ledger.balance_delete(&1)));
    drop(assert_send(greeting("ada")));
    drop(assert_send(greeting::delete(&"ada")));
    drop(assert_send(greeting::invalidate(&"ada")));
}

/// The README's use: invalidating from an axum handler (whose future
/// must be `Send`) and from a spawned task.
fn invalidation_in_an_axum_handler_and_a_spawned_task() {
    async fn rename_user(axum::extract::Path(id): axum::extract::Path<u64>) -> &'static str {
        match get_user::delete(&id).await {
            Ok(_) => "renamed",
            Err(_) => "cache unavailable",
        }
    }
    let _router: axum::Router =
        axum::Router::new().route("/users/{id}", axum::routing::post(rename_user));
    drop(tokio::spawn(get_user::delete(&7)));
    drop(tokio::spawn(get_user::delete_all()));
}

#[test]
fn generated_futures_are_send_is_compiled() {
    // The checks above are done by the compiler; naming them keeps them
    // from being dead code a refactor could drop unnoticed.
    let _ = generated_futures_are_send as fn(&Db, &Repo, &Tenant, &Ledger);
    let _ = invalidation_in_an_axum_handler_and_a_spawned_task as fn();
}
