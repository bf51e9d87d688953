//! The listener task of a node's bus (see the [bus](crate::bus) docs for the
//! rules it follows). It runs alone on its own state, so the order in which
//! messages are applied is simply the order of the loop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::PubSubStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::message::{self, Body, BusAuth, Invalidation, Malformed};
use super::replay::ReplayGuard;
use super::{BusConfig, BusKeys, BusState};
use crate::backoff::Backoff;
use crate::clock::{unix_micros, unix_millis};
use crate::local::{CheckStart, FlushReason, LocalLayer};
use crate::shared::SharedLayer;
use crate::Result;

/// Most entries read from the log per `XRANGE`. A page that times out is
/// halved for the next try (down to one entry), so that a backlog of large
/// messages behind a slow link still moves forward; every entry applied is
/// kept when a later page fails.
const CATCH_UP_PAGE: usize = 256;

/// The deletion check, one atomic read of the bus's position.
///
/// `KEYS`: seq, epoch, log. `ARGV`: this node's last applied number, a
/// fresh epoch. Returns the counter, the epoch (set when missing: a new or
/// emptied Redis), and the fingerprints (SHA-1 of the body; `""` when there
/// is no such entry) of the log entries at the node's last applied number
/// and at the counter. The first tells whether the server still holds the
/// history this node applied (DESIGN §4 rule 7): a server restarted from an
/// older snapshot, or a promoted replica that missed writes, has another
/// entry there, or none, even when its counter has grown past the node's.
const CHECK_SCRIPT: &str = r#"
local seq = redis.call('GET', KEYS[1]) or '0'
if not string.match(seq, '^%d+$') then
  return redis.error_reply('cachenode: the bus counter ' .. KEYS[1] ..
    ' holds something other than a number')
end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  redis.call('SET', KEYS[2], ARGV[2])
  epoch = ARGV[2]
end
local function fingerprint(n)
  if n == '0' then return '' end
  local e = redis.call('XRANGE', KEYS[3], n .. '-0', n .. '-0')
  if not e[1] then return '' end
  local f = e[1][2]
  for i = 1, #f, 2 do
    if f[i] == 'm' then return redis.sha1hex(f[i + 1]) end
  end
  return '-'
end
return {seq, epoch, fingerprint(ARGV[1]), fingerprint(seq)}
"#;
/// First and largest pause between two attempts to subscribe again.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// One unauthenticated message in this many is logged as a warning.
const UNAUTHENTICATED_LOG_EVERY: u64 = 1000;

/// Where an applied invalidation came from (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The pub/sub channel.
    PubSub,
    /// The log, read after a gap or a reconnect.
    Stream,
    /// The log, read because the periodic check found the node behind.
    Check,
    /// A keyspace notification.
    Keyspace,
}

impl Source {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Source::PubSub => "pubsub",
            Source::Stream => "stream",
            Source::Check => "check",
            Source::Keyspace => "keyspace",
        }
    }
}

pub(crate) struct Listener {
    shared: SharedLayer,
    local: Arc<LocalLayer>,
    keys: BusKeys,
    origin: [u8; 16],
    state: Arc<BusState>,
    config: BusConfig,
    /// Verifies messages when the node has a bus secret.
    auth: Option<BusAuth>,
    /// Whether the "signed messages but no secret here" warning was logged.
    warned_signed: bool,
    /// Refuses replayed signed messages on the channel (with a secret).
    replay: ReplayGuard,
    /// Redis's bus epoch as this node last saw it.
    epoch: Option<String>,
    last_applied: u64,
    /// The fingerprint of the log entry at `last_applied`, as applied
    /// (`None`: not known, learnt at the next check).
    last_entry: Option<String>,
    /// Entries to ask for in the next `XRANGE` of a catch-up.
    page: usize,
    /// Whether the last check succeeded on the connection the channel
    /// messages now come from. Until one has, after a (re)subscription or a
    /// failed check, a channel message is not applied (nor dropped as seen)
    /// on its number alone: the server may have been replaced by one whose
    /// history differs under the same numbers, which only a check can tell
    /// (it compares the log entry at `last_applied`). The message makes a
    /// check run instead, which applies it from the log.
    verified: bool,
    /// Whether the lease held at the last look (to log its changes once).
    serving: bool,
    check_script: redis::Script,
    /// Prefixes that map keyspace channels back to RAM keys.
    keyspace: Option<KeyspaceNames>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Also when the task panics: health must not report a subscription
        // that nothing listens to any more.
        self.state.subscribed.store(false, Ordering::Release);
    }
}

