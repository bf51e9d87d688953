//! The listener task of a node's bus (see the [bus](crate::bus) docs for the
//! rules it follows): the resubscribe loop, channel messages, applying an
//! invalidation to RAM, and counting what it refuses. It runs alone on its
//! own state, so the order in which messages are applied is simply the
//! order of the loop. The deletion check and the catch-up from the log are
//! in `catch_up`, keyspace notifications in `keyspace`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use redis::aio::PubSubStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::catch_up::{fingerprint, CATCH_UP_PAGE, CHECK_SCRIPT};
use super::keyspace::KeyspaceNames;
use super::message::{self, Body, BusAuth, Invalidation, Malformed};
use super::replay::ReplayGuard;
use super::{BusConfig, BusKeys, BusState};
use crate::backoff::Backoff;
use crate::clock::unix_micros;
use crate::local::{FlushReason, LocalLayer};
use crate::shared::SharedLayer;
use crate::Result;

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
    pub(super) shared: SharedLayer,
    pub(super) local: Arc<LocalLayer>,
    pub(super) keys: BusKeys,
    pub(super) origin: [u8; 16],
    pub(super) state: Arc<BusState>,
    pub(super) config: BusConfig,
    /// Verifies messages when the node has a bus secret.
    pub(super) auth: Option<BusAuth>,
    /// Whether the "signed messages but no secret here" warning was logged.
    pub(super) warned_signed: bool,
    /// Refuses replayed signed messages on the channel (with a secret).
    pub(super) replay: ReplayGuard,
    /// Redis's bus epoch as this node last saw it.
    pub(super) epoch: Option<String>,
    pub(super) last_applied: u64,
    /// The fingerprint of the log entry at `last_applied`, as applied
    /// (`None`: not known, learnt at the next check).
    pub(super) last_entry: Option<String>,
    /// Entries to ask for in the next `XRANGE` of a catch-up.
    pub(super) page: usize,
    /// Whether the last check succeeded on the connection the channel
    /// messages now come from. Until one has, after a (re)subscription or a
    /// failed check, a channel message is not applied (nor dropped as seen)
    /// on its number alone: the server may have been replaced by one whose
    /// history differs under the same numbers, which only a check can tell
    /// (it compares the log entry at `last_applied`). The message makes a
    /// check run instead, which applies it from the log.
    pub(super) verified: bool,
    /// Whether the lease held at the last look (to log its changes once).
    pub(super) serving: bool,
    pub(super) check_script: redis::Script,
    /// Prefixes that map keyspace channels back to RAM keys.
    pub(super) keyspace: Option<KeyspaceNames>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Also when the task panics: health must not report a subscription
        // that nothing listens to any more.
        self.state.subscribed.store(false, Ordering::Release);
    }
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
        let period = self.config.deletion_check_period / 2;
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

    /// Passes a verified channel message through the replay guard.
    pub(super) fn admit(&mut self, body: &Body) -> std::result::Result<(), Malformed> {
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

    pub(super) fn apply(&mut self, body: &Body, source: Source) {
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
    pub(super) fn advance(&mut self, seq: u64, entry: Option<String>) {
        self.last_applied = seq;
        self.last_entry = entry;
        self.state.last_applied.store(seq, Ordering::Release);
        self.state.last_seen.fetch_max(seq, Ordering::AcqRel);
    }

    pub(super) fn flush(&mut self, why: &str) {
        self.local.remove_all(FlushReason::BusGap);
        self.state.flushes.fetch_add(1, Ordering::Relaxed);
        crate::metrics::ram_flush(FlushReason::BusGap.label());
        tracing::warn!(reason = why, "bus dropped the whole RAM layer");
    }

    /// Counts a message that is dropped: unauthenticated or malformed.
    pub(super) fn refused(&self, why: Malformed, source: Source) {
        if why.is_unauthenticated() {
            self.unauthenticated(why, source);
        } else {
            self.malformed(why, source);
        }
    }

    /// Logs the first and then one in [`UNAUTHENTICATED_LOG_EVERY`], so
    /// that a forger cannot flood the logs.
    pub(super) fn unauthenticated(&self, why: Malformed, source: Source) {
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
    pub(super) fn warn_if_signed(&mut self, body: &[u8]) {
        if self.auth.is_none() && !self.warned_signed && message::is_signed(body) {
            self.warned_signed = true;
            tracing::error!(
                "this node has no bus secret but receives signed bus messages: \
                 other nodes of the namespace have one, and ignore this node's \
                 invalidations. Configure the same bus_secret on every node"
            );
        }
    }

    pub(super) fn malformed(&self, why: Malformed, source: Source) {
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
        super::keyspace::subscribe(&shared, &mut pubsub, &names, &state).await?;
    }
    Ok(pubsub.into_on_message())
}

async fn next_message(sub: &mut Option<PubSubStream>) -> Option<redis::Msg> {
    match sub {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// `d` scaled by a random factor in [0.5, 1.0), so that nodes cut off
/// together do not all come back at the same instant.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() / 2.0)
}
