//! Async computation ([`FuncBuilder::async_compute`](crate::FuncBuilder::async_compute)):
//! a call on a cold key enqueues a *build job* and returns at once; builder
//! nodes consume the jobs and write the values.
//!
//! * Jobs live in the Redis stream `{ns}:jobs`, read by the consumer group
//!   `builders`. Jobs left idle are claimed again with `XAUTOCLAIM`; one
//!   whose builder died is built by another once the dead builder's lock
//!   on the key has expired (within the job timeout).
//! * A job is enqueued once per key at a time (a `{K}:job` marker set with
//!   `NX` for the job timeout, and only while the value is missing) and
//!   built under the key's lock (see [`atomic`](crate::func::atomic)), so it is
//!   never built twice at once: a builder that cannot take the lock leaves
//!   the job pending. A builder that takes the lock and finds the value
//!   already stored drops the job, so a duplicate is not built again.
//! * A job of a function the builder does not know is left pending for a
//!   builder that does (or for this one, once the function is registered),
//!   and dropped once older than its timeout.
//! * Functions are registered by name on every node that builds them; a job
//!   is a name, the encoded arguments, the value's key and its TTL.
//! * An idle builder waits for jobs in `XREADGROUP ... BLOCK 1000`, on a
//!   connection of its own whose reply timeout outlasts the block, so a job
//!   queued meanwhile is delivered to it at once (never into a reply the
//!   client stopped waiting for). Jobs left pending are claimed again once
//!   idle for 1 s, by a pass that runs every second between reads.
//! * A builder survives what happens to Redis: a lost connection is
//!   replaced (pauses of 100 ms doubling up to 1 s), and when the stream or
//!   its group is gone (the namespace was cleared, Redis came back empty)
//!   it creates them again (`XGROUP CREATE ... MKSTREAM`) and reads at once.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::keys::{job_marker_key, Keys};
use crate::keysets::KeySets;
use crate::registry::JobRegistry;
use crate::shared::SharedLayer;
use crate::{Error, Result};

/// Default job timeout: a job idle this long is claimed by another builder.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// Jobs the stream keeps at most (approximately).
const MAX_JOBS: usize = 100_000;

/// A stream entry: id and flat field/value list.
type Entry = (String, Vec<Vec<u8>>);

/// The consumer group of builders.
const GROUP: &str = "builders";

/// One build job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) func: String,
    /// Keep the arguments beside the value (the function is refreshed).
    pub(crate) record_args: bool,
    pub(crate) args: Vec<u8>,
    pub(crate) redis_key: String,
    pub(crate) ttl_ms: u64,
    pub(crate) timeout_ms: u64,
}

const JOB_VERSION: u8 = 1;

fn encode(job: &Job) -> Result<Vec<u8>> {
    let mut out = vec![JOB_VERSION];
    crate::codec::bincode_encode_into(job, &mut out).map_err(Error::Encode)?;
    Ok(out)
}

fn decode(bytes: &[u8]) -> Option<Job> {
    match bytes.split_first() {
        Some((&JOB_VERSION, rest)) => crate::codec::bincode_decode(rest, 64 << 20).ok(),
        _ => None,
    }
}

/// `KEYS`: value, marker. `ARGV`: marker TTL in ms. Sets the marker unless
/// the value is stored (1: set, 0: a job is pending, -1: the value is
/// there). Checking both at once closes the race with a builder that writes
/// the value and deletes the marker between a caller's miss and its
/// enqueue, which would queue a job for a value just built.
const MARK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
end
if redis.call('SET', KEYS[2], 1, 'NX', 'PX', ARGV[1]) then
  return 1
end
return 0
"#;

/// Enqueues `job` unless one for the same key is pending or its value is
/// already stored. Returns whether it was enqueued.
pub(crate) async fn enqueue(shared: &SharedLayer, keys: &Keys, job: &Job) -> Result<bool> {
    let mut conn = shared.conn();
    let script = redis::Script::new(MARK);
    let mut mark = script.prepare_invoke();
    mark.key(&job.redis_key)
        .key(job_marker_key(&job.redis_key))
        .arg(job.timeout_ms.max(1));
    let marked: i64 = shared
        .run("job_enqueue", mark.invoke_async(&mut conn))
        .await?;
    if marked != 1 {
        return Ok(false);
    }
    let _: String = shared
        .run(
            "job_enqueue",
            redis::cmd("XADD")
                .arg(keys.jobs())
                .arg("MAXLEN")
                .arg("~")
                .arg(MAX_JOBS)
                .arg("*")
                .arg("j")
                .arg(encode(job)?)
                .query_async(&mut conn),
        )
        .await?;
    Ok(true)
}