#[derive(Debug, Clone)]
struct KeyspaceNames {
    /// `__keyspace@{db}__:`
    channel_prefix: String,
    /// `{ns}:`
    namespace_prefix: String,
}

impl Listener {
    /// A listener positioned at the bus's current sequence number.
    pub(crate) async fn new(
        shared: SharedLayer,
        local: Arc<LocalLayer>,
        keys: BusKeys,
        origin: [u8; 16],
        state: Arc<BusState>,
        config: BusConfig,
        namespace: &str,
    ) -> Result<Self> {
        let keyspace = config.watch_keyspace.then(|| KeyspaceNames {
            channel_prefix: crate::keys::keyspace_channel_prefix(shared.db()),
            namespace_prefix: format!("{namespace}:"),
        });
        let auth = config.auth(namespace);
        let mut listener = Listener {
            shared,
            local,
            keys,
            origin,
            state,
            config,
            auth,
            warned_signed: false,
            replay: ReplayGuard::new(unix_micros()),
            epoch: None,
            last_applied: 0,
            last_entry: None,
            page: CATCH_UP_PAGE,
            verified: false,
            serving: true,
            check_script: redis::Script::new(CHECK_SCRIPT),
            keyspace,
        };
        // The starting position, under the operation timeout: a link too
        // slow for the checks still builds a node (that serves RAM only
        // once a check succeeds in time).
        let started = listener.local.check_start();
        let timeout = listener.shared.op_timeout();
        listener.sync(Source::Check, timeout).await?;
        listener.local.renew_lease(started);
        Ok(listener)
    }

