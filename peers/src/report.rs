//! The run's results: `results.json` (everything measured) and `report.md`
//! (one table per workload, each system beside cachenode, and the plots).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::workloads::hit::{HitResult, BATCHES};
use crate::workloads::memory::MemResult;
use crate::workloads::propagation::{self, Case, GRACE};
use crate::workloads::redis_hit::RedisHitResult;
use crate::workloads::zipf::{self, ZipfResult};
use crate::workloads::{Outcome, Row};

/// Where and how the run happened.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    pub command: String,
    pub date_utc: String,
    pub cpu: String,
    pub cores: usize,
    pub ram_gib: f64,
    pub kernel: String,
    pub redis_version: String,
    pub quick: bool,
    pub systems: Vec<String>,
    pub workloads: Vec<u8>,
    /// Workload 4's poll pacing (0: yield).
    pub poll_tick_us: u64,
    pub elapsed_seconds: f64,
}

/// A row of workload 5, as reported (the workload's own rows, copied).
#[derive(Clone, Debug, Serialize)]
pub struct ClearOut {
    pub system: String,
    pub method: String,
    pub keys_deleted: u64,
    pub seconds: f64,
    pub note: String,
}

/// A plot written beside the report.
#[derive(Clone, Debug, Serialize)]
pub struct Plot {
    pub title: String,
    pub file: String,
}

/// Everything measured. `None` for a workload not run.
#[derive(Debug, Serialize)]
pub struct Results {
    pub meta: Meta,
    /// BentoCache: `None` when it ran, otherwise why it was skipped.
    pub bento_skipped: Option<String>,
    pub hit: Option<Vec<Row<HitResult>>>,
    pub redis_hit: Option<Vec<Row<RedisHitResult>>>,
    pub redis_hit_keys: usize,
    pub zipf: Option<Vec<Row<ZipfResult>>>,
    pub zipf_seconds: f64,
    pub propagation: Option<Vec<Case>>,
    pub clear: Option<Outcome<Vec<ClearOut>>>,
    pub memory: Option<Vec<Row<MemResult>>>,
    pub memory_entries: u64,
    pub plots: Vec<Plot>,
}

/// Writes `results.json` and `report.md` into `dir`.
pub fn write(dir: &Path, r: &Results) -> anyhow::Result<()> {
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("report.md"), markdown(r))?;
    Ok(())
}

/// The report's text.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    header(&mut s, r);
    if let Some(rows) = &r.hit {
        hit(&mut s, rows);
    }
    if let Some(rows) = &r.redis_hit {
        redis_hit(&mut s, rows, r.redis_hit_keys);
    }
    if let Some(rows) = &r.zipf {
        zipf(&mut s, rows, r.zipf_seconds);
    }
    if let Some(cases) = &r.propagation {
        propagation(&mut s, cases, r.meta.poll_tick_us);
    }
    if let Some(c) = &r.clear {
        clear(&mut s, c);
    }
    if let Some(rows) = &r.memory {
        memory(&mut s, rows, r.memory_entries);
    }
    plots(&mut s, &r.plots);
    s
}

fn header(s: &mut String, r: &Results) {
    let m = &r.meta;
    let _ = writeln!(s, "# cachenode beside its peers\n");
    let _ = writeln!(s, "- Command: `{}`", m.command);
    let _ = writeln!(s, "- Date (UTC): {}", m.date_utc);
    let _ = writeln!(
        s,
        "- Machine: {}, {} cores, {:.1} GiB RAM, Linux {}",
        m.cpu, m.cores, m.ram_gib, m.kernel
    );
    let _ = writeln!(
        s,
        "- redis-server {} started by the harness on a free loopback port; every system uses it; `FLUSHALL` between workloads",
        m.redis_version
    );
    let _ = writeln!(
        s,
        "- Mode: {}; workloads {}; systems: {}",
        if m.quick { "quick" } else { "default" },
        m.workloads
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        m.systems.join(", ")
    );
    let _ = writeln!(s, "- Elapsed: {:.1} s", m.elapsed_seconds);
    match &r.bento_skipped {
        None => {}
        Some(why) => {
            let _ = writeln!(s, "- BentoCache (Node.js): **skipped**: {}", cell(why));
        }
    }
    let _ = writeln!(
        s,
        "\nThe harness and the nodes of every system run in one process (tokio, 2 worker \
         threads) on the same machine as redis-server. Ratios are to cachenode's figure in \
         the same table (>1: larger than cachenode's)."
    );
}

/// `v / base` as `1.23x`, or `—`.
fn ratio(v: Option<f64>, base: Option<f64>) -> String {
    match (v, base) {
        (Some(v), Some(b)) if v.is_finite() && b.is_finite() && b != 0.0 => {
            format!("{:.2}x", v / b)
        }
        _ => "—".into(),
    }
}

