//! Side-by-side benchmarks of cachenode against the caches a service would
//! pick instead, on one redis-server the harness starts itself.
//!
//! Components:
//! - [`system`]: the trait every system under test implements, and
//!   [`systems`]: one adapter per system;
//! - [`workloads`]: the six workloads (hit, Redis hit, Zipf, propagation,
//!   clear, memory), each the same for every system;
//! - [`bento`]: BentoCache (Node.js), driven through its own script;
//! - [`redis_server`], [`stats`], [`report`], [`plot`]: the server, the
//!   percentiles, `report.md` / `results.json` and the SVG plots.
//!
//! Run: `cargo run --release --manifest-path peers/Cargo.toml -- [--quick]
//! [--only 1,3,4] [--systems cachenode,moka,...] [--out DIR]`, or
//! `scripts/bench-peers.sh`.

mod bento;
mod plot;
mod redis_server;
mod report;
mod stats;
mod system;
mod systems;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::plot::Series;
use crate::report::{ClearOut, Meta, Plot, Results};
use crate::system::System;
use crate::workloads::{
    guarded, guarded_in_place, hit, memory, propagation, redis_hit, slug, zipf, Ctx, Outcome,
};

/// Name of BentoCache in `--systems` and in the tables.
const BENTO: &str = "bentocache";

/// The default output directory: `peers/results/`, wherever the harness
/// is run from.
const DEFAULT_OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/results");

/// Time allowed to the clear workload (which loads millions of keys).
const CLEAR_LIMIT: Duration = Duration::from_secs(420);

#[derive(Parser, Debug)]
#[command(about = "Benchmarks cachenode beside its peers on a redis-server it starts itself")]
struct Cli {
    /// Small sizes and short runs (about 1–2 minutes in all).
    #[arg(long)]
    quick: bool,
    /// Workloads to run, by number: 1 hit, 2 Redis hit, 3 Zipf,
    /// 4 propagation, 5 clear, 6 memory (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<u8>>,
    /// Systems to run, by name or by the name in lower case with dashes for
    /// spaces, e.g. cachenode,moka,cached-asyncrediscache,bentocache
    /// (default: all, BentoCache included).
    #[arg(long, value_delimiter = ',')]
    systems: Option<Vec<String>>,
    /// Workload 4: pollers wait for a tick of this many µs between passes
    /// instead of yielding (0, the default: yield, i.e. spin).
    #[arg(long, default_value_t = 0)]
    poll_tick_us: u64,
    /// Directory for report.md, results.json and the plots.
    #[arg(long, default_value = DEFAULT_OUT)]
    out: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Installs BentoCache's Node.js dependencies (npm install).
    PrepareBento,
    /// Measures one system's memory per entry (run by workload 6).
    #[command(hide = true)]
    Mem {
        #[arg(long)]
        system: String,
        #[arg(long)]
        entries: u64,
        #[arg(long)]
        redis_url: String,
        #[arg(long)]
        namespace: String,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::PrepareBento) => bento::prepare().await,
        Some(Cmd::Mem {
            ref system,
            entries,
            ref redis_url,
            ref namespace,
        }) => memory::child(&systems::all(), system, entries, redis_url, namespace).await,
        None => run(&cli).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    let all = systems::all();
    let known: Vec<&str> = all.iter().map(|s| s.name()).chain([BENTO]).collect();
    // Names as given, or as slugs (`cached-asyncrediscache`).
    let wanted: Vec<String> = match &cli.systems {
        None => known.iter().map(|s| s.to_string()).collect(),
        Some(given) => {
            let mut names = Vec::new();
            for g in given {
                let Some(name) = known.iter().find(|k| **k == g || slug(k) == slug(g)) else {
                    bail!("unknown system {g:?}; known: {}", known.join(", "));
                };
                names.push(name.to_string());
            }
            names
        }
    };
    let chosen: Vec<Arc<dyn System>> = all
        .into_iter()
        .filter(|s| wanted.iter().any(|w| w == s.name()))
        .collect();
    let mut workloads = cli.only.clone().unwrap_or_else(|| (1..=6).collect());
    workloads.sort_unstable();
    workloads.dedup();
    if let Some(bad) = workloads.iter().find(|w| !(1..=6).contains(*w)) {
        bail!("no workload {bad}; workloads are 1 to 6");
    }
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;

