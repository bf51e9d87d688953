//! Command-line syntax (clap derive).

use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

/// Operator tool for cachenode: broadcast invalidations to every instance of
/// a namespace, inspect key sets, watch the bus.
#[derive(Debug, Parser)]
#[command(name = "cachenode", version)]
#[command(
    after_help = "Exit status: 0 ok, 1 operational error (Redis unreachable, \
command failed), 2 usage error."
)]
pub struct Cli {
    /// Redis URL (redis:// or rediss://); a password in it is never shown
    /// [env: CACHE_REDIS_URL] [default: redis://127.0.0.1:6379]
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "URL"
    )]
    pub redis_url: Option<String>,

    /// Namespace (key prefix) of the instances to address
    /// [env: CACHE_KEY_PREFIX] [default: cachenode]
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "NS"
    )]
    pub namespace: Option<String>,

    /// File holding the bus secret of the namespace's nodes (their
    /// `bus_secret`), to sign what this tool publishes and verify what
    /// `tail` shows; one trailing newline is ignored. Else the secret
    /// itself from CACHENODE_BUS_SECRET, when set and not empty. Needed
    /// whenever the nodes have a secret: they ignore unsigned messages
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "PATH"
    )]
    pub bus_secret_file: Option<std::path::PathBuf>,

    /// Machine-readable output: one JSON document on stdout (one per line
    /// for `tail`); no progress bar.
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// Bound on connecting and on every Redis command, in seconds.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        default_value = "5",
        value_name = "SECONDS",
        value_parser = parse_seconds
    )]
    pub timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The Redis URL: the flag, else `CACHE_REDIS_URL` when set and not
    /// empty (as the library reads it), else the local default.
    pub fn redis_url(&self) -> String {
        pick(&self.redis_url, "CACHE_REDIS_URL", DEFAULT_REDIS_URL)
    }

    /// The namespace: the flag, else `CACHE_KEY_PREFIX` when set and not
    /// empty, else the library's default.
    pub fn namespace(&self) -> String {
        pick(
            &self.namespace,
            "CACHE_KEY_PREFIX",
            cachenode::DEFAULT_NAMESPACE,
        )
    }
}

impl Cli {
    /// The bus secret: the contents of `--bus-secret-file` (one trailing
    /// `\n` or `\r\n` removed), else `CACHENODE_BUS_SECRET` when set and
    /// not empty, else none.
    pub fn bus_secret(&self) -> Result<Option<Vec<u8>>, String> {
        if let Some(path) = &self.bus_secret_file {
            let mut secret = std::fs::read(path)
                .map_err(|e| format!("cannot read --bus-secret-file {}: {e}", path.display()))?;
            if secret.ends_with(b"\n") {
                secret.pop();
                if secret.ends_with(b"\r") {
                    secret.pop();
                }
            }
            if secret.is_empty() {
                return Err(format!("--bus-secret-file {} is empty", path.display()));
            }
            return Ok(Some(secret));
        }
        Ok(std::env::var_os(BUS_SECRET_VAR)
            .filter(|v| !v.is_empty())
            .map(|v| v.into_encoded_bytes()))
    }
}

/// The variable that may hold the bus secret itself.
pub const BUS_SECRET_VAR: &str = "CACHENODE_BUS_SECRET";

/// Where the CLI looks for Redis when told nothing.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

fn pick(flag: &Option<String>, var: &str, default: &str) -> String {
    flag.clone()
        .or_else(|| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| default.to_owned())
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drop keys, functions or everything from the RAM of every instance;
    /// Redis keeps its values.
    Invalidate(Target),
    /// Delete keys, functions (or some of their values) or everything:
    /// from Redis and from the RAM of every instance.
    Delete(Target),
    /// List the functions that have key sets, with their sizes.
    Keysets,
    /// Print invalidations as they are published on the bus.
    Tail {
        /// Exit after this many messages (malformed ones included).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Bus position and log, keys and functions of the namespace.
    Stats,
}

/// What `cachenode invalidate` and `cachenode delete` act on.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["keys", "funcs", "all"])))]
#[command(after_help = "Examples:
  cachenode invalidate --key user:1 --key user:2      # RAM of every instance
  cachenode delete --key user:1                       # and the Redis value
  cachenode invalidate --func get_user                # a function's values, RAM of every instance
  cachenode delete --func get_user                    # and in Redis, through its key set
  cachenode delete --func get_profile --args user=u64:42 lang=str:fr
  cachenode invalidate --all                          # RAM of every instance
  cachenode delete --all --yes                        # and every Redis value of the namespace")]
pub struct Target {
    /// A plain key (repeatable).
    #[arg(long = "key", value_name = "KEY")]
    pub keys: Vec<String>,

    /// A cached function: every value of it (repeatable); `delete` walks
    /// its key set in Redis.
    #[arg(long = "func", value_name = "NAME")]
    pub funcs: Vec<String>,

    /// Everything in the namespace.
    #[arg(long)]
    pub all: bool,

    /// `delete` with one --func: only the values whose arguments have these
    /// values (functions built with full-args keys). TYPE is the argument's
    /// type, as values are matched by their encoding: u64, i64, u32, i32,
    /// bool or str (for String and &str).
    #[arg(
        long,
        value_name = "NAME=TYPE:VALUE",
        num_args = 1..,
        requires = "funcs",
        value_parser = parse_arg_filter
    )]
    pub args: Vec<ArgFilter>,

    /// Confirms `delete --all`.
    #[arg(long, requires = "all")]
    pub yes: bool,
}

