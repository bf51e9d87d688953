//! Invalidation propagation delay: publish on one node, applied on every
//! other, beside a bare `PUBLISH` → receive round trip, in one run on one
//! redis-server.
//!
//! For 1, 4 and 8 receiving nodes, at 1k and 10k invalidations per second
//! for `--seconds` (default 2), it reports p50 / p99 / max delay and checks
//! that every invalidation was applied on every node (no loss). Delays come
//! from the bus's own propagation histogram (publish timestamp → applied,
//! µs resolution), captured by a small `metrics` recorder.
//!
//! Run: `cargo bench --bench propagation` (`-- --quick` for a smoke run).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cachenode::CacheNode;
use futures::StreamExt;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

static SAMPLES: OnceLock<Arc<Mutex<Vec<f64>>>> = OnceLock::new();

struct Capture(Arc<Mutex<Vec<f64>>>);

impl metrics::HistogramFn for Capture {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

/// Keeps the propagation histogram's samples; everything else is a no-op.
struct CaptureRecorder;

impl Recorder for CaptureRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if key.name() == cachenode::metrics::PROPAGATION_SECONDS {
            Histogram::from_arc(Arc::new(Capture(SAMPLES.get().unwrap().clone())))
        } else {
            Histogram::noop()
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

#[derive(Default, Clone, Copy)]
struct Summary {
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
}

fn summarize(mut v: Vec<f64>) -> Summary {
    if v.is_empty() {
        return Summary::default();
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Summary {
        p50: at(0.5),
        p99: at(0.99),
        max: *v.last().unwrap(),
        n: v.len(),
    }
}

/// Runs `count` sends at `rate` per second: `send(i)` is spawned per send,
/// in 1 ms ticks.
async fn paced<F, Fut>(count: usize, rate: usize, send: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let per_tick = (rate / 1000).max(1);
    let mut tick =
        tokio::time::interval(Duration::from_millis(1000 * per_tick as u64 / rate as u64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut handles = Vec::with_capacity(count);
    let mut i = 0;
    while i < count {
        tick.tick().await;
        for _ in 0..per_tick.min(count - i) {
            handles.push(tokio::spawn(send(i)));
            i += 1;
        }
    }
    for h in handles {
        h.await.unwrap();
    }
}

async fn cachenode_run(url: &str, receivers: usize, rate: usize, count: usize) -> (Summary, bool) {
    let samples = SAMPLES.get().unwrap().clone();
    let ns = format!("prop{receivers}x{rate}");
    let build = || {
        CacheNode::builder()
            .redis_url(url)
            .namespace(ns.clone())
            .op_timeout(Duration::from_secs(10))
            .build()
    };
    let publisher = build().await.unwrap();
    let mut nodes = Vec::new();
    for _ in 0..receivers {
        nodes.push(build().await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    samples.lock().unwrap().clear();
    let start_seq = publisher.bus_health().unwrap().last_applied_seq;
    let p = publisher.clone();
    paced(count, rate, move |i| {
        let p = p.clone();
        async move {
            let key = format!("k{}", i % 100);
            p.invalidate_many(&[key.as_str()]).await.unwrap();
        }
    })
    .await;
    let target = start_seq + count as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes
        .iter()
        .any(|n| n.bus_health().unwrap().last_applied_seq < target)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_applied = nodes
        .iter()
        .all(|n| n.bus_health().unwrap().applied as usize == count);
    let v: Vec<f64> = samples.lock().unwrap().drain(..).map(|s| s * 1e6).collect();
    let lossless = all_applied && v.len() == count * receivers;
    for n in nodes {
        n.shutdown().await;
    }
    publisher.shutdown().await;
    (summarize(v), lossless)
}

async fn bare_run(url: &str, receivers: usize, rate: usize, count: usize) -> (Summary, bool) {
    let client = redis::Client::open(url).unwrap();
    let channel = format!("bare{receivers}x{rate}");
    let delays = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..receivers {
        let mut ps = client.get_async_pubsub().await.unwrap();
        ps.subscribe(&channel).await.unwrap();
        let delays = delays.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = ps.into_on_message();
            let mut got = 0;
            while got < count {
                let Ok(Some(msg)) =
                    tokio::time::timeout(Duration::from_secs(10), stream.next()).await
                else {
                    break;
                };
                let sent: u64 = std::str::from_utf8(msg.get_payload_bytes())
                    .unwrap()
                    .parse()
                    .unwrap();
                delays
                    .lock()
                    .unwrap()
                    .push(now_us().saturating_sub(sent) as f64);
                got += 1;
            }
        }));
    }
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let ch = channel.clone();
    paced(count, rate, move |_| {
        let mut conn = conn.clone();
        let ch = ch.clone();
        async move {
            let _: () = redis::cmd("PUBLISH")
                .arg(&ch)
                .arg(now_us().to_string())
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    })
    .await;
    for t in tasks {
        t.await.unwrap();
    }
    let v = std::mem::take(&mut *delays.lock().unwrap());
    let lossless = v.len() == count * receivers;
    (summarize(v), lossless)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seconds: usize = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 1 } else { 2 });
    SAMPLES.set(Arc::new(Mutex::new(Vec::new()))).ok();
    metrics::set_global_recorder(CaptureRecorder).unwrap();

    let server = redis_test::server::RedisServer::new();
    let url = match server.client_addr() {
        redis::ConnectionAddr::Tcp(h, p) => format!("redis://{h}:{p}"),
        other => panic!("unexpected address {other:?}"),
    };
    for _ in 0..100 {
        if redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .is_ok()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let rates: &[usize] = if quick { &[1000] } else { &[1000, 10_000] };
    let fanouts: &[usize] = if quick { &[1, 4] } else { &[1, 4, 8] };
    println!("| receivers | rate/s | bare PUBLISH p50 / p99 / max (µs) | cachenode p50 / p99 / max (µs) | p99 ratio | lossless |");
    println!("|---|---|---|---|---|---|");
    for &rate in rates {
        for &n in fanouts {
            let count = rate * seconds;
            let (bare, bare_ok) = bare_run(&url, n, rate, count).await;
            let (cn, cn_ok) = cachenode_run(&url, n, rate, count).await;
            println!(
                "| {n} | {rate} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} | {:.2}x | bare {} ({} msgs), cachenode {} ({} applied) |",
                bare.p50, bare.p99, bare.max, cn.p50, cn.p99, cn.max,
                cn.p99 / bare.p99.max(1.0),
                if bare_ok { "yes" } else { "NO" }, bare.n,
                if cn_ok { "yes" } else { "NO" }, cn.n,
            );
        }
    }
    drop(server);
}
