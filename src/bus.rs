//! The invalidation bus: keeps the RAM layers of all instances coherent.
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
//! 4. every half [`deletion_check_frequency`](crate::CacheNodeBuilder::deletion_check_frequency)
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
//! old value from RAM later than `deletion_check_frequency` plus one Redis
//! round trip, whatever messages are lost and whatever the node's tasks do;
//! normally within one pub/sub hop. (The lease alone gives one period; the
//! round trip is the slack for a read that began before the lease ran out.)
//! A check must complete within one period to renew the lease, so the period
//! allows Redis round trips up to about half of it for RAM to be served all
//! the time; slower links serve RAM part of the time or never.

pub(crate) mod listener;
pub(crate) mod message;
pub(crate) mod replay;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use message::Invalidation;
pub use message::{decode_channel_payload, BusMessage, MalformedMessage, RamKey};
use message::{Body, BusAuth};

use crate::keys::Keys;
use crate::local::LocalLayer;
use crate::shared::SharedLayer;
use crate::Result;

/// Default number of messages the log keeps (approximately: `MAXLEN ~`).
/// A node disconnected for longer than it takes to publish this many
/// invalidations drops its whole RAM layer when it comes back.
pub const DEFAULT_LOG_LEN: usize = 100_000;

/// Keys per message when a long list of keys is invalidated.
const KEYS_PER_MESSAGE: usize = 1000;

/// `KEYS`: seq, log, epoch. `ARGV`: channel, body, maxlen, a fresh epoch.
///
/// Log entry ids follow the counter, so an entry at or past the counter's
/// next value, or a log key of another type, was written by some other
/// client. Neither may stop publishing: the script continues after such an
/// entry (listeners read it, refuse it and move on; without a bus secret an
/// entry that does not decode drops their RAM once), or, when its number is
/// too large to continue after (Lua numbers print exactly below 10^13),
/// starts the log anew (listeners that then miss entries drop their RAM).
/// Any other failure is returned, and the call that published reports it.
const PUBLISH_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[3], ARGV[4])
end
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  -- The counter was missing (new bus, or the key was lost while the log
  -- was kept): continue after the log's last entry.
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if top[1] then
    local last = tonumber(string.match(top[1][1], '^(%d+)'))
    if last and seq <= last then
      seq = last + 1
      redis.call('SET', KEYS[1], seq)
    end
  end
end
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'm', ARGV[2])
if type(added) == 'table' and added.err then
  local foreign = string.find(added.err, 'equal or smaller', 1, true)
    or string.find(added.err, 'WRONGTYPE', 1, true)
  if not foreign then
    return redis.error_reply(added.err)
  end
  local last = nil
  local top = redis.pcall('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if type(top) == 'table' and not top.err and top[1] then
    last = tonumber(string.match(top[1][1], '^(%d+)'))
  end
  if last and last >= seq and last < 1e13 then
    seq = last + 1
    redis.call('SET', KEYS[1], seq)
  else
    redis.call('DEL', KEYS[2])
  end
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'm', ARGV[2])
end
redis.call('PUBLISH', ARGV[1], seq .. ':' .. ARGV[2])
return seq
"#;

