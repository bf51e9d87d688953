//! How long a value lives.

use std::time::Duration;

/// The lifetime of a cached value.
///
/// Converting a [`Duration`] gives [`Ttl::After`], except `Duration::ZERO`,
/// which means [`Ttl::Never`]: a value set for zero seconds never expires
/// (it is not a value that expires at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ttl {
    /// The node's default TTL ([`CacheNodeBuilder::default_ttl`](crate::CacheNodeBuilder::default_ttl)).
    #[default]
    Default,
    /// Never expires (it still leaves RAM when evicted for space).
    Never,
    /// Expires after this long.
    After(Duration),
}

impl From<Duration> for Ttl {
    fn from(d: Duration) -> Self {
        if d.is_zero() {
            Ttl::Never
        } else {
            Ttl::After(d)
        }
    }
}

impl From<Option<Duration>> for Ttl {
    /// `None` is [`Ttl::Default`].
    fn from(d: Option<Duration>) -> Self {
        d.map_or(Ttl::Default, Ttl::from)
    }
}

impl Ttl {
    /// The concrete lifetime, `None` for never, given the node's default.
    pub(crate) fn resolve(self, default: Ttl) -> Option<Duration> {
        match self {
            Ttl::Default => match default {
                Ttl::Default | Ttl::Never => None,
                Ttl::After(d) => Some(d),
            },
            Ttl::Never => None,
            Ttl::After(d) => Some(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_never_and_default_resolves() {
        assert_eq!(Ttl::from(Duration::ZERO), Ttl::Never);
        assert_eq!(
            Ttl::from(Duration::from_secs(3)),
            Ttl::After(Duration::from_secs(3))
        );
        let d = Ttl::After(Duration::from_secs(60));
        assert_eq!(Ttl::Default.resolve(d), Some(Duration::from_secs(60)));
        assert_eq!(Ttl::Never.resolve(d), None);
        assert_eq!(Ttl::Default.resolve(Ttl::Never), None);
    }
}
