//! The one error type of the crate.
//!
//! Every fallible call returns [`Error`]. Variants say what went wrong and carry
//! the context an operator needs (the operation, the URL without its password,
//! the limit that was crossed), so a log line is enough to act on.

use std::time::Duration;

/// A specialised `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in cachenode.
///
/// Decode failures of values read from Redis are *not* errors: such a value is
/// treated as a miss, removed, counted and logged (see the crate docs), so a
/// corrupt entry never poisons the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node could not connect to Redis when it was built.
    ///
    /// Check that Redis runs at `url` and is reachable; the password, if any,
    /// is not shown.
    #[error("cannot connect to Redis at {url}: {source}")]
    Connect {
        /// The Redis URL with its password masked.
        url: String,
        /// What the Redis client reported.
        #[source]
        source: redis::RedisError,
    },

    /// A Redis command failed (connection lost, server error, …).
    ///
    /// The node reconnects by itself; the call can be retried.
    #[error("Redis {op} failed: {source}")]
    Redis {
        /// The operation that failed, e.g. `"get"` or `"set"`.
        op: &'static str,
        /// What the Redis client reported.
        #[source]
        source: redis::RedisError,
    },

    /// A Redis command did not answer within the node's operation timeout.
    ///
    /// Redis is slow, paused or unreachable. The call can be retried; the
    /// timeout is set with [`CacheNodeBuilder::op_timeout`](crate::CacheNodeBuilder::op_timeout).
    #[error("Redis {op} timed out after {after:?}")]
    Timeout {
        /// The operation that timed out.
        op: &'static str,
        /// The timeout that elapsed.
        after: Duration,
    },

    /// A value could not be encoded for storage.
    #[error("cannot encode value: {0}")]
    Encode(String),

    /// A value is larger than the node accepts
    /// ([`CacheNodeBuilder::max_value_bytes`](crate::CacheNodeBuilder::max_value_bytes)).
    #[error("value of {size} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// Encoded size of the value.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// The node's configuration is invalid (builder options or environment).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The call needs the shared Redis layer but this node has none
    /// (it was built RAM-only or disabled).
    #[error("{op} needs the Redis layer, but this node has none")]
    NoSharedLayer {
        /// The operation that needed Redis.
        op: &'static str,
    },

    /// A write or delete may have reached Redis, but telling the other
    /// instances failed: they may go on serving the previous value from RAM
    /// until its TTL. Retry the call (writing or deleting again is
    /// harmless); until it succeeds, treat the key as possibly stale on
    /// other instances.
    #[error("{op} may have reached Redis but was not announced to other instances: {source}")]
    Unannounced {
        /// The operation whose announcement failed.
        op: &'static str,
        /// Why the announcement failed.
        #[source]
        source: Box<Error>,
    },

    /// The node was shut down; build a new one.
    #[error("the cache node was shut down")]
    Shutdown,
}

impl Error {
    /// Whether retrying the same call later may succeed (Redis lost, slow or
    /// restarting), as opposed to an error in the call or the configuration.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Redis { .. } | Error::Timeout { .. } | Error::Unannounced { .. }
        )
    }
}

/// Masks the password of a Redis URL so it can be logged or shown in errors.
pub(crate) fn redact_url(url: &str) -> String {
    // redis://user:password@host:port/db -> redis://user:***@host:port/db
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let masked = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None => "***".to_owned(),
    };
    format!("{}{}{}", &url[..scheme_end + 3], masked, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redact_url_masks_password_only() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://app:s3cr3t@h:6379/2"),
            "redis://app:***@h:6379/2"
        );
        assert_eq!(redact_url("rediss://:pw@h"), "rediss://:***@h");
        assert_eq!(redact_url("redis://tokenonly@h"), "redis://***@h");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
