//! BentoCache (Node.js), measured through `peers/bento/bench.mjs`.
//!
//! BentoCache cannot run inside this process, so each measurement is one
//! `node bench.mjs <mode> ...` child: the script builds its BentoCache
//! instances (memory L1 + Redis L2 + Redis bus) against the harness's
//! redis-server, runs the same methodology as the Rust workloads and prints
//! one JSON object on stdout. This module installs the script's dependencies,
//! runs it with a timeout and turns its output into the structs below.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;
use tokio::process::Command;

/// Latencies of one BentoCache instance, as `node bench.mjs hit` reports them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BentoHit {
    /// Median over timed batches of `get` on one key held in L1, ns per op.
    pub ram_hit_ns: f64,
    /// One `get` per distinct key by an instance whose L1 is cold, µs each.
    pub redis_hit_us: Vec<f64>,
    /// One `set` per distinct key (L1, Redis `SET`, bus publication), µs each.
    pub set_us: Vec<f64>,
}

/// Invalidation delays from one sender to N receivers, as
/// `node bench.mjs propagation` reports them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BentoPropagation {
    /// From just before the sender's `delete` to the receiver's first `get`
    /// that no longer returns the old value, µs; one per observed pair.
    pub delays_us: Vec<f64>,
    /// Invalidations × receivers.
    pub sent: u64,
    /// Pairs seen within the observation window (`delays_us.len()`).
    pub observed: u64,
}

/// `npm ci` downloads at most a few dozen small packages.
const NPM_CI_TIMEOUT: Duration = Duration::from_secs(300);

/// Node start-up, connections and the distinct-key phases of `hit`, with
/// room for a loaded machine.
const BASE_TIMEOUT: Duration = Duration::from_secs(60);

/// Allowance per RAM-hit op: a BentoCache L1 hit costs a few µs, and the
/// script runs one untimed batch on top of `ops`.
const PER_RAM_HIT_OP: Duration = Duration::from_micros(20);

/// Allowance per key and instance while pre-populating `propagation`.
const PER_PREPOPULATED_KEY: Duration = Duration::from_micros(500);

/// How long the script keeps polling after its last invalidation
/// (`OBSERVE_GRACE_MS` in bench.mjs).
const OBSERVE_GRACE: Duration = Duration::from_secs(5);

/// The directory holding `package.json`, `package-lock.json` and `bench.mjs`.
fn bento_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bento")
}

/// Whether `node` and `npm` are on `PATH`.
pub fn available() -> bool {
    on_path("node") && on_path("npm")
}

fn on_path(program: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// Installs the script's dependencies with `npm ci`, unless `node_modules`
/// already matches `package-lock.json`.
pub async fn prepare() -> anyhow::Result<()> {
    let dir = bento_dir();
    if node_modules_up_to_date(&dir) {
        return Ok(());
    }
    let mut npm = Command::new("npm");
    npm.args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]);
    run(npm, &dir, NPM_CI_TIMEOUT, "npm ci")
        .await
        .with_context(|| format!("installing BentoCache in {}", dir.display()))?;
    Ok(())
}

/// npm writes `node_modules/.package-lock.json` on every install: the lock
/// file's packages minus the root entry. When the two agree, `npm ci` would
/// install exactly what is there.
fn node_modules_up_to_date(dir: &Path) -> bool {
    let read = |path: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    };
    let (Some(mut lock), Some(installed)) = (
        read(dir.join("package-lock.json")),
        read(dir.join("node_modules").join(".package-lock.json")),
    ) else {
        return false;
    };
    let Some(packages) = lock.get_mut("packages").and_then(|p| p.as_object_mut()) else {
        return false;
    };
    packages.remove("");
    Some(&*packages) == installed.get("packages").and_then(|p| p.as_object())
}

/// RAM hit, Redis hit with a cold L1, and set, each on BentoCache.
///
/// `ops` is the number of timed RAM-hit gets; the Redis-hit and set phases
/// use `min(2000, ops / 10)` distinct keys.
pub async fn hit(redis_url: &str, ops: u64) -> anyhow::Result<BentoHit> {
    let ops_allowance = PER_RAM_HIT_OP.saturating_mul(u32::try_from(ops).unwrap_or(u32::MAX));
    let timeout = BASE_TIMEOUT.saturating_add(ops_allowance.saturating_mul(2));
    let out: HitWire = bench(&["hit", redis_url, &ops.to_string()], timeout).await?;
    Ok(BentoHit {
        ram_hit_ns: out.ram_hit_ns,
        redis_hit_us: out.redis_hit_us,
        set_us: out.set_us,
    })
}

