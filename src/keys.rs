//! Names of everything cachenode keeps in Redis, in one place, and the RAM
//! keys the bus carries.
//!
//! A leaf: rooms that name a Redis key (the node, functions, key sets, the
//! bus, jobs, refresh, locks) take the name from here, so the layout below
//! is written once and a reader finds every key of a namespace in this
//! file. All names live under the node's namespace (DESIGN §3):
//!
//! | what | name |
//! |---|---|
//! | plain value | `{ns}:k:{key}` |
//! | function value | `{ns}:f:{funcname}:{args}` |
//! | function key set, and its registry | `{ns}:ks:{funcname}:{shard}`, `{ns}:ks` |
//! | function clear generation | `{ns}:gen:{funcname}` |
//! | a function's recorded arguments (refresh) | `{ns}:args:{funcname}` |
//! | refresh: last runs, period locks | `{ns}:refresh:last`, `{ns}:lock:refresh:{funcname}` |
//! | key-set sweep lock | `{ns}:lock:sweep` |
//! | build queue (stream, group `builders`) | `{ns}:jobs` |
//! | lock, version, build-job marker of value key `K` | `{K}:lock`, `{K}:ver`, `{K}:job` |
//! | bus channel | `{ns}:bus` |
//! | bus counter, log and epoch | `{ns}:{bus}:seq`, `{ns}:{bus}:log`, `{ns}:{bus}:epoch` |
//!
//! The bus keys share the `{bus}` hash tag because one script touches them
//! together, and a value's companions (`{K}:…`) are tagged with the value's
//! key so a script can touch both, which keeps the door open to Redis
//! Cluster (DESIGN §8). A companion's name starts with `{{ns}:`, not with
//! `{ns}:`: a namespace-wide walk needs both patterns
//! ([`Keys::clear_patterns`]).
//!
//! RAM keys, which bus messages carry so that applying one needs no
//! namespace: a plain key as the application wrote it ([`plain_ram_key`]),
//! a function's value as `\0f{funcname}:{args}` ([`func_ram_prefix`]).

use std::borrow::Cow;

use crate::{Error, Result};

/// The longest namespace accepted.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// Key names for one namespace.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    ns: String,
    plain_prefix: String,
}

impl Keys {
    /// Key names under `ns`, which must be 1 to 64 characters among
    /// `A-Z a-z 0-9 _ - . /` (no glob or hash-tag characters, no `:` so a
    /// namespace is never the prefix of another one's keys).
    pub(crate) fn new(ns: &str) -> Result<Self> {
        let ok = !ns.is_empty()
            && ns.len() <= MAX_NAMESPACE_LEN
            && ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'));
        if !ok {
            return Err(Error::Config(format!(
                "namespace {ns:?} must be 1 to {MAX_NAMESPACE_LEN} characters among A-Z a-z 0-9 _ - . /"
            )));
        }
        Ok(Keys {
            ns: ns.to_owned(),
            plain_prefix: format!("{ns}:k:"),
        })
    }

    /// The namespace.
    pub(crate) fn namespace(&self) -> &str {
        &self.ns
    }