/// How long one `XREADGROUP` waits for a job. A job queued while a builder
/// waits is delivered to it at once; one found when the builder (re)starts
/// or recreates its group, at its next read.
const BLOCK: Duration = Duration::from_secs(1);

/// The first and the longest pause between a builder's attempts after a
/// failure (connecting, or a read that failed for another reason than a
/// missing group).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Why a builder's command failed, and so what it does next.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The stream or its group is gone (deleted, or Redis came back
    /// empty): create them again, then read at once.
    NoGroup,
    /// The connection is lost or in doubt (a reply that did not come in
    /// time may still arrive, carrying jobs): connect again.
    Connection,
    /// Redis refused the command for another reason: pause, then retry.
    Other,
}

fn failure(e: &redis::RedisError) -> Failure {
    match e.code() {
        // NOGROUP: no such stream or group. UNBLOCKED: the stream was
        // deleted while the read was blocked on it.
        Some("NOGROUP" | "UNBLOCKED") => Failure::NoGroup,
        Some(_) => Failure::Other,
        None => Failure::Connection,
    }
}

/// `XGROUP CREATE {stream} builders 0 MKSTREAM`; a group that exists
/// already is fine. From id 0: jobs queued before the group existed (into a
/// stream recreated by `XADD`) are built too.
async fn create_group(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// The builder's own connection (an `XREADGROUP` that blocks would hold up
/// the node's shared, multiplexed one), with its group ensured. Its reply
/// timeout outlasts a blocked read, so no reply carrying jobs is dropped.
async fn connect(
    shared: &SharedLayer,
    stream: &str,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(shared.op_timeout()))
        .set_response_timeout(Some(read_timeout(shared)));
    let connecting = async {
        let mut conn = shared
            .client()
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        create_group(&mut conn, stream).await?;
        Ok(conn)
    };
    match tokio::time::timeout(shared.op_timeout() * 2, connecting).await {
        Ok(c) => c,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connecting the builder timed out",
        ))),
    }
}

/// How long a builder waits for any reply: a blocked read's period plus
/// the operation timeout.
fn read_timeout(shared: &SharedLayer) -> Duration {
    BLOCK + shared.op_timeout()
}

