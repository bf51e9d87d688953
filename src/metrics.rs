//! Every metric cachenode emits, named in one place, and the helpers that
//! record them through the [`metrics`] facade.
//!
//! Names follow Prometheus conventions: the `cachenode_` prefix, `_total` on
//! counters, `_seconds` / `_bytes` in base units. Labels are bounded (layer,
//! operation, reason, source, function name): a cache key never becomes a
//! label. When the application installs no recorder, recording is a no-op.

/// Reads answered, by `layer` (`ram`, `redis`).
pub const HITS_TOTAL: &str = "cachenode_hits_total";
/// Reads not answered, by `layer`.
pub const MISSES_TOTAL: &str = "cachenode_misses_total";
/// Values written, by `layer`.
pub const WRITES_TOTAL: &str = "cachenode_writes_total";
/// Values read from Redis that did not decode, by `reason`.
pub const DECODE_FAILURES_TOTAL: &str = "cachenode_decode_failures_total";
/// Failed or timed-out Redis commands, by `op`.
pub const REDIS_ERRORS_TOTAL: &str = "cachenode_redis_errors_total";
/// Whole-RAM flushes, by `reason`.
pub const RAM_FLUSHES_TOTAL: &str = "cachenode_ram_flushes_total";

/// Invalidations published by this node.
pub const INVALIDATIONS_PUBLISHED_TOTAL: &str = "cachenode_invalidations_published_total";
/// Invalidations from other nodes applied to RAM, by `source` (`pubsub`,
/// `stream`, `check`, `keyspace`).
pub const INVALIDATIONS_APPLIED_TOTAL: &str = "cachenode_invalidations_applied_total";
/// Delay from publication (the publisher's clock) to application here.
pub const PROPAGATION_SECONDS: &str = "cachenode_bus_propagation_seconds";
/// Bus messages dropped as malformed, by `reason`.
pub const BUS_MALFORMED_TOTAL: &str = "cachenode_bus_malformed_total";

/// The label values of the `layer` label.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Layer {
    Ram = 0,
    Redis = 1,
}

impl Layer {
    fn label(self) -> &'static str {
        match self {
            Layer::Ram => "ram",
            Layer::Redis => "redis",
        }
    }
}

/// Handles on the hot-path counters, registered once when the node is
/// built so a hit costs one atomic increment, not a registry lookup. An
/// application that installs its own recorder must therefore install it
/// before building nodes.
#[derive(Clone)]
pub(crate) struct NodeMetrics {
    hits: [metrics::Counter; 2],
    misses: [metrics::Counter; 2],
    writes: [metrics::Counter; 2],
}

impl NodeMetrics {
    pub(crate) fn new() -> Self {
        let per_layer = |name: &'static str| {
            [Layer::Ram, Layer::Redis].map(|l| metrics::counter!(name, "layer" => l.label()))
        };
        NodeMetrics {
            hits: per_layer(HITS_TOTAL),
            misses: per_layer(MISSES_TOTAL),
            writes: per_layer(WRITES_TOTAL),
        }
    }

    pub(crate) fn hit(&self, layer: Layer) {
        self.hits[layer as usize].increment(1);
    }

    pub(crate) fn miss(&self, layer: Layer) {
        self.misses[layer as usize].increment(1);
    }

    pub(crate) fn write(&self, layer: Layer) {
        self.writes[layer as usize].increment(1);
    }
}

pub(crate) fn decode_failure(reason: &'static str) {
    metrics::counter!(DECODE_FAILURES_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn redis_error(op: &'static str) {
    metrics::counter!(REDIS_ERRORS_TOTAL, "op" => op).increment(1);
}

pub(crate) fn ram_flush(reason: &'static str) {
    metrics::counter!(RAM_FLUSHES_TOTAL, "reason" => reason).increment(1);
}

pub(crate) fn invalidation_published() {
    metrics::counter!(INVALIDATIONS_PUBLISHED_TOTAL).increment(1);
}

pub(crate) fn invalidation_applied(source: &'static str) {
    metrics::counter!(INVALIDATIONS_APPLIED_TOTAL, "source" => source).increment(1);
}

pub(crate) fn propagation_delay(delay: std::time::Duration) {
    metrics::histogram!(PROPAGATION_SECONDS).record(delay.as_secs_f64());
}

pub(crate) fn bus_malformed(reason: &'static str) {
    metrics::counter!(BUS_MALFORMED_TOTAL, "reason" => reason).increment(1);
}