    /// The Redis key of plain key `key`.
    pub(crate) fn plain(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.plain_prefix.len() + key.len());
        k.push_str(&self.plain_prefix);
        k.push_str(key);
        k
    }

    /// The prefix of function `name`'s value keys: `{ns}:f:{name}:`.
    pub(crate) fn func_prefix(&self, name: &str) -> String {
        format!("{}:f:{name}:", self.ns)
    }

    /// The prefix of every plain value key: `{ns}:k:`.
    pub(crate) fn plain_prefix(&self) -> &str {
        &self.plain_prefix
    }

    /// The prefix of every function value key: `{ns}:f:`.
    pub(crate) fn func_values_prefix(&self) -> String {
        format!("{}:f:", self.ns)
    }

    /// The registry of the functions that have key sets: `{ns}:ks`.
    pub(crate) fn keyset_registry(&self) -> String {
        format!("{}:ks", self.ns)
    }

    /// Shard `shard` of function `funcname`'s key set.
    pub(crate) fn keyset_shard(&self, funcname: &str, shard: u64) -> String {
        format!("{}:ks:{funcname}:{shard}", self.ns)
    }

    /// The hash of function `funcname`'s recorded arguments (by value key),
    /// kept so that refresh can rebuild a value.
    pub(crate) fn func_args(&self, funcname: &str) -> String {
        format!("{}:args:{funcname}", self.ns)
    }

    /// When each refreshed function last ran (a hash by function name).
    pub(crate) fn refresh_last(&self) -> String {
        format!("{}:refresh:last", self.ns)
    }

    /// The lock one instance takes to refresh `funcname` for a period.
    pub(crate) fn refresh_lock(&self, funcname: &str) -> String {
        format!("{}:lock:refresh:{funcname}", self.ns)
    }

    /// The lock one instance takes to sweep the key sets for a period.
    pub(crate) fn sweep_lock(&self) -> String {
        format!("{}:lock:sweep", self.ns)
    }

    /// The build queue of async-compute functions (a stream).
    pub(crate) fn jobs(&self) -> String {
        format!("{}:jobs", self.ns)
    }

    /// A glob matching every key of the namespace that starts with `{ns}:`
    /// (the namespace has no glob characters, see [`Keys::new`]); value
    /// companions are matched by [`Keys::clear_patterns`] only.
    pub(crate) fn namespace_pattern(&self) -> String {
        format!("{}:*", self.ns)
    }

    /// The globs that together match every key of the namespace: `{ns}:*`,
    /// and `{{ns}:*` for the companions (`{K}:lock`, `{K}:ver`, `{K}:job`)
    /// of its value keys. A `:` follows the namespace in both, so another
    /// namespace's keys never match.
    pub(crate) fn clear_patterns(&self) -> [String; 2] {
        [self.namespace_pattern(), format!("{{{}:*", self.ns)]
    }

    /// Whether `key` (matched by one of [`Keys::clear_patterns`]) is one
    /// that `clear_all` removes: every value and its bookkeeping (key sets,
    /// recorded arguments, refresh state, locks, versions), but not
    ///
    /// * the bus (`{ns}:{bus}:…`): its counter and log are how nodes tell a
    ///   missed invalidation from a lost Redis state, and the clear's own
    ///   invalidation travels through them;
    /// * the build queue: the stream `{ns}:jobs` carries the builders'
    ///   consumer group (deleting it leaves every builder unable to read
    ///   jobs until it restarts), and the markers `{K}:job` of the jobs still
    ///   in it, which say a build is pending (they expire with the job
    ///   timeout). A queued job builds its value anew after the clear.
    pub(crate) fn is_clearable(&self, key: &str) -> bool {
        if let Some(rest) = key
            .strip_prefix(self.ns.as_str())
            .and_then(|r| r.strip_prefix(':'))
        {
            // Clear generations are given new values instead: deleting one
            // would let a computation that read none store its value.
            return !rest.starts_with("{bus}:")
                && !rest.starts_with("bus")
                && rest != "jobs"
                && !rest.starts_with("gen:");
        }
        let companion = key
            .strip_prefix('{')
            .and_then(|k| k.strip_prefix(self.ns.as_str()))
            .is_some_and(|k| k.starts_with(':'));
        companion && !key.ends_with("}:job")
    }

    /// The clear generation of function `name` (see
    /// [`keysets`](crate::keysets)): changed by every `clear_all` of it.
    pub(crate) fn func_generation(&self, name: &str) -> String {
        format!("{}:gen:{name}", self.ns)
    }

    /// The bus pub/sub channel.
    pub(crate) fn bus_channel(&self) -> String {
        format!("{}:bus", self.ns)
    }

    /// The bus sequence counter.
    pub(crate) fn bus_seq(&self) -> String {
        format!("{}:{{bus}}:seq", self.ns)
    }

    /// The bus log (a capped stream).
    pub(crate) fn bus_log(&self) -> String {
        format!("{}:{{bus}}:log", self.ns)
    }

    /// The bus epoch marker: changes when the bus's Redis state is recreated.
    pub(crate) fn bus_epoch(&self) -> String {
        format!("{}:{{bus}}:epoch", self.ns)
    }
}

/// The at-most-once lock of value key `value_key`: `{K}:lock`, tagged with
/// the value's key (value keys contain no braces) so it hashes like it.
pub(crate) fn lock_key(value_key: &str) -> String {
    format!("{{{value_key}}}:lock")
}

/// The version (computation start) of value key `value_key`, for
/// at-least-once writes: `{K}:ver`.
pub(crate) fn version_key(value_key: &str) -> String {
    format!("{{{value_key}}}:ver")
}

/// The marker of a pending build job of value key `value_key`: `{K}:job`.
pub(crate) fn job_marker_key(value_key: &str) -> String {
    format!("{{{value_key}}}:job")
}

/// The prefix of the keyspace-notification channels of database `db`.
pub(crate) fn keyspace_channel_prefix(db: i64) -> String {
    format!("__keyspace@{db}__:")
}

/// The RAM key of a plain (user) key.
///
/// Plain keys are stored as they are, so a RAM hit allocates nothing; keys of
/// cached functions start with a NUL byte followed by `f`. The rare plain key
/// that itself starts with NUL is escaped with a `\0k` prefix, so the two
/// spaces never collide.
#[inline]
pub(crate) fn plain_ram_key(key: &str) -> Cow<'_, str> {
    if key.starts_with('\0') {
        Cow::Owned(format!("\0k{key}"))
    } else {
        Cow::Borrowed(key)
    }
}

