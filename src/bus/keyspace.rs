//! Keyspace notifications (optional, off by default): deletions, expiries
//! and evictions made outside cachenode (redis-cli, TTL expiry) reach RAM
//! through the server's `__keyspace@{db}__:` channels, on the listener's
//! subscription. Says clearly when the server will not send them.

use std::sync::atomic::Ordering;

use super::listener::{Listener, Source};
use super::BusState;
use crate::shared::SharedLayer;
use crate::Result;

#[derive(Debug, Clone)]
pub(super) struct KeyspaceNames {
    /// `__keyspace@{db}__:`
    pub(super) channel_prefix: String,
    /// `{ns}:`
    pub(super) namespace_prefix: String,
}

impl Listener {
    pub(super) fn on_keyspace_event(&mut self, msg: &redis::Msg) {
        let Some(names) = &self.keyspace else { return };
        let event = msg.get_payload_bytes();
        if !matches!(event, b"del" | b"expired" | b"evicted") {
            return;
        }
        let Some(redis_key) = msg.get_channel_name().strip_prefix(&names.channel_prefix) else {
            return;
        };
        let Some(rest) = redis_key.strip_prefix(&names.namespace_prefix) else {
            return;
        };
        if let Some(ram_key) = crate::keys::ram_key_of(rest) {
            self.local.remove(&ram_key);
            crate::metrics::invalidation_applied(Source::Keyspace.label());
        }
    }
}

/// Subscribes `pubsub` to the namespace's keyspace notifications (of plain
/// and function values) and records in `state` whether it watches them.
pub(super) async fn subscribe(
    shared: &SharedLayer,
    pubsub: &mut redis::aio::PubSub,
    names: &KeyspaceNames,
    state: &BusState,
) -> Result<()> {
    let timeout = shared.op_timeout();
    check_keyspace_config(shared, state).await;
    let mut watching = true;
    for kind in ["k", "f"] {
        let pattern = format!("{}{}{kind}:*", names.channel_prefix, names.namespace_prefix);
        match shared
            .run_within("subscribe", timeout, pubsub.psubscribe(&pattern))
            .await
        {
            Ok(()) => {}
            // Refused by the server (an ACL without these channels): the
            // bus itself still works; say why keyspace watching does not.
            Err(crate::Error::Redis { source, .. })
                if matches!(source.kind(), redis::ErrorKind::Server(_)) =>
            {
                let problem = format!(
                    "cannot subscribe to keyspace notifications {pattern:?} ({source}); \
                         keyspace watching is off, the bus works without it"
                );
                tracing::warn!("{problem}");
                *state
                    .keyspace_problem
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(problem);
                watching = false;
            }
            Err(e) => return Err(e),
        }
    }
    state.keyspace_watching.store(watching, Ordering::Release);
    Ok(())
}

/// Says clearly when the server will not send the notifications we need.
async fn check_keyspace_config(shared: &SharedLayer, state: &BusState) {
    let mut conn = shared.conn();
    let reply: Result<Vec<String>> = shared
        .run(
            "config_get",
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("notify-keyspace-events")
                .query_async(&mut conn),
        )
        .await;
    let problem = match reply {
        Ok(pair) => {
            let flags = pair.get(1).cloned().unwrap_or_default();
            let has = |c| flags.contains(c) || (c != 'K' && flags.contains('A'));
            if has('K') && has('g') && has('x') && has('e') {
                None
            } else {
                Some(format!(
                    "notify-keyspace-events is {flags:?}: it needs K, g, x and e \
                     (e.g. CONFIG SET notify-keyspace-events Kgxe) for deletions, \
                     expiries and evictions outside cachenode to reach RAM"
                ))
            }
        }
        Err(e) => Some(format!(
            "cannot read notify-keyspace-events ({e}); keyspace watching is on \
             but receives nothing unless the server sends K, g, x and e events"
        )),
    };
    if let Some(p) = &problem {
        tracing::warn!("{p}");
    }
    *state
        .keyspace_problem
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = problem;
}