    /// The task: runs until `stop` says so or its sender is dropped.
    ///
    /// Subscribing runs as a future of its own, polled alongside the
    /// periodic check: a connection attempt that hangs (for up to the
    /// operation timeout) must not hold up the checks. The check tick is
    /// polled before the channel, so a backlog of messages cannot starve it.
    /// None of this carries the staleness bound, though: the lease does (the
    /// read path stops serving RAM when checks stop renewing it).
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let period = self.config.deletion_check_frequency / 2;
        let mut check = tokio::time::interval(period);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sub: Option<PubSubStream> = None;
        let mut connecting: Option<Connecting> = None;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut reconnect_at = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = check.tick() => self.check(Source::Check).await,
                msg = next_message(&mut sub) => match msg {
                    Some(msg) => self.on_message(&msg).await,
                    None => {
                        sub = None;
                        self.state.subscribed.store(false, Ordering::Release);
                        tracing::warn!("bus subscription lost; reconnecting");
                        reconnect_at = Instant::now() + jitter(backoff.current());
                    }
                },
                _ = tokio::time::sleep_until(reconnect_at),
                    if sub.is_none() && connecting.is_none() =>
                {
                    connecting = Some(Box::pin(subscribe(
                        self.shared.clone(),
                        self.keys.channel.clone(),
                        self.keyspace.clone(),
                        self.state.clone(),
                    )));
                }
                result = subscribed(&mut connecting), if connecting.is_some() => {
                    connecting = None;
                    match result {
                        Ok(stream) => {
                            sub = Some(stream);
                            backoff.reset();
                            self.state.subscribed.store(true, Ordering::Release);
                            tracing::info!(url = self.shared.url(), "bus subscribed");
                            // Whatever was published while we were away; and
                            // whether this is still the server we knew.
                            self.verified = false;
                            self.check(Source::Stream).await;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "bus cannot subscribe yet");
                            backoff.grow();
                            reconnect_at = Instant::now() + jitter(backoff.current());
                        }
                    }
                },
            }
        }
        self.state.subscribed.store(false, Ordering::Release);
        tracing::debug!("bus listener stopped");
    }

    async fn on_message(&mut self, msg: &redis::Msg) {
        if msg.from_pattern() {
            self.on_keyspace_event(msg);
            return;
        }
        let Some((seq, body)) = message::split_channel_payload(msg.get_payload_bytes()) else {
            self.refused(Malformed::Garbage, Source::PubSub);
            if self.auth.is_none() {
                // Treat as a lost message: the log holds the real ones.
                self.check(Source::Stream).await;
            }
            return;
        };
        if !self.verified {
            // See `verified`: the log has this message too.
            self.check(Source::Stream).await;
            return;
        }
        if seq <= self.last_applied {
            return; // a replay, or already read from the log
        }
        if seq != self.last_applied + 1 {
            // With a secret, a message that does not verify is not a real
            // one: it must not even cost a catch-up.
            if let Some(auth) = &self.auth {
                let verified =
                    message::decode(body, Some(auth)).and_then(|decoded| self.admit(&decoded));
                if let Err(m) = verified {
                    self.refused(m, Source::PubSub);
                    return;
                }
            }
            self.check(Source::Stream).await;
            return;
        }
        let decoded = message::decode(body, self.auth.as_ref()).and_then(|decoded| {
            if self.auth.is_some() {
                self.admit(&decoded)?;
            }
            Ok(decoded)
        });
        match decoded {
            Ok(decoded) => {
                self.warn_if_signed(body);
                self.apply(&decoded, Source::PubSub);
                self.advance(seq, Some(fingerprint(body)));
            }
            Err(m) => {
                self.refused(m, Source::PubSub);
                // With a secret: not applied, not advanced, no catch-up (a
                // forger could otherwise make every node hit Redis at will).
                // The real message with this number, if any, comes next; a
                // lost one is found by the next message's gap or the
                // periodic check, within the usual bound.
                if self.auth.is_none() {
                    self.check(Source::Stream).await;
                }
            }
        }
    }

    fn on_keyspace_event(&mut self, msg: &redis::Msg) {
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

    /// One deletion check: bring the node up to Redis's sequence number and,
    /// when that worked, renew the lease from the instant the check started
    /// (every invalidation acknowledged before it is applied now).
    async fn check(&mut self, source: Source) {
        let started: CheckStart = self.local.check_start();
        match self.sync(source, self.check_timeout()).await {
            Ok(()) => {
                self.verified = true;
                self.local.renew_lease(started);
                self.state
                    .last_check_ok_ms
                    .store(unix_millis(), Ordering::Release);
            }
            Err(e) => {
                self.verified = false;
                tracing::debug!(error = %e, "bus check failed");
            }
        }
        self.report_lease();
    }

    /// Logs when RAM stops or starts being served again.
    fn report_lease(&mut self) {
        let holds = self.local.lease_holds();
        if holds == self.serving {
            return;
        }
        self.serving = holds;
        if holds {
            tracing::info!("bus caught up; serving RAM again");
        } else {
            tracing::warn!(
                period = ?self.config.deletion_check_frequency,
                "no deletion check has succeeded within the period (Redis \
                 unreachable or slower than the period allows, or the listener \
                 could not run); RAM is not served until one does"
            );
        }
    }

    /// Brings this node up to Redis's current sequence number, each Redis
    /// exchange under `timeout`.
    async fn sync(&mut self, source: Source, timeout: Duration) -> Result<()> {
        let mut conn = self.shared.conn();
        let mut invocation = self.check_script.prepare_invoke();
        invocation
            .key(&self.keys.seq)
            .key(&self.keys.epoch)
            .key(&self.keys.log)
            .arg(self.last_applied)
            .arg(uuid::Uuid::new_v4().to_string());
        let (seq, epoch, at_last, at_seq): (u64, String, String, String) = self
            .shared
            .run_within("bus_check", timeout, invocation.invoke_async(&mut conn))
            .await?;
        self.state.last_seen.store(seq, Ordering::Release);
        let lost = match &self.epoch {
            None => None,
            Some(known) if *known != epoch => Some("Redis lost the bus state (epoch changed)"),
            Some(_) if seq < self.last_applied => Some("the bus counter went back"),
            Some(_)
                if self.last_applied > 0
                    && self.last_entry.as_ref().is_some_and(|fp| *fp != at_last) =>
            {
                Some(
                    "the bus log no longer holds the message this node applied last \
                     (Redis restarted from an older snapshot, or a replica that missed \
                     writes was promoted)",
                )
            }
            Some(_) => None,
        };
        if self.epoch.is_none() || lost.is_some() {
            if let Some(why) = lost {
                self.flush(why);
            }
            self.epoch = Some(epoch);
            self.advance(seq, Some(at_seq));
            return Ok(());
        }
        if self.last_entry.is_none() {
            self.last_entry = Some(at_last);
        }
        self.catch_up(seq, source, timeout).await
    }

    /// Applies log entries until `target` is reached.
    async fn catch_up(&mut self, target: u64, source: Source, timeout: Duration) -> Result<()> {
        while self.last_applied < target {
            let mut conn = self.shared.conn();
            let page = self
                .shared
                .run_within(
                    "bus_catch_up",
                    timeout,
                    redis::cmd("XRANGE")
                        .arg(&self.keys.log)
                        .arg(format!("{}-0", self.last_applied + 1))
                        .arg("+")
                        .arg("COUNT")
                        .arg(self.page)
                        .query_async(&mut conn),
                )
                .await;
            let entries: Vec<(String, Vec<Vec<u8>>)> = match page {
                Ok(entries) => {
                    self.page = (self.page * 2).min(CATCH_UP_PAGE);
                    entries
                }
                Err(e) => {
                    self.page = (self.page / 2).max(1);
                    return Err(e);
                }
            };
            if entries.is_empty() {
                self.flush("the bus log no longer holds the missed messages");
                self.advance(target, None);
                break;
            }
            for (id, fields) in entries {
                let Some(seq) = message::seq_of_entry_id(&id) else {
                    self.malformed(Malformed::Garbage, Source::Stream);
                    continue;
                };
                if seq <= self.last_applied {
                    continue;
                }
                let body = fields
                    .chunks(2)
                    .find(|f| f.first().map(Vec::as_slice) == Some(b"m"))
                    .and_then(|f| f.get(1));
                let entry = Some(match body {
                    Some(b) => fingerprint(b),
                    None => "-".to_owned(),
                });
                let decoded = match (body, &self.auth) {
                    (Some(b), auth) => Some(message::decode(b, auth.as_ref())),
                    (None, Some(_)) => Some(Err(Malformed::Unsigned)),
                    (None, None) => None,
                };
                if let Some(Err(m)) = decoded {
                    // With a secret, nothing that fails to verify (or is
                    // oversized: refused before verifying) is a real entry.
                    if self.auth.is_some() {
                        // Forged (or from a node with another secret): never
                        // a flush, whatever gap precedes it. Its number holds
                        // no real entry (stream ids are unique); a real
                        // publication that found it in the way failed and
                        // was not acknowledged. Never advance past the
                        // counter, or the next check would see the counter
                        // "go back" and flush.
                        self.refused(m, Source::Stream);
                        if seq <= target {
                            self.advance(seq, entry);
                        } else {
                            self.advance(target, None);
                        }
                        if seq >= target {
                            break;
                        }
                        continue;
                    }
                }
                if seq != self.last_applied + 1 {
                    self.flush("the bus log was trimmed past this node's position");
                }
                match decoded {
                    Some(Ok(decoded)) => {
                        if let Some(b) = body {
                            self.warn_if_signed(b);
                        }
                        if self.auth.is_some() {
                            let now = unix_micros();
                            self.replay.record(decoded.origin, decoded.sent_at_us, now);
                        }
                        self.apply(&decoded, source)
                    }
                    Some(Err(m)) => {
                        // What it meant to drop is unknown: drop everything.
                        self.malformed(m, Source::Stream);
                        self.flush("a bus log entry does not decode");
                    }
                    None => {
                        self.malformed(Malformed::Garbage, Source::Stream);
                        self.flush("a bus log entry does not decode");
                    }
                }
                self.advance(seq, entry);
            }
        }
        Ok(())
    }

    /// Passes a verified channel message through the replay guard.
    fn admit(&mut self, body: &Body) -> std::result::Result<(), Malformed> {
        let now = unix_micros();
        match self.replay.admit(body.origin, body.sent_at_us, now) {
            Ok(()) => Ok(()),
            Err(why) => {
                tracing::debug!(
                    ?why,
                    lag_ms = now.saturating_sub(body.sent_at_us) / 1000,
                    "signed bus message refused on the channel; the log is read instead"
                );
                Err(Malformed::Replayed)
            }
        }
    }

    /// A check is worth waiting for only as long as the lease it renews:
    /// one period. So a period allows Redis round trips up to about half of
    /// it for RAM to be served all the time (checks run every half period);
    /// slower links serve RAM part of the time, and links slower than the
    /// period never (every read goes to Redis).
    fn check_timeout(&self) -> Duration {
        self.shared
            .op_timeout()
            .min(self.config.deletion_check_frequency)
    }

    fn apply(&mut self, body: &Body, source: Source) {
        if body.origin == self.origin {
            return; // this node applied it to its own RAM when it published
        }
        match &body.invalidation {
            Invalidation::Keys(keys) => {
                for key in keys {
                    self.local.remove(key);
                }
            }
            Invalidation::Func(name) => self.local.remove_group(name),
            Invalidation::All => {
                self.local.remove_all(FlushReason::InvalidateAll);
                crate::metrics::ram_flush(FlushReason::InvalidateAll.label());
            }
        }
        self.state.applied.fetch_add(1, Ordering::Relaxed);
        crate::metrics::invalidation_applied(source.label());
        let delay_us = unix_micros().saturating_sub(body.sent_at_us);
        crate::metrics::propagation_delay(Duration::from_micros(delay_us));
    }

    /// Moves to `seq`, whose log entry has fingerprint `entry` (`None`: not
    /// known; learnt at the next check).
    fn advance(&mut self, seq: u64, entry: Option<String>) {
        self.last_applied = seq;
        self.last_entry = entry;
        self.state.last_applied.store(seq, Ordering::Release);
        self.state.last_seen.fetch_max(seq, Ordering::AcqRel);
    }

    fn flush(&mut self, why: &str) {
        self.local.remove_all(FlushReason::BusGap);
        self.state.flushes.fetch_add(1, Ordering::Relaxed);
        crate::metrics::ram_flush(FlushReason::BusGap.label());
        tracing::warn!(reason = why, "bus dropped the whole RAM layer");
    }

    /// Counts a message that is dropped: unauthenticated or malformed.
    fn refused(&self, why: Malformed, source: Source) {
        if why.is_unauthenticated() {
            self.unauthenticated(why, source);
        } else {
            self.malformed(why, source);
        }
    }

    /// Logs the first and then one in [`UNAUTHENTICATED_LOG_EVERY`], so
    /// that a forger cannot flood the logs.
    fn unauthenticated(&self, why: Malformed, source: Source) {
        let before = self.state.unauthenticated.fetch_add(1, Ordering::Relaxed);
        crate::metrics::bus_unauthenticated(why.label());
        if !before.is_multiple_of(UNAUTHENTICATED_LOG_EVERY) {
            tracing::debug!(reason = why.label(), "unauthenticated bus message dropped");
            return;
        }
        if why == Malformed::Replayed {
            tracing::warn!(
                total = before + 1,
                source = source.label(),
                "signed bus message refused as a replay (seen before, or \
                 published more than {:?} ago: replayed, or the publisher's \
                 clock lags); the bus log is read instead",
                super::replay::WINDOW
            );
            return;
        }
        tracing::warn!(
            total = before + 1,
            reason = why.label(),
            source = source.label(),
            "unauthenticated bus message dropped: forged, or a node of this \
             namespace has another bus secret or none (a misconfiguration: \
             its invalidations do not reach this node's RAM)"
        );
    }

    /// A node without a secret applies signed messages unchecked; says once
    /// that the namespace's nodes are configured differently.
    fn warn_if_signed(&mut self, body: &[u8]) {
        if self.auth.is_none() && !self.warned_signed && message::is_signed(body) {
            self.warned_signed = true;
            tracing::error!(
                "this node has no bus secret but receives signed bus messages: \
                 other nodes of the namespace have one, and ignore this node's \
                 invalidations. Configure the same bus_secret on every node"
            );
        }
    }

    fn malformed(&self, why: Malformed, source: Source) {
        self.state.malformed.fetch_add(1, Ordering::Relaxed);
        crate::metrics::bus_malformed(why.label());
        tracing::warn!(
            reason = why.label(),
            source = source.label(),
            "malformed bus message dropped"
        );
    }
}