/// A number with a precision that suits its size.
fn num(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v.abs() >= 100.0 {
        group(format!("{v:.0}"))
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Thousands separated by a thin space.
fn group(digits: String) -> String {
    let (sign, d) = digits
        .strip_prefix('-')
        .map_or(("", digits.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i) % 3 == 0 {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// Text made safe for a table cell.
fn cell(text: &str) -> String {
    let one_line = text.replace(['\n', '\r'], " ").replace('|', "\\|");
    if one_line.chars().count() > 300 {
        format!("{}…", one_line.chars().take(300).collect::<String>())
    } else {
        one_line
    }
}

/// The cell of a row without a measurement.
fn no_value<T>(o: &Outcome<T>) -> String {
    match o {
        Outcome::Ok(_) => String::new(),
        Outcome::Failed(e) => format!("**error**: {}", cell(e)),
        Outcome::Skipped(why) => format!("n/a: {}", cell(why)),
    }
}

fn base<'a, T>(rows: &'a [Row<T>], name: &str) -> Option<&'a T> {
    rows.iter()
        .find(|r| r.system == name)
        .and_then(|r| r.outcome.ok())
}

fn hit(s: &mut String, rows: &[Row<HitResult>]) {
    let _ = writeln!(
        s,
        "\n## 1. Hit of a small struct\n\n\
         One node; `set` then `get` of one key, then `get` in a loop. ns/op is the median of \
         {BATCHES} batches on one thread (each batch about 50 ms; 20 ms in quick mode); ops/s \
         with 1 and 2 OS threads reading in a loop, each thread driving the futures on its own \
         current-thread runtime. Both threads read the same key, so they share that entry's \
         bookkeeping in the RAM layer. Systems without a RAM layer answer from Redis, and \
         say so.\n"
    );
    let _ = writeln!(
        s,
        "| system | kind | what a hit is | ns/op (median) | ratio to cachenode | ops/s, 1 thread | ops/s, 2 threads |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let b = base(rows, "cachenode").map(|r| r.ns_per_op);
    for row in rows {
        match &row.outcome {
            Outcome::Ok(r) => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    row.system,
                    row.kind,
                    r.what,
                    num(r.ns_per_op),
                    ratio(Some(r.ns_per_op), b),
                    r.ops_per_s_1.map_or("not measured".into(), num),
                    r.ops_per_s_2.map_or("not measured".into(), num),
                );
            }
            o => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | — | — | — | — |",
                    row.system,
                    row.kind,
                    no_value(o)
                );
            }
        }
    }
}

fn redis_hit(s: &mut String, rows: &[Row<RedisHitResult>], keys: usize) {
    let _ = writeln!(
        s,
        "\n## 2. Redis hit (RAM cold) and set\n\n\
         A writer node sets {keys} distinct keys one after the other (set latency); a second, \
         fresh node then reads each once (for a two-layer system every read misses its empty \
         RAM and is answered by Redis). Both nodes and every task they spawn run on one \
         thread (a current-thread runtime per system), so no latency holds a wake-up of \
         another thread. Latencies in µs, p50 = median. cachenode's set is \
         one round trip running a script (`SET`, then `INCR` + `XADD` + `PUBLISH` of the \
         invalidation) followed by the RAM insert. Plot: \
         [Redis-hit CDF](w2-redis-hit-cdf.svg).\n"
    );
    let _ = writeln!(
        s,
        "| system | kind | Redis hit p50 / p99 (µs) | hit p50 ratio to cachenode | set p50 / p99 (µs) | set p50 ratio to cachenode | what a set is |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let base_row = base(rows, "cachenode");
    let bh = base_row.and_then(|r| r.hit_us.as_ref()).map(|h| h.p50);
    let bs = base_row.map(|r| r.set_us.p50);
    for row in rows {
        match &row.outcome {
            Outcome::Ok(r) => {
                let (hit, hit_ratio) = match (&r.hit_us, &r.hit_note) {
                    (Some(h), _) => (
                        format!("{} / {}", num(h.p50), num(h.p99)),
                        ratio(Some(h.p50), bh),
                    ),
                    (None, note) => (
                        format!("n/a: {}", cell(note.as_deref().unwrap_or(""))),
                        "—".into(),
                    ),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} / {} | {} | {} |",
                    row.system,
                    row.kind,
                    hit,
                    hit_ratio,
                    num(r.set_us.p50),
                    num(r.set_us.p99),
                    ratio(Some(r.set_us.p50), bs),
                    cell(&r.set_what),
                );
            }
            o => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | — | — | — | — |",
                    row.system,
                    row.kind,
                    no_value(o)
                );
            }
        }
    }
}

