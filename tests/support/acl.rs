//! The README's ACL: the commands a node sends, and a user restricted to a namespace.

use super::TestRedis;

/// Every command a node sends, as ACL rules (the README documents this list).
/// `watch_keyspace(true)` needs `+psubscribe` on top, with its channels.
pub const ACL_COMMANDS: &[&str] = &[
    "+ping",
    "+time",
    "+get",
    "+set",
    "+mget",
    "+exists",
    "+del",
    "+unlink",
    "+scan",
    "+incr",
    "+pexpire",
    "+sadd",
    "+srem",
    "+sscan",
    "+scard",
    "+smembers",
    "+hset",
    "+hget",
    "+hmget",
    "+hdel",
    "+hscan",
    "+xadd",
    "+xrange",
    "+xrevrange",
    "+xlen",
    "+xdel",
    "+xack",
    "+xgroup|create",
    "+xreadgroup",
    "+xautoclaim",
    "+evalsha",
    "+eval",
    "+script|load",
    "+publish",
    "+subscribe",
];

/// Creates user `app` (password `pw`) restricted to namespace `ns`, with
/// `extra` rules on top: the README's recipe.
pub fn create_user(redis: &TestRedis, ns: &str, extra: &[&str]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg("app")
        .arg("reset")
        .arg("on")
        .arg(">pw")
        .arg(format!("~{ns}:*"))
        .arg(format!("~{{{ns}:*"))
        .arg(format!("&{ns}:*"))
        .arg("-@all");
    for rule in ACL_COMMANDS.iter().chain(extra) {
        cmd.arg(*rule);
    }
    let _: () = cmd.query(&mut redis.conn()).expect("ACL SETUSER");
}

/// The URL of user `app` on `redis`.
pub fn user_url(redis: &TestRedis) -> String {
    format!("redis://app:pw@127.0.0.1:{}", redis.port())
}