    let bento_wanted = wanted.iter().any(|w| w == BENTO);
    let bento_skipped = if bento_wanted {
        bento_status().await
    } else {
        Some("not selected (--systems)".into())
    };
    let bento = bento_skipped.is_none();
    if let Some(why) = &bento_skipped {
        eprintln!("BentoCache skipped: {why}");
    }

    let server = redis_server::Server::start()?;
    let redis_version = server.version().await?;
    eprintln!("redis-server {redis_version} at {}", server.url());
    let ctx = Ctx {
        redis_url: server.url().to_owned(),
        run_id: format!("{:x}", unix_secs() % 0x10000),
        quick: cli.quick,
        poll_tick: (cli.poll_tick_us > 0).then(|| Duration::from_micros(cli.poll_tick_us)),
    };

    let mut results = Results {
        meta: meta(cli, &redis_version, &wanted, &workloads),
        bento_skipped,
        hit: None,
        redis_hit: None,
        redis_hit_keys: redis_hit::keys(cli.quick),
        zipf: None,
        zipf_seconds: zipf::seconds(cli.quick),
        propagation: None,
        clear: None,
        memory: None,
        memory_entries: memory::entries(cli.quick),
        plots: Vec::new(),
    };
    let mut bento_hit: Option<Outcome<bento::BentoHit>> = None;
    for &w in &workloads {
        server.flushall().await?;
        let since = Instant::now();
        eprintln!(
            "== workload {w} ({:.0} s elapsed)",
            started.elapsed().as_secs_f64()
        );
        match w {
            1 => {
                let mut rows = hit::run(&ctx, &chosen).await;
                if bento {
                    rows.push(match bento_hit_once(&mut bento_hit, &ctx).await {
                        Outcome::Ok(b) => hit::bento_row(b.ram_hit_ns),
                        o => failed_row(o),
                    });
                }
                results.hit = Some(rows);
            }
            2 => {
                let mut rows = redis_hit::run(&ctx, &chosen).await;
                if bento {
                    rows.push(match bento_hit_once(&mut bento_hit, &ctx).await {
                        Outcome::Ok(b) => redis_hit::bento_row(&b.redis_hit_us, &b.set_us),
                        o => failed_row(o),
                    });
                }
                results.redis_hit = Some(rows);
            }
            3 => results.zipf = Some(zipf::run(&ctx, &chosen).await),
            4 => results.propagation = Some(propagation::run(&ctx, &chosen, bento).await),
            5 => results.clear = Some(clear(&ctx).await),
            6 => results.memory = Some(memory::run(&ctx, &chosen, &server).await),
            _ => unreachable!("checked above"),
        }
        eprintln!(
            "== workload {w} done in {:.1} s",
            since.elapsed().as_secs_f64()
        );
    }
    server.flushall().await?;
    drop(server);

    results.plots = plots(&cli.out, &results);
    results.meta.elapsed_seconds = started.elapsed().as_secs_f64();
    report::write(&cli.out, &results)?;
    eprintln!(
        "report: {} (elapsed {:.0} s)",
        cli.out.join("report.md").display(),
        results.meta.elapsed_seconds
    );
    Ok(())
}

/// `None` when BentoCache can run; otherwise why not. Installs its
/// dependencies when they are missing.
async fn bento_status() -> Option<String> {
    if !bento::available() {
        return Some("Node.js (`node` and `npm`) is not on PATH".into());
    }
    match bento::prepare().await {
        Ok(()) => None,
        Err(e) => Some(format!("installing its dependencies failed: {e:#}")),
    }
}

/// BentoCache's hit measurement, run the first time workload 1 or 2 needs
/// it and reused by the other.
async fn bento_hit_once<'a>(
    slot: &'a mut Option<Outcome<bento::BentoHit>>,
    ctx: &Ctx,
) -> &'a Outcome<bento::BentoHit> {
    if slot.is_none() {
        let url = ctx.redis_url.clone();
        // RAM-hit reads; the script's Redis-hit and set phases use a tenth
        // of them as distinct keys (at most 2000).
        let ops = 10 * redis_hit::keys(ctx.quick) as u64;
        let outcome = guarded(Duration::from_secs(180), async move {
            bento::hit(&url, ops).await
        })
        .await;
        if let Outcome::Failed(e) = &outcome {
            eprintln!("BentoCache hit failed: {e}");
        }
        *slot = Some(outcome);
    }
    slot.as_ref().expect("just filled")
}