fn zipf(s: &mut String, rows: &[Row<ZipfResult>], seconds: f64) {
    let _ = writeln!(
        s,
        "\n## 3. Zipf reads and writes from {} nodes\n\n\
         {} nodes of the system in one process, {} tasks each, for {seconds:.0} s, measured \
         after {:.0} s of the same load (not counted). Keys drawn \
         from {} with a Zipf law (s = {}); {:.0}% writes. A write takes the next version in the \
         source of truth (an array) and `set`s it through its node. A miss loads the version \
         from the source of truth and stores it with the system's fill: `set`, except \
         cachenode's `fill` (SET NX, no bus message: an absent key is in no node's RAM). \
         A **stale read** is a read that began after \
         a write of a newer version had returned, yet got an older version; it counts both the \
         system's invalidation and cache-aside's own race (a loader's set landing after a \
         newer write), which is the same for every system. Hit ratio = reads that returned a \
         value. Where a `set` notifies the other instances (client-side tracking, the \
         two-layer peers' pub/sub), every fill through it also reaches the other nodes' RAM.\n",
        zipf::NODES,
        zipf::NODES,
        zipf::TASKS_PER_NODE,
        zipf::warmup_seconds(seconds < zipf::seconds(false)),
        zipf::KEYS,
        zipf::EXPONENT,
        zipf::WRITE_FRACTION * 100.0
    );
    let _ = writeln!(
        s,
        "| system | kind | ops/s | ratio to cachenode | hit ratio | stale reads (share of reads) | errors |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let b = base(rows, "cachenode").map(|r| r.ops_per_s);
    for row in rows {
        match &row.outcome {
            Outcome::Ok(r) => {
                let errors = match &r.first_error {
                    Some(e) if r.errors > 0 => format!("{} (first: {})", r.errors, cell(e)),
                    _ => r.errors.to_string(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.3} | {} ({:.4}%) | {} |",
                    row.system,
                    row.kind,
                    num(r.ops_per_s),
                    ratio(Some(r.ops_per_s), b),
                    r.hit_ratio,
                    r.stale_reads,
                    100.0 * r.stale_reads as f64 / r.reads.max(1) as f64,
                    errors,
                );
            }
            o => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | — | — | — | — |",
                    row.system,
                    row.kind,
                    no_value(o)
                );
            }
        }
    }
}

fn propagation(s: &mut String, cases: &[Case], poll_tick_us: u64) {
    let secs = cases.first().map_or(0.0, |c| c.seconds);
    let between = if poll_tick_us == 0 {
        "yielding between passes".to_owned()
    } else {
        format!("waiting for the next {poll_tick_us} µs tick between passes (`--poll-tick-us`)")
    };
    let _ = writeln!(
        s,
        "\n## 4. Invalidation propagation delay\n\n\
         Per row, {secs} s of invalidations at the rate. Keys `p:{{i}}` are written (version 1) \
         and read by every receiver beforehand so they sit in its RAM. The sender takes `t0`, \
         calls `invalidate(p:{{i}})` and, once it returns, hands `(i, t0)` to every receiver, \
         whose one poller task `get`s its pending keys until the value is gone or not version \
         1 (delay = now − `t0`), {between}. Not observed within {} s after the last \
         invalidation = lost. The delay includes the sender's own `invalidate` call, whose \
         latency has its own column. `{}`: `PUBLISH` of a sequence number to N plain \
         subscriber connections, delay = receive − `t0` taken before the `PUBLISH` (the \
         floor; no pollers). Ratio: p99 to cachenode's p99 in the same case.\n\n\
         Read with care: the pollers (one per receiver) never sleep, so with 8 receivers at \
         10k/s they, the systems' own invalidation listeners and redis-server compete for the \
         same 2 cores. Once a receiver falls behind, its pending list and so the cost of each \
         poll pass grow, and delays climb to hundreds of ms. Systems that apply \
         invalidations in the process (a listener per node) suffer most; Redis-only systems \
         have nothing to apply. BentoCache runs in its own Node.js process (one thread), \
         outside this contention.\n",
        GRACE.as_secs(),
        propagation::BARE
    );
    let _ = writeln!(
        s,
        "| receivers | rate/s | system | delay p50 / p99 / max (µs) | p99 ratio to cachenode | observed / expected | `invalidate` call p50 / p99 (µs) | achieved rate/s | note |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for case in cases {
        let b = base(&case.rows, "cachenode").map(|r| r.delay_us.p99);
        for row in &case.rows {
            let prefix = format!("| {} | {} | {}", case.receivers, case.rate, row.system);
            let Outcome::Ok(r) = &row.outcome else {
                let _ = writeln!(
                    s,
                    "{prefix} | {} | — | — | — | — | |",
                    no_value(&row.outcome)
                );
                continue;
            };
            let mut notes = Vec::new();
            if r.send_errors > 0 {
                notes.push(format!("{} invalidations failed", r.send_errors));
            }
            if r.not_primed > 0 {
                notes.push(format!("{} keys not in RAM before the run", r.not_primed));
            }
            if r.read_errors > 0 {
                notes.push(format!("{} read errors", r.read_errors));
            }
            if let Some(n) = &r.note {
                notes.push(cell(n));
            }
            let loss = if r.observed < r.expected {
                " **(loss)**"
            } else {
                ""
            };
            let call = r
                .call_us
                .as_ref()
                .map_or("—".into(), |c| format!("{} / {}", num(c.p50), num(c.p99)));
            let _ = writeln!(
                s,
                "{prefix} | {} / {} / {} | {} | {} / {}{loss} | {call} | {} | {} |",
                num(r.delay_us.p50),
                num(r.delay_us.p99),
                num(r.delay_us.max),
                ratio(Some(r.delay_us.p99), b),
                r.observed,
                r.expected,
                num(r.achieved_rate),
                notes.join("; "),
            );
        }
    }
    let _ = writeln!(s, "\nPlots (delay CDF per system):");
    for case in cases {
        let _ = writeln!(
            s,
            "[{} receivers at {}/s]({})",
            case.receivers,
            case.rate,
            propagation_plot_file(case.receivers, case.rate)
        );
    }
}