/// One sender deleting `rate × seconds` keys at `rate` per second, each
/// timed until every one of `receivers` instances stops returning it.
pub async fn propagation(
    redis_url: &str,
    receivers: usize,
    rate: u32,
    seconds: f64,
) -> anyhow::Result<BentoPropagation> {
    if receivers == 0 || rate == 0 || !(seconds > 0.0 && seconds.is_finite()) {
        bail!("BentoCache propagation needs receivers, rate and seconds above zero");
    }
    let keys = (f64::from(rate) * seconds).round().max(1.0);
    // Every instance reads or writes every key once before the timed part.
    let prepopulated = keys * (receivers as f64 + 1.0);
    let timeout = BASE_TIMEOUT
        + OBSERVE_GRACE
        + Duration::from_secs_f64(seconds * 2.0)
        + Duration::from_secs_f64(PER_PREPOPULATED_KEY.as_secs_f64() * prepopulated);
    let args = [
        "propagation",
        redis_url,
        &receivers.to_string(),
        &rate.to_string(),
        &seconds.to_string(),
    ];
    let out: PropagationWire = bench(&args, timeout).await?;
    let check = &out.bus_check;
    if check.served_from_l1 < check.receivers || check.dropped_by_bus < check.receivers {
        // Not an error: the measurement still ran, and its `observed` count
        // tells the same story. Say it where the operator will look.
        eprintln!(
            "warning: BentoCache bus check: {} of {} receivers served the key from L1, \
             {} dropped it after the sender's delete",
            check.served_from_l1, check.receivers, check.dropped_by_bus
        );
    }
    Ok(BentoPropagation {
        observed: out.observed,
        sent: out.sent,
        delays_us: out.delays_us,
    })
}

/// What `bench.mjs hit` prints.
#[derive(Deserialize)]
struct HitWire {
    ram_hit_ns: f64,
    redis_hit_us: Vec<f64>,
    set_us: Vec<f64>,
}

/// What `bench.mjs propagation` prints (fields not listed are ignored).
#[derive(Deserialize)]
struct PropagationWire {
    delays_us: Vec<f64>,
    sent: u64,
    observed: u64,
    bus_check: BusCheck,
}

/// Before timing, the script checks that a receiver serves a key from its L1
/// (the key is gone from Redis) and drops it once the sender deletes it.
#[derive(Deserialize)]
struct BusCheck {
    receivers: u64,
    served_from_l1: u64,
    dropped_by_bus: u64,
}

/// Runs `node bench.mjs <args>` and parses the JSON object it prints.
async fn bench<T: for<'de> Deserialize<'de>>(
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<T> {
    let mode = args.first().copied().unwrap_or_default();
    let what = format!("node bench.mjs {mode}");
    let mut node = Command::new("node");
    node.arg("bench.mjs").args(args.iter().map(OsStr::new));
    let stdout = run(node, &bento_dir(), timeout, &what).await?;
    // The script prints exactly one line; take the last one in case a
    // dependency ever writes to stdout before it.
    let line = stdout
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .with_context(|| format!("{what} printed nothing on stdout"))?;
    serde_json::from_str(line).with_context(|| format!("{what} printed unexpected output: {line}"))
}

/// Runs `command` in `dir`, killed after `timeout`; returns its stdout, or an
/// error carrying its exit status and stderr.
async fn run(
    mut command: Command,
    dir: &Path,
    timeout: Duration,
    what: &str,
) -> anyhow::Result<String> {
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropping the child on timeout must not leave it running.
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("starting {what} in {}", dir.display()))?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(output) => output.with_context(|| format!("waiting for {what}"))?,
        Err(_) => bail!("{what} did not finish within {timeout:?} and was killed"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "{what} failed ({}):\n{}",
            output.status,
            tail(stderr.trim(), 4_000)
        );
    }
    Ok(stdout)
}

/// The last `max` bytes of `text` (on a char boundary): a stack trace's end
/// says what failed.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
