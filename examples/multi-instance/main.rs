//! Several cachenode instances staying coherent, on one machine.
//!
//! ```text
//! cargo run --example multi-instance                       # 3 instances, 20 s
//! cargo run --example multi-instance -- --instances 5 --duration 60 --rate 500
//! ```
//!
//! The driver (this process) starts N instances as separate processes. Each
//! is a small HTTP service (axum) with a cached endpoint, `GET /users/{id}`,
//! backed by a slow "database" (values in Redis outside the cache, read with
//! a 30 ms delay), `PUT /users/{id}?name=...` to change a user (database
//! write + invalidation through the bus), `/metrics` for Prometheus and
//! `/stats` for the driver. The driver sends load to random instances,
//! changes a user through instance 1 every few seconds and checks that every
//! instance serves the new name, shows a live view, and ends with a summary.
//!
//! Redis: `REDIS_URL` when set; otherwise the demo starts its own
//! `redis-server` on a free port. Ctrl-C stops every process.

mod driver;
mod http;
mod instance;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = if args.iter().any(|a| a == "--instance") {
        runtime.block_on(instance::run(&args))
    } else {
        runtime.block_on(driver::run(&args))
    };
    std::process::exit(code);
}

/// The value of `--name` in `args`, parsed, or `default`.
pub fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
