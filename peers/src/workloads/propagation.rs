//! Workload 4: how long after an invalidation other nodes stop serving the
//! old value, at a steady rate of invalidations, to 1, 4 and 8 receiving
//! nodes.
//!
//! The method is the same for every system. Keys `p:{i}` are written with
//! version 1 for every invalidation to come, and every receiver reads each
//! of them (twice, with a pause, so that the writes' own notifications have
//! passed and the value sits in its RAM). Then the sender, paced at the
//! rate, takes `t0` and calls `invalidate(p:{i})`; once that returns it
//! hands `(i, t0)` to every receiver. Each receiver runs one poller task
//! that loops over its pending keys calling `get` until the value is gone or
//! is no longer version 1 (delay = now − `t0`), yielding between passes.
//! Keys not observed within [`GRACE`] after the last invalidation count as
//! not observed.
//!
//! The floor beside it is a bare `PUBLISH` of a sequence number to N plain
//! subscriber connections, delay = receive − `t0` (taken before the
//! `PUBLISH`), in the same process on the same clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::{mpsc, Notify};

use super::{guarded, kind_label, progress, Ctx, Fleet, Outcome, Row};
use crate::stats::{self, Summary};
use crate::system::{Item, Kind, Node, System};

/// How long after the last invalidation a receiver keeps looking.
pub const GRACE: Duration = Duration::from_secs(5);

/// Requests in flight while writing and reading the keys beforehand.
const PRIME_CONCURRENCY: usize = 32;

/// Pause after the writes and between the two read passes, so that the
/// notifications the writes caused have reached the receivers before the
/// measurement.
const PRIME_PAUSE: Duration = Duration::from_millis(300);

/// Name of the bare floor's row.
pub const BARE: &str = "bare PUBLISH";

/// One system at one (receivers, rate).
#[derive(Clone, Debug, Serialize)]
pub struct PropResult {
    /// Invalidations whose call returned `Ok`.
    pub sent: u64,
    pub send_errors: u64,
    /// Invalidations per second actually issued.
    pub achieved_rate: f64,
    /// `sent` × receivers.
    pub expected: u64,
    pub observed: u64,
    /// Delays in µs.
    pub delay_us: Summary,
    /// Latency of the sender's `invalidate` calls in µs (part of every
    /// delay); `None` where not measured.
    pub call_us: Option<Summary>,
    /// Keys a receiver did not hold as version 1 before the measurement
    /// (each then counts as observed at its first poll).
    pub not_primed: u64,
    pub read_errors: u64,
    pub note: Option<String>,
    #[serde(skip)]
    pub samples: Vec<f64>,
}

/// Every system at one (receivers, rate).
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub receivers: usize,
    pub rate: u32,
    pub seconds: f64,
    pub rows: Vec<Row<PropResult>>,
}

/// The (receivers, rate) cases and the seconds of invalidations per case.
pub fn plan(quick: bool) -> (Vec<(usize, u32)>, f64) {
    if quick {
        (vec![(1, 1_000), (8, 1_000), (1, 10_000), (8, 10_000)], 0.3)
    } else {
        let mut cases = Vec::new();
        for rate in [1_000, 10_000] {
            for receivers in [1, 4, 8] {
                cases.push((receivers, rate));
            }
        }
        (cases, 1.0)
    }
}

