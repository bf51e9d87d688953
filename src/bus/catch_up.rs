//! The deletion check and the catch-up from the bus log: one atomic read
//! of the bus's position ([`CHECK_SCRIPT`]) tells whether this node missed
//! anything, and whether Redis still holds the history it applied; what it
//! missed is read from the log in pages and applied in order; what cannot
//! be read (trimmed, lost, undecodable) drops the whole RAM layer. A check
//! that succeeds renews the RAM lease (see the [bus](crate::bus) docs).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::listener::{Listener, Source};
use super::message::{self, Malformed};
use crate::clock::{unix_micros, unix_millis};
use crate::local::CheckStart;
use crate::Result;

/// Most entries read from the log per `XRANGE`. A page that times out is
/// halved for the next try (down to one entry), so that a backlog of large
/// messages behind a slow link still moves forward; every entry applied is
/// kept when a later page fails.
pub(super) const CATCH_UP_PAGE: usize = 256;

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
pub(super) const CHECK_SCRIPT: &str = r#"
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
/// What a catch-up does after one log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Go on with the next entry of the page.
    Next,
    /// The target is reached: the rest of the page is not read.
    Stop,
}

impl Listener {
    /// One deletion check: bring the node up to Redis's sequence number and,
    /// when that worked, renew the lease from the instant the check started
    /// (every invalidation acknowledged before it is applied now).
    pub(super) async fn check(&mut self, source: Source) {
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
    pub(super) fn report_lease(&mut self) {
        let holds = self.local.lease_holds();
        if holds == self.serving {
            return;
        }
        self.serving = holds;
        if holds {
            tracing::info!("bus caught up; serving RAM again");
        } else {
            tracing::warn!(
                period = ?self.config.deletion_check_period,
                "no deletion check has succeeded within the period (Redis \
                 unreachable or slower than the period allows, or the listener \
                 could not run); RAM is not served until one does"
            );
        }
    }

    /// Brings this node up to Redis's current sequence number, each Redis
    /// exchange under `timeout`.
    pub(super) async fn sync(&mut self, source: Source, timeout: Duration) -> Result<()> {
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
    pub(super) async fn catch_up(
        &mut self,
        target: u64,
        source: Source,
        timeout: Duration,
    ) -> Result<()> {
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
                if self.apply_entry(&id, &fields, target, source) == Step::Stop {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Applies one log entry of a catch-up towards `target`.
    pub(super) fn apply_entry(
        &mut self,
        id: &str,
        fields: &[Vec<u8>],
        target: u64,
        source: Source,
    ) -> Step {
        let Some(seq) = message::seq_of_entry_id(id) else {
            self.malformed(Malformed::Garbage, Source::Stream);
            return Step::Next;
        };
        if seq <= self.last_applied {
            return Step::Next;
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
        // With a secret, nothing that fails to verify (or is oversized:
        // refused before verifying) is a real entry.
        if let (Some(Err(m)), true) = (&decoded, self.auth.is_some()) {
            // Forged (or from a node with another secret): never a flush,
            // whatever gap precedes it. Its number holds no real entry
            // (stream ids are unique); a real publication that found it in
            // the way failed and was not acknowledged. Never advance past
            // the counter, or the next check would see the counter "go
            // back" and flush.
            self.refused(*m, Source::Stream);
            if seq <= target {
                self.advance(seq, entry);
            } else {
                self.advance(target, None);
            }
            return if seq >= target {
                Step::Stop
            } else {
                Step::Next
            };
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
        Step::Next
    }

    /// A check is worth waiting for only as long as the lease it renews:
    /// one period. So a period allows Redis round trips up to about half of
    /// it for RAM to be served all the time (checks run every half period);
    /// slower links serve RAM part of the time, and links slower than the
    /// period never (every read goes to Redis).
    pub(super) fn check_timeout(&self) -> Duration {
        self.shared
            .op_timeout()
            .min(self.config.deletion_check_period)
    }
}

/// The fingerprint of a message body as the check script computes it.
pub(super) fn fingerprint(body: &[u8]) -> String {
    use sha1::Digest;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(40);
    for b in sha1::Sha1::digest(body) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}
