//! One instance: an axum service with a cached endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use cachenode::{CacheNode, CachedFn};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

/// How long the "database" takes to answer.
const DB_DELAY: Duration = Duration::from_millis(30);

/// The bound the demo's nodes promise, past one round trip.
pub const DELETION_CHECK_FREQUENCY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
}

struct App {
    node: CacheNode,
    get_user: CachedFn<(u64,), User>,
    db: redis::aio::MultiplexedConnection,
    prometheus: PrometheusHandle,
    requests: AtomicU64,
    computed: Arc<AtomicU64>,
}

/// What `/stats` answers.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub requests: u64,
    pub ram_hits: u64,
    pub redis_hits: u64,
    pub computed: u64,
    pub invalidations_applied: u64,
    pub propagation_p99_ms: f64,
    pub bus_connected: bool,
    pub ram_bytes: u64,
    pub ram_entries: u64,
    /// The budget the instance's RAM layer really has (not what was asked).
    pub ram_capacity_bytes: u64,
}

pub async fn run(args: &[String]) -> i32 {
    let port: u16 = crate::flag(args, "--port", 8081);
    let url: String = crate::flag(args, "--redis-url", String::new());
    let ram_mb: u64 = crate::flag(args, "--ram-mb", 64);
    let prometheus = match PrometheusBuilder::new()
        .set_buckets(cachenode::metrics::SECONDS_BUCKETS)
        .and_then(|b| b.install_recorder())
    {
        Ok(h) => h,
        Err(e) => {
            eprintln!("instance {port}: cannot install metrics recorder: {e}");
            return 1;
        }
    };
    let node = match CacheNode::builder()
        .redis_url(&url)
        .namespace("demo")
        .ram_capacity_bytes(ram_mb << 20)
        .deletion_check_period(DELETION_CHECK_FREQUENCY)
        .build()
        .await
    {
        Ok(n) => n,
        Err(e) => {
            eprintln!("instance {port}: {e}");
            return 1;
        }
    };
    let get_user = node
        .func::<(u64,), User>("demo.get_user")
        .ttl(Duration::from_secs(300))
        .build()
        .expect("valid function");
    let db = match redis::Client::open(url.as_str()) {
        Ok(c) => match c.get_multiplexed_async_connection().await {
            Ok(db) => db,
            Err(e) => {
                eprintln!("instance {port}: database: {e}");
                return 1;
            }
        },
        Err(e) => {
            eprintln!("instance {port}: database: {e}");
            return 1;
        }
    };
    let app = Arc::new(App {
        node,
        get_user,
        db,
        prometheus,
        requests: AtomicU64::new(0),
        computed: Arc::new(AtomicU64::new(0)),
    });
    let router = Router::new()
        .route("/users/{id}", get(read_user).put(rename_user))
        .route("/metrics", get(metrics))
        .route("/stats", get(stats))
        .with_state(app.clone());
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("instance {port}: cannot listen: {e}");
            return 1;
        }
    };
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    app.node.shutdown().await;
    i32::from(served.is_err())
}

/// The slow database read.
async fn load_user(mut db: redis::aio::MultiplexedConnection, id: u64) -> Result<User, String> {
    tokio::time::sleep(DB_DELAY).await;
    let name: Option<String> = redis::cmd("GET")
        .arg(format!("demo-db:user:{id}"))
        .query_async(&mut db)
        .await
        .map_err(|e| e.to_string())?;
    Ok(User {
        id,
        name: name.unwrap_or_else(|| format!("user-{id}")),
    })
}

async fn read_user(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
) -> Result<Json<User>, (StatusCode, String)> {
    app.requests.fetch_add(1, Ordering::Relaxed);
    let db = app.db.clone();
    let computed = app.computed.clone();
    app.get_user
        .call(&(id,), || async move {
            computed.fetch_add(1, Ordering::Relaxed);
            load_user(db, id).await
        })
        .await
        .map(Json)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))
}

#[derive(Deserialize)]
struct Rename {
    name: String,
}

/// Writes the database, then deletes the cached value everywhere: Redis,
/// and through the bus, the RAM of every instance.
async fn rename_user(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
    Query(q): Query<Rename>,
) -> Result<StatusCode, (StatusCode, String)> {
    let mut db = app.db.clone();
    let err = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e);
    let () = redis::cmd("SET")
        .arg(format!("demo-db:user:{id}"))
        .arg(&q.name)
        .query_async(&mut db)
        .await
        .map_err(|e| err(e.to_string()))?;
    app.get_user
        .delete(&(id,))
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn metrics(State(app): State<Arc<App>>) -> String {
    app.prometheus.render()
}

async fn stats(State(app): State<Arc<App>>) -> Json<Stats> {
    let text = app.prometheus.render();
    let f = r#"function="demo.get_user""#;
    let node_stats = app.node.stats();
    Json(Stats {
        requests: app.requests.load(Ordering::Relaxed),
        ram_hits: sum(
            &text,
            "cachenode_function_hits_total",
            &[f, r#"layer="ram""#],
        ) as u64,
        redis_hits: sum(
            &text,
            "cachenode_function_hits_total",
            &[f, r#"layer="redis""#],
        ) as u64,
        computed: app.computed.load(Ordering::Relaxed),
        invalidations_applied: sum(&text, "cachenode_invalidations_applied_total", &[]) as u64,
        propagation_p99_ms: quantile(&text, "cachenode_bus_propagation_seconds", 0.99) * 1e3,
        bus_connected: app.node.bus_health().is_some_and(|h| h.connected),
        ram_bytes: node_stats.ram_bytes,
        ram_entries: node_stats.ram_entries,
        ram_capacity_bytes: node_stats.ram_capacity_bytes,
    })
}

/// Sum of the samples of `name` whose labels contain every one of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `q` quantile of histogram `name`, as the upper bound of the bucket
/// it falls in (0 when empty).
fn quantile(text: &str, name: &str, q: f64) -> f64 {
    let bucket = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&bucket))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return 0.0;
    }
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map_or(0.0, |(le, _)| if le.is_finite() { *le } else { 0.0 })
}