/// Every case, each with the bare floor, `systems` and (when `bento`)
/// BentoCache.
pub async fn run(ctx: &Ctx, systems: &[Arc<dyn System>], bento: bool) -> Vec<Case> {
    let (cases, seconds) = plan(ctx.quick);
    let limit = Duration::from_secs_f64(seconds + 120.0);
    let mut out = Vec::new();
    for (receivers, rate) in cases {
        let tag = format!("-{receivers}x{rate}");
        let mut rows = Vec::new();
        let (url, channel) = (
            ctx.redis_url.clone(),
            format!("pb{}-w4-bare{tag}", ctx.run_id),
        );
        let outcome = guarded(limit, async move {
            bare_case(&url, &channel, receivers, rate, seconds).await
        })
        .await;
        rows.push(row(BARE, "pub/sub floor", receivers, rate, outcome));
        for system in systems {
            let tick = ctx.poll_tick;
            let outcome = if system.kind() == Kind::RamOnly {
                Outcome::Skipped("RAM only: no invalidation across instances".into())
            } else {
                let env = ctx.env("w4", system.name(), &tag);
                let sys = system.clone();
                guarded(limit, async move {
                    let fleet = Fleet::build(sys.as_ref(), &env, receivers + 1).await?;
                    let r = system_case(&fleet.nodes, rate, seconds, tick).await;
                    fleet.shutdown().await;
                    let mut r = r?;
                    if sys.kind() == Kind::RedisOnly {
                        r.note =
                            Some("no RAM copy: delay until a Redis GET sees the delete".into());
                    }
                    Ok(r)
                })
                .await
            };
            rows.push(row(
                system.name(),
                kind_label(system.kind()),
                receivers,
                rate,
                outcome,
            ));
        }
        if bento {
            let url = ctx.redis_url.clone();
            let outcome = guarded(limit, async move {
                let b = crate::bento::propagation(&url, receivers, rate, seconds).await?;
                // The script counts (invalidation, receiver) pairs; it does
                // not report the rate it achieved.
                Ok(from_samples(
                    b.sent / receivers as u64,
                    b.sent,
                    b.observed,
                    b.delays_us,
                    f64::NAN,
                ))
            })
            .await;
            rows.push(row(
                "bentocache",
                "RAM + Redis (Node.js)",
                receivers,
                rate,
                outcome,
            ));
        }
        out.push(Case {
            receivers,
            rate,
            seconds,
            rows,
        });
    }
    out
}

fn row(
    system: &str,
    kind: &'static str,
    receivers: usize,
    rate: u32,
    outcome: Outcome<PropResult>,
) -> Row<PropResult> {
    match &outcome {
        Outcome::Ok(r) => progress(
            "w4",
            format!(
                "{receivers} receivers at {rate}/s, {system}: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs, observed {}/{}; invalidate call p50 {:.0} µs, p99 {:.0} µs",
                r.delay_us.p50, r.delay_us.p99, r.delay_us.max, r.observed, r.expected,
                r.call_us.as_ref().map_or(f64::NAN, |c| c.p50),
                r.call_us.as_ref().map_or(f64::NAN, |c| c.p99)
            ),
        ),
        other => progress("w4", format!("{receivers} receivers at {rate}/s, {system}: {other:?}")),
    }
    Row {
        system: system.to_owned(),
        kind,
        outcome,
    }
}

