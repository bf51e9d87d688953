//! `cachenode`: the operator tool. Broadcasts invalidations to every
//! instance of a namespace from a shell or a deploy script, lists key sets,
//! watches the bus, and reports the namespace's counters.
//!
//! Exit status: 0 ok, 1 operational error, 2 usage error.

mod cli;
mod output;

use std::process::ExitCode;

use cachenode::{redact_url, CacheNode, Error};
use clap::{CommandFactory, Parser};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use cli::{Cli, Command, Target};

/// Why a command failed, and so the exit status.
#[derive(Debug)]
enum Failure {
    /// Exit 1.
    Operational(String),
    /// Exit 2 (clap's own usage errors exit by themselves).
    Usage(String),
}

impl Failure {
    /// A library error: invalid input is a usage error, the rest is
    /// operational. `url` (redacted) is named unless the message has it.
    fn from_error(e: Error, url: &str) -> Self {
        match e {
            Error::Config(msg) => Failure::Usage(msg),
            e @ Error::Connect { .. } => Failure::Operational(e.to_string()),
            e => Failure::Operational(format!("{e} (Redis at {})", redact_url(url))),
        }
    }
}

/// What the command prints on success.
struct Report {
    json: Value,
    text: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(json, Failure::Operational(format!("cannot start: {e}"))),
    };
    match runtime.block_on(run(&cli)) {
        Ok(Some(report)) => {
            if json {
                println!("{}", report.json);
            } else if !report.text.is_empty() {
                println!("{}", report.text);
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(f) => fail(json, f),
    }
}

fn fail(json: bool, failure: Failure) -> ExitCode {
    match failure {
        Failure::Operational(msg) => {
            if json {
                println!("{}", json!({ "error": msg }));
            }
            eprintln!("cachenode: error: {msg}");
            ExitCode::from(1)
        }
        Failure::Usage(msg) => {
            // Exits 2, like clap's own usage errors.
            Cli::command()
                .error(clap::error::ErrorKind::ValueValidation, msg)
                .exit()
        }
    }
}

/// Connects, runs the command, shuts the node down. `None`: the command
/// printed as it went (`tail`).
async fn run(cli: &Cli) -> Result<Option<Report>, Failure> {
    match &cli.command {
        Command::Invalidate(target) => check_target(target, false)?,
        Command::Delete(target) => check_target(target, true)?,
        _ => {}
    }
    let url = cli.redis_url();
    let mut builder = CacheNode::builder()
        .redis_url(&url)
        .namespace(cli.namespace())
        .without_ram()
        .key_set_sweep_every(None)
        .op_timeout(cli.timeout)
        .connect_timeout(cli.timeout);
    if let Some(secret) = cli.bus_secret().map_err(Failure::Usage)? {
        builder = builder.bus_secret(secret);
    }
    let node = builder
        .build()
        .await
        .map_err(|e| Failure::from_error(e, &url))?;
    let result = match &cli.command {
        Command::Invalidate(target) => invalidate(&node, cli, target).await.map(Some),
        Command::Delete(target) => delete(&node, cli, target).await.map(Some),
        Command::Keysets => keysets(&node).await.map(Some),
        Command::Tail { count } => tail(&node, cli, *count).await.map(|()| None),
        Command::Stats => stats(&node).await.map(Some),
    };
    node.shutdown().await;
    result.map_err(|e| Failure::from_error(e, &url))
}

/// The rules clap's attributes do not express.
fn check_target(target: &Target, delete: bool) -> Result<(), Failure> {
    if !target.args.is_empty() && !delete {
        return Err(Failure::Usage(
            "--args applies to `delete` (values are found through the function's key set)"
                .to_owned(),
        ));
    }
    if !target.args.is_empty() && target.funcs.len() != 1 {
        return Err(Failure::Usage(
            "--args applies to exactly one --func".to_owned(),
        ));
    }
    if target.all && delete && !target.yes {
        return Err(Failure::Usage(
            "delete --all deletes every value of the namespace from Redis: add --yes to confirm"
                .to_owned(),
        ));
    }
    if target.yes && !delete {
        return Err(Failure::Usage("--yes confirms `delete --all`".to_owned()));
    }
    Ok(())
}

/// `cachenode invalidate`: the RAM of every instance; Redis keeps its values.
async fn invalidate(node: &CacheNode, cli: &Cli, target: &Target) -> cachenode::Result<Report> {
    let ns = node.namespace().to_owned();
    if !target.keys.is_empty() {
        let keys: Vec<&str> = target.keys.iter().map(String::as_str).collect();
        node.invalidate_many(&keys).await?;
        return Ok(Report {
            text: format!(
                "dropped {} key(s) from the RAM of every instance of {ns} (Redis values kept)",
                keys.len()
            ),
            json: json!({ "command": "invalidate", "namespace": ns, "keys": keys }),
        });
    }
    if target.all {
        node.invalidate_all().await?;
        return Ok(Report {
            text: format!(
                "dropped everything from the RAM of every instance of {ns} (Redis values kept)"
            ),
            json: json!({ "command": "invalidate", "namespace": ns, "all": true }),
        });
    }
    for name in &target.funcs {
        node.invalidate_function(name).await?;
        if !cli.json && node.func_key_set_size(name).await? == 0 {
            eprintln!(
                "note: {name} has no key set in {ns}; check the name (`cachenode keysets` \
                 lists the functions with values in Redis; a RAM-only function has none)"
            );
        }
    }
    Ok(Report {
        text: format!(
            "dropped {} function(s) from the RAM of every instance of {ns} (Redis values kept)",
            target.funcs.len()
        ),
        json: json!({ "command": "invalidate", "namespace": ns, "funcs": target.funcs }),
    })
}

/// `cachenode delete`: Redis and the RAM of every instance.
async fn delete(node: &CacheNode, cli: &Cli, target: &Target) -> cachenode::Result<Report> {
    let ns = node.namespace().to_owned();
    if !target.keys.is_empty() {
        let keys: Vec<&str> = target.keys.iter().map(String::as_str).collect();
        let existed = node.delete_many(&keys).await?;
        return Ok(Report {
            text: format!(
                "deleted {} of {} key(s) from Redis (the others had no value) and dropped all from the RAM of every instance of {ns}",
                existed.len(),
                keys.len(),
            ),
            json: json!({
                "command": "delete",
                "namespace": ns,
                "keys": keys,
                "deleted": existed,
            }),
        });
    }
    if target.all {
        let deleted = node.delete_all().await?;
        return Ok(Report {
            text: format!(
                "deleted {deleted} Redis key(s) of {ns} and dropped everything from the RAM of every instance"
            ),
            json: json!({ "command": "delete", "namespace": ns, "all": true, "deleted": deleted }),
        });
    }
    if !target.args.is_empty() {
        return delete_some(node, cli, target).await;
    }
    delete_functions(node, cli, &target.funcs).await
}

/// Every value of each function, with a progress bar sized by key sets.
async fn delete_functions(
    node: &CacheNode,
    cli: &Cli,
    funcs: &[String],
) -> cachenode::Result<Report> {
    let mut sizes = Vec::with_capacity(funcs.len());
    for name in funcs {
        sizes.push(node.func_key_set_size(name).await?);
    }
    let bar = progress_bar(cli.json, Some(sizes.iter().sum()));
    let mut results = Vec::new();
    let mut lines = Vec::new();
    for (name, size) in funcs.iter().zip(&sizes) {
        bar.set_message(name.clone());
        let base = bar.position();
        let deleted = node
            .delete_functions(&[name.as_str()], |_, p| bar.set_position(base + p.deleted))
            .await;
        let deleted = match deleted {
            Ok(n) => n,
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        };
        if *size == 0 && !cli.json {
            bar.suspend(|| {
                eprintln!(
                    "note: {name} has no key set in {}; check the name (`cachenode keysets` lists them)",
                    node.namespace()
                )
            });
        }
        lines.push(format!(
            "{name}: deleted {deleted} value(s) and dropped it from the RAM of every instance"
        ));
        results.push(json!({ "name": name, "key_set_size": size, "deleted": deleted }));
    }
    bar.finish_and_clear();
    let total: u64 = results.iter().filter_map(|r| r["deleted"].as_u64()).sum();
    Ok(Report {
        text: lines.join("\n"),
        json: json!({
            "command": "delete",
            "namespace": node.namespace(),
            "functions": results,
            "deleted": total,
        }),
    })
}

/// The values of one function whose arguments match `--args`.
async fn delete_some(node: &CacheNode, cli: &Cli, inv: &Target) -> cachenode::Result<Report> {
    let name = &inv.funcs[0];
    let mut filter = cachenode::Args::new();
    for a in &inv.args {
        filter = a.add_to(filter)?;
    }
    let mut clearing = node.delete_function_some(name, &filter)?;
    let bar = progress_bar(cli.json, None);
    bar.set_message(name.clone());
    let deleted = loop {
        match clearing.step().await {
            Ok(p) => {
                bar.set_position(p.deleted);
                if p.finished {
                    break p.deleted;
                }
            }
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        }
    };
    bar.finish_and_clear();
    let shown: Vec<String> = inv.args.iter().map(ToString::to_string).collect();
    if deleted == 0 && !cli.json {
        eprintln!(
            "note: nothing matched; partial deletion needs a function built with \
             key_args(ArgsInKey::Each), and the argument names and types it has"
        );
    }
    Ok(Report {
        text: format!(
            "{name} ({}): deleted {deleted} matching value(s) and dropped them from the RAM of every instance",
            shown.join(" ")
        ),
        json: json!({
            "command": "delete",
            "namespace": node.namespace(),
            "function": name,
            "args": shown,
            "deleted": deleted,
        }),
    })
}

/// A bar on stderr (hidden with --json, and by indicatif when stderr is
/// not a terminal); a spinner when the total is unknown.
fn progress_bar(json: bool, total: Option<u64>) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    let target = ProgressDrawTarget::stderr();
    match total {
        Some(total) => {
            let bar = ProgressBar::with_draw_target(Some(total), target);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} deleted (eta {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        }
        None => {
            let bar = ProgressBar::with_draw_target(None, target);
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} {msg}: {pos} deleted ({elapsed})")
            {
                bar.set_style(style);
            }
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        }
    }
}

