//! Names of everything cachenode keeps in Redis, in one place.
//!
//! All names live under the node's namespace (DESIGN §3):
//!
//! | what | name |
//! |---|---|
//! | plain value | `{ns}:k:{key}` |
//! | function value | `{ns}:f:{funcname}:{args}` |
//! | function key set | `{ns}:ks:{funcname}:{shard}` |
//! | bus channel | `{ns}:bus` |
//! | bus counter, log and epoch | `{ns}:{bus}:seq`, `{ns}:{bus}:log`, `{ns}:{bus}:epoch` |
//!
//! The bus keys share the `{bus}` hash tag because one script touches them
//! together, which keeps the door open to Redis Cluster (DESIGN §8).

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

    /// A glob matching every key of the namespace (the namespace has no glob
    /// characters, see [`Keys::new`]).
    pub(crate) fn namespace_pattern(&self) -> String {
        format!("{}:*", self.ns)
    }

    /// Whether `key` (a key of this namespace) holds a value or bookkeeping
    /// that `clear_all` removes: everything but the bus.
    pub(crate) fn is_clearable(&self, key: &str) -> bool {
        !key[self.ns.len()..].starts_with(":{bus}:") && !key[self.ns.len()..].starts_with(":bus")
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

/// The RAM key of a Redis key, given the part after `{ns}:`; `None` for
/// keys that hold no value (key sets, bus, locks).
pub(crate) fn ram_key_of(rest: &str) -> Option<String> {
    if let Some(plain) = rest.strip_prefix("k:") {
        Some(crate::local::plain_ram_key(plain).into_owned())
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
        assert!(k.is_clearable("app:k:x"));
        assert!(!k.is_clearable("app:{bus}:log"));
        assert!(!k.is_clearable("app:bus"));
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