fn from_samples(
    sent: u64,
    expected: u64,
    observed: u64,
    samples: Vec<f64>,
    rate: f64,
) -> PropResult {
    PropResult {
        sent,
        send_errors: 0,
        achieved_rate: rate,
        expected,
        observed,
        delay_us: stats::summarize(&samples),
        call_us: None,
        not_primed: 0,
        read_errors: 0,
        note: None,
        samples,
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Runs `send(i)` for `i` in `0..count`, each as its own task, at `rate`
/// per second (in ticks of at least 1 ms; late ticks catch up). Returns the
/// tasks' results and the time the sending took.
async fn paced<T, F, Fut>(count: usize, rate: u32, send: F) -> anyhow::Result<(Vec<T>, Duration)>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let rate = rate.max(1) as f64;
    let period = Duration::from_secs_f64((1.0 / rate).max(0.001));
    let per_tick = (rate * period.as_secs_f64()).round().max(1.0) as usize;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    let mut i = 0;
    while i < count {
        tick.tick().await;
        for _ in 0..per_tick.min(count - i) {
            tasks.push(tokio::spawn(send(i)));
            i += 1;
        }
    }
    let mut out = Vec::with_capacity(count);
    for t in tasks {
        out.push(t.await?);
    }
    Ok((out, started.elapsed()))
}

/// nodes[0] sends, the others receive.
async fn system_case(
    nodes: &[Arc<dyn Node>],
    rate: u32,
    seconds: f64,
    tick: Option<Duration>,
) -> anyhow::Result<PropResult> {
    let count = (f64::from(rate) * seconds).round() as usize;
    let keys: Arc<Vec<String>> = Arc::new((0..count).map(|i| format!("p:{i}")).collect());
    let sender = nodes[0].clone();
    let receivers = &nodes[1..];

    futures::stream::iter(0..count)
        .map(|i| {
            let (sender, keys) = (sender.clone(), keys.clone());
            async move { sender.set(&keys[i], &Item::new(1)).await }
        })
        .buffer_unordered(PRIME_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .context("writing the keys")?;
    tokio::time::sleep(PRIME_PAUSE).await;
    for r in receivers {
        prime(r, &keys).await?;
    }
    tokio::time::sleep(PRIME_PAUSE).await;
    let mut not_primed = 0;
    for r in receivers {
        not_primed += prime(r, &keys).await?;
    }

    // Stops (through its drop) when this function returns.
    let ticker = tick.map(Ticker::start);
    let mut txs = Vec::new();
    let mut pollers = Vec::new();
    for r in receivers {
        let (tx, rx) = mpsc::unbounded_channel::<(usize, Instant)>();
        txs.push(tx);
        let (r, keys) = (r.clone(), keys.clone());
        let pace = ticker.as_ref().map(Ticker::notify);
        pollers.push(tokio::spawn(async move {
            poll(r.as_ref(), &keys, rx, pace).await
        }));
    }
    let txs = Arc::new(txs);
    let (results, took) = paced(count, rate, |i| {
        let (sender, keys, txs) = (sender.clone(), keys.clone(), txs.clone());
        async move {
            let t0 = Instant::now();
            let r = sender.invalidate(&keys[i]).await;
            let call = micros(t0.elapsed());
            if r.is_ok() {
                for tx in txs.iter() {
                    let _ = tx.send((i, t0));
                }
            }
            r.map(|()| call)
        }
    })
    .await?;
    // The last sender drops here: the pollers see the channels close.
    drop(txs);
    let calls: Vec<f64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    let sent = calls.len() as u64;
    let first_send_error = results.into_iter().find_map(Result::err);

    let mut samples = Vec::new();
    let mut read_errors = 0;
    for p in pollers {
        let (delays, errors) = p.await?;
        samples.extend(delays);
        read_errors += errors;
    }
    Ok(PropResult {
        sent,
        send_errors: count as u64 - sent,
        achieved_rate: count as f64 / took.as_secs_f64(),
        expected: sent * receivers.len() as u64,
        observed: samples.len() as u64,
        delay_us: stats::summarize(&samples),
        call_us: Some(stats::summarize(&calls)),
        not_primed,
        read_errors,
        note: first_send_error.map(|e| format!("first invalidate error: {e:#}")),
        samples,
    })
}

/// Reads every key on `node`; how many were not version 1.
async fn prime(node: &Arc<dyn Node>, keys: &Arc<Vec<String>>) -> anyhow::Result<u64> {
    let got: Vec<Option<Item>> = futures::stream::iter(0..keys.len())
        .map(|i| {
            let (node, keys) = (node.clone(), keys.clone());
            async move { node.get(&keys[i]).await }
        })
        .buffer_unordered(PRIME_CONCURRENCY)
        .try_collect()
        .await
        .context("reading the keys")?;
    Ok(got
        .iter()
        .filter(|v| v.as_ref().map(|i| i.version) != Some(1))
        .count() as u64)
}

/// A thread that wakes every poller waiting on its [`Notify`] once per
/// tick, so that pollers can wait between passes without spinning (tokio's
/// timer counts in milliseconds). Stops when dropped.
struct Ticker {
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(tick: Duration) -> Ticker {
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (notify.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                n.notify_waiters();
            }
        });
        Ticker { notify, stop }
    }

    fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One receiver's poller: the delay of every key seen invalidated, and the
/// number of failed reads. Between passes it yields, or with `pace` waits
/// for the next tick.
async fn poll(
    node: &dyn Node,
    keys: &[String],
    mut rx: mpsc::UnboundedReceiver<(usize, Instant)>,
    pace: Option<Arc<Notify>>,
) -> (Vec<f64>, u64) {
    let mut pending: Vec<(usize, Instant)> = Vec::new();
    let mut delays = Vec::new();
    let mut errors = 0;
    let mut deadline: Option<Instant> = None;
    loop {
        loop {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    deadline.get_or_insert_with(|| Instant::now() + GRACE);
                    break;
                }
            }
        }
        if pending.is_empty() {
            if deadline.is_some() {
                break;
            }
            match rx.recv().await {
                Some(p) => pending.push(p),
                None => {
                    deadline.get_or_insert_with(|| Instant::now() + GRACE);
                    continue;
                }
            }
        }
        let mut i = 0;
        while i < pending.len() {
            let (key, t0) = pending[i];
            match node.get(&keys[key]).await {
                Ok(Some(item)) if item.version == 1 => i += 1,
                Ok(_) => {
                    delays.push(micros(t0.elapsed()));
                    pending.swap_remove(i);
                }
                Err(_) => {
                    errors += 1;
                    i += 1;
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        match &pace {
            Some(tick) => tick.notified().await,
            None => tokio::task::yield_now().await,
        }
    }
    (delays, errors)
}

/// The floor: `PUBLISH` of a sequence number to `receivers` subscriber
/// connections at `rate`.
async fn bare_case(
    url: &str,
    channel: &str,
    receivers: usize,
    rate: u32,
    seconds: f64,
) -> anyhow::Result<PropResult> {
    let count = (f64::from(rate) * seconds).round() as usize;
    let client = redis::Client::open(url)?;
    let base = Instant::now();
    // Send time of each message, ns after `base` (+1, so 0 means unset).
    let t0s: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    // ns after `base` when sending ended (0: not yet).
    let ended = Arc::new(AtomicU64::new(0));
    let mut subs = Vec::new();
    for _ in 0..receivers {
        let mut ps = client.get_async_pubsub().await?;
        ps.subscribe(channel).await?;
        let (t0s, ended) = (t0s.clone(), ended.clone());
        subs.push(tokio::spawn(async move {
            let mut stream = ps.into_on_message();
            let mut delays = Vec::with_capacity(count);
            while delays.len() < count {
                let end = ended.load(Ordering::SeqCst);
                let wait = if end == 0 {
                    Duration::from_millis(100)
                } else {
                    (Duration::from_nanos(end) + GRACE).saturating_sub(base.elapsed())
                };
                match tokio::time::timeout(wait, stream.next()).await {
                    Ok(Some(msg)) => {
                        let now = base.elapsed().as_nanos() as u64;
                        let seq: Option<usize> = std::str::from_utf8(msg.get_payload_bytes())
                            .ok()
                            .and_then(|s| s.parse().ok());
                        if let Some(t0) = seq.and_then(|s| t0s.get(s)) {
                            let t0 = t0.load(Ordering::SeqCst).saturating_sub(1);
                            delays.push(now.saturating_sub(t0) as f64 / 1e3);
                        }
                    }
                    Ok(None) => break,
                    Err(_) if end != 0 => break,
                    Err(_) => {}
                }
            }
            delays
        }));
    }
    let conn = client.get_multiplexed_async_connection().await?;
    let (results, took) = paced(count, rate, |i| {
        let (mut conn, t0s, channel) = (conn.clone(), t0s.clone(), channel.to_owned());
        async move {
            t0s[i].store(base.elapsed().as_nanos() as u64 + 1, Ordering::SeqCst);
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(i.to_string())
                .query_async::<i64>(&mut conn)
                .await
        }
    })
    .await?;
    ended.store(base.elapsed().as_nanos() as u64, Ordering::SeqCst);
    let sent = results.iter().filter(|r| r.is_ok()).count() as u64;
    let mut samples = Vec::new();
    for s in subs {
        samples.extend(s.await?);
    }
    let mut r = from_samples(
        sent,
        sent * receivers as u64,
        samples.len() as u64,
        samples,
        count as f64 / took.as_secs_f64(),
    );
    r.send_errors = count as u64 - sent;
    Ok(r)
}