/// Bus settings.
#[derive(Debug, Clone)]
pub(crate) struct BusConfig {
    pub(crate) deletion_check_frequency: Duration,
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// within the last [`deletion_check_frequency`](crate::CacheNodeBuilder::deletion_check_frequency)
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
            script: redis::Script::new(PUBLISH_SCRIPT),
            log_len: config.log_len,
            stop,
            task: Mutex::new(task),
            last_sent_us: AtomicU64::new(0),
        })
    }

    /// Now, in Unix µs, and later than every body this node signed before.
    fn next_sent_at(&self) -> u64 {
        let now = crate::clock::unix_micros();
        let previous = self
            .last_sent_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or_else(|last| last);
        now.max(previous + 1)
    }

    /// The encoded messages for `invalidation` (long key lists are split).
    pub(crate) fn bodies(&self, invalidation: Invalidation) -> Result<Vec<Vec<u8>>> {
        let body = |invalidation| {
            message::encode(
                &Body {
                    origin: self.origin,
                    sent_at_us: self.next_sent_at(),
                    invalidation,
                },
                self.auth.as_ref(),
            )
        };
        match invalidation {
            Invalidation::Keys(keys) if keys.len() > KEYS_PER_MESSAGE => keys
                .chunks(KEYS_PER_MESSAGE)
                .map(|chunk| body(Invalidation::Keys(chunk.to_vec())))
                .collect(),
            other => Ok(vec![body(other)?]),
        }
    }

    /// The publication of `body`: `EVALSHA` of [`PUBLISH_SCRIPT`] with its
    /// `KEYS` and `ARGV`, the one place that lays them out (a pipeline sends
    /// it; [`publish_one`](Self::publish_one) sends it alone, loading the
    /// script first when the server lost it).
    fn publish_cmd(&self, body: &[u8]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash())
            .arg(3)
            .arg(&self.keys.seq)
            .arg(&self.keys.log)
            .arg(&self.keys.epoch)
            .arg(&self.keys.channel)
            .arg(body)
            .arg(self.log_len)
            .arg(uuid::Uuid::new_v4().to_string());
        cmd
    }

    /// Appends the publication of `bodies` to `pipe` (`EVALSHA`; see
    /// [`finish`](Self::finish) for a server that lost its script cache).
    pub(crate) fn add_to_pipeline(&self, pipe: &mut redis::Pipeline, bodies: &[Vec<u8>]) {
        for body in bodies {
            pipe.add_command(self.publish_cmd(body));
        }
    }

    /// Checks the results of the publications added by
    /// [`add_to_pipeline`](Self::add_to_pipeline) (run with
    /// `ignore_errors`); publishes again, one by one (loading the script
    /// when Redis had lost it, after a restart), those that failed. An
    /// invalidation published twice costs a refill; one not published, a
    /// stale read.
    pub(crate) async fn finish(
        &self,
        results: &[redis::RedisResult<Value>],
        bodies: &[Vec<u8>],
    ) -> Result<()> {
        for (result, body) in results.iter().zip(bodies) {
            if let Err(e) = result {
                if e.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                    crate::metrics::redis_error("publish");
                    tracing::debug!(error = %e, "bus publication failed; publishing it again");
                }
                self.publish_one(body).await?;
            }
        }
        Ok(())
    }

    /// Publishes `bodies` again, one by one (after a pipeline whose outcome
    /// is unknown).
    pub(crate) async fn republish(&self, bodies: &[Vec<u8>]) -> Result<()> {
        for body in bodies {
            self.publish_one(body).await?;
        }
        Ok(())
    }

    /// Publishes one body on its own; when the server has lost the script
    /// (`NOSCRIPT`, after a restart), loads it and sends the same command
    /// again.
    async fn publish_one(&self, body: &[u8]) -> Result<()> {
        let mut conn = self.shared.conn();
        let cmd = self.publish_cmd(body);
        let publish = async {
            match cmd.query_async::<u64>(&mut conn).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    self.script.prepare_invoke().load_async(&mut conn).await?;
                    cmd.query_async::<u64>(&mut conn).await
                }
                other => other,
            }
        };
        let _: u64 = self.shared.run("publish", publish).await?;
        Ok(())
    }

    /// Publishes `invalidation`; returns once it is durable in Redis.
    pub(crate) async fn publish(&self, invalidation: Invalidation) -> Result<()> {
        let bodies = self.bodies(invalidation)?;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        self.add_to_pipeline(&mut pipe, &bodies);
        let mut conn = self.shared.conn();
        let results: Vec<redis::RedisResult<Value>> = self
            .shared
            .run("publish", pipe.query_async(&mut conn))
            .await?;
        self.finish(&results, &bodies).await
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
