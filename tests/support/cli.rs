//! The `cachenode` operator binary, run as a child process.

use std::process::Stdio;

use super::spawn::tokio_die_with_parent;

/// The binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_cachenode");

/// The binary with `args`, without the variables it reads (so that a test
/// does not depend on the environment it runs in), its stdin closed, and
/// killed if the test drops it before it ends or the test process dies.
pub fn command(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("CACHE_REDIS_URL")
        .env_remove("CACHE_KEY_PREFIX")
        .env_remove("CACHENODE_BUS_SECRET")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio_die_with_parent(&mut cmd);
    cmd
}
