//! Workload 6: memory per entry of the RAM layer.
//!
//! Each system runs in a child process (the harness binary re-executed with
//! the hidden `mem` subcommand), so that allocations of earlier systems do
//! not blur the numbers. The child reads its resident set size (`VmRSS` in
//! `/proc/self/status`) before building a node and again once the node is
//! built and has written and read one entry (warm connections, and whatever
//! the layer allocates up front); then it writes `entries` entries and reads
//! each back once ([`CONCURRENCY`] keys in flight), so that layers filled on
//! read (client-side caching) hold them as well as layers filled on write;
//! lets the RAM layer settle (`Node::settle`), reads the RSS again and
//! prints one JSON line. Bytes per entry = (RSS after − RSS of the empty
//! node) / entries; beyond the payload = that − the payload, the mean
//! bincode-encoded size of the `Item`s written. The RSS also holds allocator
//! slack and whatever else the process grew by; systems without a RAM layer
//! show what their client keeps (about nothing).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{guarded, kind_label, progress, Ctx, Outcome, Row, RAM_CAPACITY_BYTES, TTL};
use crate::redis_server::Server;
use crate::system::{Env, Item, Kind, System};

/// Inserts in flight in the child.
pub const CONCURRENCY: usize = 64;

/// Entries inserted per system.
pub fn entries(quick: bool) -> u64 {
    if quick {
        100_000
    } else {
        1_000_000
    }
}

/// What a child reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildReport {
    pub entries: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Before the node was built.
    pub rss_base: u64,
    /// Once the node was built, before the entries.
    pub rss_before: u64,
    pub rss_after: u64,
    /// Mean bincode-encoded size of the inserted items.
    pub payload_bytes: f64,
    pub insert_seconds: f64,
}

/// One system's measurement.
#[derive(Clone, Debug, Serialize)]
pub struct MemResult {
    #[serde(flatten)]
    pub child: ChildReport,
    /// RSS delta / entries.
    pub delta_per_entry: f64,
    /// `delta_per_entry` − payload; `None` without a RAM layer.
    pub beyond_payload: Option<f64>,
}

/// Every system in `systems`, one child process each, the server flushed
/// after each.
pub async fn run(ctx: &Ctx, systems: &[Arc<dyn System>], server: &Server) -> Vec<Row<MemResult>> {
    let n = entries(ctx.quick);
    let mut rows = Vec::new();
    for system in systems {
        let env = ctx.env("w6", system.name(), "");
        let name = system.name().to_owned();
        let has_ram = system.kind() != Kind::RedisOnly;
        let outcome = guarded(Duration::from_secs(300), async move {
            spawn_child(&name, has_ram, n, &env).await
        })
        .await;
        match &outcome {
            Outcome::Ok(r) => progress(
                "w6",
                format!(
                    "{}: {:.1} MiB (empty node) → {:.1} MiB, {:.0} B/entry, {:.0} B beyond the payload ({:.1} s to insert)",
                    system.name(),
                    r.child.rss_before as f64 / 1048576.0,
                    r.child.rss_after as f64 / 1048576.0,
                    r.delta_per_entry,
                    r.beyond_payload.unwrap_or(f64::NAN),
                    r.child.insert_seconds
                ),
            ),
            other => progress("w6", format!("{}: {other:?}", system.name())),
        }
        rows.push(Row {
            system: system.name().to_owned(),
            kind: kind_label(system.kind()),
            outcome,
        });
        if let Err(e) = server.flushall().await {
            progress("w6", format!("FLUSHALL failed: {e:#}"));
        }
    }
    rows
}

async fn spawn_child(
    system: &str,
    has_ram: bool,
    entries: u64,
    env: &Env,
) -> anyhow::Result<MemResult> {
    let exe = std::env::current_exe().context("locating the harness binary")?;
    let out = tokio::process::Command::new(exe)
        .args(["mem", "--system", system, "--entries"])
        .arg(entries.to_string())
        .args(["--redis-url", &env.redis_url, "--namespace", &env.namespace])
        .kill_on_drop(true)
        .output()
        .await
        .context("running the child process")?;
    if !out.status.success() {
        bail!(
            "child exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().context("child printed nothing")?;
    let child: ChildReport = serde_json::from_str(line).context("child's report")?;
    if child.errors > 0 {
        bail!(
            "{} of {} inserts failed, first: {}",
            child.errors,
            child.entries,
            child.first_error.as_deref().unwrap_or("?")
        );
    }
    let delta = child.rss_after as f64 - child.rss_before as f64;
    let delta_per_entry = delta / child.entries as f64;
    Ok(MemResult {
        beyond_payload: has_ram.then_some(delta_per_entry - child.payload_bytes),
        delta_per_entry,
        child,
    })
}

/// The child's side: measure `system` and print a [`ChildReport`] line.
pub async fn child(
    systems: &[Arc<dyn System>],
    system: &str,
    entries: u64,
    redis_url: &str,
    namespace: &str,
) -> anyhow::Result<()> {
    let sys = systems
        .iter()
        .find(|s| s.name() == system)
        .with_context(|| format!("no system named {system}"))?;
    let env = Env {
        redis_url: redis_url.to_owned(),
        namespace: namespace.to_owned(),
        ram_capacity_bytes: RAM_CAPACITY_BYTES,
        ttl: TTL,
    };
    let payload_bytes = payload_bytes(entries)?;
    let rss_base = rss()?;
    let node = sys.node(&env).await?;
    node.set("warm", &Item::new(0)).await?;
    node.get("warm").await?;
    node.settle().await;
    let rss_before = rss()?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..entries)
        .map(|i| {
            let node = node.clone();
            async move {
                let key = format!("m:{i}");
                node.set(&key, &Item::new(i)).await?;
                match node.get(&key).await? {
                    Some(item) if item.version == i => Ok(()),
                    other => anyhow::bail!("{key} read back as {other:?}"),
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter(|r| std::future::ready(r.is_err()))
        .collect()
        .await;
    let insert_seconds = started.elapsed().as_secs_f64();
    // Background work caused by the inserts (notifications of the node's
    // own writes, pending RAM-layer maintenance) finishes before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.settle().await;
    let rss_after = rss()?;
    node.shutdown().await;
    let report = ChildReport {
        entries,
        errors: results.len() as u64,
        first_error: results
            .into_iter()
            .find_map(|r| r.err().map(|e| format!("{e:#}"))),
        rss_base,
        rss_before,
        rss_after,
        payload_bytes,
        insert_seconds,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Mean bincode-encoded size of `Item::new(i)` for `i` in `0..entries`.
fn payload_bytes(entries: u64) -> anyhow::Result<f64> {
    let mut total = 0usize;
    for i in 0..entries {
        total += bincode::serde::encode_to_vec(Item::new(i), bincode::config::standard())?.len();
    }
    Ok(total as f64 / entries.max(1) as f64)
}

/// This process's resident set size in bytes.
fn rss() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kb * 1024)
}