/// A subscription being set up (see [`Listener::run`]).
type Connecting = futures::future::BoxFuture<'static, Result<PubSubStream>>;

/// Resolves when the subscription being set up is ready or has failed;
/// never when there is none.
async fn subscribed(connecting: &mut Option<Connecting>) -> Result<PubSubStream> {
    match connecting {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

/// Subscribes to the bus channel and, when asked, to the namespace's
/// keyspace notifications.
async fn subscribe(
    shared: SharedLayer,
    channel: String,
    keyspace: Option<KeyspaceNames>,
    state: Arc<BusState>,
) -> Result<PubSubStream> {
    let timeout = shared.op_timeout();
    let connect = async {
        let mut pubsub = shared.client().get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        Ok::<_, redis::RedisError>(pubsub)
    };
    let mut pubsub = shared.run_within("subscribe", timeout, connect).await?;
    if let Some(names) = keyspace {
        check_keyspace_config(&shared, &state).await;
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
    }
    Ok(pubsub.into_on_message())
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

async fn next_message(sub: &mut Option<PubSubStream>) -> Option<redis::Msg> {
    match sub {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// The fingerprint of a message body as the check script computes it.
fn fingerprint(body: &[u8]) -> String {
    use sha1::Digest;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(40);
    for b in sha1::Sha1::digest(body) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// `d` scaled by a random factor in [0.5, 1.0), so that nodes cut off
/// together do not all come back at the same instant.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}
