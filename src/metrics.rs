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