/// The prefix of function `funcname`'s RAM keys: `\0f{funcname}:`.
pub(crate) fn func_ram_prefix(funcname: &str) -> String {
    format!("\0f{funcname}:")
}

/// The RAM key of a Redis key, given the part after `{ns}:`; `None` for
/// keys that hold no value (key sets, bus, locks).
pub(crate) fn ram_key_of(rest: &str) -> Option<String> {
    if let Some(plain) = rest.strip_prefix("k:") {
        Some(plain_ram_key(plain).into_owned())
    } else {
        rest.strip_prefix("f:").map(|f| format!("\0f{f}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_validated() {
        assert!(Keys::new("myapp").is_ok());
        assert!(Keys::new("my-app_v2.prod/eu").is_ok());
        for bad in ["", "a b", "a*", "a{b}", "a:b", &"x".repeat(65)] {
            assert!(matches!(Keys::new(bad), Err(Error::Config(_))), "{bad:?}");
        }
    }

    #[test]
    fn names_follow_the_layout() {
        let k = Keys::new("app").unwrap();
        assert_eq!(k.plain("user:1"), "app:k:user:1");
        assert_eq!(k.namespace_pattern(), "app:*");
        assert_eq!(k.bus_channel(), "app:bus");
        assert_eq!(k.bus_seq(), "app:{bus}:seq");
        assert_eq!(k.clear_patterns(), ["app:*", "{app:*"]);
        assert_eq!(k.func_generation("get_user"), "app:gen:get_user");
        assert!(k.is_clearable("app:k:x"));
        assert!(!k.is_clearable("app:{bus}:log"));
        assert!(!k.is_clearable("app:bus"));
    }

    #[test]
    fn clear_all_spares_the_bus_the_build_queue_and_the_clear_generations_only() {
        let k = Keys::new("app").unwrap();
        for gone in [
            "app:k:x",
            "app:f:get:|ab",
            "app:ks",
            "app:ks:get:3",
            "app:args:get",
            "app:refresh:last",
            "app:lock:refresh:get",
            "app:lock:sweep",
            "app:jobs2",
            "{app:f:get:|ab}:lock",
            "{app:f:get:|ab}:ver",
            "{app:k:x}:lock",
        ] {
            assert!(k.is_clearable(gone), "{gone}");
        }
        for kept in [
            "app:{bus}:seq",
            "app:{bus}:log",
            "app:{bus}:epoch",
            "app:jobs",
            "{app:f:get:|ab}:job",
            // Given a new value instead.
            "app:gen:get",
            // Not of this namespace.
            "apple:k:x",
            "{apple:f:g:|ab}:lock",
            "other:k:x",
            "{app",
            "",
        ] {
            assert!(!k.is_clearable(kept), "{kept}");
        }
    }

    #[test]
    fn bookkeeping_names_follow_the_layout() {
        let k = Keys::new("app").unwrap();
        assert_eq!(k.keyset_registry(), "app:ks");
        assert_eq!(k.keyset_shard("f", 3), "app:ks:f:3");
        assert_eq!(k.func_args("get"), "app:args:get");
        assert_eq!(k.refresh_last(), "app:refresh:last");
        assert_eq!(k.refresh_lock("get"), "app:lock:refresh:get");
        assert_eq!(k.sweep_lock(), "app:lock:sweep");
        assert_eq!(k.jobs(), "app:jobs");
        assert_eq!(k.func_prefix("get"), "app:f:get:");
        assert_eq!(k.func_values_prefix(), "app:f:");
        assert_eq!(k.plain_prefix(), "app:k:");
        assert_eq!(keyspace_channel_prefix(2), "__keyspace@2__:");
        assert_eq!(func_ram_prefix("get"), "\0fget:");
    }

    #[test]
    fn lock_and_version_keys_hash_like_the_value_key() {
        assert_eq!(lock_key("ns:f:g:|ab"), "{ns:f:g:|ab}:lock");
        assert_eq!(version_key("ns:f:g:|ab"), "{ns:f:g:|ab}:ver");
        assert_eq!(job_marker_key("k"), "{k}:job");
    }

    #[test]
    fn plain_keys_never_collide_with_function_keys() {
        assert_eq!(plain_ram_key("user:1"), "user:1");
        assert_eq!(plain_ram_key("\0fx"), "\0k\0fx");
        assert!(!plain_ram_key("\0fx").starts_with("\0f"));
    }

    #[test]
    fn redis_keys_map_back_to_ram_keys() {
        assert_eq!(ram_key_of("k:user:1").as_deref(), Some("user:1"));
        assert_eq!(
            ram_key_of("f:get_user:abc").as_deref(),
            Some("\0fget_user:abc")
        );
        assert_eq!(ram_key_of("ks:get_user:0"), None);
    }
}