/// File name of the delay CDF of one case.
pub fn propagation_plot_file(receivers: usize, rate: u32) -> String {
    format!("w4-propagation-{receivers}x{rate}-cdf.svg")
}

fn clear(s: &mut String, c: &Outcome<Vec<ClearOut>>) {
    let _ = writeln!(
        s,
        "\n## 5. Deleting every value of one function\n\n\
         Run on a flushed server by the clear workload: the keys of one function among the \
         keys of others, deleted by each system's own means.\n"
    );
    let rows = match c {
        Outcome::Ok(rows) => rows,
        o => {
            let _ = writeln!(s, "{}", no_value(o));
            return;
        }
    };
    let _ = writeln!(
        s,
        "| system | method | keys deleted | seconds | ratio to cachenode | note |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let b = rows
        .iter()
        .find(|r| r.system == "cachenode")
        .map(|r| r.seconds);
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            cell(&r.system),
            cell(&r.method),
            r.keys_deleted,
            num(r.seconds),
            ratio(Some(r.seconds), b),
            cell(&r.note),
        );
    }
}

fn memory(s: &mut String, rows: &[Row<MemResult>], entries: u64) {
    let _ = writeln!(
        s,
        "\n## 6. Memory per entry\n\n\
         Each system in a child process: RSS (`VmRSS`) of the process, then of the process \
         with one node built (and one entry written and read), then after {entries} entries \
         were written and each read back once (64 keys in flight; read so that layers filled \
         on read hold them too) and the RAM layer settled. Bytes/entry = (after − empty \
         node) / entries. Payload = the mean bincode-encoded size of the `Item`s written; \
         beyond payload = bytes/entry − payload: the key, the layer's bookkeeping and \
         allocator slack. Systems without a RAM layer show what their client keeps. A layer \
         that allocates its table for its whole capacity up front (the redis crate's \
         client-side cache, sized from the same 1 GiB budget) shows it in \"empty node\" and, as \
         entries touch its pages, in the delta.\n"
    );
    let _ = writeln!(
        s,
        "| system | kind | RSS: process / empty node / after (MiB) | bytes/entry | payload (B, bincode `Item`) | beyond payload (B/entry) | ratio to cachenode | write + read time (s) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    let b = base(rows, "cachenode").and_then(|r| r.beyond_payload);
    let mib = |b: u64| b as f64 / 1048576.0;
    for row in rows {
        match &row.outcome {
            Outcome::Ok(r) => {
                let c = &r.child;
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.1} / {:.1} / {:.1} | {} | {:.1} | {} | {} | {:.1} |",
                    row.system,
                    row.kind,
                    mib(c.rss_base),
                    mib(c.rss_before),
                    mib(c.rss_after),
                    num(r.delta_per_entry),
                    c.payload_bytes,
                    r.beyond_payload.map_or("n/a: no RAM layer".into(), num),
                    ratio(r.beyond_payload, b),
                    c.insert_seconds,
                );
            }
            o => {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | — | — | — | — | — |",
                    row.system,
                    row.kind,
                    no_value(o)
                );
            }
        }
    }
}

fn plots(s: &mut String, plots: &[Plot]) {
    if plots.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n## Plots\n");
    for p in plots {
        let _ = writeln!(s, "### {}\n\n![{}]({})\n", p.title, p.title, p.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_ratios() {
        assert_eq!(num(1234567.0), "1\u{2009}234\u{2009}567");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(f64::NAN), "—");
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50x");
        assert_eq!(ratio(Some(3.0), None), "—");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
