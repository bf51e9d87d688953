//! Every metric cachenode emits, named in one place, and the helpers that
//! record them through the [`metrics`] facade.
//!
//! Names follow Prometheus conventions: the `cachenode_` prefix, `_total` on
//! counters, `_seconds` / `_bytes` in base units. Labels are bounded (layer,
//! operation, reason, source, function name): a cache key never becomes a
//! label. When the application installs no recorder, recording is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};

/// Reads answered, by `layer` (`ram`, `redis`).
pub const HITS_TOTAL: &str = "cachenode_hits_total";
/// Reads not answered, by `layer`.
pub const MISSES_TOTAL: &str = "cachenode_misses_total";
/// Values written, by `layer`.
pub const WRITES_TOTAL: &str = "cachenode_writes_total";
/// Values read from Redis that did not decode, by `reason`: `not_an_envelope`,
/// `unknown_version`, `other_codec`, `wrong_type`, `too_large`, `too_deep`
/// (nested past [`MAX_DECODE_DEPTH`](crate::MAX_DECODE_DEPTH)), `payload`.
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
/// Bus messages dropped as unsigned or badly signed (on a node with a bus
/// secret), by `reason` (`unsigned`, `bad_signature`, `replayed`).
pub const BUS_UNAUTHENTICATED_TOTAL: &str = "cachenode_bus_unauthenticated_total";

/// Latency of cache operations, by `layer`: every Redis command, and one in
/// [`RAM_SAMPLE_EVERY`] RAM lookups (timing each would cost more than the
/// lookup).
pub const OPERATION_SECONDS: &str = "cachenode_operation_seconds";
/// Calls of cached functions answered from the cache, by `function`, `layer`.
pub const FUNCTION_HITS_TOTAL: &str = "cachenode_function_hits_total";
/// Calls of cached functions that ran the function, by `function`.
pub const FUNCTION_MISSES_TOTAL: &str = "cachenode_function_misses_total";
/// Runs of cached functions (after single-flight), by `function`.
pub const COMPUTATIONS_TOTAL: &str = "cachenode_computations_total";
/// Duration of those runs, by `function`.
pub const COMPUTATION_SECONDS: &str = "cachenode_computation_seconds";
/// Entries in the RAM layer.
pub const RAM_ENTRIES: &str = "cachenode_ram_entries";
/// Weight of the RAM layer in bytes.
pub const RAM_BYTES: &str = "cachenode_ram_bytes";
/// 1 while the bus listener is subscribed, else 0.
pub const BUS_CONNECTED: &str = "cachenode_bus_connected";
/// Sequence number of the last invalidation applied.
pub const BUS_LAST_APPLIED_SEQ: &str = "cachenode_bus_last_applied_seq";
/// Invalidations published but not yet applied here.
pub const BUS_LAG: &str = "cachenode_bus_lag";
/// Keys recorded in a function's key set, by `function`.
pub const KEYSET_SIZE: &str = "cachenode_keyset_size";

/// Every metric name, for tools that check dashboards against them.
pub const ALL: &[&str] = &[
    HITS_TOTAL,
    MISSES_TOTAL,
    WRITES_TOTAL,
    DECODE_FAILURES_TOTAL,
    REDIS_ERRORS_TOTAL,
    RAM_FLUSHES_TOTAL,
    INVALIDATIONS_PUBLISHED_TOTAL,
    INVALIDATIONS_APPLIED_TOTAL,
    PROPAGATION_SECONDS,
    BUS_MALFORMED_TOTAL,
    BUS_UNAUTHENTICATED_TOTAL,
    OPERATION_SECONDS,
    FUNCTION_HITS_TOTAL,
    FUNCTION_MISSES_TOTAL,
    COMPUTATIONS_TOTAL,
    COMPUTATION_SECONDS,
    RAM_ENTRIES,
    RAM_BYTES,
    BUS_CONNECTED,
    BUS_LAST_APPLIED_SEQ,
    BUS_LAG,
    KEYSET_SIZE,
];

/// One RAM lookup in this many is timed.
pub const RAM_SAMPLE_EVERY: u32 = 64;

/// Buckets of the `_seconds` histograms: 20 µs to 10 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];

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
///
/// Beside the recorder's counters, the node keeps its own [`Counts`] for
/// [`NodeStats`](crate::NodeStats): the recorder's cannot be read back
/// (and without a recorder they count nothing).
pub(crate) struct NodeMetrics {
    hits: [metrics::Counter; 2],
    misses: [metrics::Counter; 2],
    writes: [metrics::Counter; 2],
    counts: Counts,
    /// [`OPERATION_SECONDS`] of the sampled RAM lookups.
    ram_seconds: metrics::Histogram,
}

