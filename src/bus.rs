//! The invalidation bus: keeps the RAM layers of all instances coherent.
//!
//! The room: this file holds the [`Bus`] a node runs (its keys, its state,
//! its health, starting and stopping it); `publish` the publish script and
//! the one layout of its arguments; `listener` the listener task (resubscribe
//! loop, channel messages, applying invalidations); `catch_up` the deletion
//! check and the catch-up from the log; `keyspace` keyspace notifications;
//! `message` the wire format and its signatures; `replay` the replay guard.
//!
//! Publishing is one atomic step in Redis (a Lua script): `INCR` the
//! sequence counter, `XADD` the message to a capped stream (the *log*, with
//! entry id `{seq}-0`), `PUBLISH` it on the channel. An invalidation is
//! durable once the script has run; that is when the publishing call returns.
//!
//! Every node with a RAM layer runs one listener task ([`listener`]) that
//! 1. applies channel messages as they arrive, ignoring its own;
//! 2. on a jump in sequence numbers, catches up from the log;
//! 3. after every (re)connect, catches up from the log; when the log no longer
//!    reaches back far enough, or Redis lost its state (the epoch marker
//!    changed), drops its whole RAM layer;
//! 4. every half [`deletion_check_period`](crate::CacheNodeBuilder::deletion_check_period)
//!    reads the counter and catches up if behind: the safety net when pub/sub
//!    silently loses messages. The same read checks that the log still holds
//!    the entry the node applied last, so a server restarted from an older
//!    snapshot or a promoted replica that missed writes (whose counter may
//!    have grown past the node's again) is seen as lost state and drops RAM;
//! 5. renews the RAM layer's *lease* after each check that succeeds: RAM is
//!    served only until one period after the start of the last successful
//!    check. The read path checks the lease itself, so when checks stop
//!    (Redis unreachable or slow, a reader that never yields, a runtime
//!    whose workers are all busy, a listener dead or behind its backlog),
//!    reads go to Redis on time whatever the listener does;
//! 6. optionally watches keyspace notifications for deletions, expiries and
//!    evictions made outside cachenode.
//!
//! **Authentication.** With a [`bus_secret`](crate::CacheNodeBuilder::bus_secret),
//! every body is signed (HMAC-SHA256 over namespace and body; see the
//! `message` module) and the listener drops, without flushing, catching up or
//! advancing, every message that is unsigned or badly signed, counting it in
//! [`BusHealth::unauthenticated`]. A forged *log* entry is skipped (its
//! sequence number cannot also hold a real entry: stream ids are unique)
//! rather than treated as undecodable, which would flush RAM. Genuine
//! signed messages replayed on the channel are refused (the `replay`
//! module). Not covered: clients that delete, trim or rewrite the bus keys
//! (with `DEL`, `XDEL`, `XTRIM`, `SET`); entries added to the log do not
//! stop publishing (see `PUBLISH_SCRIPT`).
//!
//! **Guarantee.** Once an invalidation call returns `Ok`, no node serves the
//! old value from RAM later than `deletion_check_period` plus one Redis
//! round trip, whatever messages are lost and whatever the node's tasks do;
//! normally within one pub/sub hop. (The lease alone gives one period; the
//! round trip is the slack for a read that began before the lease ran out.)
//! A check must complete within one period to renew the lease, so the period
//! allows Redis round trips up to about half of it for RAM to be served all
//! the time; slower links serve RAM part of the time or never.

mod catch_up;
mod keyspace;
pub(crate) mod listener;
pub(crate) mod message;
mod publish;
pub(crate) mod replay;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use message::BusAuth;
pub use message::Invalidation;
pub use message::{decode_channel_payload, BusMessage, MalformedMessage, RamKey};

use crate::keys::Keys;
use crate::local::LocalLayer;
use crate::shared::SharedLayer;
use crate::Result;

/// Default number of messages the log keeps (approximately: `MAXLEN ~`).
/// A node disconnected for longer than it takes to publish this many
/// invalidations drops its whole RAM layer when it comes back.
pub const DEFAULT_LOG_LEN: usize = 100_000;

/// Bus settings.
#[derive(Debug, Clone)]
pub(crate) struct BusConfig {
    pub(crate) deletion_check_period: Duration,
    pub(crate) log_len: usize,
    pub(crate) watch_keyspace: bool,
    /// The shared secret that signs and verifies messages.
    pub(crate) secret: Option<BusSecret>,
}

/// A bus secret; its `Debug` never shows it.
#[derive(Clone)]
pub(crate) struct BusSecret(pub(crate) Arc<[u8]>);

impl std::fmt::Debug for BusSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusSecret(<redacted>)")
    }
}

impl BusConfig {
    /// The MAC for `namespace`, when a secret is set.
    pub(crate) fn auth(&self, namespace: &str) -> Option<BusAuth> {
        self.secret.as_ref().map(|s| BusAuth::new(&s.0, namespace))
    }
}

/// Names of the bus's Redis keys, computed once.
#[derive(Debug, Clone)]
pub(crate) struct BusKeys {
    pub(crate) channel: String,
    pub(crate) seq: String,
    pub(crate) log: String,
    pub(crate) epoch: String,
}

impl BusKeys {
    fn new(keys: &Keys) -> Self {
        BusKeys {
            channel: keys.bus_channel(),
            seq: keys.bus_seq(),
            log: keys.bus_log(),
            epoch: keys.bus_epoch(),
        }
    }
}

