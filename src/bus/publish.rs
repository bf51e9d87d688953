//! Publishing an invalidation: one atomic step in Redis ([`PUBLISH_SCRIPT`]:
//! `INCR` the counter, `XADD` the log, `PUBLISH` on the channel), whose
//! `KEYS`/`ARGV` are laid out in one place ([`Bus::publish_cmd`]) for the
//! pipelined path (a write and its announcement in one round trip, see
//! [`Core::write_and_announce`](crate::core::Core::write_and_announce)) and
//! for the path that publishes one body alone (after a failure, loading the
//! script when the server lost it).

use std::sync::atomic::Ordering;

use redis::Value;

use super::message::{self, Body};
use super::{Bus, Invalidation};
use crate::Result;

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
pub(super) const PUBLISH_SCRIPT: &str = r#"
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

impl Bus {
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
}