/// The node's own read counters: relaxed atomic adds, on a cache line of
/// their own, so that a hit on one core does not slow down the reads of
/// the handles above on another.
#[derive(Default)]
#[repr(align(128))]
struct Counts {
    hits: [AtomicU64; 2],
    unanswered: AtomicU64,
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
            counts: Counts::default(),
            ram_seconds: metrics::histogram!(OPERATION_SECONDS, "layer" => Layer::Ram.label()),
        }
    }

    /// Records a sampled RAM lookup (see [`sample_ram`]) that took `took`.
    #[inline]
    pub(crate) fn ram_operation(&self, took: std::time::Duration) {
        self.ram_seconds.record(took.as_secs_f64());
    }

    /// A read answered by `layer`.
    #[inline]
    pub(crate) fn hit(&self, layer: Layer) {
        self.hits[layer as usize].increment(1);
        self.counts.hits[layer as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A read `layer` did not answer (another layer may be asked next).
    #[inline]
    pub(crate) fn miss(&self, layer: Layer) {
        self.misses[layer as usize].increment(1);
    }

    /// A read no layer answered: the last layer asked missed, or there was
    /// none to ask.
    #[inline]
    pub(crate) fn unanswered(&self) {
        self.counts.unanswered.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` reads no layer answered.
    pub(crate) fn unanswered_n(&self, n: u64) {
        self.counts.unanswered.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads answered by RAM, by Redis, and by neither, so far.
    pub(crate) fn read_counts(&self) -> (u64, u64, u64) {
        let c = &self.counts;
        (
            c.hits[Layer::Ram as usize].load(Ordering::Relaxed),
            c.hits[Layer::Redis as usize].load(Ordering::Relaxed),
            c.unanswered.load(Ordering::Relaxed),
        )
    }

    pub(crate) fn write(&self, layer: Layer) {
        self.writes[layer as usize].increment(1);
    }
}

pub(crate) fn decode_failure(reason: &'static str) {
    metrics::counter!(DECODE_FAILURES_TOTAL, "reason" => reason).increment(1);
}

/// Whether this RAM lookup should be timed (one in [`RAM_SAMPLE_EVERY`],
/// counted per thread so it costs no shared write).
#[inline]
pub(crate) fn sample_ram() -> bool {
    thread_local!(static N: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    N.with(|n| {
        let v = n.get().wrapping_add(1);
        n.set(v);
        v % RAM_SAMPLE_EVERY == 0
    })
}

/// Records a Redis command that took `took` (RAM lookups are recorded
/// through [`NodeMetrics::ram_operation`]).
pub(crate) fn redis_operation(took: std::time::Duration) {
    metrics::histogram!(OPERATION_SECONDS, "layer" => Layer::Redis.label())
        .record(took.as_secs_f64());
}

/// Per-function handles, registered when the function's handle is built.
pub(crate) struct FnMetrics {
    hits: [metrics::Counter; 2],
    misses: metrics::Counter,
    computations: metrics::Counter,
    computation_seconds: metrics::Histogram,
}

impl FnMetrics {
    pub(crate) fn new(function: &str) -> Self {
        let f = function.to_owned();
        FnMetrics {
            hits: [Layer::Ram, Layer::Redis].map(|l| {
                metrics::counter!(FUNCTION_HITS_TOTAL, "function" => f.clone(), "layer" => l.label())
            }),
            misses: metrics::counter!(FUNCTION_MISSES_TOTAL, "function" => f.clone()),
            computations: metrics::counter!(COMPUTATIONS_TOTAL, "function" => f.clone()),
            computation_seconds: metrics::histogram!(COMPUTATION_SECONDS, "function" => f),
        }
    }

    pub(crate) fn hit(&self, layer: Layer) {
        self.hits[layer as usize].increment(1);
    }

    pub(crate) fn miss(&self) {
        self.misses.increment(1);
    }

    pub(crate) fn computed(&self, took: std::time::Duration) {
        self.computations.increment(1);
        self.computation_seconds.record(took.as_secs_f64());
    }
}

/// Node gauges, set by the node's gauge task.
pub(crate) fn ram_gauges(entries: u64, bytes: u64) {
    metrics::gauge!(RAM_ENTRIES).set(entries as f64);
    metrics::gauge!(RAM_BYTES).set(bytes as f64);
}

pub(crate) fn bus_gauges(connected: bool, last_applied: u64, lag: u64) {
    metrics::gauge!(BUS_CONNECTED).set(if connected { 1.0 } else { 0.0 });
    metrics::gauge!(BUS_LAST_APPLIED_SEQ).set(last_applied as f64);
    metrics::gauge!(BUS_LAG).set(lag as f64);
}

pub(crate) fn keyset_size(function: &str, size: u64) {
    metrics::gauge!(KEYSET_SIZE, "function" => function.to_owned()).set(size as f64);
}

/// Installs a Prometheus recorder serving `/metrics` on `addr`.
pub(crate) fn serve(addr: std::net::SocketAddr) -> crate::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(SECONDS_BUCKETS)
        .map_err(|e| crate::Error::Config(format!("metrics buckets: {e}")))?
        .install()
        .map_err(|e| crate::Error::Config(format!("cannot serve metrics on {addr}: {e}")))
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

pub(crate) fn bus_unauthenticated(reason: &'static str) {
    metrics::counter!(BUS_UNAUTHENTICATED_TOTAL, "reason" => reason).increment(1);
}