/// BentoCache's row when its measurement failed.
fn failed_row<T, U>(o: &Outcome<T>) -> workloads::Row<U> {
    workloads::Row {
        system: BENTO.into(),
        kind: "RAM + Redis (Node.js)",
        outcome: match o {
            Outcome::Ok(_) => unreachable!("only called without a measurement"),
            Outcome::Failed(e) => Outcome::Failed(e.clone()),
            Outcome::Skipped(w) => Outcome::Skipped(w.clone()),
        },
    }
}

/// Workload 5, on the flushed server. Runs in place: its future is not
/// `Send`, so it cannot be a task of its own.
async fn clear(ctx: &Ctx) -> Outcome<Vec<ClearOut>> {
    let (url, quick) = (ctx.redis_url.clone(), ctx.quick);
    let outcome = guarded_in_place(CLEAR_LIMIT, async move {
        let rows = workloads::clear::run(&url, quick).await?;
        Ok(rows
            .into_iter()
            .map(|r| ClearOut {
                system: r.system,
                method: r.method,
                keys_deleted: r.keys_deleted,
                seconds: r.seconds,
                note: r.note,
            })
            .collect::<Vec<_>>())
    })
    .await;
    match &outcome {
        Outcome::Ok(rows) => {
            for r in rows {
                eprintln!(
                    "[w5] {} ({}): {} keys in {:.2} s",
                    r.system, r.method, r.keys_deleted, r.seconds
                );
            }
        }
        o => eprintln!("[w5] {o:?}"),
    }
    outcome
}

/// Draws the plots of what was measured; the ones written.
fn plots(dir: &Path, r: &Results) -> Vec<Plot> {
    let mut out = Vec::new();
    let mut draw = |file: String, title: String, series: Vec<Series>| match plot::cdf_svg(
        &dir.join(&file),
        &title,
        &series,
    ) {
        Ok(true) => out.push(Plot { title, file }),
        Ok(false) => {}
        Err(e) => eprintln!("plot {file}: {e:#}"),
    };
    if let Some(rows) = &r.redis_hit {
        let series = rows
            .iter()
            .filter_map(|row| {
                row.outcome.ok().map(|v| Series {
                    name: row.system.clone(),
                    samples: v.hit_samples.clone(),
                })
            })
            .collect();
        draw(
            "w2-redis-hit-cdf.svg".into(),
            "Workload 2: Redis hit latency (RAM cold), CDF".into(),
            series,
        );
    }
    if let Some(cases) = &r.propagation {
        for case in cases {
            let series = case
                .rows
                .iter()
                .filter_map(|row| {
                    row.outcome.ok().map(|v| Series {
                        name: row.system.clone(),
                        samples: v.samples.clone(),
                    })
                })
                .collect();
            draw(
                report::propagation_plot_file(case.receivers, case.rate),
                format!(
                    "Workload 4: invalidation delay, {} receivers at {}/s, CDF",
                    case.receivers, case.rate
                ),
                series,
            );
        }
    }
    out
}

fn meta(cli: &Cli, redis_version: &str, systems: &[String], workloads: &[u8]) -> Meta {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, v)| v.trim().to_owned());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let ram_kb: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Meta {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date_utc: utc_date(unix_secs()),
        cpu,
        cores,
        ram_gib: ram_kb / 1048576.0,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        redis_version: redis_version.to_owned(),
        quick: cli.quick,
        systems: systems.to_vec(),
        workloads: workloads.to_vec(),
        poll_tick_us: cli.poll_tick_us,
        elapsed_seconds: 0.0,
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD HH:MM` (UTC) of a Unix time, by the civil-from-days
/// conversion of the proleptic Gregorian calendar.
fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{d:02} {h:02}:{m:02}")
}

#[cfg(test)]
mod tests {
    use super::utc_date;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13");
    }
}