async fn keysets(node: &CacheNode) -> cachenode::Result<Report> {
    let sets = node.key_sets().await?;
    let text = if sets.is_empty() {
        format!("no function has a key set in {}", node.namespace())
    } else {
        let width = sets.iter().map(|(n, _)| n.len()).max().unwrap_or(0).max(8);
        let mut out = format!("{:<width$}  KEYS", "FUNCTION");
        for (name, size) in &sets {
            out.push_str(&format!("\n{name:<width$}  {size}"));
        }
        out
    };
    let functions: Vec<Value> = sets
        .iter()
        .map(|(name, size)| json!({ "name": name, "keys": size }))
        .collect();
    Ok(Report {
        text,
        json: json!({ "namespace": node.namespace(), "functions": functions }),
    })
}

async fn stats(node: &CacheNode) -> cachenode::Result<Report> {
    let s = node.namespace_stats().await?;
    let log_from = s
        .log_first_seq
        .map_or_else(String::new, |f| format!(" (from seq {f})"));
    let text = format!(
        "namespace   {}\n\
         bus seq     {}\n\
         bus log     {} message(s){log_from}\n\
         bus epoch   {}\n\
         keys        {} (plain values {}, function values {})\n\
         functions   {} with key sets",
        node.namespace(),
        s.bus_seq,
        s.log_len,
        s.epoch.as_deref().unwrap_or("-"),
        s.keys,
        s.plain_values,
        s.func_values,
        s.functions,
    );
    Ok(Report {
        text,
        json: json!({
            "namespace": node.namespace(),
            "bus_seq": s.bus_seq,
            "log_len": s.log_len,
            "log_first_seq": s.log_first_seq,
            "epoch": s.epoch,
            "keys": s.keys,
            "plain_values": s.plain_values,
            "func_values": s.func_values,
            "functions": s.functions,
        }),
    })
}

/// Prints messages as they come, until `count` or the connection is lost.
async fn tail(node: &CacheNode, cli: &Cli, count: Option<u64>) -> cachenode::Result<()> {
    let mut bus = node.tail_bus().await?;
    if !cli.json {
        eprintln!("listening on {} (Ctrl-C to stop)", bus.channel());
    }
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        let Some(message) = bus.next().await else {
            return Err(Error::Redis {
                op: "tail",
                source: redis_lost(),
            });
        };
        seen += 1;
        match (&message, cli.json) {
            (Ok(m), false) => println!("{}", output::message_text(m)),
            (Ok(m), true) => println!("{}", output::message_json(m, output::now_us())),
            (Err(bad), false) => println!("{}", output::malformed_text(bad)),
            (Err(bad), true) => println!("{}", output::malformed_json(bad)),
        }
    }
    Ok(())
}

/// The error for a subscription that ended.
fn redis_lost() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "connection to Redis lost",
    ))
}