/// The builder loop of a node started with the builder role.
///
/// It keeps going whatever happens to Redis: a lost connection is replaced
/// (with capped backoff), and a stream or group that disappeared (the
/// namespace was cleared, Redis restarted empty) is created again.
pub(crate) async fn builder_task(
    shared: SharedLayer,
    registry: Arc<JobRegistry>,
    keysets: KeySets,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let stream = keysets.keys().jobs();
    let consumer = uuid::Uuid::new_v4().to_string();
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut reclaim_at = tokio::time::Instant::now();
    // Where the next XAUTOCLAIM resumes its walk of the pending jobs, so
    // that jobs left pending again (built elsewhere, or of a function this
    // node does not know) do not hide the ones behind them.
    let mut reclaim_from = "0-0".to_owned();
    // The group was created again and no read has succeeded since: if it
    // is gone again at once, pause rather than spin.
    let mut recreated = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                let connected = tokio::select! {
                    _ = stop.changed() => return,
                    c = connect(&shared, &stream) => c,
                };
                match connected {
                    Ok(c) => {
                        // After a lost connection, the node's shared one is
                        // likely lost too: one command makes it reconnect
                        // now, before a build needs it (a build whose lock
                        // or write fails is left to be claimed again).
                        let mut shared_conn = shared.conn();
                        let _ = shared
                            .run(
                                "job_ping",
                                redis::cmd("PING").query_async::<()>(&mut shared_conn),
                            )
                            .await;
                        // The group may be new: walk its pending jobs anew.
                        reclaim_from = "0-0".to_owned();
                        conn.insert(c)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "builder cannot connect to Redis");
                        if pause(&mut stop, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let read = next_jobs(c, &stream, &consumer, &mut reclaim_at, &mut reclaim_from);
        let read = tokio::select! {
            _ = stop.changed() => return,
            r = tokio::time::timeout(read_timeout(&shared) * 2, read) => r,
        };
        let entries = match read {
            Ok(Ok(entries)) => {
                backoff.reset();
                recreated = false;
                entries
            }
            Ok(Err(e)) => {
                match failure(&e) {
                    Failure::NoGroup => match create_group(c, &stream).await {
                        Ok(()) if !recreated => {
                            tracing::info!("builders' consumer group created again");
                            reclaim_from = "0-0".to_owned();
                            recreated = true;
                            continue;
                        }
                        Ok(()) => {
                            tracing::warn!(error = %e, "the builders' consumer group keeps disappearing");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot create the builders' consumer group");
                            if failure(&e) == Failure::Connection {
                                conn = None;
                            }
                        }
                    },
                    Failure::Connection => {
                        tracing::debug!(error = %e, "builder lost its connection; reconnecting");
                        conn = None;
                    }
                    Failure::Other => {
                        tracing::warn!(error = %e, "builder cannot read jobs");
                    }
                }
                if pause(&mut stop, &mut backoff).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                tracing::debug!("builder's read timed out; reconnecting");
                conn = None;
                continue;
            }
        };
        for (id, bytes) in entries {
            build_one(&shared, &registry, &keysets, &stream, &id, &bytes).await;
        }
    }
}

/// Sleeps the next pause of `backoff` (up to [`MAX_BACKOFF`]); true when
/// the node stops meanwhile.
async fn pause(stop: &mut tokio::sync::watch::Receiver<bool>, backoff: &mut Backoff) -> bool {
    let d = backoff.next();
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// The next jobs to build: those claimed again, when a reclaim is due, else
/// the next new one (waiting up to [`BLOCK`] for it).
async fn next_jobs(
    conn: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    consumer: &str,
    reclaim_at: &mut tokio::time::Instant,
    reclaim_from: &mut String,
) -> redis::RedisResult<Vec<(String, Vec<u8>)>> {
    if tokio::time::Instant::now() >= *reclaim_at {
        *reclaim_at = tokio::time::Instant::now() + Duration::from_secs(1);
        // Jobs idle for a second: their builder may have died. Whether it
        // did is decided by the key's lock, which a live builder keeps and
        // a dead one loses within the job's timeout.
        let (next, claimed, _): (String, Vec<Entry>, Vec<String>) = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(1000)
            .arg(&*reclaim_from)
            .arg("COUNT")
            .arg(10)
            .query_async(conn)
            .await?;
        *reclaim_from = next;
        if !claimed.is_empty() {
            return Ok(claimed.into_iter().filter_map(field_j).collect());
        }
    }
    let read: Option<Vec<(String, Vec<Entry>)>> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(1)
        .arg("BLOCK")
        .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(u64::MAX))
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await?;
    Ok(read
        .into_iter()
        .flatten()
        .flat_map(|(_, items)| items)
        .filter_map(field_j)
        .collect())
}

/// The Unix time in ms at which a stream entry was added, from its id.
fn id_millis(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

fn field_j((id, fields): Entry) -> Option<(String, Vec<u8>)> {
    let value = fields
        .chunks(2)
        .find(|f| f.first().map(Vec::as_slice) == Some(b"j"))
        .and_then(|f| f.get(1).cloned())
        .unwrap_or_default();
    Some((id, value))
}

async fn ack(shared: &SharedLayer, stream: &str, id: &str) {
    let mut pipe = redis::pipe();
    pipe.cmd("XACK").arg(stream).arg(GROUP).arg(id).ignore();
    pipe.cmd("XDEL").arg(stream).arg(id).ignore();
    let mut conn = shared.conn();
    if let Err(e) = shared
        .run("job_ack", pipe.query_async::<()>(&mut conn))
        .await
    {
        tracing::warn!(error = %e, "cannot acknowledge a build job");
    }
}

/// Forgets a job for good: its pending marker (so the key can be queued
/// again) and its stream entry.
async fn drop_job(shared: &SharedLayer, stream: &str, id: &str, job: &Job) {
    let mut conn = shared.conn();
    let _ = shared
        .run(
            "job_ack",
            redis::cmd("DEL")
                .arg(job_marker_key(&job.redis_key))
                .query_async::<()>(&mut conn),
        )
        .await;
    ack(shared, stream, id).await;
}

async fn build_one(
    shared: &SharedLayer,
    registry: &JobRegistry,
    keysets: &KeySets,
    stream: &str,
    id: &str,
    bytes: &[u8],
) {
    let Some(job) = decode(bytes) else {
        tracing::warn!(id, "malformed build job dropped");
        ack(shared, stream, id).await;
        return;
    };
    let Some(f) = registry.get(&job.func) else {
        // Another builder may know it, or this one once the function is
        // registered (jobs can be read before the node's handles are
        // built): leave it pending, to be claimed again, until it is older
        // than its timeout.
        let age_ms = crate::clock::unix_millis().saturating_sub(id_millis(id));
        if age_ms > job.timeout_ms {
            tracing::warn!(func = %job.func, "no builder knows this function; job dropped");
            ack(shared, stream, id).await;
        } else {
            tracing::debug!(func = %job.func, "no build function registered under this name yet; job left pending");
        }
        return;
    };
    let timeout = Duration::from_millis(job.timeout_ms.max(1));
    let lock = match crate::func::atomic::try_lock(shared, &job.redis_key, timeout).await {
        Ok(Some(lock)) => lock,
        // Being built elsewhere (or Redis is failing): leave it pending.
        _ => return,
    };
    // The value may have been built since this job was queued: by a
    // duplicate job (queued after this one's marker expired), or by this
    // very job, claimed again just as its builder finished. Build it once.
    let mut conn = shared.conn();
    let already: Result<bool> = shared
        .run(
            "job_check",
            redis::cmd("EXISTS")
                .arg(&job.redis_key)
                .query_async(&mut conn),
        )
        .await;
    match already {
        Ok(false) => {}
        Ok(true) => {
            tracing::debug!(func = %job.func, "value already built; job dropped");
            drop_job(shared, stream, id, &job).await;
            lock.release().await;
            return;
        }
        Err(_) => {
            lock.release().await;
            return;
        }
    }
    // Read before building: the value is written only if no clear_all of
    // the function begins meanwhile (see `keysets`).
    let seen = match keysets.read_generation(shared, &job.func).await {
        Ok(seen) => seen,
        Err(e) => {
            tracing::warn!(func = %job.func, error = %e, "cannot read the clear generation; job left pending");
            lock.release().await;
            return;
        }
    };
    let built = tokio::time::timeout(timeout, f(job.args.clone(), job.ttl_ms)).await;
    match built {
        Ok(Ok(sealed)) => {
            let ttl = (job.ttl_ms > 0).then(|| Duration::from_millis(job.ttl_ms));
            let generation_key = keysets.generation(&job.func);
            let check = crate::func::atomic::GenerationCheck {
                key: &generation_key,
                seen: &seen,
            };
            let mut pipe = redis::pipe();
            // The key-set entry before the value (see `keysets`).
            keysets.add_to_pipeline(&mut pipe, &job.func, &job.redis_key);
            lock.add_write(&mut pipe, &job.redis_key, &sealed, ttl, Some(check));
            pipe.ignore();
            if job.record_args {
                keysets.add_args_record(&mut pipe, &job.func, &job.redis_key, &job.args);
            }
            pipe.cmd("DEL").arg(job_marker_key(&job.redis_key)).ignore();
            let mut conn = shared.conn();
            match shared
                .run("job_write", pipe.query_async::<()>(&mut conn))
                .await
            {
                Ok(()) => ack(shared, stream, id).await,
                Err(e) => {
                    tracing::warn!(func = %job.func, error = %e, "cannot store a built value")
                }
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(func = %job.func, error = %e, "build job failed; dropped");
            drop_job(shared, stream, id, &job).await;
        }
        Err(_) => {
            tracing::warn!(func = %job.func, "build job timed out; another builder will retry")
        }
    }
    lock.release().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_roundtrip_and_garbage_is_refused() {
        let job = Job {
            func: "report".into(),
            record_args: false,
            args: vec![1, 2],
            redis_key: "ns:f:report:|x".into(),
            ttl_ms: 1000,
            timeout_ms: 5000,
        };
        assert_eq!(decode(&encode(&job).unwrap()), Some(job));
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"\x01garbage"), None);
        assert_eq!(decode(b"\x07x"), None);
        assert_eq!(id_millis("1700000000123-4"), 1_700_000_000_123);
        assert_eq!(id_millis("garbage"), 0);
    }
}