/// What the listener reports, shared with the node.
#[derive(Debug, Default)]
pub(crate) struct BusState {
    pub(crate) subscribed: AtomicBool,
    pub(crate) last_applied: AtomicU64,
    pub(crate) last_seen: AtomicU64,
    pub(crate) applied: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) unauthenticated: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) last_check_ok_ms: AtomicU64,
    pub(crate) keyspace_watching: AtomicBool,
    pub(crate) keyspace_problem: Mutex<Option<String>>,
}

/// The bus as a node sees it: for health checks and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BusHealth {
    /// Whether the listener is subscribed to the channel now.
    pub connected: bool,
    /// The sequence number of the last invalidation applied (or skipped as
    /// this node's own).
    pub last_applied_seq: u64,
    /// The highest sequence number seen in Redis.
    pub last_seen_seq: u64,
    /// `last_seen_seq - last_applied_seq`.
    pub lag: u64,
    /// Invalidations from other nodes applied to RAM.
    pub applied: u64,
    /// Messages dropped as malformed, oversized or of an unknown version.
    pub malformed: u64,
    /// Messages dropped because they were unsigned or badly signed, on a
    /// node with a [`bus_secret`](crate::CacheNodeBuilder::bus_secret):
    /// forgeries, or nodes of the namespace configured with another secret
    /// or none; and signed messages refused on the channel as replays
    /// (applied before, or published more than 30 s ago; such a message,
    /// if genuine, is read from the log instead). Always 0 without a secret.
    pub unauthenticated: u64,
    /// Times the whole RAM layer was dropped because the log could not fill
    /// a gap or Redis lost the bus's state.
    pub gap_flushes: u64,
    /// Whether RAM is not being served now: no deletion check has succeeded
    /// within the last [`deletion_check_period`](crate::CacheNodeBuilder::deletion_check_period)
    /// (Redis unreachable or too slow, or the listener could not run), so
    /// every read goes to Redis until one does.
    pub suspended: bool,
    /// When the last deletion check succeeded, Unix milliseconds (0: never).
    pub last_check_ok_ms: u64,
    /// Whether keyspace notifications are being watched.
    pub keyspace_watching: bool,
    /// Why keyspace watching, when asked for, is not possible.
    pub keyspace_problem: Option<String>,
}

/// A node's bus: publisher and, when the node has RAM, listener.
pub(crate) struct Bus {
    keys: BusKeys,
    origin: [u8; 16],
    auth: Option<BusAuth>,
    shared: SharedLayer,
    /// The RAM layer the listener keeps coherent (for its lease).
    local: Option<Arc<LocalLayer>>,
    state: Arc<BusState>,
    script: redis::Script,
    log_len: usize,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The publish time of the last body, Unix µs: strictly increasing, so
    /// that (origin, publish time) names one body (the replay guard's key).
    last_sent_us: AtomicU64,
}

impl Bus {
    /// Starts the bus of a node: reads the current position, then spawns the
    /// listener when there is a RAM layer to keep coherent.
    pub(crate) async fn start(
        shared: SharedLayer,
        local: Option<Arc<LocalLayer>>,
        keys: &Keys,
        config: BusConfig,
    ) -> Result<Bus> {
        let keys_ns = keys.namespace();
        let keys = BusKeys::new(keys);
        let origin = *uuid::Uuid::new_v4().as_bytes();
        let auth = config.auth(keys_ns);
        let state = Arc::new(BusState::default());
        let (stop, stopped) = watch::channel(false);
        let task = match &local {
            Some(local) => {
                let listener = listener::Listener::new(
                    shared.clone(),
                    local.clone(),
                    keys.clone(),
                    origin,
                    state.clone(),
                    config.clone(),
                    keys_ns,
                )
                .await?;
                Some(tokio::spawn(listener.run(stopped)))
            }
            None => None,
        };
        Ok(Bus {
            keys,
            origin,
            auth,
            shared,
            local,
            state,
            script: redis::Script::new(publish::PUBLISH_SCRIPT),
            log_len: config.log_len,
            stop,
            task: Mutex::new(task),
            last_sent_us: AtomicU64::new(0),
        })
    }

    /// A snapshot of the bus's state.
    pub(crate) fn health(&self) -> BusHealth {
        let s = &self.state;
        let last_applied_seq = s.last_applied.load(Ordering::Acquire);
        let last_seen_seq = s.last_seen.load(Ordering::Acquire).max(last_applied_seq);
        BusHealth {
            connected: s.subscribed.load(Ordering::Acquire),
            last_applied_seq,
            last_seen_seq,
            lag: last_seen_seq - last_applied_seq,
            applied: s.applied.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
            unauthenticated: s.unauthenticated.load(Ordering::Relaxed),
            gap_flushes: s.flushes.load(Ordering::Relaxed),
            suspended: self.local.as_ref().is_some_and(|l| !l.lease_holds()),
            last_check_ok_ms: s.last_check_ok_ms.load(Ordering::Acquire),
            keyspace_watching: s.keyspace_watching.load(Ordering::Acquire),
            keyspace_problem: s
                .keyspace_problem
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Stops the listener and waits for it to end.
    pub(crate) async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        // The last handle is gone: tell the listener to stop. It holds no
        // reference to the node, so it ends on its own.
        let _ = self.stop.send(true);
    }
}
