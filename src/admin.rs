//! Operator tools: what the `cachenode` binary (or any admin tooling) needs
//! beyond the everyday API: partial deletion of a function's values by its
//! name alone, counters of the namespace in Redis, and a live view of the
//! invalidation bus.
//!
//! ```no_run
//! # async fn f() -> cachenode::Result<()> {
//! use cachenode::{Args, CacheNode};
//! let node = CacheNode::builder()
//!     .redis_url("redis://127.0.0.1:6379")
//!     .without_ram()
//!     .build()
//!     .await?;
//! // Every value of full-args function `get_profile` called with user = 42.
//! let filter = Args::new().arg("user", &42u64)?;
//! let deleted = node.delete_function_some("get_profile", &filter)?.run(|_| {}).await?;
//! let stats = node.namespace_stats().await?;
//! println!("deleted {deleted}; bus at seq {}", stats.bus_seq);
//! # Ok(()) }
//! ```

use futures::StreamExt;

use crate::bus::message::{decode_channel_payload_with, BusAuth};
use crate::bus::{BusMessage, MalformedMessage};
use crate::core::Core;
use crate::func::key::{self, Args};
use crate::func::DeleteSome;
use crate::keysets::{KeySets, Walk};
use crate::{Error, Result};

/// Keys asked for per `SCAN` step when counting the namespace's keys.
const SCAN_COUNT: usize = 1000;

/// Masks the password of a Redis URL (`redis://user:***@host`), so that it
/// can be shown in messages and logs.
pub fn redact_url(url: &str) -> String {
    crate::error::redact_url(url)
}

/// What a namespace holds in Redis; see [`CacheNode::namespace_stats`](crate::CacheNode::namespace_stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceStats {
    /// The bus's sequence counter: the number of the last invalidation
    /// published (0: none yet).
    pub bus_seq: u64,
    /// Messages kept in the bus log (the capped stream).
    pub log_len: u64,
    /// The sequence number of the oldest message in the log: a node that
    /// last applied an older one drops its whole RAM when it comes back.
    pub log_first_seq: Option<u64>,
    /// The bus epoch marker (changes when Redis lost the bus's state).
    pub epoch: Option<String>,
    /// Every Redis key of the namespace (values, key sets, bus, locks, …),
    /// counted with `SCAN`.
    pub keys: u64,
    /// Plain values (`{ns}:k:*`) among them.
    pub plain_values: u64,
    /// Values of cached functions (`{ns}:f:*`) among them.
    pub func_values: u64,
    /// Functions that have key sets.
    pub functions: u64,
}

/// A subscription to the invalidation bus's channel; see
/// [`CacheNode::tail_bus`](crate::CacheNode::tail_bus).
pub struct BusTail {
    channel: String,
    auth: Option<BusAuth>,
    stream: redis::aio::PubSubStream,
}

impl std::fmt::Debug for BusTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusTail")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl BusTail {
    /// The channel listened to (`{ns}:bus`).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next message published on the bus, decoded; a payload that does
    /// not decode is returned as a [`MalformedMessage`], and so is, when the
    /// node has a [`bus_secret`](crate::CacheNodeBuilder::bus_secret), one
    /// that is unsigned or badly signed (reason `unsigned` /
    /// `bad_signature`). `None` once the
    /// connection is lost (nothing reconnects: subscribe again).
    pub async fn next(&mut self) -> Option<Result<BusMessage, MalformedMessage>> {
        let msg = self.stream.next().await?;
        Some(decode_channel_payload_with(
            msg.get_payload_bytes(),
            self.auth.as_ref(),
        ))
    }
}

/// See [`CacheNode::delete_function_some`](crate::CacheNode::delete_function_some).
pub(crate) fn delete_function_some(
    core: &Core,
    funcname: &str,
    filter: &Args,
) -> Result<DeleteSome> {
    core.check_open()?;
    key::check_funcname(funcname)?;
    let encoded = key::encode_args(filter)?;
    if encoded.parts().is_empty() {
        return Err(Error::Config(format!(
            "delete_function_some on {funcname:?} needs at least one argument; \
             delete_functions deletes every value"
        )));
    }
    let parts = encoded
        .parts()
        .iter()
        .map(|(name, bytes)| key::arg_part(name, bytes))
        .collect();
    Ok(DeleteSome::new(core.clone(), Walk::new(funcname, parts)))
}

/// See [`CacheNode::func_key_set_size`](crate::CacheNode::func_key_set_size).
pub(crate) async fn func_key_set_size(core: &Core, funcname: &str) -> Result<u64> {
    key::check_funcname(funcname)?;
    let shared = core
        .redis("func_key_set_size")?
        .ok_or(Error::NoSharedLayer {
            op: "func_key_set_size",
        })?;
    KeySets::new(&core.config().keys)
        .size(shared, funcname)
        .await
}

/// See [`CacheNode::namespace_stats`](crate::CacheNode::namespace_stats).
pub(crate) async fn namespace_stats(core: &Core) -> Result<NamespaceStats> {
    core.check_open()?;
    let shared = core.redis("namespace_stats")?.ok_or(Error::NoSharedLayer {
        op: "namespace_stats",
    })?;
    let keys = &core.config().keys;
    let mut pipe = redis::pipe();
    pipe.cmd("GET").arg(keys.bus_seq());
    pipe.cmd("XLEN").arg(keys.bus_log());
    pipe.cmd("XRANGE")
        .arg(keys.bus_log())
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1);
    pipe.cmd("GET").arg(keys.bus_epoch());
    pipe.cmd("SCARD").arg(keys.keyset_registry());
    let mut conn = shared.conn();
    let (bus_seq, log_len, first, epoch, functions): (
        Option<u64>,
        u64,
        redis::streams::StreamRangeReply,
        Option<String>,
        u64,
    ) = shared
        .run("namespace_stats", pipe.query_async(&mut conn))
        .await?;
    let mut stats = NamespaceStats {
        bus_seq: bus_seq.unwrap_or(0),
        log_len,
        log_first_seq: first
            .ids
            .first()
            .and_then(|e| crate::bus::message::seq_of_entry_id(&e.id)),
        epoch,
        functions,
        ..NamespaceStats::default()
    };
    let pattern = keys.namespace_pattern();
    let plain = keys.plain_prefix();
    let func = keys.func_values_prefix();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = shared
            .run(
                "namespace_scan",
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(&mut conn),
            )
            .await?;
        for k in &batch {
            stats.keys += 1;
            if k.starts_with(plain.as_bytes()) {
                stats.plain_values += 1;
            } else if k.starts_with(func.as_bytes()) {
                stats.func_values += 1;
            }
        }
        if next == 0 {
            return Ok(stats);
        }
        cursor = next;
    }
}

/// See [`CacheNode::tail_bus`](crate::CacheNode::tail_bus).
pub(crate) async fn tail_bus(core: &Core) -> Result<BusTail> {
    core.check_open()?;
    let shared = core
        .redis("tail_bus")?
        .ok_or(Error::NoSharedLayer { op: "tail_bus" })?;
    let config = &core.config();
    let channel = config.keys.bus_channel();
    let auth = config
        .bus
        .as_ref()
        .and_then(|b| b.auth(config.keys.namespace()));
    let subscribe = async {
        let mut pubsub = shared.client().get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let pubsub = shared.run("subscribe", subscribe).await?;
    Ok(BusTail {
        channel,
        auth,
        stream: pubsub.into_on_message(),
    })
}