/// One `--args` filter: an argument's name and value.
#[derive(Debug, Clone, PartialEq)]
pub struct ArgFilter {
    /// The argument's name.
    pub name: String,
    /// Its value, typed.
    pub value: ArgValue,
}

/// An argument value, of the type the function's argument has (values are
/// matched by their bincode encoding, which depends on the type).
#[derive(Debug, Clone, PartialEq)]
pub enum ArgValue {
    /// `u64:…`
    U64(u64),
    /// `i64:…`
    I64(i64),
    /// `u32:…`
    U32(u32),
    /// `i32:…`
    I32(i32),
    /// `bool:true|false`
    Bool(bool),
    /// `str:…` (a `String` or `&str` argument)
    Str(String),
}

impl ArgFilter {
    /// Adds this filter to `args`.
    pub fn add_to(&self, args: cachenode::Args) -> cachenode::Result<cachenode::Args> {
        let n = self.name.as_str();
        match &self.value {
            ArgValue::U64(v) => args.arg(n, v),
            ArgValue::I64(v) => args.arg(n, v),
            ArgValue::U32(v) => args.arg(n, v),
            ArgValue::I32(v) => args.arg(n, v),
            ArgValue::Bool(v) => args.arg(n, v),
            ArgValue::Str(v) => args.arg(n, v.as_str()),
        }
    }
}

impl std::fmt::Display for ArgFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = &self.name;
        match &self.value {
            ArgValue::U64(v) => write!(f, "{n}=u64:{v}"),
            ArgValue::I64(v) => write!(f, "{n}=i64:{v}"),
            ArgValue::U32(v) => write!(f, "{n}=u32:{v}"),
            ArgValue::I32(v) => write!(f, "{n}=i32:{v}"),
            ArgValue::Bool(v) => write!(f, "{n}=bool:{v}"),
            ArgValue::Str(v) => write!(f, "{n}=str:{v}"),
        }
    }
}

/// Parses `NAME=TYPE:VALUE`.
pub fn parse_arg_filter(s: &str) -> Result<ArgFilter, String> {
    let (name, typed) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=TYPE:VALUE"))?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "argument name {name:?} must be letters, digits and _"
        ));
    }
    let (ty, raw) = typed.split_once(':').ok_or_else(|| {
        format!("{s:?} is not NAME=TYPE:VALUE (TYPE: u64, i64, u32, i32, bool, str)")
    })?;
    fn num<T: std::str::FromStr>(ty: &str, raw: &str) -> Result<T, String> {
        raw.parse()
            .map_err(|_| format!("{raw:?} is not a valid {ty}"))
    }
    let value = match ty {
        "u64" => ArgValue::U64(num(ty, raw)?),
        "i64" => ArgValue::I64(num(ty, raw)?),
        "u32" => ArgValue::U32(num(ty, raw)?),
        "i32" => ArgValue::I32(num(ty, raw)?),
        "bool" => ArgValue::Bool(num(ty, raw)?),
        "str" | "string" => ArgValue::Str(raw.to_owned()),
        other => {
            return Err(format!(
                "unknown type {other:?}: use u64, i64, u32, i32, bool or str"
            ))
        }
    };
    Ok(ArgFilter {
        name: name.to_owned(),
        value,
    })
}

/// Parses a positive number of seconds (`5`, `0.5`).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("{s:?}: give a number of seconds above 0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn syntax_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn arg_filters_parse() {
        assert_eq!(
            parse_arg_filter("user=u64:42").unwrap(),
            ArgFilter {
                name: "user".into(),
                value: ArgValue::U64(42)
            }
        );
        assert_eq!(
            parse_arg_filter("lang=str:a=b:c").unwrap().value,
            ArgValue::Str("a=b:c".into())
        );
        assert_eq!(
            parse_arg_filter("x=bool:true").unwrap().value,
            ArgValue::Bool(true)
        );
        assert_eq!(
            parse_arg_filter("x=i32:-3").unwrap().to_string(),
            "x=i32:-3"
        );
        for bad in [
            "user",
            "user=42",
            "user=u64:x",
            "u-ser=u64:1",
            "=u64:1",
            "x=f64:1",
            "x=u32:-1",
        ] {
            assert!(parse_arg_filter(bad).is_err(), "{bad}");
        }
    }
}
